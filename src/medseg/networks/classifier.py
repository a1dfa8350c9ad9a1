"""ResNet-style CNN classifiers for T1/T2, written once for 2D and 3D (A7).

``stem -> stages of ResidualBlocks (stride 2 between stages) -> global average pool -> dropout
-> linear``. The network returns logits ``(B, num_classes)``: apply a softmax for single-label
(T1, :class:`~medseg.tasks.ClassProbs`) or a sigmoid per label for multi-label (T2,
:class:`~medseg.tasks.MultiLabel`).

Registered names: ``"resnet_classifier"`` (configurable), ``"resnet10_cls"`` and
``"resnet18_cls"`` (channels ``(64, 128, 256, 512)``, 1 or 2 blocks per stage, stride-2 stem).

Small inputs (MedMNIST 28x28) work: every strided convolution is "same" padded, so a size of
``n`` becomes ``ceil(n / 2)`` and never drops below one voxel; with ``stem_stride=1`` and four
stages a 28x28 image ends at 4x4 before the pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.conv import ConvNormAct, ResidualBlock
from medseg.layers.factories import adaptive_avgpool_nd
from medseg.networks.common import check_input, dropout_modules
from medseg.networks.registry import register_model


@register_model("resnet_classifier", task="classification")
class ResNetClassifier(nn.Module):
    """ResNet-style classifier (basic residual blocks).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        num_classes: Output logits (classes for T1, labels for T2).
        channels: Feature channels of each stage.
        blocks_per_stage: Residual blocks in each stage (same length as ``channels``).
        stem_stride: Stride of the stem convolution: 1 (3x3 kernel, for small images such as
            28x28) or 2 (7x7 kernel, ImageNet-ResNet style, for larger images).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: Activation name (see :func:`~medseg.layers.factories.act_layer`).
        dropout: Dropout probability before the linear layer (0: no dropout layer). MC Dropout
            keeps it active at test time (:meth:`dropout_layers`).

    Attributes:
        feature_channels: Channels of each stage's output (``channels``).
        out_channels: ``num_classes``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes)`` logits.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("fc",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        stem_stride: int = 1,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels, blocks = tuple(int(c) for c in channels), tuple(int(b) for b in blocks_per_stage)
        if not channels or len(channels) != len(blocks):
            raise ValueError(
                f"channels {channels} and blocks_per_stage {blocks} must be non-empty and of "
                "the same length (one entry per stage)"
            )
        if any(c < 1 for c in channels) or any(b < 1 for b in blocks):
            raise ValueError("channels and blocks_per_stage entries must be >= 1")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError("in_channels and num_classes must be >= 1")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.feature_channels = channels
        self.stem = ConvNormAct(
            spatial_dims, in_channels, channels[0], kernel_size=7 if stem_stride == 2 else 3,
            stride=stem_stride, norm=norm, act=act,
        )
        stages = []
        prev = channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks, strict=True)):
            layers = [
                ResidualBlock(
                    spatial_dims, prev if j == 0 else c, c, stride=2 if (i > 0 and j == 0) else 1,
                    norm=norm, act=act,
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*layers))
            prev = c
        self.stages = nn.ModuleList(stages)
        self.pool = adaptive_avgpool_nd(spatial_dims)(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def dropout_layers(self) -> list[nn.Module]:
        """The dropout modules (``p > 0``), in forward order, for MC Dropout."""
        return dropout_modules(self)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, "ResNetClassifier", self.spatial_dims, self.in_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features: ``(B, in_channels, *spatial)`` -> ``(B, channels[-1])``."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, num_classes)`` logits."""
        return self.fc(self.dropout(self.features(x)))


@register_model("resnet10_cls", task="classification")
def resnet10_cls(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    stem_stride: int = 2,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
) -> ResNetClassifier:
    """ResNet-10-like: channels ``(64, 128, 256, 512)``, one block per stage."""
    return ResNetClassifier(
        spatial_dims, in_channels, num_classes, (64, 128, 256, 512), (1, 1, 1, 1),
        stem_stride=stem_stride, norm=norm, act=act, dropout=dropout,
    )


@register_model("resnet18_cls", task="classification")
def resnet18_cls(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    stem_stride: int = 2,
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
) -> ResNetClassifier:
    """ResNet-18-like: channels ``(64, 128, 256, 512)``, two blocks per stage."""
    return ResNetClassifier(
        spatial_dims, in_channels, num_classes, (64, 128, 256, 512), (2, 2, 2, 2),
        stem_stride=stem_stride, norm=norm, act=act, dropout=dropout,
    )
