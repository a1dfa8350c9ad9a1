"""Self-attention, Transformer block, patch embedding and attention cost (spec A4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.layers import (
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
    attention_cost,
)


def _reference_mhsa(m: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Hand-written softmax(Q K^T / sqrt(d_k)) V, head by head."""
    w, b = m.qkv.weight, m.qkv.bias
    d = m.dim
    q = x @ w[:d].T + b[:d]
    k = x @ w[d : 2 * d].T + b[d : 2 * d]
    v = x @ w[2 * d :].T + b[2 * d :]
    dk = d // m.heads
    outs = []
    for h in range(m.heads):
        sl = slice(h * dk, (h + 1) * dk)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dk)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    return torch.cat(outs, dim=-1) @ m.proj.weight.T + m.proj.bias


@pytest.mark.parametrize("heads", [1, 4])
def test_mhsa_matches_reference(heads: int) -> None:
    torch.manual_seed(0)
    m = MultiHeadSelfAttention(16, heads=heads).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference_mhsa(m, x), rtol=0, atol=1e-10)
    assert m.scale == pytest.approx(1 / math.sqrt(16 // heads))


def test_mhsa_gradcheck() -> None:
    torch.manual_seed(1)
    m = MultiHeadSelfAttention(4, heads=2).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


def test_mhsa_rejects_bad_heads_and_shape() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        MultiHeadSelfAttention(10, heads=3)
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        MultiHeadSelfAttention(8, heads=2)(torch.randn(2, 5, 6))


def test_transformer_block_pre_norm() -> None:
    torch.manual_seed(2)
    blk = TransformerBlock(8, heads=2, mlp_ratio=2.0).double().eval()
    assert blk.mlp[0].out_features == 16
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = x + blk.attn(F.layer_norm(x, (8,), blk.norm1.weight, blk.norm1.bias))
    ref = h + blk.mlp(F.layer_norm(h, (8,), blk.norm2.weight, blk.norm2.bias))
    torch.testing.assert_close(blk(x), ref, rtol=0, atol=1e-12)


def test_attention_cost_spec_numbers() -> None:
    c2 = attention_cost((256, 256), 16, dim=768, heads=12)
    c3 = attention_cost((256, 256, 128), 16, dim=768, heads=12)
    assert c2["tokens"] == 256
    assert c3["tokens"] == 2048
    assert c2["attn_flops"] == 4 * 256**2 * 768
    assert c2["attn_memory_bytes"] == 12 * 256**2 * 4
    assert c3["attn_flops"] / c2["attn_flops"] == 64
    assert c3["attn_flops"] == 64 * c2["attn_flops"]
    assert c3["attn_memory_bytes"] == 64 * c2["attn_memory_bytes"]
    half = attention_cost((256, 256), 16, dim=768, heads=12, bytes_per_el=2)
    assert half["attn_memory_bytes"] * 2 == c2["attn_memory_bytes"]


def test_attention_cost_rejects_indivisible() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size"):
        attention_cost((250, 256), 16, dim=64, heads=4)


@pytest.mark.parametrize(
    ("dims", "spatial", "patch", "grid"),
    [(2, (32, 48), 8, (4, 6)), (3, (16, 16, 8), (4, 4, 2), (4, 4, 4))],
)
def test_patch_embedding_shape_and_tokens(dims, spatial, patch, grid) -> None:
    torch.manual_seed(3)
    pe = PatchEmbedding(dims, 2, 12, patch, grid).double()
    x = torch.randn(3, 2, *spatial, dtype=torch.float64)
    out = pe(x)
    assert out.shape == (3, math.prod(grid), 12)
    tokens = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out - tokens, pe.pos_embed.expand(3, -1, -1))


def test_patch_embedding_interpolates_2d_hand_values() -> None:
    pe = PatchEmbedding(2, 1, 1, 4, (2, 2)).double()
    with torch.no_grad():
        pe.pos_embed.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 4, 1))
    pos = pe.interpolated_pos_embed((4, 4)).reshape(4, 4)
    # bilinear, align_corners=False, 2 -> 4: weights along each axis give [0, .25, .75, 1]
    r = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=torch.float64)
    torch.testing.assert_close(pos, 2 * r[:, None] + r[None, :], rtol=0, atol=1e-12)
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    out = pe(x)
    assert out.shape == (1, 16, 1)
    torch.testing.assert_close(out[0, :, 0] - pe.proj.bias, pos.flatten())


def test_patch_embedding_interpolates_3d() -> None:
    torch.manual_seed(4)
    pe = PatchEmbedding(3, 1, 5, 2, (2, 3, 2)).double()
    x = torch.randn(2, 1, 8, 6, 6, dtype=torch.float64)
    out = pe(x)
    assert out.shape == (2, 4 * 3 * 3, 5)
    ref_pos = F.interpolate(
        pe.pos_embed.transpose(1, 2).reshape(1, 5, 2, 3, 2),
        size=(4, 3, 3),
        mode="trilinear",
        align_corners=False,
    )
    ref = pe.proj(x).flatten(2).transpose(1, 2) + ref_pos.flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    # gradients reach the learned positional embedding through the interpolation
    out.sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad.abs().sum() > 0


def test_patch_embedding_rejects_indivisible() -> None:
    pe = PatchEmbedding(2, 1, 4, 8, 4)
    with pytest.raises(ValueError, match=r"pad the input to \(32, 40\)"):
        pe(torch.randn(1, 1, 32, 33))
