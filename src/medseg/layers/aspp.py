"""Atrous Spatial Pyramid Pooling (spec A3), written once for 1D/2D/3D.

ASPP looks at one feature map through parallel branches with different receptive fields and
fuses them (DeepLab v3):

* a 1x1 convolution;
* one dilated 3x3 convolution per rate ``r`` (span ``3 + 2(r - 1)`` per axis, with the
  ``9 * C_in * C_out`` weights of a plain 3x3 in 2D);
* image-level pooling: global average -> 1x1 convolution -> broadcast back over the map.

The branch outputs are concatenated and fused by a 1x1 convolution.

Normalisation: the convolutional branches are conv -> norm -> act. The pooling branch has one
value per channel per sample, which batch norm cannot normalise at batch size 1 and instance
norm cannot normalise at all, so it is conv (with bias) -> act without a norm. The fusing
1x1 convolution is likewise not followed by a norm: the pooling branch is constant over space,
so a per-sample, per-channel normalisation right after a linear fusion (instance norm, or batch
norm at batch size 1) would subtract it exactly and the image-level context would be lost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.dilated import DilatedConv
from medseg.layers.factories import act_layer, adaptive_avgpool_nd, conv_nd, dropout_nd, norm_layer


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels ``C_in``.
        out_channels: Channels ``C_out`` of every branch and of the fused output.
        rates: Dilation rate of each 3x3 branch (each ``>= 1``; may be empty).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` for the convolutional
            branches (the pooling branch and the fusion have none, see the module docstring).
        act: Activation name (see :func:`~medseg.layers.factories.act_layer`).
        dropout: Channel-dropout probability after the fusion (0 adds no dropout layer).

    Attributes:
        branches: The convolutional branches: the 1x1 first, then one per rate.
        pool_branch: Global average pool -> 1x1 conv -> act.
        project: The fusing 1x1 convolution -> act (-> dropout).
        num_branches: ``len(rates) + 2``.

    Shapes:
        ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if any(r < 1 for r in rates):
            raise ValueError(f"ASPP rates must be >= 1, got {rates}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.spatial_dims = spatial_dims
        self.rates = rates
        conv = conv_nd(spatial_dims)
        bias = norm == "none"

        def branch(first: nn.Module) -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    conv=first,
                    norm=norm_layer(norm, spatial_dims, out_channels),
                    act=act_layer(act),
                )
            )

        self.branches = nn.ModuleList(
            [branch(conv(in_channels, out_channels, kernel_size=1, bias=bias))]
            + [
                branch(
                    DilatedConv(
                        spatial_dims, in_channels, out_channels, kernel_size=3, dilation=r,
                        bias=bias,
                    )
                )
                for r in rates
            ]
        )
        self.pool_branch = nn.Sequential(
            OrderedDict(
                pool=adaptive_avgpool_nd(spatial_dims)(1),
                conv=conv(in_channels, out_channels, kernel_size=1, bias=True),
                act=act_layer(act),
            )
        )
        self.num_branches = len(self.branches) + 1
        project: OrderedDict[str, nn.Module] = OrderedDict(
            conv=conv(self.num_branches * out_channels, out_channels, kernel_size=1, bias=True),
            act=act_layer(act),
        )
        if dropout > 0:
            project["dropout"] = dropout_nd(spatial_dims)(dropout)
        self.project = nn.Sequential(project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial)``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"ASPP(spatial_dims={self.spatial_dims}) expects a (B, C, *spatial) tensor with "
                f"{self.spatial_dims} spatial axes, got shape {tuple(x.shape)}"
            )
        outs = [b(x) for b in self.branches]
        pooled = self.pool_branch(x)  # (B, C_out, 1, ..., 1)
        outs.append(pooled.expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(outs, dim=1))
