"""TransUNet (Chen et al. 2021): CNN encoder, Transformer bottleneck, U-Net decoder (spec A5).

Written once for 2D and 3D::

    x -> CNN stage 0 (full resolution) -> stage 1 (/2) -> ... -> stage L (/2**L)
      -> PatchEmbedding(patch size 1) on the stage-L map: N = prod(spatial / 2**L) tokens
         (+ learned positions, resized by interpolation for other grids)
      -> TransformerBlock x num_layers (global self-attention on SDPA) -> LayerNorm
      -> tokens reshaped to the grid -> 3x3 conv-norm-act back to channels[L]
      -> decoder: UpSample + concat(skip of stage i) + ConvBlock, i = L-1 .. 0
      -> 1x1 conv head -> (B, num_classes, *spatial)

With ``L = 3`` (the default) the tokens live at 1/8 of the input size (a 256^2 image gives
32^2 = 1024 tokens, 128^2 gives 256); ``L = 4`` gives 1/16. The attention cost grows with the
square of the token count (:func:`~medseg.layers.attention.attention_cost`).

    >>> net = TransUNet(spatial_dims=2, in_channels=1, num_classes=3)
    >>> net(torch.zeros(1, 1, 60, 64)).shape
    torch.Size([1, 3, 60, 64])

Registered name: ``"transunet"`` (task ``"segmentation"``, 2D and 3D). The registry defaults are
tiny (channels ``(8, 16, 32, 64)``, ``embed_dim=64``, 2 layers); the paper's setting is a
ResNet-50 encoder with ``embed_dim=768, num_layers=12, num_heads=12`` at 1/16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.layers.attention import PatchEmbedding, TransformerBlock
from medseg.layers.conv import ConvBlock, ConvNormAct, ResidualBlock, UpSample, as_tuple
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

DROPOUT_WHERE = ("all", "decoder")


@register_model("transunet", task="segmentation", spatial_dims=(2, 3))
class TransUNet(nn.Module):
    """Hybrid CNN-Transformer U-Net.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: Input channels (modalities).
        num_classes: Output channels (class logits, background included).
        channels: CNN channels per level, top (full resolution) to bottom; ``L = len(channels)
            - 1 >= 1`` stride-2 downsamplings, so the tokens sit at ``1 / 2**L`` of the input
            size (``L = 3``: 1/8, ``L = 4``: 1/16).
        residual: Encoder stages are :class:`~medseg.layers.conv.ResidualBlock` (as in the
            paper's ResNet encoder) instead of two plain conv-norm-act.
        embed_dim: Token width.
        num_heads: Attention heads; must divide ``embed_dim``.
        num_layers: Transformer blocks (``>= 1``).
        mlp_ratio: Hidden width of each block's MLP relative to ``embed_dim``.
        dropout: Dropout probability after the positional embedding, inside every Transformer
            block and (channel dropout) after every decoder stage; 0 adds no active dropout.
            MC Dropout keeps these active at test time (:meth:`dropout_layers`).
        dropout_where: ``"all"`` (as above) or ``"decoder"``: channel dropout after the
            decoder stages only (the positional and Transformer dropouts get ``p = 0``), so
            decoder-only MC Dropout samples all of it and the Transformer runs once.
        image_size: Input size the positional embeddings are learned for (int: every axis);
            other sizes interpolate them. The learned grid is ``ceil(image_size / 2**L)``.
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"`` for the CNN parts.
        act: Activation of the CNN parts (see :func:`~medseg.layers.factories.act_layer`).
        upsample: ``"transpose"`` or ``"linear"`` (see :class:`~medseg.layers.conv.UpSample`).
        pad_input: Zero-pad inputs whose size is not a multiple of :attr:`size_divisor` at the
            end of each axis and crop the logits back; ``False``: such inputs raise
            :class:`ValueError` naming the nearest valid sizes.

    Attributes:
        size_divisor: Total stride ``2**L`` per axis.
        token_grid_size: Token grid the positional embeddings were learned for.
        out_channels: ``num_classes``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes, *spatial)``.

    Encoder / decoder split:
        ``forward(x) == decode(encode(x))``: :meth:`encode` runs the CNN stages and the
        Transformer (the hybrid encoder of the paper), :meth:`decode` the cascaded upsampler
        (token grid -> conv, then upsample + skip + conv per level) and the head.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("head",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 32, 64),
        residual: bool = True,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        image_size: int | Sequence[int] = 64,
        norm: str = "instance",
        act: str = "leakyrelu",
        upsample: str = "transpose",
        pad_input: bool = True,
        dropout_where: str = "all",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(
                f"channels needs at least 2 positive entries (full resolution + one "
                f"downsampled level), got {channels}"
            )
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}"
            )
        if embed_dim < 1 or num_layers < 1:
            raise ValueError(
                f"embed_dim and num_layers must be >= 1, got {embed_dim}, {num_layers}"
            )
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_dropout_where(dropout_where, DROPOUT_WHERE)
        enc_dropout = dropout if dropout_where == "all" else 0.0
        depth = len(channels) - 1
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = num_classes
        self.channels = channels
        self.depth = depth
        self.embed_dim = embed_dim
        self.pad_input = pad_input
        self.size_divisor: tuple[int, ...] = (2**depth,) * spatial_dims
        size = as_tuple(image_size, spatial_dims, "image_size")
        self.token_grid_size = tuple(math.ceil(s / 2**depth) for s in size)
        one, two = (1,) * spatial_dims, (2,) * spatial_dims

        def block(c_in: int, c_out: int, stride: tuple[int, ...]) -> nn.Module:
            if residual:
                return ResidualBlock(spatial_dims, c_in, c_out, stride, 3, norm, act)
            return ConvBlock(spatial_dims, c_in, c_out, stride, 3, norm, act)

        self.encoder = nn.ModuleList(
            block(in_channels if i == 0 else channels[i - 1], channels[i], one if i == 0 else two)
            for i in range(depth + 1)
        )
        self.patch_embed = PatchEmbedding(
            spatial_dims, channels[-1], embed_dim, 1, self.token_grid_size
        )
        self.pos_drop = nn.Dropout(enc_dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, drop=enc_dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.from_tokens = ConvNormAct(
            spatial_dims, embed_dim, channels[-1], 3, 1, 1, norm, act
        )
        # Decoder, deepest first: ups[j] / decoder[j] produce level depth - 1 - j.
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            c = channels[level]
            self.ups.append(UpSample(spatial_dims, channels[level + 1], c, 2, upsample))
            drop = dropout_nd(spatial_dims)(dropout) if dropout > 0 else nn.Identity()
            self.decoder.append(
                nn.Sequential(ConvBlock(spatial_dims, 2 * c, c, one, 3, norm, act), drop)
            )
        self.head = conv_nd(spatial_dims)(channels[0], num_classes, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_he)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def dropout_layers(self) -> list[nn.Module]:
        """The dropout modules (``p > 0``), in forward order, for MC Dropout."""
        return dropout_modules(self)

    def valid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The smallest size >= ``spatial`` that is a multiple of :attr:`size_divisor`."""
        return round_up_size(spatial, self.size_divisor)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, "TransUNet", self.spatial_dims, self.in_channels)
        spatial = tuple(x.shape[2:])
        if not self.pad_input and spatial != self.valid_size(spatial):
            raise ValueError(
                f"input spatial size {spatial} is not a multiple of the network's total stride "
                f"{self.size_divisor}; pad or crop it (e.g. to {self.valid_size(spatial)}), or "
                f"build the model with pad_input=True"
            )

    def num_tokens(self, spatial: Sequence[int]) -> int:
        """Transformer sequence length for an input of spatial size ``spatial``."""
        return math.prod(v // d for v, d in zip(self.valid_size(spatial), self.size_divisor,
                                                strict=True))

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """Run the hybrid CNN-Transformer encoder once (the first half of :meth:`forward`).

        Args:
            x: ``(B, in_channels, *spatial)``; zero-padded at the end of each axis to
                ``valid_size(spatial)``.

        Returns:
            :class:`~medseg.networks.common.EncoderFeatures` of ``L + 1`` tensors: the skips
            of CNN stages ``0 .. L - 1``, ``(B, channels[k], *(padded / 2**k))``, then the
            Transformer's (layer-normed) tokens laid back on their grid, ``(B, embed_dim,
            *(padded / 2**L))``; ``spatial`` is the unpadded input size.
        """
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        h = pad_end(x, self.valid_size(spatial))
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        grid = h.shape[2:]
        t = self.pos_drop(self.patch_embed(h))  # (B, N, embed_dim)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        tokens = t.transpose(1, 2).reshape(t.shape[0], self.embed_dim, *grid)
        return EncoderFeatures((*skips[:-1], tokens), spatial)

    def _decoder_features(self, features: EncoderFeatures) -> torch.Tensor:
        """The decoder output that feeds :attr:`head`, ``(B, channels[0], *padded)``."""
        if len(features) != self.depth + 1:
            raise ValueError(
                f"TransUNet.decode expects the {self.depth + 1} tensors of TransUNet.encode, "
                f"got {len(features)}"
            )
        skips = features[:-1]
        h = self.from_tokens(features[-1])
        for j, (up, dec) in enumerate(zip(self.ups, self.decoder, strict=True)):
            h = dec(torch.cat((up(h), skips[-1 - j]), dim=1))
        return h

    def decode(self, features: EncoderFeatures) -> torch.Tensor:
        """Class logits from :meth:`encode`'s features (the second half of :meth:`forward`).

        Args:
            features: What :meth:`encode` returned (any batch size).

        Returns:
            ``(B, num_classes, *features.spatial)``.
        """
        spatial = features.spatial
        out = self.head(self._decoder_features(features))
        if tuple(out.shape[2:]) != spatial:
            out = out[(..., *(slice(0, s) for s in spatial))]
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output that feeds :attr:`head`.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, channels[0], *valid_size(spatial))`` (padded size, not yet cropped).
        """
        return self._decoder_features(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``decode(encode(x))``: ``(B, in_channels, *spatial)`` ->
        ``(B, num_classes, *spatial)``."""
        return self.decode(self.encode(x))
