"""Pointwise convolutions as matrix products: 1x1 convolutions and non-overlapping transposed
convolutions (kernel = stride, the U-Net's upsampling), for 1D, 2D and 3D.

Both are one matrix product per image, but the oneDNN convolution kernels that PyTorch calls for
them on a CPU are slow at the shapes a U-Net gives them: its 1x1 head (16 -> 2 channels at full
resolution) ran at about 2 GFLOP/s and its last transposed convolution (32 -> 16 channels, 2x2x2,
stride 2) at about 24 GFLOP/s in bf16 on the development CPU, against 200-500 GFLOP/s for its
3x3x3 convolutions (``benchmarks/RESULTS.md``, issue 11). Written as ``torch.matmul`` on the
``(B, C, N)`` view of the input they run 5-10x faster there (3D U-Net 16..256 training step in
bf16 8% faster, forward 6%) and give the same result up to the summation order (tested against
``F.conv*`` / ``F.conv_transpose*`` and with ``gradcheck`` in float64).

:class:`PointwiseConv` and :class:`PatchTransposeConv` subclass ``nn.Conv{1,2,3}d`` /
``nn.ConvTranspose{1,2,3}d`` (same parameters, same state-dict keys, ``isinstance`` unchanged)
and take the matrix-product path only where it is exact: kernel 1 (stride 1, no padding,
dilation 1, one group) or kernel = stride (no padding, no output padding, dilation 1, one
group), on a contiguous input, outside ONNX export (which keeps the standard operators);
otherwise they call the parent's ``forward``. On a channels-last input that is the right call:
oneDNN's channels-last kernels beat the product there (bf16, 2 threads: the 32 -> 16, 2x2x2
upsampling of a 4x32x32^3 input 16.7 ms vs 29 ms, the 16 -> 2 head at 64^3 1.7 ms vs 6.7 ms).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution as a matrix product.

    Args:
        x: ``(B, C_in, *spatial)``.
        weight: ``(C_out, C_in, 1, ...)``.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(B, C_out, *spatial)``, equal to ``F.conv{d}d(x, weight, bias)``.
    """
    b, c = x.shape[:2]
    c_out = weight.shape[0]
    y = torch.matmul(weight.reshape(c_out, c), x.reshape(b, c, -1))
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, c_out, 1)
    return y.view(b, c_out, *x.shape[2:])


def patch_transpose_conv(x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """A transposed convolution whose stride equals its kernel, as a matrix product.

    Every input voxel is mapped to its own ``k_1 x ... x k_d`` block of output voxels (the
    blocks do not overlap), so the layer is one ``(C_out * prod(k), C_in)`` matrix applied to
    every voxel, then the blocks are interleaved into the upsampled grid.

    Args:
        x: ``(B, C_in, *spatial)``.
        weight: ``(C_in, C_out, k_1, ..., k_d)``.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(B, C_out, spatial_1 * k_1, ..., spatial_d * k_d)``, equal to
        ``F.conv_transpose{d}d(x, weight, bias, stride=k)``.
    """
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    kernel = tuple(weight.shape[2:])
    d, c_out, block = len(spatial), weight.shape[1], math.prod(kernel)
    y = torch.matmul(weight.reshape(c, c_out * block).t(), x.reshape(b, c, -1))
    if bias is not None:
        y = (y.view(b, c_out, block, -1) + bias.to(y.dtype).view(1, c_out, 1, 1))
    y = y.reshape(b, c_out, *kernel, *spatial)
    order = [0, 1] + [i for a in range(d) for i in (2 + d + a, 2 + a)]  # (.., s_a, k_a, ..)
    return y.permute(order).reshape(b, c_out, *(s * k for s, k in zip(spatial, kernel,
                                                                        strict=True)))


def _plain(module: nn.modules.conv._ConvNd) -> bool:
    return (module.groups == 1 and all(v == 1 for v in module.dilation)
            and all(v == 0 for v in module.padding) and module.padding_mode == "zeros")


def _fast_ok(x: torch.Tensor) -> bool:
    return x.is_contiguous() and not torch.onnx.is_in_onnx_export()


class _PointwiseMixin:
    """``forward`` of a convolution: the matrix product where the layer is 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self._pointwise and _fast_ok(x):  # type: ignore[attr-defined]
            return pointwise_conv(x, self.weight, self.bias)  # type: ignore[attr-defined]
        return super().forward(x)  # type: ignore[misc]

    @property
    def _pointwise(self) -> bool:
        return (all(v == 1 for v in self.kernel_size)  # type: ignore[attr-defined]
                and all(v == 1 for v in self.stride) and _plain(self))  # type: ignore


class _PatchMixin:
    """``forward`` of a transposed convolution: the matrix product where kernel = stride."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None
                ) -> torch.Tensor:  # type: ignore[override]
        if output_size is None and self._patch and _fast_ok(x):
            return patch_transpose_conv(x, self.weight, self.bias)  # type: ignore[attr-defined]
        return super().forward(x, output_size)  # type: ignore[misc]

    @property
    def _patch(self) -> bool:
        return (tuple(self.kernel_size) == tuple(self.stride)  # type: ignore[attr-defined]
                and all(v == 0 for v in self.output_padding)  # type: ignore[attr-defined]
                and _plain(self))  # type: ignore[arg-type]


class PointwiseConv1d(_PointwiseMixin, nn.Conv1d):
    """``nn.Conv1d`` (any kernel) whose 1x1 case is a matrix product."""


class PointwiseConv2d(_PointwiseMixin, nn.Conv2d):
    """``nn.Conv2d`` (any kernel) whose 1x1 case is a matrix product."""


class PointwiseConv3d(_PointwiseMixin, nn.Conv3d):
    """``nn.Conv3d`` (any kernel) whose 1x1x1 case is a matrix product."""


class PatchTransposeConv1d(_PatchMixin, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose kernel = stride case is a matrix product."""


class PatchTransposeConv2d(_PatchMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose kernel = stride case is a matrix product."""


class PatchTransposeConv3d(_PatchMixin, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose kernel = stride case is a matrix product."""


#: Aliases so that ``PointwiseConv = POINTWISE[spatial_dims]``.
POINTWISE = {1: PointwiseConv1d, 2: PointwiseConv2d, 3: PointwiseConv3d}
PATCH_TRANSPOSE = {1: PatchTransposeConv1d, 2: PatchTransposeConv2d, 3: PatchTransposeConv3d}
