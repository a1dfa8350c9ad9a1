"""Receptive-field calculator for plain convolution / pooling stacks (spec A2).

Per axis, with ``k_eff = k + (k - 1)(r - 1)`` the dilated kernel span, the receptive field ``rf``
and the jump (distance in input pixels between adjacent units, the cumulative stride) follow the
standard recurrence, starting from ``rf_0 = 1`` and ``jump_0 = 1``::

    rf_l   = rf_{l-1} + (k_eff_l - 1) * jump_{l-1}
    jump_l = jump_{l-1} * s_l

:func:`empirical_receptive_field` measures the same quantity from gradients, so the two can be
checked against each other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from medseg.layers.conv import UpSample, as_tuple
from medseg.layers.dilated import effective_kernel_size

IntOrSeq = int | Sequence[int]


@dataclass(frozen=True)
class RFStep:
    """Receptive field after one layer.

    Attributes:
        name: Layer name (module path for :func:`module_receptive_field`, else its index).
        rf: Receptive-field size per spatial axis, in input pixels.
        jump: Cumulative stride per spatial axis (input pixels between adjacent output units).
    """

    name: str
    rf: tuple[int, ...]
    jump: tuple[int, ...]


def receptive_field(
    layers: Sequence[tuple[IntOrSeq, IntOrSeq, IntOrSeq]], spatial_dims: int = 2
) -> list[RFStep]:
    """Receptive field and jump after each layer of a plain stack.

    Args:
        layers: ``(kernel_size, stride, dilation)`` per layer, in forward order; each entry is an
            int (same on every axis) or one value per spatial axis.
        spatial_dims: Number of spatial axes.

    Returns:
        One :class:`RFStep` per layer (``name`` is the layer index as a string).

    Raises:
        ValueError: a non-positive kernel, stride or dilation, or a per-axis value of the wrong
            length.
    """
    rf = [1] * spatial_dims
    jump = [1] * spatial_dims
    steps: list[RFStep] = []
    for i, (kernel, stride, dilation) in enumerate(layers):
        k = as_tuple(kernel, spatial_dims, "kernel_size")
        s = as_tuple(stride, spatial_dims, "stride")
        d = as_tuple(dilation, spatial_dims, "dilation")
        for a in range(spatial_dims):
            rf[a] = rf[a] + (effective_kernel_size(k[a], d[a]) - 1) * jump[a]
            jump[a] = jump[a] * s[a]
        steps.append(RFStep(str(i), tuple(rf), tuple(jump)))
    return steps


_UNSUPPORTED = (
    nn.modules.conv._ConvTransposeNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
)


def _layer_geometry(module: nn.Module) -> tuple[IntOrSeq, IntOrSeq, IntOrSeq] | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        stride = module.stride if module.stride is not None else module.kernel_size
        return module.kernel_size, stride, module.dilation
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        stride = module.stride if module.stride else module.kernel_size
        return module.kernel_size, stride, 1
    return None


def module_receptive_field(module: nn.Module, spatial_dims: int) -> list[RFStep]:
    """Receptive field after each convolution / pooling layer of a plain stack.

    Layers are taken in registration order (``module.named_modules()``), which is the forward
    order for ``nn.Sequential`` / ``nn.ModuleList`` stacks and blocks built from them. Layers
    without spatial extent (normalisation, activation, dropout) leave the receptive field
    unchanged and are skipped. Networks with branches or skip connections need a per-path walk
    and are not handled here.

    Args:
        module: A plain feed-forward stack.
        spatial_dims: Number of spatial axes.

    Returns:
        One :class:`RFStep` per convolution / pooling layer, ``name`` being its module path.

    Raises:
        ValueError: the stack holds a transposed convolution, adaptive pooling or upsampling
            (their receptive field is not given by the stride recurrence).
    """
    names: list[str] = []
    geometry: list[tuple[IntOrSeq, IntOrSeq, IntOrSeq]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, _UNSUPPORTED):
            raise ValueError(
                f"layer {name!r} ({type(sub).__name__}) has no stride-recurrence receptive "
                "field; pass the encoder part of the network (convolutions and pooling only)"
            )
        g = _layer_geometry(sub)
        if g is not None:
            names.append(name)
            geometry.append(g)
    steps = receptive_field(geometry, spatial_dims)
    return [RFStep(n, s.rf, s.jump) for n, s in zip(names, steps, strict=True)]


@dataclass(frozen=True)
class EmpiricalRF:
    """Input positions that influence one output unit.

    Attributes:
        mask: Boolean ``(*spatial)`` mask of input positions with a non-zero gradient.
        extent: Bounding-box size of ``mask`` per axis (0 where the mask is empty).
        output_index: Spatial index of the output unit that was differentiated.
    """

    mask: torch.Tensor
    extent: tuple[int, ...]
    output_index: tuple[int, ...]


def empirical_receptive_field(module: nn.Module, input_shape: Sequence[int]) -> EmpiricalRF:
    """Measure the receptive field of the central output unit from input gradients.

    A float64 copy of ``module`` in eval mode gets positive constant weights (``1 / fan_in`` for
    tensors with more than one axis, ``1`` for other ``weight`` parameters, ``0`` for biases), so
    that no contribution cancels; the input is all ones. The gradient of output channel 0 at the
    central spatial index (``size // 2`` per axis) of batch item 0 is taken w.r.t. the input, and
    the positions where it is non-zero (summed over input channels) form the receptive field.
    ``module`` itself is not modified. Max pooling routes the gradient to a single position, so
    use average pooling when checking pooled stacks.

    Args:
        module: Network mapping ``(B, C, *spatial)`` to ``(B, C', *spatial')``.
        input_shape: Full input shape ``(B, C, *spatial)``; make it large enough that the
            receptive field of the central unit is not clipped by the border.

    Returns:
        An :class:`EmpiricalRF`.
    """
    net = copy.deepcopy(module).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                p.fill_(1.0 / (p[0].numel()))
            elif name.rsplit(".", 1)[-1] == "weight":
                p.fill_(1.0)
            else:
                p.zero_()
    x = torch.ones(tuple(input_shape), dtype=torch.float64, requires_grad=True)
    y = net(x)
    centre = tuple(n // 2 for n in y.shape[2:])
    y[(0, 0, *centre)].backward()
    mask = x.grad[0].abs().sum(0) > 0
    extent = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = mask.any(dim=other) if other else mask
        idx = torch.nonzero(hit).flatten()
        extent.append(int(idx.max() - idx.min() + 1) if idx.numel() else 0)
    return EmpiricalRF(mask, tuple(extent), centre)


# Exact input intervals of one output unit (per axis), for networks with skips and upsampling.
#
# The stride recurrence above gives the size of the field of a plain stack. Networks with skip
# connections and upsampling (U-Nets) need the field of one particular output unit, which can
# depend on its position (a transposed convolution with kernel = stride = 2 maps output units
# 2m and 2m + 1 onto the same input unit). The functions below walk a module backwards and turn
# a per-axis interval of output indices ``[lo, hi]`` into the interval of input indices it
# depends on. Borders are not clipped: the field is that of an infinitely large input.

Interval = tuple[tuple[int, int], ...]


def interval_hull(a: Interval | None, b: Interval | None) -> Interval | None:
    """Smallest per-axis interval containing both (``None`` is the empty set)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b, strict=True))


def _conv_back(iv: Interval, k: Sequence[int], s: Sequence[int], p: Sequence[int],
               d: Sequence[int]) -> Interval:
    return tuple(
        (lo * si - pi, hi * si - pi + (ki - 1) * di)
        for (lo, hi), ki, si, pi, di in zip(iv, k, s, p, d, strict=True)
    )


def _tconv_back(iv: Interval, k: Sequence[int], s: Sequence[int], p: Sequence[int],
                d: Sequence[int]) -> Interval:
    # Output o = i * s - p + t * d for input i and tap t in [0, k).
    return tuple(
        (-((-(lo + pi - (ki - 1) * di)) // si), (hi + pi) // si)
        for (lo, hi), ki, si, pi, di in zip(iv, k, s, p, d, strict=True)
    )


def _linear_up_back(iv: Interval, scale: Sequence[int]) -> Interval:
    # align_corners=False: output o reads inputs floor(src) and floor(src) + 1 with
    # src = (o + 0.5) / s - 0.5 (clamped at the border, which only narrows the field).
    out = []
    for (lo, hi), s in zip(iv, scale, strict=True):
        if s == 1:
            out.append((lo, hi))
            continue
        out.append((math.floor((lo + 0.5) / s - 0.5), math.floor((hi + 0.5) / s - 0.5) + 1))
    return tuple(out)


def backward_interval(module: nn.Module, interval: Interval) -> Interval:
    """Input interval that the output interval ``interval`` of ``module`` depends on.

    Handles convolutions (dilated, strided, transposed), max / average pooling,
    :class:`~medseg.layers.conv.UpSample`, residual blocks (any module with ``conv1``, ``conv2``
    and ``shortcut``: the hull of both paths), ``nn.Sequential`` / ``nn.ModuleList`` chains
    (children in order) and point-wise layers (normalisation, activation, dropout, identity),
    which keep the interval: normalisation is counted as point-wise, i.e. the field is that of
    batch norm in eval mode (instance / group norm statistics and training-mode batch norm
    couple every position, which no receptive-field convention counts).

    Args:
        module: A layer or block mapping ``(B, C, *spatial)`` to ``(B, C', *spatial')``.
        interval: ``(lo, hi)`` output indices per spatial axis, inclusive.

    Returns:
        ``(lo, hi)`` input indices per spatial axis, inclusive (not clipped to any border).

    Raises:
        ValueError: a module whose spatial footprint is not known (e.g. ASPP's global pooling,
            attention): such parts make the field global.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _tconv_back(interval, module.kernel_size, module.stride, module.padding,
                           module.dilation)
    if isinstance(module, nn.modules.conv._ConvNd):
        if isinstance(module.padding, str):
            raise ValueError(f"string padding {module.padding!r} is not supported")
        return _conv_back(interval, module.kernel_size, module.stride, module.padding,
                          module.dilation)
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        n = len(interval)
        k = as_tuple(module.kernel_size, n, "kernel_size")
        s = as_tuple(module.stride or module.kernel_size, n, "stride")
        p = tuple(module.padding for _ in range(n)) if isinstance(module.padding, int) \
            else tuple(module.padding)
        dil = getattr(module, "dilation", 1)
        d = as_tuple(dil, n, "dilation")
        return _conv_back(interval, k, s, p, d)
    if isinstance(module, UpSample):
        if module.mode == "transpose":
            return backward_interval(module.conv, interval)
        return backward_interval(module.conv, _linear_up_back(interval, module.scale))
    if all(hasattr(module, a) for a in ("conv1", "conv2", "shortcut")):
        main = backward_interval(module.conv1, backward_interval(module.conv2, interval))
        short = backward_interval(module.shortcut, interval)
        out = interval_hull(main, short)
        assert out is not None
        return out
    if isinstance(module, nn.Sequential | nn.ModuleList):
        for child in reversed(list(module)):
            interval = backward_interval(child, interval)
        return interval
    if not any(True for _ in module.children()) and not isinstance(
        module, nn.modules.pooling._AdaptiveAvgPoolNd | nn.modules.pooling._AdaptiveMaxPoolNd
    ):
        return interval  # point-wise: normalisation, activation, dropout, identity
    raise ValueError(
        f"{type(module).__name__} has no known local footprint (global pooling or attention "
        "make the receptive field global)"
    )
