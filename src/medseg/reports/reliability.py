"""Reliability diagram for calibration results (E5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.reports.figure import save_figure  # noqa: E402


def save_reliability_diagram(
    path: str | Path,
    bins: Mapping[str, Sequence[float | None]],
    ece: float | None = None,
    title: str = "reliability",
) -> Path:
    """Write a PNG: observed frequency per confidence bin against the diagonal, with counts.

    Args:
        path: Destination PNG (written atomically).
        bins: ``{"edges", "count", "confidence", "frequency"}`` as in
            :func:`medseg.metrics.calibration.reliability_bins` (lists; ``None`` for empty
            bins).
        ece: Expected calibration error, shown in the legend.
        title: Figure title.

    Returns:
        The written path.
    """
    edges = np.asarray(bins["edges"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    freq = np.array([np.nan if v is None else v for v in bins["frequency"]], dtype=float)
    conf = np.array([np.nan if v is None else v for v in bins["confidence"]], dtype=float)
    width = np.diff(edges)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.2, 5.2), dpi=100,
                                  gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="calibrated")
    keep = count > 0
    label = "observed" + ("" if ece is None else f" (ECE {ece:.3f})")
    ax.bar(edges[:-1][keep], freq[keep], width=width[keep], align="edge", alpha=0.7,
           edgecolor="k", linewidth=0.5, label=label)
    ax.plot(conf[keep], freq[keep], "o", color="C3", markersize=3, label="bin mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title, fontsize=9)
    axc.bar(edges[:-1], count, width=width, align="edge", color="0.5")
    axc.set_xlabel("predicted probability (confidence)")
    axc.set_ylabel("count")
    return save_figure(fig, path)
