"""Bland-Altman plots of predicted against reference volumes (E5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.reports.figure import save_figure  # noqa: E402


def save_bland_altman(
    path: str | Path,
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, Mapping[str, Any]]],
    unit: str = "ml",
    title: str = "volume agreement (Bland-Altman)",
) -> Path:
    """Write a PNG with one Bland-Altman panel per class.

    Each panel shows every case as a point (mean of the predicted and reference volume,
    predicted - reference), the bias as a solid line and the 95% limits of agreement
    ``bias -/+ 1.96 SD`` as dashed lines, labelled with their values.

    Args:
        path: Destination PNG (written atomically).
        panels: ``{class name: (means (N,), differences (N,), summary)}``; ``summary`` holds
            ``bias``, ``loa_low``, ``loa_high`` and ``n`` as in
            :func:`medseg.metrics.agreement.volume_agreement` (NaN limits are not drawn).
        unit: Unit of the volumes, shown on the axes.
        title: Figure title.

    Returns:
        The written path.

    Raises:
        ValueError: no panel.
    """
    if not panels:
        raise ValueError("save_bland_altman needs at least one class")
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), dpi=100,
                             squeeze=False)
    for ax, (name, (means, diffs, s)) in zip(axes.ravel(), panels.items(), strict=False):
        m = np.asarray(means, dtype=float)
        d = np.asarray(diffs, dtype=float)
        ax.axhline(0.0, color="0.8", linewidth=0.8)
        ax.plot(m, d, "o", color="C0", markersize=4, alpha=0.8, label=f"cases (n={len(d)})")
        bias = float(s.get("bias", math.nan))
        if math.isfinite(bias):
            ax.axhline(bias, color="C3", linewidth=1.2, label=f"bias {bias:.3g} {unit}")
        for key in ("loa_low", "loa_high"):
            v = float(s.get(key, math.nan))
            if math.isfinite(v):
                ax.axhline(v, color="C3", linestyle="--", linewidth=1,
                           label="95% limits of agreement" if key == "loa_low" else None)
                ax.annotate(f"{v:.3g}", xy=(1.0, v), xycoords=("axes fraction", "data"),
                            xytext=(-2, 2), textcoords="offset points", ha="right",
                            fontsize=7, color="C3")
        ax.margins(y=0.12)
        ax.set_xlabel(f"mean of predicted and reference [{unit}]")
        ax.set_ylabel(f"predicted - reference [{unit}]")
        ax.set_title(str(name), fontsize=9)
        ax.legend(loc="best", fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
