"""ROC curve figures for classification results (E5)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.reports.figure import save_figure  # noqa: E402


def save_roc_curve(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    title: str = "ROC",
) -> Path:
    """Write a PNG with one ROC curve per entry and the chance diagonal.

    Args:
        path: Destination PNG (written atomically).
        curves: ``{name: (fpr, tpr, auc)}``; ``fpr``/``tpr`` as returned by
            :func:`medseg.metrics.roc_curve`. A curve with NaN rates (a class without positives
            or negatives) is listed in the legend as "not defined" and not drawn.
        title: Figure title.

    Returns:
        The written path.
    """
    path = Path(path)
    if not curves:
        raise ValueError("save_roc_curve needs at least one curve")
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        f, t = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if f.shape != t.shape:
            raise ValueError(f"curve {name!r}: fpr {f.shape} and tpr {t.shape} differ")
        if f.size == 0 or np.isnan(f).any() or np.isnan(t).any():
            ax.plot([], [], label=f"{name} (not defined)")
            continue
        auc_txt = "n/a" if auc is None or np.isnan(auc) else f"{auc:.3f}"
        ax.plot(f, t, linewidth=1.5, label=f"{name} (AUC {auc_txt})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
