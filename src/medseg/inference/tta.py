"""Flip test-time augmentation (TTA).

The prediction is averaged over all ``2^k`` combinations of flips of ``k`` spatial axes; each
flipped input's prediction is flipped back before averaging, so the result is a proper average
of probabilities over the flip group:

    p(x) = 1/|G| sum_{g in G} g^{-1} softmax(f(g x))

For a flip-equivariant ``f`` this equals ``softmax(f(x))``.

:class:`FlipTTA` wraps a predictor so the averaging can run inside each window of
:func:`~medseg.inference.sliding_window.sliding_window_inference` (nnU-Net's "mirroring"), or
:func:`flip_tta` can wrap a whole sliding-window prediction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

ACTIVATIONS = ("softmax", "sigmoid", "none")


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of ``spatial_axes`` (the identity ``()`` first), ``2^k`` of them."""
    axes = tuple(spatial_axes)
    return [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]


def apply_activation(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """``"softmax"`` over channels (dim 1), ``"sigmoid"`` or ``"none"``, in float32 or wider."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def flip_tta(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    spatial_axes: Sequence[int] | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """Average the predictor's probabilities over flips of ``spatial_axes``.

    Args:
        predictor: Maps ``(B, C, *spatial)`` to logits ``(B, C_out, *spatial)``.
        image: ``(B, C, *spatial)``.
        spatial_axes: Spatial axes (0 = first spatial axis) whose flips are combined; all
            ``2^k`` subsets are used. ``None``: every spatial axis.
        activation: Applied to each prediction before averaging: ``"softmax"`` over channels
            (T3), ``"sigmoid"`` (binary / multi-label) or ``"none"`` (average raw outputs).

    Returns:
        ``(B, C_out, *spatial)`` averaged probabilities (float32, or float64 for float64
        predictions).
    """
    if image.ndim < 3:
        raise ValueError(f"image must be (B, C, *spatial), got shape {tuple(image.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    spatial_dims = image.ndim - 2
    axes = tuple(range(spatial_dims)) if spatial_axes is None else tuple(spatial_axes)
    if len(set(axes)) != len(axes) or any(not 0 <= a < spatial_dims for a in axes):
        raise ValueError(
            f"spatial_axes must be distinct axes in 0..{spatial_dims - 1} for a "
            f"{spatial_dims}D image, got {spatial_axes}"
        )
    combos = flip_combinations(axes)
    total: torch.Tensor | None = None
    for combo in combos:
        dims = [2 + a for a in combo]
        raw = predictor(image.flip(dims) if dims else image)
        p = apply_activation(raw, activation)
        if dims:
            p = p.flip(dims)
        if total is None:
            total = p.clone() if p is raw else p  # never write into the predictor's tensor
        else:
            total.add_(p)
    assert total is not None
    return total.div_(len(combos))


class FlipTTA:
    """A predictor wrapper: ``FlipTTA(model)(x) == flip_tta(model, x)``.

    Use it as the predictor of ``sliding_window_inference`` to average flips per window.

    Args:
        predictor: Maps ``(B, C, *spatial)`` to logits ``(B, C_out, *spatial)``.
        spatial_axes: Axes whose flips are combined (``None``: all).
        activation: ``"softmax"``, ``"sigmoid"`` or ``"none"``.
    """

    def __init__(
        self,
        predictor: Callable[[torch.Tensor], torch.Tensor],
        spatial_axes: Sequence[int] | None = None,
        activation: str = "softmax",
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.predictor = predictor
        self.spatial_axes = None if spatial_axes is None else tuple(spatial_axes)
        self.activation = activation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, C_out, *spatial)`` averaged probabilities."""
        return flip_tta(self.predictor, image, self.spatial_axes, self.activation)
