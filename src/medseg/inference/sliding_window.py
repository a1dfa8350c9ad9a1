"""Sliding-window inference for images and volumes larger than a training patch (E4).

The image is cut into overlapping windows of ``roi_size``; each window's prediction is weighted
by an importance map (a Gaussian centred on the window, so voxels near a window's border, which
saw less context, count less) and the weighted predictions are summed and divided by the summed
weights:

    out(v) = sum_w g(v - start_w) * pred_w(v) / sum_w g(v - start_w)

Window starts are evenly spaced per axis (nnU-Net): the first window starts at 0, the last one
ends at the border, and consecutive windows overlap by at least ``overlap * roi``.

Less work for the same answer: the importance map and the summed weights ``sum_w g`` depend only
on the window grid, so they are computed once per (shape, window, overlap, weighting, device)
and cached (:func:`cached_importance_map`, :func:`cached_weight_sum`); and with ``background``
a window whose every voxel is background (the rule is the caller's, see
:func:`medseg.inference.background.background_voxels`) is not run: its prediction is the
constant ``skip_value`` (for probabilities: 1 for the background class, 0 elsewhere), weighted
and stitched like any other window, so the result is exact wherever the network would have
predicted that constant in such a window. The accumulator is float32 (or float64) whatever the
precision the predictor runs in.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

MODES = ("gaussian", "constant")


def _roi_tuple(roi_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(roi_size, int):
        roi = (roi_size,) * spatial_dims
    else:
        roi = tuple(int(r) for r in roi_size)
    if len(roi) != spatial_dims or any(r < 1 for r in roi):
        raise ValueError(
            f"roi_size must be a positive int or {spatial_dims} positive ints (one per spatial "
            f"axis), got {roi_size}"
        )
    return roi


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis.

    Windows are evenly spaced with a step of at most ``roi * (1 - overlap)``; the first starts
    at 0 and the last ends at ``size``.

    Args:
        size: Axis length, ``>= roi``.
        roi: Window length.
        overlap: Requested fraction of overlap between neighbours, in ``[0, 1)``.

    Returns:
        Sorted start indices, e.g. ``window_starts(160, 64, 0.5) == [0, 32, 64, 96]``.
    """
    if size < roi:
        raise ValueError(f"axis length {size} is smaller than the window {roi}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size == roi:
        return [0]
    target_step = roi * (1.0 - overlap)
    n = math.ceil((size - roi) / target_step) + 1
    step = (size - roi) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def gaussian_importance_map(
    roi_size: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    min_weight: float = 1e-4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Separable Gaussian weight over a window, maximum 1.

    ``g(i) = prod_a exp(-(i_a - (n_a - 1) / 2)^2 / (2 sigma_a^2))`` with
    ``sigma_a = sigma_scale * n_a``, normalised to a maximum of 1 and floored at ``min_weight``
    so that a voxel covered only by window corners is never divided by a number near zero.
    The map is symmetric under flipping any axis.

    Args:
        roi_size: Window size ``(*roi)``.
        sigma_scale: Standard deviation as a fraction of the window size (per axis or one).
        min_weight: Floor on the weights (nnU-Net replaces its zeros likewise).
        device: Device of the returned map.
        dtype: Dtype of the returned map.

    Returns:
        ``(*roi)`` tensor with values in ``[min_weight, 1]``.
    """
    roi = tuple(int(r) for r in roi_size)
    if isinstance(sigma_scale, int | float):
        scales = (float(sigma_scale),) * len(roi)
    else:
        scales = tuple(float(s) for s in sigma_scale)
    if len(scales) != len(roi) or any(s <= 0 for s in scales):
        raise ValueError(f"sigma_scale must be > 0, one value or one per axis, got {sigma_scale}")
    g = torch.ones((), dtype=torch.float64, device=device)
    for n, s in zip(roi, scales, strict=True):
        i = torch.arange(n, dtype=torch.float64, device=device)
        g1 = torch.exp(-0.5 * ((i - (n - 1) / 2.0) / (s * n)) ** 2)
        g = g.unsqueeze(-1) * g1
    g = g / g.max()
    return g.clamp_min(min_weight).to(dtype)


@functools.lru_cache(maxsize=16)
def cached_importance_map(
    roi: tuple[int, ...],
    mode: str,
    sigma_scale: float | tuple[float, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The window weighting of one (window, mode, sigma, device, dtype), computed once.

    The returned tensor is shared between calls: never modify it in place.

    Returns:
        ``(*roi)`` tensor: :func:`gaussian_importance_map` or ones for ``"constant"``.
    """
    if mode == "gaussian":
        return gaussian_importance_map(roi, sigma_scale, device=device, dtype=dtype)
    return torch.ones(roi, device=device, dtype=dtype)


@functools.lru_cache(maxsize=2)  # a full-size buffer each: keep few
def cached_weight_sum(
    padded: tuple[int, ...],
    roi: tuple[int, ...],
    overlap: float,
    mode: str,
    sigma_scale: float | tuple[float, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``sum_w g(v - start_w)`` over the windows of a ``padded`` image, computed once per grid.

    The returned tensor is shared between calls: never modify it in place.

    Returns:
        ``(*padded)`` tensor of summed window weights (every entry ``>= min_weight``).
    """
    importance = cached_importance_map(roi, mode, sigma_scale, device, dtype)
    weight = torch.zeros(padded, dtype=dtype, device=device)
    starts = [window_starts(n, r, overlap) for n, r in zip(padded, roi, strict=True)]
    for pos in itertools.product(*starts):
        weight[tuple(slice(s, s + r) for s, r in zip(pos, roi, strict=True))].add_(importance)
    return weight


def _hashable_sigma(sigma_scale: float | Sequence[float]) -> float | tuple[float, ...]:
    if isinstance(sigma_scale, int | float):
        return float(sigma_scale)
    return tuple(float(v) for v in sigma_scale)


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    roi_size: int | Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    pad_value: float = 0.0,
    progress: bool = False,
    background: torch.Tensor | None = None,
    skip_value: torch.Tensor | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Predict a whole image by stitching window predictions.

    Args:
        image: ``(B, C, *spatial)``; it may live on the CPU while windows run on a GPU.
        predictor: Maps a window batch ``(n, C, *roi)`` to ``(n, C_out, *roi)`` (logits or
            probabilities; they are averaged as they come). Called with up to
            ``sw_batch_size`` windows at once, drawn from any positions and batch items.
        roi_size: Window size, an int or one per spatial axis.
        overlap: Fraction of overlap between neighbouring windows, in ``[0, 1)``.
        sw_batch_size: Windows per predictor call.
        mode: ``"gaussian"`` (importance map of :func:`gaussian_importance_map`) or
            ``"constant"`` (plain average).
        sigma_scale: Gaussian standard deviation as a fraction of ``roi_size``.
        device: Where the windows are predicted (default: ``image.device``).
        output_device: Where the full-size accumulator lives (default: ``image.device``); keep
            it on the CPU for large volumes.
        pad_value: Value used to pad an image smaller than the window (the padding is cropped
            off the result).
        progress: Print a window counter to stderr.
        background: Optional ``(B, *spatial)`` boolean mask of background voxels; a window
            (of one batch item) lying entirely in background is not predicted, its output is
            ``skip_value``. Padding added for images smaller than the window counts as
            background.
        skip_value: ``(C_out,)`` output of a skipped window (required with ``background``),
            e.g. ``[1, 0, ..., 0]`` for softmax probabilities.
        stats: If given, receives ``{"windows": total, "skipped": skipped}`` (window-batch-item
            pairs).

    Returns:
        ``(B, C_out, *spatial)`` float tensor (float32, or float64 when the predictor returns
        float64) on ``output_device``.

    Raises:
        ValueError: bad ``roi_size``, ``overlap``, ``mode`` or ``sw_batch_size``, a predictor
            output whose batch or spatial size differs from its input, or a ``background``
            mask of the wrong shape or without ``skip_value``.
    """
    if image.ndim < 3:
        raise ValueError(f"image must be (B, C, *spatial), got shape {tuple(image.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    spatial_dims = image.ndim - 2
    roi = _roi_tuple(roi_size, spatial_dims)
    device = image.device if device is None else torch.device(device)
    output_device = image.device if output_device is None else torch.device(output_device)
    batch = image.shape[0]
    if background is not None:
        if tuple(background.shape) != (batch, *image.shape[2:]):
            raise ValueError(f"background must be (B, *spatial) = {(batch, *image.shape[2:])}, "
                             f"got {tuple(background.shape)}")
        if skip_value is None or skip_value.ndim != 1:
            raise ValueError("skip_value (C_out,) is required with background")
        background = background.to(device="cpu", dtype=torch.bool)

    # Pad axes shorter than the window (symmetrically) so that every window has size roi.
    spatial = tuple(image.shape[2:])
    before = [max(r - s, 0) // 2 for s, r in zip(spatial, roi, strict=True)]
    after = [max(r - s, 0) - b for s, r, b in zip(spatial, roi, before, strict=True)]
    if any(before) or any(after):
        pad: list[int] = []
        for b, a in zip(reversed(before), reversed(after), strict=True):
            pad += [b, a]
        image = F.pad(image, pad, value=pad_value)
        if background is not None:
            background = F.pad(background[:, None].float(), pad, value=1.0)[:, 0].bool()
    padded = tuple(image.shape[2:])

    starts = [window_starts(n, r, overlap) for n, r in zip(padded, roi, strict=True)]
    windows = [
        tuple(slice(s, s + r) for s, r in zip(pos, roi, strict=True))
        for pos in itertools.product(*starts)
    ]
    jobs = [(b, w) for w in windows for b in range(batch)]
    skipped: list[tuple[int, tuple[slice, ...]]] = []
    if background is not None:
        empty = [bool(background[(b, *w)].all()) for b, w in jobs]
        skipped = [j for j, e in zip(jobs, empty, strict=True) if e]
        if stats is not None:
            stats.update(windows=len(jobs), skipped=len(skipped))
        jobs = [j for j, e in zip(jobs, empty, strict=True) if not e]
    elif stats is not None:
        stats.update(windows=len(jobs), skipped=0)
    sigma = _hashable_sigma(sigma_scale)

    acc: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    importance: torch.Tensor | None = None

    def buffers(c_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor]:
        imp = cached_importance_map(roi, mode, sigma, device, dtype)
        wsum = cached_weight_sum(padded, roi, overlap, mode, sigma, output_device, dtype)
        return torch.zeros((batch, c_out, *padded), dtype=dtype, device=output_device), wsum, imp

    if skipped:
        assert skip_value is not None
        acc, weight, importance = buffers(
            skip_value.numel(), torch.promote_types(skip_value.dtype, torch.float32))
        imp_out = importance.to(output_device)
        fill = skip_value.to(device=output_device, dtype=acc.dtype).reshape(
            -1, *(1,) * spatial_dims) * imp_out
        for b, w in skipped:
            acc[(b, slice(None), *w)].add_(fill)
    n_jobs = len(jobs)
    for first in range(0, n_jobs, sw_batch_size):
        chunk = jobs[first:first + sw_batch_size]
        x = torch.stack([image[(b, slice(None), *w)] for b, w in chunk]).to(device)
        pred = predictor(x)
        if (
            not isinstance(pred, torch.Tensor)
            or pred.ndim != image.ndim
            or pred.shape[0] != len(chunk)
            or tuple(pred.shape[2:]) != roi
        ):
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(
                f"predictor must map (n, C, *roi) = {tuple(x.shape)} to (n, C_out, *roi); got "
                f"{got}"
            )
        if acc is None:
            acc, weight, importance = buffers(
                pred.shape[1], torch.promote_types(pred.dtype, torch.float32))
        elif pred.shape[1] != acc.shape[1]:
            raise ValueError(f"predictor returned {pred.shape[1]} channels but skip_value has "
                             f"{acc.shape[1]}")
        assert importance is not None
        weighted = (pred.to(acc.dtype) * importance).to(output_device)
        for i, (b, w) in enumerate(chunk):
            acc[(b, slice(None), *w)].add_(weighted[i])
        if progress:
            done = min(first + sw_batch_size, n_jobs)
            print(f"\rsliding window: {done}/{n_jobs} windows", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    assert acc is not None and weight is not None  # at least one window always exists
    acc.div_(weight.to(acc.dtype))
    if any(before) or any(after):
        crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
        acc = acc[(slice(None), slice(None), *crop)].contiguous()
    return acc
