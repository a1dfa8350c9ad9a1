"""U-Net for 2D and 3D segmentation (A1), written once with ``spatial_dims``.

nnU-Net's layout: each encoder stage is two conv-norm-act (the first strided, so it
downsamples), the decoder upsamples with a transposed convolution, concatenates the skip and
applies two conv-norm-act, and a 1x1 convolution gives the class logits.

    >>> net = UNet(spatial_dims=3, in_channels=1, num_classes=3, channels=(16, 32, 64))
    >>> net(torch.zeros(1, 1, 40, 40, 40)).shape
    torch.Size([1, 3, 40, 40, 40])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.conv import ConvBlock, ResidualBlock, UpSample, as_tuple
from medseg.layers.factories import conv_nd, dropout_nd, maxpool_nd
from medseg.layers.init import init_he
from medseg.networks.common import (
    EncoderFeatures,
    check_dropout_where,
    check_input,
    dropout_modules,
    pad_end,
    round_up_size,
)
from medseg.networks.registry import register_model

DROPOUT_WHERE = ("decoder", "bottleneck", "all", "head")
DOWNSAMPLE_MODES = ("conv", "maxpool")


def unet_feature_channels(
    base: int = 32, depth: int = 5, max_channels: int = 320
) -> tuple[int, ...]:
    """Channels per U-Net level: ``base * 2**i`` capped at ``max_channels``.

    ``unet_feature_channels(32, 5, 320) == (32, 64, 128, 256, 320)`` (nnU-Net 3D full-res).

    Args:
        base: Channels of the top (full-resolution) level.
        depth: Number of levels (encoder stages, bottleneck included).
        max_channels: Cap on the channels of any level.
    """
    if base < 1 or depth < 1 or max_channels < 1:
        raise ValueError(f"base, depth and max_channels must be >= 1, got {base}, {depth}, "
                         f"{max_channels}")
    return tuple(min(base * 2**i, max_channels) for i in range(depth))


@register_model("unet")
class UNet(nn.Module):
    """U-Net with skip connections, for ``spatial_dims`` 2 or 3 (1 works too).

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Input channels (modalities).
        num_classes: Output channels (class logits, background included).
        channels: Feature channels per level, top to bottom; ``len(channels)`` levels, the
            last one being the bottleneck.
        strides: Downsampling factor into each level below the top, ``len(channels) - 1``
            entries, each an int or one int per axis (anisotropic, e.g. ``(1, 2, 2)`` keeps a
            thick-slice axis). ``None``: 2 on every axis.
        kernel_size: Odd kernel size of every convolution.
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"``.
        act: ``"leakyrelu"`` (slope 0.01), ``"relu"``, ``"gelu"``, ``"prelu"`` or ``"elu"``.
        dropout: Channel-dropout probability (0 disables it and adds no dropout layer).
        dropout_where: ``"decoder"`` (after each decoder stage), ``"bottleneck"`` (after the
            bottleneck only) or ``"all"`` (after every encoder and decoder stage). MC Dropout
            keeps these layers active at test time (:meth:`dropout_layers`). Decoder-only MC
            Dropout (:func:`~medseg.uncertainty.sampling.mc_dropout_decoder_predict`) samples
            ``"decoder"`` and ``"bottleneck"`` (the bottleneck's dropout is the first step of
            :meth:`decode`); ``"all"`` also has dropout in the encoder. ``"head"``: one channel
            dropout on the last decoder features, before the 1x1 head only; decoder-only MC
            then runs the whole trunk once and samples only the head (:meth:`decode_trunk`,
            :meth:`decode_head`).
        residual: Use :class:`~medseg.layers.conv.ResidualBlock` stages instead of two plain
            conv-norm-act.
        deep_supervision: In training mode, return a list of logits, one per decoder level,
            full resolution first (each at its own resolution). In eval mode the output is
            always the full-resolution tensor.
        upsample: ``"transpose"`` (transposed convolution) or ``"linear"`` (bi/trilinear
            interpolation and a 1x1 convolution; ``"bilinear"``/``"trilinear"`` also accepted).
        downsample: ``"conv"`` (strided convolution, nnU-Net) or ``"maxpool"``.
        pad_input: Inputs whose size is not a multiple of :attr:`size_divisor` are zero-padded
            at the end of each axis and the output is cropped back. ``False``: such inputs
            raise :class:`ValueError` naming the nearest valid sizes.

    Attributes:
        size_divisor: Total stride per axis; the spatial size must be a multiple of it (or is
            padded to one).
        out_channels: ``num_classes``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes, *spatial)``; with deep supervision
        in training, a list whose entry ``k`` is ``(B, num_classes, *ceil(spatial / f_k))``
        with ``f_k`` the total stride down to decoder level ``k``.

    Encoder / decoder split:
        ``forward(x) == decode(encode(x))``: :meth:`encode` returns the skips and the
        bottleneck, :meth:`decode` the logits.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("head", "ds_heads")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_size: int | Sequence[int] = 3,
        norm: str = "instance",
        act: str = "leakyrelu",
        dropout: float = 0.0,
        dropout_where: str = "decoder",
        residual: bool = False,
        deep_supervision: bool = False,
        upsample: str = "transpose",
        downsample: str = "conv",
        pad_input: bool = True,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}")
        if any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive, got {channels}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, "
                             f"{num_classes}")
        if strides is None:
            strides = [2] * (len(channels) - 1)
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(channels) - 1} entries (one per "
                f"downsampling), got {len(strides)}"
            )
        stride_t = [as_tuple(s, spatial_dims, "strides entry") for s in strides]
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_dropout_where(dropout_where, DROPOUT_WHERE)
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {downsample!r}")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = num_classes
        self.channels = channels
        self.strides = tuple(stride_t)
        self.deep_supervision = deep_supervision
        self.pad_input = pad_input
        # Cumulative stride at each level (level 0 = full resolution).
        factors = [(1,) * spatial_dims]
        for s in stride_t:
            factors.append(tuple(f * si for f, si in zip(factors[-1], s, strict=True)))
        self._level_factors = tuple(factors)
        self.size_divisor: tuple[int, ...] = factors[-1]

        def block(c_in: int, c_out: int, stride: tuple[int, ...]) -> nn.Module:
            if residual:
                return ResidualBlock(spatial_dims, c_in, c_out, stride, kernel_size, norm, act)
            return ConvBlock(spatial_dims, c_in, c_out, stride, kernel_size, norm, act)

        def drop(active: bool) -> nn.Module:
            return dropout_nd(spatial_dims)(dropout) if active and dropout > 0 else nn.Identity()

        n_levels = len(channels)
        enc_drop = dropout_where == "all"
        self.encoder = nn.ModuleList()
        for level, c_out in enumerate(channels):
            c_in = in_channels if level == 0 else channels[level - 1]
            stride = (1,) * spatial_dims if level == 0 else stride_t[level - 1]
            # The bottleneck's dropout is `bottleneck_dropout`, applied by `decode`.
            layers = [] if level == n_levels - 1 else [drop(enc_drop)]
            if downsample == "maxpool" and level > 0:
                stage = nn.Sequential(
                    maxpool_nd(spatial_dims)(kernel_size=stride, stride=stride),
                    block(c_in, c_out, (1,) * spatial_dims),
                    *layers,
                )
            else:
                stage = nn.Sequential(block(c_in, c_out, stride), *layers)
            self.encoder.append(stage)
        self.bottleneck_dropout = drop(dropout_where in ("bottleneck", "all"))

        # Decoder, deepest first: ups[j] / decoder[j] produce level n_levels - 2 - j.
        dec_drop = dropout_where in ("decoder", "all")
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(n_levels - 2, -1, -1):
            c = channels[level]
            self.ups.append(
                UpSample(spatial_dims, channels[level + 1], c, stride_t[level], upsample)
            )
            self.decoder.append(
                nn.Sequential(block(2 * c, c, (1,) * spatial_dims), drop(dec_drop))
            )
        self.head_dropout = drop(dropout_where == "head")
        self.head = conv_nd(spatial_dims)(channels[0], num_classes, kernel_size=1)
        # Deep-supervision heads for decoder levels 1 .. n_levels - 2 (level 0 uses `head`).
        self.ds_heads = nn.ModuleList(
            conv_nd(spatial_dims)(channels[level], num_classes, kernel_size=1)
            for level in range(1, n_levels - 1)
        ) if deep_supervision else nn.ModuleList()
        self.apply(init_he)

    def dropout_layers(self) -> list[nn.Module]:
        """The dropout modules (``p > 0``), in forward order, for MC Dropout."""
        return dropout_modules(self)

    def valid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The smallest size >= ``spatial`` that is a multiple of :attr:`size_divisor`."""
        return round_up_size(spatial, self.size_divisor)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, "UNet", self.spatial_dims, self.in_channels)
        spatial = tuple(x.shape[2:])
        if not self.pad_input and any(
            s % d for s, d in zip(spatial, self.size_divisor, strict=True)
        ):
            options = []
            for axis, (s, d) in enumerate(zip(spatial, self.size_divisor, strict=True)):
                if s % d:
                    lo, hi = (s // d) * d, (s // d + 1) * d
                    options.append(f"axis {axis}: {s} -> {lo} or {hi}" if lo else
                                   f"axis {axis}: {s} -> {hi}")
            raise ValueError(
                f"input spatial size {spatial} is not a multiple of the network's total stride "
                f"{self.size_divisor}; nearest valid sizes: {'; '.join(options)}. Pad or crop "
                f"the input (e.g. to {self.valid_size(spatial)}), or build the model with "
                f"pad_input=True"
            )

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """Run the encoder once (the first half of :meth:`forward`).

        The bottleneck's dropout (``dropout_where`` ``"bottleneck"`` or ``"all"``,
        :attr:`bottleneck_dropout`) is left to :meth:`decode`, so decoder-only MC Dropout
        samples it as well.

        Args:
            x: ``(B, in_channels, *spatial)``; zero-padded at the end of each axis to
                ``valid_size(spatial)`` (``pad_input``).

        Returns:
            :class:`~medseg.networks.common.EncoderFeatures` of ``len(channels)`` tensors: the
            skip of level ``k`` ``(B, channels[k], *(padded / f_k))`` for ``k = 0 ..
            len(channels) - 2``, then the bottleneck ``(B, channels[-1], *(padded / f_L))``
            before its dropout, with ``f_k`` the total stride down to level ``k``;
            ``spatial`` is the unpadded input size.
        """
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        h = pad_end(x, self.valid_size(spatial))
        feats: list[torch.Tensor] = []
        for stage in self.encoder:
            h = stage(h)
            feats.append(h)
        return EncoderFeatures(tuple(feats), spatial)

    def decode(self, features: EncoderFeatures) -> torch.Tensor | list[torch.Tensor]:
        """Class logits from :meth:`encode`'s features (the second half of :meth:`forward`).

        Args:
            features: What :meth:`encode` returned (any batch size, e.g. repeated ``T`` times
                for decoder-only MC Dropout).

        Returns:
            As :meth:`forward`: ``(B, num_classes, *features.spatial)``; with
            ``deep_supervision`` in training mode, a list of logits per decoder level, full
            resolution first.
        """
        if len(features) != len(self.channels):
            raise ValueError(
                f"UNet.decode expects the {len(self.channels)} tensors of UNet.encode, got "
                f"{len(features)}"
            )
        spatial = features.spatial
        want_ds = self.deep_supervision and self.training
        h, ds_out = self._trunk(features, want_ds)
        out = self.decode_head(h, features)
        if not want_ds:
            return out
        padded = tuple(features[0].shape[2:]) != spatial
        n_dec = len(self.decoder)
        outputs = [out]
        for level, logits in zip(range(1, n_dec), reversed(ds_out), strict=True):
            if padded:
                f = self._level_factors[level]
                crop = (math.ceil(s / fi) for s, fi in zip(spatial, f, strict=True))
                logits = logits[(..., *(slice(0, c) for c in crop))]
            outputs.append(logits)
        return outputs

    def _trunk(self, features: EncoderFeatures, want_ds: bool
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = features[:-1]
        h = self.bottleneck_dropout(features[-1])
        n_dec = len(self.decoder)
        ds_out: list[torch.Tensor] = []
        for j, (up, dec) in enumerate(zip(self.ups, self.decoder, strict=True)):
            h = dec(torch.cat((up(h), skips[-1 - j]), dim=1))
            level = n_dec - 1 - j
            if want_ds and level > 0:
                ds_out.append(self.ds_heads[level - 1](h))
        return h, ds_out

    def decode_trunk(self, features: EncoderFeatures) -> torch.Tensor:
        """The last decoder features ``(B, channels[0], *padded)``, before the head's dropout
        (``decode = decode_head(decode_trunk(f), f)`` without deep supervision)."""
        if len(features) != len(self.channels):
            raise ValueError(
                f"UNet.decode_trunk expects the {len(self.channels)} tensors of UNet.encode, "
                f"got {len(features)}"
            )
        return self._trunk(features, False)[0]

    def decode_head(self, h: torch.Tensor, features: EncoderFeatures) -> torch.Tensor:
        """Logits ``(B, num_classes, *features.spatial)`` from :meth:`decode_trunk`'s output:
        the head's dropout (``dropout_where="head"``), the 1x1 head, the crop of the padding."""
        out = self.head(self.head_dropout(h))
        if tuple(h.shape[2:]) != features.spatial:
            out = out[(..., *(slice(0, s) for s in features.spatial))]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Class logits, ``decode(encode(x))``.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, num_classes, *spatial)``; with ``deep_supervision`` in training mode, a list
            of logits per decoder level, full resolution first.
        """
        return self.decode(self.encode(x))
