"""UNet++ (Zhou et al. 2018) for 2D and 3D segmentation (A6).

Nodes ``X^{i,j}``: level ``i`` (0 = full resolution, ``L = len(channels) - 1`` the bottleneck)
and column ``j``. ``X^{i,0}`` is the encoder (a :class:`~medseg.layers.conv.ConvBlock`, strided
for ``i > 0``, as in :class:`~medseg.networks.unet.UNet`); for ``j >= 1``::

    X^{i,j} = ConvBlock(concat(X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})))

so each node sees every earlier node of its row (dense skips) and the upsampled node below-left.
A 1x1 deep-supervision head sits on every top-row node ``X^{0,1} .. X^{0,L}``. Head ``d`` only
depends on the sub-network ``{X^{i,j} : i + j <= d}`` (a UNet of depth ``d``), so the network
can be *pruned* at inference: with ``prune_depth = d`` only those nodes are computed.

In eval mode the heads are averaged (an implicit ensemble: for balanced weights and
correlations below 1, the variance ``w^T Sigma w`` of the average is below any single head's).

    >>> net = UNetPlusPlus(spatial_dims=2, channels=(8, 16, 32))
    >>> [o.shape for o in net.train()(torch.zeros(1, 1, 20, 20))]
    [torch.Size([1, 2, 20, 20]), torch.Size([1, 2, 20, 20])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.conv import ConvBlock, UpSample, as_tuple
from medseg.layers.factories import conv_nd, dropout_nd
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

DROPOUT_WHERE = ("decoder", "all")


def _key(i: int, j: int) -> str:
    return f"x{i}_{j}"


@register_model("unetpp", task="segmentation", spatial_dims=(2, 3))
class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skip pathways and deep supervision, 2D or 3D.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Input channels.
        num_classes: Output channels (class logits, background included).
        channels: Feature channels per level, top to bottom (``L + 1`` levels, ``L >= 1``).
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"``.
        act: ``"leakyrelu"``, ``"relu"``, ``"gelu"``, ``"prelu"`` or ``"elu"``.
        dropout: Channel-dropout probability after every decoder node ``X^{i,j}, j >= 1``
            (0 adds no dropout layer). Used by MC Dropout (:meth:`dropout_layers`).
        deep_supervision: One head per top-row node ``X^{0,1..L}`` (``L`` heads). ``False``:
            a single head on ``X^{0,L}`` (plain UNet++ output; pruning is then unavailable).
        prune_depth: ``None`` (eval output = mean of all heads) or ``d`` in ``1..L``: in eval
            mode only head ``d`` is returned and only the nodes with ``i + j <= d`` are
            computed. Can be changed later through the :attr:`prune_depth` attribute.
            Training mode always runs the full network.
        strides: Downsampling factor into each level below the top (``L`` entries, each an
            int or one int per axis). ``None``: 2 on every axis.
        dropout_where: ``"decoder"`` (after every decoder node ``X^{i,j}, j >= 1``: only
            there, so decoder-only MC Dropout samples all of it) or ``"all"`` (also after every
            encoder node ``X^{i,0}``).

    Attributes:
        size_divisor: Total stride per axis; inputs are zero-padded at the end of each axis to
            a multiple of it and the output is cropped back.
        num_heads: ``L`` with deep supervision, else 1.
        depth: ``L``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes, *spatial)``. In training mode with
        deep supervision: a list of ``L`` tensors ``(B, num_classes, *spatial)``, head
        ``X^{0,1}`` (shallowest) first and ``X^{0,L}`` (deepest) last.

    Encoder / decoder split:
        ``forward(x) == decode(encode(x))``: :meth:`encode` computes the encoder column
        ``X^{i,0}``, :meth:`decode` every node ``X^{i,j}, j >= 1`` and the heads.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("heads",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        norm: str = "instance",
        act: str = "leakyrelu",
        dropout: float = 0.0,
        deep_supervision: bool = True,
        prune_depth: int | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        dropout_where: str = "decoder",
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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_dropout_where(dropout_where, DROPOUT_WHERE)
        depth = len(channels) - 1
        if strides is None:
            strides = [2] * depth
        if len(strides) != depth:
            raise ValueError(f"strides needs len(channels) - 1 = {depth} entries, got "
                             f"{len(strides)}")
        stride_t = [as_tuple(s, spatial_dims, "strides entry") for s in strides]

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = num_classes
        self.channels = channels
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.num_heads = depth if deep_supervision else 1
        total = [1] * spatial_dims
        for s in stride_t:
            total = [t * si for t, si in zip(total, s, strict=True)]
        self.size_divisor: tuple[int, ...] = tuple(total)
        self._prune_depth: int | None = None
        self.prune_depth = prune_depth

        def drop(active: bool = True) -> nn.Module:
            return dropout_nd(spatial_dims)(dropout) if active and dropout > 0 else nn.Identity()

        one = (1,) * spatial_dims
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, in_channels if i == 0 else channels[i - 1], channels[i],
                      one if i == 0 else stride_t[i - 1], 3, norm, act)
            for i in range(depth + 1)
        )
        # Dropout after each encoder node X^{i,0} (identities unless dropout_where="all").
        self.encoder_dropout = nn.ModuleList(
            drop(dropout_where == "all") for _ in range(depth + 1)
        )
        # Node X^{i,j} (j >= 1) and the upsampling of X^{i+1,j-1} that feeds it.
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                c = channels[i]
                self.ups[_key(i, j)] = UpSample(spatial_dims, channels[i + 1], c, stride_t[i])
                self.nodes[_key(i, j)] = nn.Sequential(
                    ConvBlock(spatial_dims, (j + 1) * c, c, one, 3, norm, act), drop()
                )
        self.heads = nn.ModuleList(
            conv_nd(spatial_dims)(channels[0], num_classes, kernel_size=1)
            for _ in range(self.num_heads)
        )
        self.apply(init_he)

    @property
    def deep_supervision_weights(self) -> list[float]:
        """Loss weight per training output: equal over the heads (Zhou et al.: every head is a
        full-resolution segmentation of its own sub-network, none is auxiliary)."""
        return [1.0] * self.num_heads

    @property
    def prune_depth(self) -> int | None:
        """Eval-mode pruning depth (``None`` or ``1..L``)."""
        return self._prune_depth

    @prune_depth.setter
    def prune_depth(self, value: int | None) -> None:
        if value is not None:
            if not self.deep_supervision:
                raise ValueError("prune_depth needs deep_supervision=True (a head per depth)")
            if not 1 <= int(value) <= self.depth:
                raise ValueError(f"prune_depth must be None or in 1..{self.depth}, got {value}")
            value = int(value)
        self._prune_depth = value

    def dropout_layers(self) -> list[nn.Module]:
        """The dropout modules (``p > 0``), in forward order, for MC Dropout."""
        return dropout_modules(self)

    def node_order(self, depth: int | None = None) -> list[tuple[int, int]]:
        """The nodes ``(i, j)`` computed for a sub-network of ``depth`` (default ``L``).

        Diagonal order: encoder node ``X^{k,0}`` then ``X^{k-1,1}, ..., X^{0,k}``, for
        ``k = 0 .. depth``; ``(depth + 1)(depth + 2) / 2`` nodes in all.
        """
        d = self.depth if depth is None else depth
        return [(k - j, j) for k in range(d + 1) for j in range(k + 1)]

    def valid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The smallest size >= ``spatial`` that is a multiple of :attr:`size_divisor`."""
        return round_up_size(spatial, self.size_divisor)

    def _depth_needed(self) -> int:
        """Depth of the sub-network the current mode computes (pruned in eval mode)."""
        if self.deep_supervision and not self.training and self._prune_depth is not None:
            return self._prune_depth
        return self.depth

    def _top_row(self, enc: Sequence[torch.Tensor], depth: int) -> list[torch.Tensor]:
        """Top-row nodes ``[X^{0,1}, ..., X^{0,depth}]`` from the encoder nodes ``X^{i,0}``."""
        rows: list[list[torch.Tensor]] = [[enc[i]] for i in range(depth + 1)]
        for i, j in self.node_order(depth):
            if j == 0:
                continue
            k = _key(i, j)
            up = self.ups[k](rows[i + 1][j - 1])
            rows[i].append(self.nodes[k](torch.cat((*rows[i], up), dim=1)))
        return rows[0][1:]

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """Run the encoder column once (the first half of :meth:`forward`).

        In eval mode with :attr:`prune_depth` ``d`` only ``X^{0,0} .. X^{d,0}`` are computed,
        as in :meth:`forward`.

        Args:
            x: ``(B, in_channels, *spatial)``, zero-padded at the end of each axis to
                ``valid_size(spatial)``.

        Returns:
            :class:`~medseg.networks.common.EncoderFeatures` with the encoder nodes
            ``X^{i,0}``, ``(B, channels[i], *(padded / f_i))`` for ``i = 0 .. depth`` (``f_i``
            the total stride down to level ``i``); ``spatial`` is the unpadded input size.
        """
        check_input(x, "UNetPlusPlus", self.spatial_dims, self.in_channels)
        spatial = tuple(x.shape[2:])
        h = pad_end(x, self.valid_size(spatial))
        feats: list[torch.Tensor] = []
        for i in range(self._depth_needed() + 1):
            h = self.encoder_dropout[i](self.encoder[i](h))
            feats.append(h)
        return EncoderFeatures(tuple(feats), spatial)

    def decode(self, features: EncoderFeatures) -> torch.Tensor | list[torch.Tensor]:
        """Class logits from :meth:`encode`'s features (the second half of :meth:`forward`).

        Args:
            features: What :meth:`encode` returned (any batch size).

        Returns:
            As :meth:`forward`.

        Raises:
            ValueError: ``features`` were encoded for a pruned sub-network shallower than the
                one the current mode computes (re-encode after changing the mode).
        """
        depth = self._depth_needed()
        if len(features) < depth + 1:
            raise ValueError(
                f"UNetPlusPlus.decode needs the encoder nodes X^{{0..{depth},0}}, got "
                f"{len(features)} (encoded with another prune_depth or mode); call encode "
                "again in the mode used for decode"
            )
        spatial = features.spatial
        padded = tuple(features[0].shape[2:]) != spatial
        crop = (..., *(slice(0, s) for s in spatial))
        top = self._top_row(features, depth)
        if not self.deep_supervision:
            out = self.heads[0](top[-1])
            return out[crop] if padded else out
        if not self.training and self._prune_depth is not None:  # head `depth` alone
            out = self.heads[depth - 1](top[-1])
            return out[crop] if padded else out
        outs = [head(t) for head, t in zip(self.heads, top, strict=True)]
        if padded:
            outs = [o[crop] for o in outs]
        if self.training:
            return outs
        return torch.stack(outs).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Class logits, ``decode(encode(x))``.

        Args:
            x: ``(B, in_channels, *spatial)``, any spatial size.

        Returns:
            Training mode with deep supervision: a list of ``L`` logits
            ``(B, num_classes, *spatial)``, head ``X^{0,1}`` first. Otherwise one tensor
            ``(B, num_classes, *spatial)``: the mean of the heads' logits, head
            :attr:`prune_depth` alone when it is set (eval mode), or the single head without
            deep supervision.
        """
        return self.decode(self.encode(x))
