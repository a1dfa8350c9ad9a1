"""DeepLabV3+ for 2D and 3D segmentation (spec A3), written once with ``spatial_dims``.

A residual CNN encoder halves the resolution at each stage until the requested output stride
is reached; the later stages keep that resolution and double their dilation instead, so the
deep features stay dense (8 or 16 times smaller than the input) with a growing receptive
field. :class:`~medseg.layers.aspp.ASPP` adds multi-scale and image-level context, and the
DeepLabV3+ decoder upsamples the ASPP features to the resolution of a low-level encoder stage,
concatenates them with 1x1-reduced low-level features, refines with two 3x3 convolutions and
upsamples the logits to the input size.

    >>> net = DeepLabV3Plus(spatial_dims=2, in_channels=1, num_classes=3, output_stride=8)
    >>> net(torch.zeros(1, 1, 100, 90)).shape
    torch.Size([1, 3, 100, 90])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.layers.aspp import ASPP
from medseg.layers.conv import ConvNormAct, ResidualBlock
from medseg.layers.factories import act_layer, conv_nd, dropout_nd, norm_layer
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

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}
DROPOUT_WHERE = ("decoder", "all")


class _DilatedResidualBlock(nn.Module):
    """:class:`ResidualBlock` at stride 1 whose two 3x3 convolutions are dilated by ``dilation``.

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        dilation: int,
        norm: str,
        act: str,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(
            spatial_dims, in_channels, out_channels, 3, 1, dilation, norm, act
        )
        self.conv2 = ConvNormAct(
            spatial_dims, out_channels, out_channels, 3, 1, dilation, norm, "none"
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=conv_nd(spatial_dims)(
                        in_channels, out_channels, kernel_size=1, bias=norm == "none"
                    ),
                    norm=norm_layer(norm, spatial_dims, out_channels),
                )
            )
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``."""
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


@register_model("deeplabv3plus", task="segmentation", spatial_dims=(2, 3))
class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a dilated residual encoder, ASPP and a low-level-skip decoder.

    Args:
        spatial_dims: 2 for images, 3 for volumes (1 works too).
        in_channels: Input channels (modalities).
        num_classes: Output channels (class logits, background included).
        channels: Channels of each encoder stage (one residual block per stage). Stage ``i``
            has stride 2 while the cumulative stride is below ``output_stride``, else stride
            1 and dilation 2, 4, 8, ...
        output_stride: Ratio of the input size to the encoder output size; a power of two
            between 2 and ``2 ** len(channels)`` (8 and 16 are the usual choices).
        aspp_rates: Dilation rates of the ASPP 3x3 branches. ``None``: ``(6, 12, 18)`` at
            output stride 16, scaled by ``16 / output_stride`` otherwise (``(12, 24, 36)`` at 8).
        decoder_channels: Channels of the ASPP output and of the decoder convolutions.
        low_level_channels: Channels the low-level features are reduced to (1x1 conv).
        low_level_index: Encoder stage whose output feeds the decoder skip, ``0`` to
            ``len(channels) - 2`` (1: the stride-4 stage, as in DeepLabV3+).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``. With ``"instance"`` the
            encoder output must have more than one voxel (input size above ``output_stride``).
        act: Activation name (see :func:`~medseg.layers.factories.act_layer`).
        dropout: Channel-dropout probability after the ASPP fusion and after the decoder
            convolutions (0 adds no dropout layer). MC Dropout keeps these layers active at test
            time (:meth:`dropout_layers`).
        dropout_where: ``"decoder"`` (the ASPP fusion and the decoder only: all of it after
            :meth:`encode`, so decoder-only MC Dropout samples it) or ``"all"`` (also after
            every encoder stage).

    Attributes:
        output_stride: The encoder's total stride per axis.
        feature_channels: Channels of each encoder stage's output.
        feature_strides: Cumulative stride of each encoder stage's output.
        feature_dilations: Dilation of each encoder stage's convolutions.
        aspp_rates: The ASPP rates in use.
        out_channels: ``num_classes``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes, *spatial)`` for any spatial size:
        inputs are zero-padded at the end of each axis to a multiple of ``output_stride`` and the
        logits are cropped back.

    Encoder / decoder split:
        ``forward(x) == decode(encode(x))``: :meth:`encode` runs the dilated residual backbone,
        :meth:`decode` the ASPP, the low-level projection, the decoder and the head.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("head",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256),
        output_stride: int = 16,
        aspp_rates: Sequence[int] | None = None,
        decoder_channels: int = 128,
        low_level_channels: int = 32,
        low_level_index: int = 1,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        dropout_where: str = "decoder",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        n = len(channels)
        if n < 2 or any(c < 1 for c in channels):
            raise ValueError(f"channels needs at least 2 positive entries, got {channels}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}"
            )
        if (
            output_stride < 2
            or output_stride & (output_stride - 1)
            or output_stride > 2**n
        ):
            raise ValueError(
                f"output_stride must be a power of two between 2 and 2**len(channels) = {2**n}, "
                f"got {output_stride} (8 or 16 are usual)"
            )
        if not 0 <= low_level_index <= n - 2:
            raise ValueError(
                f"low_level_index must be in [0, {n - 2}] (a stage before the last of "
                f"{n}), got {low_level_index}"
            )
        if decoder_channels < 1 or low_level_channels < 1:
            raise ValueError(
                f"decoder_channels and low_level_channels must be >= 1, got "
                f"{decoder_channels}, {low_level_channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_dropout_where(dropout_where, DROPOUT_WHERE)
        if aspp_rates is None:
            aspp_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = num_classes
        self.output_stride = output_stride
        self.aspp_rates = tuple(int(r) for r in aspp_rates)
        self.low_level_index = low_level_index
        self.feature_channels = channels

        strides: list[int] = []
        dilations: list[int] = []
        self.encoder = nn.ModuleList()
        total, dilation = 1, 1
        for i, c_out in enumerate(channels):
            c_in = in_channels if i == 0 else channels[i - 1]
            if total < output_stride:
                total *= 2
                self.encoder.append(
                    ResidualBlock(spatial_dims, c_in, c_out, 2, 3, norm, act)
                )
            else:
                dilation *= 2
                self.encoder.append(
                    _DilatedResidualBlock(spatial_dims, c_in, c_out, dilation, norm, act)
                )
            strides.append(total)
            dilations.append(dilation)
        # Dropout after each encoder stage (identities unless dropout_where="all").
        self.encoder_dropout = nn.ModuleList(
            dropout_nd(spatial_dims)(dropout) if dropout_where == "all" and dropout > 0
            else nn.Identity()
            for _ in channels
        )
        self.feature_strides = tuple(strides)
        self.feature_dilations = tuple(dilations)

        self.aspp = ASPP(
            spatial_dims, channels[-1], decoder_channels, self.aspp_rates, norm, act, dropout
        )
        self.low_level = ConvNormAct(
            spatial_dims, channels[low_level_index], low_level_channels, 1, 1, 1, norm, act
        )
        refine: OrderedDict[str, nn.Module] = OrderedDict(
            conv1=ConvNormAct(
                spatial_dims, decoder_channels + low_level_channels, decoder_channels, 3, 1, 1,
                norm, act,
            ),
            conv2=ConvNormAct(
                spatial_dims, decoder_channels, decoder_channels, 3, 1, 1, norm, act
            ),
        )
        if dropout > 0:
            refine["dropout"] = dropout_nd(spatial_dims)(dropout)
        self.decoder = nn.Sequential(refine)
        self.head = conv_nd(spatial_dims)(decoder_channels, num_classes, kernel_size=1)
        self.apply(init_he)

    def dropout_layers(self) -> list[nn.Module]:
        """The dropout modules (``p > 0``), in forward order, for MC Dropout."""
        return dropout_modules(self)

    def valid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The smallest size >= ``spatial`` that is a multiple of :attr:`output_stride`."""
        return round_up_size(spatial, self.output_stride)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, "DeepLabV3Plus", self.spatial_dims, self.in_channels)

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """Encoder features, one per stage (the first half of :meth:`forward`).

        Args:
            x: ``(B, in_channels, *spatial)``; zero-padded to a multiple of ``output_stride``.

        Returns:
            :class:`~medseg.networks.common.EncoderFeatures` (a sequence of tensors): entry
            ``i`` is ``(B, feature_channels[i], *(padded / feature_strides[i]))`` with
            ``padded = valid_size(spatial)``; the last has spatial size
            ``ceil(spatial / output_stride)``. ``spatial`` is the unpadded input size.
        """
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        h = pad_end(x, self.valid_size(spatial))
        feats: list[torch.Tensor] = []
        for stage, drop in zip(self.encoder, self.encoder_dropout, strict=True):
            h = drop(stage(h))
            feats.append(h)
        return EncoderFeatures(tuple(feats), spatial)

    def decode(self, features: EncoderFeatures) -> torch.Tensor:
        """Class logits from :meth:`encode`'s features (the second half of :meth:`forward`).

        Args:
            features: What :meth:`encode` returned (any batch size).

        Returns:
            ``(B, num_classes, *features.spatial)``.
        """
        if len(features) != len(self.encoder):
            raise ValueError(
                f"DeepLabV3Plus.decode expects the {len(self.encoder)} stage outputs of "
                f"DeepLabV3Plus.encode, got {len(features)}"
            )
        spatial = features.spatial
        low = self.low_level(features[self.low_level_index])
        h = self.aspp(features[-1])
        mode = _INTERP[self.spatial_dims]
        if h.shape[2:] != low.shape[2:]:
            h = F.interpolate(h, size=low.shape[2:], mode=mode, align_corners=False)
        h = self.decoder(torch.cat((h, low), dim=1))
        logits = self.head(h)
        padded = self.valid_size(spatial)
        logits = F.interpolate(logits, size=padded, mode=mode, align_corners=False)
        return logits[(..., *(slice(0, s) for s in spatial))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``decode(encode(x))``.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, num_classes, *spatial)``.
        """
        return self.decode(self.encode(x))
