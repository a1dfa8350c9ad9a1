"""Segmentation losses as pure functions (L1, L5, L6) with observation masks (T5).

Every function states whether it takes **logits** or **probabilities**. The observation mask
``M`` (``1`` where a label exists, ``0`` where it is missing) is applied *after* the activation,
as a weight on the per-pixel terms, and every average runs over observed pixels only. Logits are
never multiplied by the mask (multiplying logits by 0 turns a missing label into a confident
"uniform" prediction that still receives gradient).

Label values at unobserved pixels may be anything (an ignore label such as 255 outside
``[0, C)`` included): they are replaced by a valid class before any indexing and their terms get
weight 0. Observed pixels must carry labels in ``[0, C)``; anything else raises ``ValueError``.

Shapes:
    * logits / probabilities: ``(B, C, *spatial)``
    * label maps: ``(B, *spatial)`` or ``(B, 1, *spatial)``, integer
    * masks: ``(B, *spatial)`` or ``(B, 1, *spatial)``, bool or float in ``[0, 1]``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_logits(x: torch.Tensor, name: str) -> None:
    """Refuse anything but a floating ``(B, C, *spatial)`` prediction, naming the argument.

    Raises:
        ValueError: fewer than 3 axes (with the fix: ``x[None]`` or ``x[:, None]``) or an
            integer tensor.
    """
    if x.ndim < 3:
        raise ValueError(
            f"{name} must be (B, C, *spatial) with at least one spatial axis, got shape "
            f"{tuple(x.shape)}; add a batch axis with x[None] or a class axis with x[:, None]"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def as_label_map(target: torch.Tensor, spatial_shape: Sequence[int], batch: int) -> torch.Tensor:
    """Bring a label map to ``(B, *spatial)`` int64.

    Args:
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        spatial_shape: The spatial shape the labels must have.
        batch: The batch size the labels must have.

    Returns:
        ``(B, *spatial)`` int64 view or copy of ``target``.
    """
    want = (batch, *spatial_shape)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"target must be an integer label map, got dtype {target.dtype}; "
            "convert with target.long() (one-hot targets go to soft_dice_loss)"
        )
    if target.ndim == len(want) + 1 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != want:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match the prediction: expected "
            f"{want} or {(batch, 1, *spatial_shape)}"
        )
    return target.long()


def as_mask(
    mask: torch.Tensor | None,
    spatial_shape: Sequence[int],
    batch: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Bring an observation mask to ``(B, *spatial)`` floating point (``None`` stays ``None``).

    Args:
        mask: ``(B, *spatial)`` or ``(B, 1, *spatial)``, bool or float in ``[0, 1]``.
        spatial_shape: The spatial shape the mask must have.
        batch: The batch size the mask must have.
        dtype: Floating dtype of the result (that of the prediction).

    Returns:
        ``(B, *spatial)`` mask of ``dtype``, or ``None``.
    """
    if mask is None:
        return None
    want = (batch, *spatial_shape)
    if mask.ndim == len(want) + 1 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != want:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the prediction: expected {want} "
            f"or {(batch, 1, *spatial_shape)}"
        )
    return mask.to(dtype)


def _safe_labels(
    target: torch.Tensor, observed: torch.Tensor | None, num_classes: int
) -> torch.Tensor:
    """Labels with unobserved pixels set to class 0, after checking the observed ones."""
    if observed is not None:
        target = torch.where(observed > 0, target, torch.zeros_like(target))
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        values = torch.unique(target[bad])[:8].tolist()
        raise ValueError(
            f"observed labels must lie in [0, {num_classes}), found {values}; pass a mask "
            "(e.g. target != ignore_label) so that ignore labels count as unobserved"
        )
    return target


def _one_hot(
    target: torch.Tensor, num_classes: int, m: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """One-hot of a ``(B, *spatial)`` label map, zero where the float mask ``m`` is 0."""
    safe = _safe_labels(target, m, num_classes)
    oh = F.one_hot(safe, num_classes).movedim(-1, 1).to(dtype)
    if m is not None:
        oh = oh * m.unsqueeze(1)
    return oh


def one_hot(
    target: torch.Tensor,
    num_classes: int,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """One-hot encode a label map; unobserved pixels become all-zero vectors.

    Safe when ``target`` holds an ignore value (e.g. 255, or -1) at unobserved pixels.

    Args:
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        num_classes: Number of classes ``C``.
        mask: Optional ``(B, *spatial)`` or ``(B, 1, *spatial)`` observation mask; where it is
            0 (or False) the output is 0 for every class.
        dtype: Floating dtype of the result.
        spatial_dims: Number of spatial axes. By default a 4D or 5D ``target`` whose axis 1 has
            size 1 is read as ``(B, 1, *spatial)``; give ``spatial_dims`` when a spatial axis of
            size 1 makes that ambiguous.

    Returns:
        ``(B, C, *spatial)`` one-hot tensor of ``dtype``.
    """
    if spatial_dims is None:
        has_channel = target.ndim >= 4 and target.shape[1] == 1
        spatial_dims = target.ndim - 2 if has_channel else target.ndim - 1
    spatial = tuple(target.shape[target.ndim - spatial_dims:])
    batch = target.shape[0]
    target = as_label_map(target, spatial, batch)
    return _one_hot(target, num_classes, as_mask(mask, spatial, batch, dtype), dtype)


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy ``l_i = -log softmax(z_i)[y_i]`` over observed pixels (L1, T5). Takes logits.

    Its gradient w.r.t. the logits of pixel ``i`` is ``w_i (softmax(z_i) - onehot(y_i))`` with
    ``w_i = M_i * class_weights[y_i]`` (divided by ``sum_i w_i`` for ``"mean"``).

    Args:
        logits: ``(B, C, *spatial)`` unnormalised scores.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels; values at unobserved
            pixels are ignored (they may be outside ``[0, C)``).
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask (bool or float).
        class_weights: Optional ``(C,)`` per-class weights.
        reduction: ``"mean"``: ``sum_i w_i l_i / sum_i w_i`` over observed pixels (the same as
            ``F.cross_entropy(weight=...)``); a batch with no observed pixel gives 0, still
            connected to the graph with zero gradient. ``"sum"``: ``sum_i w_i l_i``.
            ``"none"``: the ``(B, *spatial)`` map ``w_i l_i`` (0 at unobserved pixels).

    Returns:
        A scalar, or ``(B, *spatial)`` for ``reduction="none"``.
    """
    check_logits(logits, "logits")
    _check_reduction(reduction)
    batch, num_classes, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    target = as_label_map(target, spatial, batch)
    m = as_mask(mask, spatial, batch, logits.dtype)
    safe = _safe_labels(target, m, num_classes)

    nll = -F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    weight = m
    if class_weights is not None:
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}"
            )
        w_cls = class_weights.to(device=logits.device, dtype=logits.dtype)[safe]
        weight = w_cls if weight is None else weight * w_cls

    if weight is None:
        if reduction == "none":
            return nll
        return nll.sum() if reduction == "sum" else nll.mean()
    terms = weight * nll
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    denom = weight.sum()
    # No observed pixel: terms are all 0, divide by 1 to return 0 with zero (finite) gradient.
    return terms.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


def _dice_sums(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    mask: torch.Tensor | None,
    include_background: bool,
    pool_batch: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum p y, sum p, sum y)`` per (sample,) class over observed voxels (T5).

    The mask multiplies the probabilities and the one-hot target per voxel (after the
    activation); class 0 is dropped when ``include_background`` is false; ``pool_batch`` sums
    over the batch axis too. Shapes ``(B, C')``, or ``(C',)`` when pooled.
    """
    check_logits(probs, "probs")
    if tuple(target_onehot.shape) != tuple(probs.shape):
        raise ValueError(
            f"target_onehot shape {tuple(target_onehot.shape)} must equal probs shape "
            f"{tuple(probs.shape)}; build it with medseg.losses.one_hot(labels, C, mask)"
        )
    batch, spatial = probs.shape[0], tuple(probs.shape[2:])
    y = target_onehot.to(probs.dtype)
    p = probs
    m = as_mask(mask, spatial, batch, probs.dtype)
    if m is not None:
        p = p * m.unsqueeze(1)
        y = y * m.unsqueeze(1)
    if not include_background:
        if probs.shape[1] < 2:
            raise ValueError("include_background=False needs at least 2 channels")
        p, y = p[:, 1:], y[:, 1:]
    dims = tuple(range(2, p.ndim))
    if pool_batch:
        dims = (0, *dims)
    return (p * y).sum(dim=dims), p.sum(dim=dims), y.sum(dim=dims)


def soft_dice_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1.0,
    batch_dice: bool = False,
    include_background: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft Dice loss with smoothing (L5). Takes probabilities.

    Per class ``k`` (and per sample, or pooled over the batch when ``batch_dice``)::

        l_k = 1 - (2 sum_i p_ik y_ik + eps) / (sum_i p_ik + sum_i y_ik + eps)

    with ``p`` and ``y`` multiplied by the observation mask pixel-wise first, so unobserved
    pixels contribute to no sum. Both empty (``sum p = sum y = 0``) gives ``l = 0`` with the
    finite gradient ``1 / eps``.

    ``eps = 1`` by default (the nnU-Net / V-Net smoothing): it is negligible for structures of
    hundreds of voxels, keeps the denominator away from 0 for empty ones, and softens the loss
    on structures of a few voxels. Use a small value (e.g. ``1e-5``) with ``batch_dice`` when
    tiny structures must count fully.

    Args:
        probs: ``(B, C, *spatial)`` probabilities (softmax or sigmoid outputs).
        target_onehot: ``(B, C, *spatial)`` one-hot (or soft) targets in ``[0, 1]``.
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask.
        eps: Smoothing constant, ``> 0``.
        batch_dice: Pool the sums over the batch (one Dice per class) instead of per sample.
        include_background: Keep channel 0; ``False`` drops it (needs ``C >= 2``).
        reduction: ``"mean"`` over classes (and samples), ``"sum"``, or ``"none"`` giving
            ``(B, C')`` (``(C',)`` with ``batch_dice``).

    Returns:
        A scalar, or the per-(sample,) class losses for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps empty classes finite), got {eps}")
    intersect, s_p, s_y = _dice_sums(probs, target_onehot, mask, include_background, batch_dice)
    loss = 1.0 - (2.0 * intersect + eps) / (s_p + s_y + eps)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def soft_dice_grad(p: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Closed-form gradient of the one-class soft Dice loss w.r.t. ``p`` (quotient rule, L5).

    With ``I = sum p y``, ``S_p = sum p``, ``S_y = sum y`` and ``D = S_p + S_y + eps``::

        d l / d p_k = -(2 y_k D - (2 I + eps)) / D^2

    Args:
        p: Probabilities of one class, any shape (all elements are summed).
        y: Target of the same shape.
        eps: Smoothing constant, ``> 0``.

    Returns:
        Tensor of ``p``'s shape.
    """
    intersect = (p * y).sum()
    denom = p.sum() + y.sum() + eps
    return -(2.0 * y * denom - (2.0 * intersect + eps)) / denom**2


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    w_dice: float = 1.0,
    w_ce: float = 1.0,
    class_weights: torch.Tensor | None = None,
    eps: float = 1.0,
    batch_dice: bool = False,
    include_background: bool = False,
) -> torch.Tensor:
    """Compound loss ``w_dice * soft Dice + w_ce * cross-entropy`` (L6). Takes logits.

    Dice runs on ``softmax(logits)`` against the one-hot target, CE on the logits; both are
    masked by ``M`` (unobserved pixels and any ignore label there drop out of both terms).
    ``include_background=False`` by default (as nnU-Net): CE already covers the background, and
    a background Dice near 1 only dilutes the foreground classes.

    Args:
        logits: ``(B, C, *spatial)``, ``C >= 2``.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask.
        w_dice: Weight of the Dice term.
        w_ce: Weight of the CE term.
        class_weights: Optional ``(C,)`` CE class weights.
        eps: Dice smoothing.
        batch_dice: Pool Dice sums over the batch.
        include_background: Include class 0 in the Dice term.

    Returns:
        Scalar loss.
    """
    check_logits(logits, "logits")
    if w_dice < 0 or w_ce < 0 or w_dice + w_ce == 0:
        raise ValueError(f"w_dice and w_ce must be >= 0 and not both 0, got {w_dice}, {w_ce}")
    batch, num_classes, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    target = as_label_map(target, spatial, batch)
    loss = logits.new_zeros(())
    if w_dice != 0:
        probs = torch.softmax(logits, dim=1)
        m = as_mask(mask, spatial, batch, logits.dtype)
        oh = _one_hot(target, num_classes, m, logits.dtype)
        loss = loss + w_dice * soft_dice_loss(
            probs, oh, mask, eps=eps, batch_dice=batch_dice,
            include_background=include_background,
        )
    if w_ce != 0:
        loss = loss + w_ce * masked_cross_entropy(logits, target, mask, class_weights)
    return loss


def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resampling of a label map or mask to a spatial ``size``.

    Index ``j`` of the output along an axis of input length ``n`` and output length ``m`` takes
    input index ``floor(j * n / m)`` (``F.interpolate(mode="nearest")``), but works on integer
    and bool tensors directly, so large label values and ignore labels stay exact.

    Args:
        labels: ``(B, *spatial)`` or ``(B, 1, *spatial)`` tensor of any dtype.
        size: Output spatial size, one entry per spatial axis.

    Returns:
        The same layout as ``labels`` with spatial size ``size``.
    """
    keep_channel = labels.ndim == len(size) + 2
    x = labels[:, 0] if keep_channel else labels
    if x.ndim != len(size) + 1:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not have {len(size)} spatial axes "
            f"to resample to {tuple(size)}"
        )
    for axis, m in enumerate(size, start=1):
        n = x.shape[axis]
        if n == m:
            continue
        idx = torch.div(torch.arange(m, device=x.device) * n, m, rounding_mode="floor")
        x = x.index_select(axis, idx)
    return x.unsqueeze(1) if keep_channel else x


def deep_supervision_weights(levels: int) -> list[float]:
    """Default deep-supervision weights ``1, 1/2, 1/4, ...`` normalised to sum 1.

    nnU-Net also sets the coarsest weight to 0; pass explicit weights for that.

    Args:
        levels: Number of outputs.

    Returns:
        List of ``levels`` weights, full resolution first.
    """
    w = [0.5**i for i in range(levels)]
    total = sum(w)
    return [v / total for v in w]


def deep_supervision_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Weighted sum of a loss over deep-supervision outputs (L6). Takes what ``loss_fn`` takes.

    ``target`` and ``mask`` are resampled to each output's spatial size with nearest-neighbour
    indexing (:func:`downsample_labels`); levels with weight 0 are skipped (not computed).

    Args:
        loss_fn: ``loss_fn(logits, target, mask) -> scalar``, e.g. :func:`dice_ce_loss`.
        outputs: Logits ``(B, C, *spatial_i)``, full resolution first.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` labels at full resolution.
        mask: Optional observation mask at full resolution.
        weights: One weight per output, ``>= 0`` with a positive sum; they are normalised to sum
            1. Default :func:`deep_supervision_weights`.

    Returns:
        Scalar loss ``sum_i w_i loss_fn(outputs[i], target_i, mask_i)``.
    """
    if len(outputs) == 0:
        raise ValueError("deep_supervision_loss needs at least one output")
    w = list(deep_supervision_weights(len(outputs)) if weights is None else weights)
    if len(w) != len(outputs):
        raise ValueError(f"got {len(w)} weights for {len(outputs)} outputs")
    if any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w}")
    total_w = float(sum(w))
    total: torch.Tensor | None = None
    for out, wi in zip(outputs, w, strict=True):
        if wi == 0:
            continue
        size = tuple(out.shape[2:])
        t_i = downsample_labels(target, size)
        m_i = None if mask is None else downsample_labels(mask, size)
        term = (wi / total_w) * loss_fn(out, t_i, m_i)
        total = term if total is None else total + term
    assert total is not None
    return total


# ----------------------------------------------------------------- BCE, focal, generalised Dice


def _check_scores(x: torch.Tensor, name: str) -> None:
    if x.ndim < 2:
        raise ValueError(
            f"{name} must be (B, C) or (B, C, *spatial), got shape {tuple(x.shape)}; add a batch "
            "axis with x[None] or a class axis with x[:, None]"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _elementwise_mask(
    mask: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor | None:
    """Broadcast a mask to the element shape ``(B, C, *spatial)`` of a multi-label output.

    Accepted: the full shape, ``(B, *spatial)`` (one value per pixel or, for ``(B, C)`` outputs,
    per image, shared by all channels), or anything broadcastable to ``shape``.
    """
    if mask is None:
        return None
    shape = tuple(shape)
    if mask.ndim == len(shape) - 1 and tuple(mask.shape) == (shape[0], *shape[2:]):
        mask = mask.unsqueeze(1)
    try:
        return torch.broadcast_to(mask, shape).to(dtype)
    except RuntimeError:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} cannot be broadcast to the prediction "
            f"{shape}; give {shape}, {(shape[0], *shape[2:])} or {(shape[0], 1, *shape[2:])}"
        ) from None


def _per_class(
    values: torch.Tensor | Sequence[float] | None,
    name: str,
    num_classes: int,
    ndim: int,
    ref: torch.Tensor,
) -> torch.Tensor | None:
    """A ``(C,)`` per-class vector shaped ``(C, 1, ..., 1)`` to broadcast over ``(B, C, *sp)``."""
    if values is None:
        return None
    v = torch.as_tensor(values, device=ref.device, dtype=ref.dtype)
    if v.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},), got {tuple(v.shape)}")
    return v.view(num_classes, *([1] * (ndim - 2)))


def _observed_binary_target(
    target: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target with missing entries (-1 or unobserved) set to 0, and the float observation mask.

    The observation mask is ``mask * (target != -1)``; ``None`` when everything is observed.
    """
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape {tuple(logits.shape)} "
            "(one {0, 1} entry per class; -1 marks a missing label)"
        )
    y = target.to(logits.dtype)
    m = _elementwise_mask(mask, logits.shape, logits.dtype)
    missing = y == -1
    if bool(missing.any()):
        present = (~missing).to(logits.dtype)
        m = present if m is None else m * present
    if m is not None:
        y = torch.where(m > 0, y, torch.zeros_like(y))
    bad = (y < 0) | (y > 1)
    if bool(bad.any()):
        values = torch.unique(y[bad])[:8].tolist()
        raise ValueError(
            f"observed binary targets must lie in [0, 1], found {values}; use -1 (or the mask) "
            "for missing labels"
        )
    return y, m


def _masked_reduce(
    terms: torch.Tensor, m: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    """Reduce per-element terms; ``"mean"`` divides by the observed count ``sum(m)``."""
    if m is not None:
        terms = terms * m
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    if m is None:
        return terms.mean()
    denom = m.sum()
    # Nothing observed: terms are all 0, divide by 1 to return 0 with zero (finite) gradient.
    return terms.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


def masked_bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos_weight: torch.Tensor | Sequence[float] | None = None,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy for binary and multi-label outputs (L2, T2, T5). Takes logits.

    Per element, with ``p = sigmoid(z)``, per-class ``pos_weight`` ``q_c`` and ``class_weights``
    ``w_c``::

        l = -w_c [q_c y ln p + (1 - y) ln(1 - p)]

    so with ``q = w = 1`` the gradient w.r.t. the logit is exactly ``p - y`` (``y_hat - y``).
    This is ``F.binary_cross_entropy_with_logits(weight=w, pos_weight=q)`` with the class
    vectors broadcast over the class axis (axis 1), plus missing data: an element is observed
    where ``mask > 0`` **and** ``target != -1`` (the multi-label "label missing" marker). The
    mask is applied after the sigmoid, as a weight on the element terms; missing elements get
    exactly zero gradient whatever their logit.

    Args:
        logits: ``(B, C)`` (multi-label classification) or ``(B, C, *spatial)``.
        target: Same shape, values in ``[0, 1]`` (``{0, 1}`` labels, soft labels allowed) or
            ``-1`` for a missing label.
        mask: Optional observation mask, bool or float in ``[0, 1]``: the full shape,
            ``(B, *spatial)`` (per pixel, or per image for ``(B, C)``), or broadcastable.
        pos_weight: Optional ``(C,)`` weights of the positive term.
        class_weights: Optional ``(C,)`` weights of the whole term.
        reduction: ``"mean"``: ``sum(M l) / sum(M)``, the mean over observed elements (the class
            weights are *not* in the denominator, as in torch); nothing observed gives 0 with
            zero, finite gradient. ``"sum"``: ``sum(M l)``. ``"none"``: ``M l`` of the input
            shape.

    Returns:
        A scalar, or a tensor of ``logits``' shape for ``reduction="none"``.
    """
    _check_scores(logits, "logits")
    _check_reduction(reduction)
    y, m = _observed_binary_target(target, logits, mask)
    num_classes = logits.shape[1]
    pw = _per_class(pos_weight, "pos_weight", num_classes, logits.ndim, logits)
    cw = _per_class(class_weights, "class_weights", num_classes, logits.ndim, logits)
    terms = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
    if cw is not None:
        terms = terms * cw
    return _masked_reduce(terms, m, reduction)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 2.0,
    alpha: torch.Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), softmax form (T6). Takes logits.

    Per pixel with true class ``t`` and ``p = softmax(z)``::

        l = -alpha_t (1 - p_t)^gamma ln p_t

    ``gamma = 0`` and no ``alpha`` is plain cross-entropy. ``(1 - p_t)`` is computed as
    ``-expm1(ln p_t)`` so confident pixels stay accurate. The observation mask multiplies the
    per-pixel terms; label values at unobserved pixels are ignored (as in
    :func:`masked_cross_entropy`).

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask.
        gamma: Focusing parameter ``>= 0``.
        alpha: Optional ``(C,)`` class weights ``alpha_c``.
        reduction: ``"mean"``: ``sum(M l) / sum(M)`` over observed pixels (``alpha`` is not in
            the denominator, as in the focal-loss paper; nothing observed gives 0 with zero,
            finite gradient), ``"sum"``, or ``"none"`` giving ``(B, *spatial)``.

    Returns:
        A scalar, or ``(B, *spatial)`` for ``reduction="none"``.
    """
    check_logits(logits, "logits")
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    batch, num_classes, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    target = as_label_map(target, spatial, batch)
    m = as_mask(mask, spatial, batch, logits.dtype)
    safe = _safe_labels(target, m, num_classes)
    log_pt = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    terms = -log_pt
    if gamma != 0:
        terms = terms * (-torch.expm1(log_pt)).clamp_min(0) ** gamma
    if alpha is not None:
        a = torch.as_tensor(alpha, device=logits.device, dtype=logits.dtype)
        if a.shape != (num_classes,):
            raise ValueError(f"alpha must have shape ({num_classes},), got {tuple(a.shape)}")
        terms = terms * a[safe]
    return _masked_reduce(terms, m, reduction)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 2.0,
    alpha: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary / multi-label focal loss, sigmoid form (Lin et al. 2017). Takes logits.

    Per element with ``p = sigmoid(z)``, ``p_t = p y + (1 - p)(1 - y)`` and
    ``alpha_t = alpha y + (1 - alpha)(1 - y)``::

        l = alpha_t (1 - p_t)^gamma BCE(z, y)

    (the torchvision ``sigmoid_focal_loss`` formula; ``alpha=None`` drops ``alpha_t``).
    ``gamma = 0`` and ``alpha=None`` is :func:`masked_bce_with_logits`. Missing data as there:
    an element is observed where ``mask > 0`` and ``target != -1``.

    Args:
        logits: ``(B, C)`` or ``(B, C, *spatial)``.
        target: Same shape, values in ``[0, 1]`` or ``-1`` for a missing label.
        mask: Optional observation mask (full shape, ``(B, *spatial)`` or broadcastable).
        gamma: Focusing parameter ``>= 0``.
        alpha: Optional weight in ``[0, 1]`` of the positive class.
        reduction: ``"mean"`` over observed elements, ``"sum"``, or ``"none"``.

    Returns:
        A scalar, or a tensor of ``logits``' shape for ``reduction="none"``.
    """
    _check_scores(logits, "logits")
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    y, m = _observed_binary_target(target, logits, mask)
    terms = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if gamma != 0:
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        terms = terms * (1 - p_t).clamp_min(0) ** gamma
    if alpha is not None:
        terms = terms * (alpha * y + (1 - alpha) * (1 - y))
    return _masked_reduce(terms, m, reduction)


def generalized_dice_weights(y_sums: torch.Tensor) -> torch.Tensor:
    """Sudre et al. (2017) class weights ``w_c = 1 / (sum_i y_ic)^2``, capped and normalised.

    A class absent from the reference (``sum y_c = 0``) would get an infinite weight; it gets
    the largest finite weight of the same row instead (the cap; as MONAI), and ``1`` when every
    class is absent. Each row is then normalised to sum 1, which leaves the loss unchanged
    (numerator and denominator scale together) but keeps ``eps`` relative to the volumes.

    Args:
        y_sums: ``(..., C)`` reference volumes per class (``>= 0``).

    Returns:
        ``(..., C)`` weights, each row summing to 1.
    """
    empty = y_sums <= 0
    w = 1.0 / torch.where(empty, torch.ones_like(y_sums), y_sums) ** 2
    finite_max = torch.where(empty, torch.zeros_like(w), w).amax(dim=-1, keepdim=True)
    cap = torch.where(finite_max > 0, finite_max, torch.ones_like(finite_max))
    w = torch.where(empty, cap.expand_as(w), w)
    return w / w.sum(dim=-1, keepdim=True)


def generalized_dice_loss(
    probs: torch.Tensor,
    target_onehot: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-5,
    batch_dice: bool = False,
    include_background: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Generalised (volume-weighted) Dice loss, Sudre et al. 2017 (L5, T6). Takes probabilities.

    Per sample (or pooled over the batch with ``batch_dice``), with the class weights
    ``w_c`` of :func:`generalized_dice_weights` (``1 / (sum_i y_ic)^2``, a cap for empty classes,
    normalised to sum 1)::

        l = 1 - (2 sum_c w_c sum_i p_ic y_ic + eps) / (sum_c w_c sum_i (p_ic + y_ic) + eps)

    ``p`` and ``y`` are multiplied by the observation mask first, so unobserved pixels enter no
    sum (the weights included). The weights depend on the target only and carry no gradient.
    Prediction and reference both empty gives 0.

    Args:
        probs: ``(B, C, *spatial)`` probabilities.
        target_onehot: ``(B, C, *spatial)`` one-hot (or soft) targets in ``[0, 1]``.
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask.
        eps: Smoothing constant ``> 0``.
        batch_dice: Pool the sums over the batch (one loss) instead of one loss per sample.
        include_background: Keep channel 0; ``False`` drops it (needs ``C >= 2``).
        reduction: ``"mean"`` over samples, ``"sum"``, or ``"none"`` giving ``(B,)`` (a
            0-dim tensor with ``batch_dice``).

    Returns:
        A scalar, or ``(B,)`` for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    intersect, s_p, s_y = _dice_sums(probs, target_onehot, mask, include_background, False)
    if batch_dice:
        intersect, s_p, s_y = intersect.sum(0), s_p.sum(0), s_y.sum(0)
    w = generalized_dice_weights(s_y.detach())
    num = 2.0 * (w * intersect).sum(-1) + eps
    den = (w * (s_p + s_y)).sum(-1) + eps
    loss = 1.0 - num / den
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
