"""Vision Transformer classifier for T1/T2, written once for 2D and 3D (A4, A7).

``PatchEmbedding (+ interpolated positions) -> [CLS] + tokens -> TransformerBlock x depth ->
LayerNorm -> pool (CLS token or mean of patch tokens) -> linear``. The network returns logits
``(B, num_classes)``: softmax for single-label (T1), sigmoid per label for multi-label (T2).

Input sizes:

- The positional embeddings are learned for the token grid ``image_size // patch_size``; any
  other input size gives another grid and the embeddings are resized to it
  (:meth:`~medseg.layers.attention.PatchEmbedding.interpolated_pos_embed`).
- A spatial size that is not a multiple of the patch size is **zero-padded at the high end of
  that axis** to the next multiple (e.g. 28 -> 32 with 8-voxel patches) instead of failing, so
  the patch token count is ``N = prod(ceil(size / patch_size))``.

The attention cost grows as ``N^2`` (:func:`~medseg.layers.attention.attention_cost`); the
registry defaults (``dim=64``, ``depth=4``, 8-voxel patches: 64 tokens for 64^2 or 32^3) are
small. Larger ViT-B-like settings (``dim=768, depth=12, heads=12, patch_size=16``) are a matter
of constructor arguments.

Registered name: ``"vit_classifier"`` (task ``"classification"``, 2D and 3D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.layers.attention import PatchEmbedding, TransformerBlock
from medseg.layers.conv import as_tuple
from medseg.networks.common import check_input, dropout_modules, round_up_size
from medseg.networks.registry import register_model


@register_model("vit_classifier", task="classification")
class ViTClassifier(nn.Module):
    """Vision Transformer classifier (pre-norm encoder, CLS-token or mean pooling).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels ``C``.
        num_classes: Output logits (classes for T1, labels for T2).
        image_size: Spatial size the positional embeddings are learned for (int: the same on
            every axis, so the default 64 means ``(64, 64)`` in 2D and ``(64, 64, 64)`` in 3D;
            or one value per axis). Other input sizes interpolate the embeddings. Need not be a
            multiple of ``patch_size`` (it is rounded up like the inputs).
        patch_size: Patch size (int or one per axis).
        dim: Token width.
        depth: Number of Transformer blocks.
        heads: Attention heads; must divide ``dim``.
        mlp_ratio: Hidden width of each block's MLP relative to ``dim``.
        dropout: Dropout after the positional embedding, inside each block (after attention
            projection and in the MLP) and before the head; 0 adds no active dropout. MC Dropout
            keeps these active at test time (:meth:`dropout_layers`).
        attn_dropout: Dropout on the attention weights (applied functionally inside
            ``scaled_dot_product_attention`` in training mode; not an ``nn.Dropout`` module).
        pool: ``"cls"`` (classify the learnable CLS token, which has its own position) or
            ``"mean"`` (average of the patch tokens; no CLS token is used).

    Attributes:
        num_prefix_tokens: 1 with ``pool="cls"`` (the CLS token), else 0.
        out_channels: ``num_classes``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, num_classes)`` logits.
    """

    #: Logit layers (see :mod:`medseg.networks.heads`).
    head_attrs = ("head",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        image_size: int | Sequence[int] = 64,
        patch_size: int | Sequence[int] = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError("in_channels and num_classes must be >= 1")
        if dim < 1 or depth < 1:
            raise ValueError(f"dim and depth must be >= 1, got dim={dim}, depth={depth}")
        if heads < 1 or dim % heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        for name, p in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.pool = pool
        self.dim = dim
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.image_size = as_tuple(image_size, spatial_dims, "image_size")
        grid = tuple(-(-s // p) for s, p in zip(self.image_size, self.patch_size, strict=True))
        self.patch_embed = PatchEmbedding(spatial_dims, in_channels, dim, self.patch_size, grid)
        self.num_prefix_tokens = 1 if pool == "cls" else 0
        # The CLS token is added after the positional embedding of the patch grid and is never
        # interpolated: this one learned vector is the token and its own position.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, drop=dropout, attn_drop=attn_dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d | nn.Conv3d):
                # He (fan-in) init of the patch projection, as for a linear map of the patch.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def dropout_layers(self) -> list[nn.Module]:
        """The ``nn.Dropout`` modules with ``p > 0``, in forward order, for MC Dropout."""
        return dropout_modules(self)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, "ViTClassifier", self.spatial_dims, self.in_channels)

    def padded_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial size after zero-padding each axis up to a multiple of the patch size."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.spatial_dims or any(s < 1 for s in spatial):
            raise ValueError(
                f"expected {self.spatial_dims} positive spatial sizes, got {spatial}"
            )
        return round_up_size(spatial, self.patch_size)

    def tokens(self, x: torch.Tensor | Sequence[int]) -> int:
        """Number of patch tokens ``N = prod(ceil(size / patch_size))`` for an input.

        Args:
            x: A batch ``(B, C, *spatial)`` or its spatial size ``spatial``.

        Returns:
            ``N``; the Transformer sequence is ``N + num_prefix_tokens`` long.
        """
        spatial = x.shape[2:] if isinstance(x, torch.Tensor) else x
        padded = self.padded_size(spatial)
        return math.prod(s // p for s, p in zip(padded, self.patch_size, strict=True))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, C, *spatial)`` at the high end of each axis to a patch multiple."""
        padded = self.padded_size(x.shape[2:])
        extra = [t - s for s, t in zip(x.shape[2:], padded, strict=True)]
        if not any(extra):
            return x
        # F.pad lists (before, after) pairs starting from the last axis.
        pads: list[int] = []
        for e in reversed(extra):
            pads += [0, e]
        return F.pad(x, pads)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised output tokens: ``(B, C, *spatial)`` -> ``(B, num_prefix_tokens + N, dim)``.

        With ``pool="cls"`` the CLS token comes first.
        """
        self._check_input(x)
        t = self.patch_embed(self.pad(x))
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.pos_drop(t)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: ``(B, C, *spatial)`` -> ``(B, dim)`` (CLS token or token mean)."""
        t = self.encode(x)
        return t[:, 0] if self.pool == "cls" else t.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, num_classes)`` logits."""
        return self.head(self.head_drop(self.features(x)))
