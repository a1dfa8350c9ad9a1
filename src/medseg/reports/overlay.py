"""PNG overlays of image / reference / prediction for a human reader (E5)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from medseg.reports.figure import save_figure  # noqa: E402

_COLOURS = np.array(
    [[0, 0, 0, 0], [0.1, 0.8, 0.2, 0.45], [0.95, 0.2, 0.2, 0.6], [0.2, 0.4, 1.0, 0.5],
     [1.0, 0.8, 0.0, 0.5], [0.8, 0.2, 0.9, 0.5], [0.0, 0.9, 0.9, 0.5]]
)


def pick_slice(label: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` with the most foreground voxels (the middle one if none)."""
    ax = axis % label.ndim
    other = tuple(i for i in range(label.ndim) if i != ax)
    counts = (label > 0).sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else label.shape[ax] // 2


def _cmap(n: int) -> ListedColormap:
    reps = int(np.ceil(max(n, 2) / (len(_COLOURS) - 1)))
    cols = np.concatenate([_COLOURS[:1]] + [_COLOURS[1:]] * reps)[: max(n, 2)]
    return ListedColormap(cols)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray | None = None,
    title: str = "",
    transpose: bool = False,
) -> Path:
    """Write a PNG panel: image | image + reference | image + prediction.

    Args:
        path: Destination PNG (written atomically).
        image: ``(*spatial)`` intensities (first channel of a multi-channel image).
        prediction: ``(*spatial)`` integer labels.
        reference: ``(*spatial)`` integer labels, or ``None``.
        title: Figure title.
        transpose: Show axis 0 horizontally (NIfTI ``x``) instead of vertically.

    Returns:
        The written path. 3D inputs show the axial slice (last axis) with the most reference
        (else prediction) foreground.
    """
    path = Path(path)
    if image.ndim == 3:
        z = pick_slice(reference if reference is not None and reference.any() else prediction)
        image, prediction = image[..., z], prediction[..., z]
        reference = None if reference is None else reference[..., z]
        title = f"{title}  (slice {z})"
    if transpose:
        image, prediction = image.T, prediction.T
        reference = None if reference is None else reference.T
    n = int(max(prediction.max(), 0 if reference is None else reference.max())) + 1
    lo, hi = np.percentile(image, [0.5, 99.5])
    panels = [("image", None)]
    if reference is not None:
        panels.append(("reference", reference))
    panels.append(("prediction", prediction))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (name, lab) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                  interpolation="nearest")
        if lab is not None:
            ax.imshow(lab, cmap=_cmap(n), vmin=0, vmax=n - 1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
