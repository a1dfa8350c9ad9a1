"""Convolution blocks written once for 1D, 2D and 3D (A1).

* :class:`ConvNormAct` — convolution -> normalisation -> activation (the unit of nnU-Net).
* :class:`ConvBlock` — ``num_convs`` of them in a row; the first may be strided (downsampling).
* :class:`ResidualBlock` — two convolutions with an identity (or 1x1 projection) shortcut.
* :class:`UpSample` — transposed convolution, or linear interpolation followed by a 1x1 conv.

Every block maps ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``. Strides and
kernel sizes are an int (same on every axis) or one value per spatial axis, so anisotropic
3D volumes (e.g. stride ``(1, 2, 2)``) are handled by the same code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.layers.factories import act_layer, conv_nd, conv_transpose_nd, norm_layer

IntOrSeq = int | Sequence[int]


def as_tuple(value: IntOrSeq, spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """Expand an int to ``spatial_dims`` copies, or check a sequence has that length.

    Raises:
        ValueError: ``value`` is a sequence of the wrong length or holds a non-positive entry.
    """
    if isinstance(value, int):
        out = (value,) * spatial_dims
    else:
        out = tuple(int(v) for v in value)
        if len(out) != spatial_dims:
            raise ValueError(
                f"{name} must be an int or {spatial_dims} values (one per spatial axis), "
                f"got {tuple(value)}"
            )
    if any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {out}")
    return out


def same_padding(kernel_size: IntOrSeq, dilation: IntOrSeq, spatial_dims: int) -> tuple[int, ...]:
    """Padding that keeps the spatial size at stride 1: ``dilation * (k - 1) / 2`` per axis.

    Raises:
        ValueError: an even kernel size (no symmetric "same" padding exists).
    """
    k = as_tuple(kernel_size, spatial_dims, "kernel_size")
    d = as_tuple(dilation, spatial_dims, "dilation")
    if any(ki % 2 == 0 for ki in k):
        raise ValueError(f"kernel_size must be odd for same padding, got {k}")
    return tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))


class ConvNormAct(nn.Sequential):
    """Convolution -> normalisation -> activation, "same" padded.

    The convolution has no bias when a normalisation follows (the normalisation's shift makes
    it redundant and its gradient would be zero).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels ``C_in``.
        out_channels: Output channels ``C_out``.
        kernel_size: Odd kernel size, int or one per axis.
        stride: Stride, int or one per axis; output size is ``ceil(size / stride)`` when the
            size is a multiple of the stride.
        dilation: Dilation rate, int or one per axis (effective size ``k + (k-1)(r-1)``).
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"``.
        act: ``"leakyrelu"``, ``"relu"``, ``"gelu"``, ``"prelu"``, ``"elu"`` or ``"none"``.
        negative_slope: LeakyReLU slope.

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq = 3,
        stride: IntOrSeq = 1,
        dilation: IntOrSeq = 1,
        norm: str = "instance",
        act: str = "leakyrelu",
        negative_slope: float = 0.01,
    ):
        conv = conv_nd(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size=as_tuple(kernel_size, spatial_dims, "kernel_size"),
            stride=as_tuple(stride, spatial_dims, "stride"),
            padding=same_padding(kernel_size, dilation, spatial_dims),
            dilation=as_tuple(dilation, spatial_dims, "dilation"),
            bias=norm == "none",
        )
        super().__init__(
            OrderedDict(
                conv=conv,
                norm=norm_layer(norm, spatial_dims, out_channels),
                act=act_layer(act, negative_slope),
            )
        )


class ConvBlock(nn.Sequential):
    """``num_convs`` :class:`ConvNormAct` in a row (nnU-Net's stage: two of them).

    Only the first convolution is strided, so the block downsamples by ``stride``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels.
        out_channels: Output channels of every convolution.
        stride: Stride of the first convolution.
        kernel_size: Odd kernel size.
        norm: Normalisation name (see :func:`~medseg.layers.factories.norm_layer`).
        act: Activation name (see :func:`~medseg.layers.factories.act_layer`).
        negative_slope: LeakyReLU slope.
        num_convs: Number of convolutions (>= 1).

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: IntOrSeq = 1,
        kernel_size: IntOrSeq = 3,
        norm: str = "instance",
        act: str = "leakyrelu",
        negative_slope: float = 0.01,
        num_convs: int = 2,
    ):
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        layers = [
            ConvNormAct(
                spatial_dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride if i == 0 else 1,
                norm=norm,
                act=act,
                negative_slope=negative_slope,
            )
            for i in range(num_convs)
        ]
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two convolutions with a shortcut: ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when the shape is unchanged, else a strided 1x1 convolution
    followed by the same normalisation (a projection shortcut, as in ResNet).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution and of the shortcut.
        kernel_size: Odd kernel size.
        norm: Normalisation name.
        act: Activation name.
        negative_slope: LeakyReLU slope.

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: IntOrSeq = 1,
        kernel_size: IntOrSeq = 3,
        norm: str = "instance",
        act: str = "leakyrelu",
        negative_slope: float = 0.01,
    ):
        super().__init__()
        stride_t = as_tuple(stride, spatial_dims, "stride")
        self.conv1 = ConvNormAct(
            spatial_dims, in_channels, out_channels, kernel_size, stride_t, 1, norm, act,
            negative_slope,
        )
        self.conv2 = ConvNormAct(
            spatial_dims, out_channels, out_channels, kernel_size, 1, 1, norm, "none"
        )
        if in_channels == out_channels and all(s == 1 for s in stride_t):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=conv_nd(spatial_dims)(
                        in_channels, out_channels, kernel_size=1, stride=stride_t,
                        bias=norm == "none",
                    ),
                    norm=norm_layer(norm, spatial_dims, out_channels),
                )
            )
        self.act = act_layer(act, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial / stride)``."""
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


UPSAMPLE_MODES = ("transpose", "linear")
_UPSAMPLE_ALIASES = {"bilinear": "linear", "trilinear": "linear"}


class UpSample(nn.Module):
    """Upsampling by an integer factor per axis that also changes the channel count.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        scale: Integer factor, int or one per axis (e.g. ``(1, 2, 2)``).
        mode: ``"transpose"`` (a transposed convolution with kernel = stride = ``scale``) or
            ``"linear"`` (linear / bilinear / trilinear interpolation, then a 1x1 convolution).
            ``"bilinear"`` and ``"trilinear"`` are accepted for ``"linear"``.

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial * scale)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        scale: IntOrSeq = 2,
        mode: str = "transpose",
    ):
        super().__init__()
        mode = _UPSAMPLE_ALIASES.get(mode, mode)
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r}; choose one of {UPSAMPLE_MODES}")
        self.mode = mode
        self.scale = as_tuple(scale, spatial_dims, "scale")
        self._interp = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
        if mode == "transpose":
            self.conv: nn.Module = conv_transpose_nd(spatial_dims)(
                in_channels, out_channels, kernel_size=self.scale, stride=self.scale
            )
        else:
            self.conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial * scale)``."""
        if self.mode == "transpose":
            return self.conv(x)
        if all(s == 1 for s in self.scale):
            return self.conv(x)
        size = [n * s for n, s in zip(x.shape[2:], self.scale, strict=True)]
        # Reduce channels first (fewer values to interpolate); both are linear so they commute.
        return F.interpolate(self.conv(x), size=size, mode=self._interp, align_corners=False)
