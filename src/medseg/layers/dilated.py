"""Dilated (atrous) convolution (spec A2).

A dilation rate ``r`` inserts ``r - 1`` holes between kernel taps, so a kernel of size ``k``
covers ``k_eff = k + (k - 1)(r - 1)`` input positions per axis (3x3 at ``r = 3`` covers 7x7)
with the parameter count of the plain ``k``-sized kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.conv import as_tuple, same_padding
from medseg.layers.factories import conv_nd


def effective_kernel_size(kernel_size: int, dilation: int) -> int:
    """Number of input positions one kernel axis spans: ``k + (k - 1)(r - 1)``.

    Args:
        kernel_size: Kernel size ``k >= 1`` along one axis.
        dilation: Dilation rate ``r >= 1`` along that axis.

    Raises:
        ValueError: ``kernel_size`` or ``dilation`` below 1.
    """
    if kernel_size < 1 or dilation < 1:
        raise ValueError(
            f"kernel_size and dilation must be >= 1, got kernel_size={kernel_size}, "
            f"dilation={dilation}"
        )
    return kernel_size + (kernel_size - 1) * (dilation - 1)


class DilatedConv(nn.Module):
    """A dilated convolution with "same" padding, written once for 1D/2D/3D.

    At stride 1 the output has the input's spatial size; the weight has the shape (and the
    parameter count ``prod(k) * C_in * C_out / groups``, plus ``C_out`` bias terms) of the plain
    undilated kernel.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels ``C_in``.
        out_channels: Output channels ``C_out``.
        kernel_size: Odd kernel size (int or one per axis).
        dilation: Dilation rate ``r`` (int or one per axis).
        stride: Stride (int or one per axis).
        groups: Convolution groups.
        bias: Add a learnable bias.

    Shape:
        Input ``(B, C_in, *spatial)``; output ``(B, C_out, *spatial')`` with
        ``spatial' = ceil(spatial / stride)`` (``= spatial`` at stride 1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        dilation: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        k = as_tuple(kernel_size, spatial_dims, "kernel_size")
        d = as_tuple(dilation, spatial_dims, "dilation")
        s = as_tuple(stride, spatial_dims, "stride")
        self.conv = conv_nd(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size=k,
            stride=s,
            padding=same_padding(k, d, spatial_dims),
            dilation=d,
            groups=groups,
            bias=bias,
        )

    @property
    def effective_kernel_size(self) -> tuple[int, ...]:
        """Per-axis span ``k + (k - 1)(r - 1)`` of the dilated kernel."""
        return tuple(
            effective_kernel_size(k, r)
            for k, r in zip(self.conv.kernel_size, self.conv.dilation, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the dilated convolution: ``(B, C_in, *spatial) -> (B, C_out, *spatial')``."""
        return self.conv(x)
