"""Resampling of channel-first arrays to a new voxel spacing or shape, in torch.

Grid convention: the old and new grids cover the same field of view, their *outer edges*
coincide (``F.interpolate(..., align_corners=False)``), which is also how
:meth:`medseg.io.meta.ImageMeta.with_spacing` places the new voxel centres. Because the shape
must be an integer, the spacing actually reached is ``old_spacing * old_shape / new_shape``
(:func:`spacing_after_resample`), which can differ from the requested spacing by less than half a
voxel over the field of view.

Label maps: ``order="nearest"`` uses ``nearest-exact`` (the new voxel takes the value of the old
voxel whose cell holds its centre), so no new label value can ever appear and the ignore label
survives unchanged. ``resample_labels(..., method="onehot_linear")`` is the smoother alternative
(nnU-Net's choice): every label value is interpolated linearly as a one-hot channel and the arg-max
is taken; it also only returns values that were present. The preprocessing pipeline uses
``"nearest"`` by default (cheap, and exact on the common identity / integer-factor cases).

No anti-aliasing filter is applied before down-sampling (neither does nnU-Net); the reductions
used in practice are mild (typically < 2x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import InputError
from medseg.io.limits import ENV_MAX_IMAGE_BYTES, max_image_bytes

ArrayLike = np.ndarray | torch.Tensor

_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def max_grid_voxels(channels: int = 1) -> int:
    """The most voxels a resampled grid may have: the per-image size limit
    (:func:`medseg.io.limits.max_image_bytes`, ``MEDSEG_MAX_IMAGE_BYTES``) as float32 over
    ``channels`` channels."""
    return max_image_bytes() // (4 * max(int(channels), 1))


def shape_for_spacing(
    spatial_shape: Sequence[int],
    old_spacing: Sequence[float],
    new_spacing: Sequence[float],
    max_voxels: int | None = None,
) -> tuple[int, ...]:
    """The grid size that covers the same field of view at ``new_spacing``.

    ``round(old_shape * old_spacing / new_spacing)``, at least 1 per axis.

    Args:
        spatial_shape: Current grid size.
        old_spacing: Current voxel size (mm) per axis.
        new_spacing: Requested voxel size (mm) per axis.
        max_voxels: Largest grid allowed; ``None`` means :func:`max_grid_voxels` (one channel).

    Returns:
        The new grid size.

    Raises:
        ValueError: lengths differ, or a spacing is not a positive finite number.
        InputError: the new grid has more than ``max_voxels`` voxels (e.g. a 5000 mm spacing in a
            header resampled to 1 mm).

    Example:
        ``shape_for_spacing((100, 50), (1.0, 2.0), (2.0, 2.0)) == (50, 50)``.
    """
    if not (len(spatial_shape) == len(old_spacing) == len(new_spacing)):
        raise ValueError(
            f"shape {tuple(spatial_shape)}, old spacing {tuple(old_spacing)} and new spacing "
            f"{tuple(new_spacing)} must have one entry per spatial axis"
        )
    out = []
    for n, o, s in zip(spatial_shape, old_spacing, new_spacing, strict=True):
        o, s = float(o), float(s)
        if not (math.isfinite(o) and math.isfinite(s) and o > 0 and s > 0):
            raise ValueError(
                f"spacings must be positive finite numbers, got old {tuple(old_spacing)} new "
                f"{tuple(new_spacing)}"
            )
        ratio = int(n) * o / s
        out.append(min(max(1, int(round(ratio))), 2**63) if math.isfinite(ratio) else 2**63)
    limit = max_grid_voxels() if max_voxels is None else int(max_voxels)
    total = math.prod(out)
    if total > limit:
        shown = "a " + "x".join(str(v) for v in out) if max(out) < 2**63 else "an unbounded"
        raise InputError(
            f"resampling the {'x'.join(str(int(v)) for v in spatial_shape)} grid from spacing "
            f"{_mm(old_spacing)} mm to {_mm(new_spacing)} mm would make {shown} grid "
            f"({total:.3g} voxels), over the limit of {limit} voxels ({ENV_MAX_IMAGE_BYTES} as "
            "float32)",
            None,
            "check the voxel spacing in the image header, or choose a coarser target spacing",
        )
    return tuple(out)


def _mm(spacing: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in spacing) + ")"


def spacing_after_resample(
    spatial_shape: Sequence[int], old_spacing: Sequence[float], new_shape: Sequence[int]
) -> tuple[float, ...]:
    """The spacing actually reached when a grid is resampled to ``new_shape`` (same extent)."""
    return tuple(
        float(o) * n / m for n, o, m in zip(spatial_shape, old_spacing, new_shape, strict=True)
    )


def _to_tensor(array: ArrayLike) -> tuple[torch.Tensor, bool]:
    if isinstance(array, torch.Tensor):
        return array, False
    return torch.from_numpy(np.ascontiguousarray(array)), True


def _back(t: torch.Tensor, was_numpy: bool) -> ArrayLike:
    return t.numpy() if was_numpy else t


def resample_to_shape(
    array: ArrayLike, new_shape: Sequence[int], order: str = "linear"
) -> ArrayLike:
    """Resample a channel-first array to a new spatial shape over the same field of view.

    Args:
        array: ``(C, *spatial)`` numpy array or tensor (1 to 3 spatial axes). Integer input with
            ``order="linear"`` is computed in float32.
        new_shape: Target spatial shape.
        order: ``"linear"`` ((bi/tri)linear, ``align_corners=False``) for intensities and
            probabilities, or ``"nearest"`` (``nearest-exact``) for label maps.

    Returns:
        ``(C, *new_shape)`` of the same kind (numpy or torch) as ``array``; the dtype is kept for
        ``"nearest"`` and for floating input. When ``new_shape`` equals the current shape the
        input is returned as an exact copy (identity, no interpolation).
    """
    t, was_np = _to_tensor(array)
    new_shape = tuple(int(s) for s in new_shape)
    d = t.ndim - 1
    if d not in (1, 2, 3) or len(new_shape) != d:
        raise ValueError(
            f"expected (C, *spatial) with 1-3 spatial axes and a matching new shape, got array "
            f"{tuple(t.shape)} and new shape {new_shape}"
        )
    if tuple(t.shape[1:]) == new_shape:
        return _back(t.clone(), was_np)
    if order == "linear":
        dtype = t.dtype if t.is_floating_point() else torch.float32
        out = F.interpolate(
            t[None].to(dtype), size=new_shape, mode=_LINEAR_MODE[d], align_corners=False
        )[0]
    elif order == "nearest":
        # interpolate has no integer kernel: go through float64 (exact for |v| < 2**53)
        src = t if t.is_floating_point() else t.to(torch.float64)
        out = F.interpolate(src[None], size=new_shape, mode="nearest-exact")[0].to(t.dtype)
    else:
        raise ValueError(f"order must be 'linear' or 'nearest', got {order!r}")
    return _back(out.contiguous(), was_np)


def resample_to_spacing(
    array: ArrayLike,
    old_spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: str = "linear",
    new_shape: Sequence[int] | None = None,
) -> ArrayLike:
    """Resample a channel-first array from ``old_spacing`` to ``new_spacing`` (mm per axis).

    Args:
        array: ``(C, *spatial)`` numpy array or tensor.
        old_spacing: Current voxel size per spatial axis.
        new_spacing: Requested voxel size per spatial axis.
        order: ``"linear"`` or ``"nearest"`` (see :func:`resample_to_shape`).
        new_shape: Force this output shape (e.g. so a label map lands on exactly the grid of its
            image); by default :func:`shape_for_spacing`.

    Returns:
        ``(C, *new_shape)``; an exact copy when the shape does not change.
    """
    shape = tuple(array.shape[1:])
    target = (
        tuple(int(s) for s in new_shape)
        if new_shape is not None
        else shape_for_spacing(shape, old_spacing, new_spacing)
    )
    return resample_to_shape(array, target, order=order)


def resample_labels(
    labels: ArrayLike, new_shape: Sequence[int], method: str = "nearest"
) -> ArrayLike:
    """Resample an integer label map ``(*spatial)`` to ``new_shape``; no new values can appear.

    Args:
        labels: ``(*spatial)`` integer array or tensor.
        new_shape: Target spatial shape.
        method: ``"nearest"`` (``nearest-exact``) or ``"onehot_linear"`` (each value present is
            interpolated linearly as a one-hot channel, then arg-max; ties go to the smaller
            value). Memory of ``"onehot_linear"`` grows with the number of distinct values.

    Returns:
        ``(*new_shape)`` with the input's dtype, values a subset of the input's values.
    """
    t, was_np = _to_tensor(labels)
    if method == "nearest":
        out = resample_to_shape(t[None], new_shape, order="nearest")[0]
        return _back(out, was_np)
    if method != "onehot_linear":
        raise ValueError(f"method must be 'nearest' or 'onehot_linear', got {method!r}")
    if tuple(t.shape) == tuple(int(s) for s in new_shape):
        return _back(t.clone(), was_np)
    values = torch.unique(t)
    best = None
    best_score = None
    for v in values:
        score = resample_to_shape((t == v)[None].to(torch.float32), new_shape, order="linear")[0]
        if best is None:
            best = torch.full_like(score, int(v), dtype=t.dtype)
            best_score = score
        else:
            better = score > best_score
            best = torch.where(better, torch.as_tensor(int(v), dtype=t.dtype), best)
            best_score = torch.maximum(best_score, score)
    assert best is not None
    return _back(best.contiguous(), was_np)
