"""Overlay panels rendered in memory for the self-contained report (E5).

Every panel of one case is cut from the same arrays at the same index, so the image, the
reference, the prediction and the uncertainty map stay aligned whatever slice the reader picks.
Rendering is plain numpy (grey window, label colours, a heat colour table) encoded by Pillow, so
a volume of 32 slices takes milliseconds and the result is the same on every machine.

Orientation: a 2D array is shown with its axis 0 as rows (like :func:`save_overlay`; a PNG's
rows). A 3D volume is cut in three planes through the file axis closest to S (axial), A
(coronal) and R (sagittal) by its affine, and each cut is shown in the radiological convention:
superior / anterior up, the patient's right on the viewer's left (anterior on the left in the
sagittal plane); slice numbers are the file's indices. Each screen axis is stretched by its
voxel spacing so that millimetres are square on the screen.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from medseg.reports.overlay import pick_slice

#: Plane name -> the RAS axis it cuts (0 = R, 1 = A, 2 = S).
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}
#: RGB colour of each label value 1, 2, ... (cycled); label 0 is not drawn.
LABEL_RGB = np.array([[25, 204, 51], [242, 51, 51], [51, 102, 255], [255, 204, 0],
                      [204, 51, 230], [0, 230, 230]], dtype=np.float64)
LABEL_ALPHA = 0.5
#: Longest side of a panel in screen pixels (small images are enlarged, nearest neighbour).
PANEL_PIXELS = 192
#: Longest side of a panel at most (larger images are reduced, nearest neighbour).
PANEL_MAX = 256
GAP = 4
#: The heat colour table of uncertainty maps (matplotlib's inferno, 256 entries, RGB 0..255).
_HEAT = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


@dataclass
class CaseImages:
    """The embedded pictures of one case.

    Attributes:
        case: Case id.
        panels: Panel names left to right (``image``, ``reference``, ``prediction`` and the
            uncertainty term when there is a map).
        planes: Plane name (``image`` for 2D, ``axial`` / ``coronal`` / ``sagittal`` for 3D) ->
            ``[(slice index, PNG data URI)]`` in slice order.
        start: Plane name -> position in its list shown first (the slice with the most
            reference foreground among the embedded ones).
        n_slices: Plane name -> the number of slices of the volume along that plane's axis.
        file: A PNG of the case on disk (for the Markdown twin), or ``None``.
    """

    case: str
    panels: list[str]
    planes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    start: dict[str, int] = field(default_factory=dict)
    n_slices: dict[str, int] = field(default_factory=dict)
    file: Path | None = None


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image."""
    buf = io.BytesIO()
    # level 3: about half the time of the default 6 on noisy medical images, no larger
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(buf, "PNG",
                                                                          compress_level=3)
    return buf.getvalue()


def grey_window(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 / 99.5 percentiles of the finite voxels (one window for a whole volume)."""
    v = image[np.isfinite(image)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def _resize_index(n: int, size: int) -> np.ndarray:
    return np.minimum((np.arange(size) * n) // size, n - 1)


def panel_size(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int]:
    """Screen size ``(rows, cols)`` of a 2D cut: millimetres square; the longest side is the
    array's longest side clamped to [:data:`PANEL_PIXELS`, :data:`PANEL_MAX`] (small images are
    enlarged, large ones reduced to keep the report small)."""
    mm = [n * float(s) for n, s in zip(shape, spacing, strict=True)]
    longest = min(max(max(shape), PANEL_PIXELS), PANEL_MAX)
    scale = longest / max(mm)
    return tuple(max(1, round(m * scale)) for m in mm)  # type: ignore[return-value]


def render_slice(
    image: np.ndarray,
    layers: Sequence[np.ndarray | None],
    window: tuple[float, float],
    size: tuple[int, int],
    heat_max: float = 1.0,
) -> np.ndarray:
    """One row of panels: the grey image, then the image under each layer.

    Args:
        image: ``(H, W)`` intensities.
        layers: Per extra panel ``(H, W)``: an integer label map (drawn in
            :data:`LABEL_RGB`), a float map (a heat overlay scaled by ``heat_max``), or
            ``None`` (the image alone).
        window: Grey window ``(low, high)``.
        size: Screen size ``(rows, cols)`` of each panel.
        heat_max: Value shown at full heat (the 99th percentile of the volume's map).

    Returns:
        ``(rows, n_panels * cols + gaps, 3)`` uint8.
    """
    ri, ci = _resize_index(image.shape[0], size[0]), _resize_index(image.shape[1], size[1])
    lo, hi = window
    g = np.clip((np.nan_to_num(image, nan=lo).astype(np.float32) - lo) / (hi - lo), 0, 1)
    grey = np.repeat(g[..., None] * np.float32(255.0), 3, axis=-1)
    panels = [grey]
    for lay in layers:  # composed at the array's own size, enlarged once at the end
        out = grey.copy()
        if lay is not None:
            if np.issubdtype(lay.dtype, np.integer) or lay.dtype == bool:
                lab = lay.astype(np.int64)
                fg = lab > 0
                if fg.any():
                    col = LABEL_RGB[(lab[fg] - 1) % len(LABEL_RGB)]
                    out[fg] = (1 - LABEL_ALPHA) * out[fg] + LABEL_ALPHA * col
            else:
                a = np.clip(np.nan_to_num(lay.astype(np.float32)) / max(heat_max, 1e-12), 0, 1)
                heat = _HEAT[np.round(a * 255).astype(np.intp)]
                w = 0.85 * a[..., None]
                out = (1 - w) * out + w * heat
        panels.append(out)
    gap = np.full((size[0], GAP, 3), 255, dtype=np.uint8)
    row = []
    for p in panels:
        big = np.round(p).astype(np.uint8)[np.ix_(ri, ci)]
        row += [gap, big] if row else [big]
    return np.concatenate(row, axis=1)


def slice_positions(n: int, max_slices: int) -> list[int]:
    """Every slice when ``n <= max_slices``, else ``max_slices`` evenly spaced ones (ends kept)."""
    if n <= max_slices:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_slices)})


def _screen(cut: np.ndarray, axis: int, col_ax: int, ornt: np.ndarray) -> np.ndarray:
    """A 2D cut (the file axes other than ``axis``, in file order) as shown: rows the higher
    RAS axis with its positive end up, columns the lower one with its positive end on the left
    (radiological: the patient's right on the viewer's left; anterior on the left in
    sagittal)."""
    first, second = (i for i in range(3) if i != axis)
    if first != col_ax:  # bring the cut to (column axis, row axis)
        cut, (first, second) = cut.T, (second, first)
    for d, ax in enumerate((first, second)):
        if ornt[ax, 1] < 0:  # index increasing towards L / P / I: flip to R / A / S
            cut = np.flip(cut, d)
    return cut.T[::-1, ::-1]


def case_images(
    case: str,
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    uncertainty_name: str = "uncertainty",
    spacing: Sequence[float] | None = None,
    max_slices: int = 32,
    max_slices_other: int = 12,
    orientation: np.ndarray | None = None,
) -> CaseImages:
    """Render the panels of one case.

    Args:
        case: Case id.
        image: ``(*spatial)`` intensities (the first channel), 2D or 3D.
        prediction: ``(*spatial)`` integer labels.
        reference: ``(*spatial)`` integer labels, or ``None``.
        uncertainty: ``(*spatial)`` float map, or ``None``.
        uncertainty_name: Its panel name (e.g. ``predictive_entropy``).
        spacing: Voxel size per axis in mm (isotropic when ``None``).
        max_slices: Axial slices embedded at most (3D).
        max_slices_other: Coronal and sagittal slices embedded at most (3D; 0 leaves them out).
        orientation: 3D: ``(3, 2)`` per file axis its RAS axis (0 = R, 1 = A, 2 = S) and
            direction (+1 / -1), as ``nibabel.orientations.io_orientation(affine)`` returns;
            ``None``: the file axes are R, A, S. It picks the file axis cut for each plane and
            turns the cut to the radiological view; slice numbers stay file indices.

    Returns:
        The case's :class:`CaseImages`.
    """
    arrays = [a for a in (prediction, reference, uncertainty) if a is not None]
    if image.ndim not in (2, 3) or any(a.shape != image.shape for a in arrays):
        raise ValueError(f"the image {image.shape}, prediction {prediction.shape}, "
                         f"reference {None if reference is None else reference.shape} and "
                         f"uncertainty {None if uncertainty is None else uncertainty.shape} "
                         "are not one 2D or 3D grid")
    sp = [1.0] * image.ndim if spacing is None else [float(s) for s in spacing][: image.ndim]
    panels = ["image"] + (["reference"] if reference is not None else []) + ["prediction"]
    layers: list[np.ndarray | None] = ([reference] if reference is not None else [])
    layers.append(prediction)
    heat_max = 1.0
    if uncertainty is not None:
        layers.append(uncertainty.astype(np.float64))
        finite = uncertainty[np.isfinite(uncertainty)]
        heat_max = float(np.percentile(finite, 99)) if finite.size else 1.0
        heat_max = heat_max if heat_max > 0 else float(finite.max(initial=0.0)) or 1.0
        panels.append(f"{uncertainty_name} (full colour at {heat_max:.3g}, this case's 99th "
                      "percentile)")
    window = grey_window(image)
    focus = reference if reference is not None and reference.any() else prediction
    out = CaseImages(case, panels)
    if image.ndim == 2:
        size = panel_size(image.shape, sp)
        png = encode_png(render_slice(image, layers, window, size, heat_max))
        out.planes["image"], out.start["image"], out.n_slices["image"] = [(0, png_data_uri(png))
                                                                          ], 0, 1
        return out
    ornt = np.array([[i, 1] for i in range(3)]) if orientation is None else np.asarray(
        orientation, dtype=int)
    if sorted(ornt[:, 0].tolist()) != [0, 1, 2] or not np.isin(ornt[:, 1], (-1, 1)).all():
        raise ValueError(f"orientation must map the 3 axes to R, A, S once each, got "
                         f"{ornt.tolist()}")
    for plane, ras_axis in PLANES.items():
        limit = max_slices if plane == "axial" else max_slices_other
        if limit <= 0:
            continue
        axis = int(np.flatnonzero(ornt[:, 0] == ras_axis)[0])  # the file axis cut
        # the two in-plane file axes, ordered by their RAS axis: (columns, rows) on screen
        col_ax, row_ax = sorted((i for i in range(3) if i != axis), key=lambda i: ornt[i, 0])
        size = panel_size([image.shape[row_ax], image.shape[col_ax]], [sp[row_ax], sp[col_ax]])
        best = pick_slice(focus, axis)
        idx = slice_positions(image.shape[axis], limit)
        cut = [np.take(a, idx, axis=axis) for a in [image, *layers] if a is not None]
        entries = []
        for j, k in enumerate(idx):
            sl = [_screen(np.take(c, j, axis=axis), axis, col_ax, ornt) for c in cut]
            entries.append((k, png_data_uri(encode_png(render_slice(
                sl[0], sl[1:], window, size, heat_max)))))
        out.planes[plane] = entries
        out.start[plane] = int(np.argmin([abs(k - best) for k in idx]))
        out.n_slices[plane] = int(image.shape[axis])
    return out
