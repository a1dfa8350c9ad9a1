"""Multi-head self-attention, a pre-norm Transformer block and patch embedding (spec A4).

``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V`` per head, with ``d_k = dim / heads``; the
cost grows as ``N^2`` in the token count ``N`` (see :func:`attention_cost`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.layers.conv import as_tuple
from medseg.layers.factories import conv_nd

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _split_heads(dim: int, heads: int) -> int:
    if heads < 1 or dim % heads:
        raise ValueError(f"dim ({dim}) must be a positive multiple of heads ({heads})")
    return dim // heads


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on a token sequence.

    ``Q, K, V`` come from one linear map of the input, are split into ``heads`` heads of width
    ``d_k = dim / heads``, attended with ``softmax(Q K^T / sqrt(d_k)) V`` (scale ``1 / sqrt(d_k)``,
    via ``torch.nn.functional.scaled_dot_product_attention``), concatenated and projected.

    Args:
        dim: Token width.
        heads: Number of heads; must divide ``dim``.
        qkv_bias: Add a bias to the ``Q, K, V`` projection.
        attn_drop: Dropout probability on the attention weights (training only).
        proj_drop: Dropout probability after the output projection.

    Shape:
        Input and output ``(B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.head_dim = _split_heads(dim, heads)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend: ``(B, N, dim) -> (B, N, dim)``."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected tokens (B, N, {self.dim}), got shape {tuple(x.shape)}")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, d_k)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(b, n, self.dim)
        return self.proj_drop(self.proj(out))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder block.

    ``x = x + MHSA(LN(x)); x = x + MLP(LN(x))`` with ``MLP = Linear(dim, mlp_ratio * dim) ->
    GELU -> Dropout -> Linear(., dim) -> Dropout``.

    Args:
        dim: Token width.
        heads: Attention heads; must divide ``dim``.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        qkv_bias: Bias on the ``Q, K, V`` projection.
        drop: Dropout after the attention projection and in the MLP.
        attn_drop: Dropout on the attention weights.

    Shape:
        Input and output ``(B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        if hidden < 1:
            raise ValueError(f"mlp_ratio * dim must be >= 1, got {mlp_ratio} * {dim}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(drop),
            nn.Linear(hidden, dim),
            nn.Dropout(drop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear tokens + learnable positional embeddings.

    A convolution with kernel = stride = ``patch_size`` embeds each patch; the positional
    embedding is learned for a token grid ``grid_size`` and, when an input gives a different
    grid, resized with ``F.interpolate`` (linear / bilinear / trilinear, ``align_corners=False``).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: Input channels ``C``.
        dim: Token width.
        patch_size: Patch size (int or one per axis).
        grid_size: Token grid the positional embedding is learned for (int or one per axis),
            e.g. ``image_size // patch_size``.

    Shape:
        Input ``(B, C, *spatial)`` with every spatial size a multiple of the patch size; output
        ``(B, N, dim)`` with ``N = prod(spatial // patch_size)``, tokens in row-major grid order.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        dim: int,
        patch_size: int | Sequence[int],
        grid_size: int | Sequence[int],
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.grid_size = as_tuple(grid_size, spatial_dims, "grid_size")
        self.proj = conv_nd(spatial_dims)(
            in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid_size), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def token_grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Token grid for an input of spatial size ``spatial``.

        Raises:
            ValueError: a spatial size is not a multiple of the patch size (the message names
                the nearest larger valid size to pad to).
        """
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.spatial_dims or any(
            s % p for s, p in zip(spatial, self.patch_size, strict=True)
        ):
            padded = tuple(-(-s // p) * p for s, p in zip(spatial, self.patch_size, strict=False))
            raise ValueError(
                f"spatial size {spatial} must have {self.spatial_dims} axes, each a multiple of "
                f"the patch size {self.patch_size}; pad the input to {padded}"
            )
        return tuple(s // p for s, p in zip(spatial, self.patch_size, strict=True))

    def interpolated_pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """Positional embedding for token grid ``grid``: ``(1, prod(grid), dim)``."""
        grid = tuple(grid)
        if grid == self.grid_size:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        pos = self.pos_embed.transpose(1, 2).reshape(1, dim, *self.grid_size)
        pos = F.interpolate(pos, size=grid, mode=_INTERP[self.spatial_dims], align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed: ``(B, C, *spatial) -> (B, N, dim)``."""
        grid = self.token_grid(x.shape[2:])
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens + self.interpolated_pos_embed(grid)


def attention_cost(
    input_shape: Sequence[int],
    patch_size: int | Sequence[int],
    dim: int,
    heads: int,
    bytes_per_el: int = 4,
) -> dict[str, int]:
    """Token count, attention FLOPs and score-matrix memory of one self-attention layer.

    With ``N = prod(input_shape // patch_size)`` tokens:

    - ``attn_flops = 2 * 2 * N^2 * dim``: ``Q K^T`` and ``A V`` are each ``N^2 * dim``
      multiply-adds summed over heads (``heads * d_k = dim``), a multiply-add counting 2 FLOPs.
      The linear projections (``O(N dim^2)``) and the softmax are not included.
    - ``attn_memory_bytes = heads * N^2 * bytes_per_el``: the attention score matrix of one
      sample.

    Args:
        input_shape: Spatial size of the input, e.g. ``(256, 256)`` or ``(256, 256, 128)``.
        patch_size: Patch size (int or one per axis); must divide ``input_shape``.
        dim: Token width.
        heads: Attention heads; must divide ``dim``.
        bytes_per_el: Bytes per score element (4 for float32, 2 for half precision).

    Returns:
        ``{"tokens": N, "attn_flops": ..., "attn_memory_bytes": ...}``.

    Raises:
        ValueError: a size that is not a multiple of the patch size, or ``heads`` not dividing
            ``dim``.
    """
    shape = tuple(int(s) for s in input_shape)
    patch = as_tuple(patch_size, len(shape), "patch_size")
    if any(s % p for s, p in zip(shape, patch, strict=True)):
        raise ValueError(f"input size {shape} must be a multiple of the patch size {patch}")
    _split_heads(dim, heads)
    n = math.prod(s // p for s, p in zip(shape, patch, strict=True))
    return {
        "tokens": n,
        "attn_flops": 2 * 2 * n * n * dim,
        "attn_memory_bytes": heads * n * n * bytes_per_el,
    }
