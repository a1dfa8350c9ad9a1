"""Vision Transformer classifier (A4, A7): shapes, position interpolation, padding, pooling,
gradients, determinism and a tiny learning problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.networks import ViTClassifier, create_model, list_models, model_spatial_dims


def _small(spatial_dims: int, **kw: object) -> ViTClassifier:
    cfg: dict = {"image_size": 16, "patch_size": 4, "dim": 16, "depth": 2, "heads": 2}
    cfg.update(kw)
    return ViTClassifier(spatial_dims, **cfg)


def test_registered_as_classification_2d_3d() -> None:
    assert "vit_classifier" in list_models("classification")
    assert model_spatial_dims("vit_classifier") == (2, 3)
    net = create_model("vit_classifier", spatial_dims=3, in_channels=2, num_classes=4)
    assert isinstance(net, ViTClassifier) and net.patch_embed.grid_size == (8, 8, 8)


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (16, 16)), (3, (16, 16, 16))])
def test_output_shapes(spatial_dims: int, size: tuple[int, ...]) -> None:
    net = _small(spatial_dims, in_channels=2, num_classes=3).eval()
    x = torch.randn(5, 2, *size)
    with torch.no_grad():
        logits, feats = net(x), net.features(x)
        tok = net.encode(x)
    assert logits.shape == (5, 3) and feats.shape == (5, 16)
    n = 4**spatial_dims
    assert net.tokens(x) == n and tok.shape == (5, n + 1, 16)
    torch.testing.assert_close(logits, net.head(feats))
    torch.testing.assert_close(feats, tok[:, 0])


@pytest.mark.parametrize(
    ("spatial_dims", "size", "n"),
    [(2, (32, 8), 8 * 2), (2, (12, 20), 3 * 5), (3, (8, 12, 16), 2 * 3 * 4)],
)
def test_other_sizes_interpolate_positions(
    spatial_dims: int, size: tuple[int, ...], n: int
) -> None:
    net = _small(spatial_dims).eval()
    x = torch.randn(2, 1, *size)
    assert net.tokens(x) == n == net.tokens(size)
    with torch.no_grad():
        tok = net.encode(x)
        out = net(x)
    assert tok.shape == (2, n + 1, 16) and out.shape == (2, 2)
    # the patch tokens carry the learned grid resized to the new grid with F.interpolate
    grid = tuple(s // 4 for s in size)
    pos = net.patch_embed.interpolated_pos_embed(grid)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    ref = F.interpolate(
        net.patch_embed.pos_embed.transpose(1, 2).reshape(1, 16, *([4] * spatial_dims)),
        size=grid, mode=mode, align_corners=False,
    ).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pos, ref)
    # the learned grid itself is used unchanged
    assert net.patch_embed.interpolated_pos_embed((4,) * spatial_dims) is net.patch_embed.pos_embed


def test_non_divisible_sizes_are_zero_padded() -> None:
    net = _small(2).eval()
    x = torch.randn(3, 1, 13, 18)
    assert net.padded_size((13, 18)) == (16, 20)
    assert net.tokens(x) == 4 * 5
    padded = net.pad(x)
    assert padded.shape == (3, 1, 16, 20)
    torch.testing.assert_close(padded[:, :, :13, :18], x)
    assert torch.count_nonzero(padded[:, :, 13:]) == 0
    assert torch.count_nonzero(padded[:, :, :, 18:]) == 0
    with torch.no_grad():
        # the same as feeding the explicitly zero-padded input
        torch.testing.assert_close(net(x), net(torch.nn.functional.pad(x, (0, 2, 0, 3))))
    net3 = _small(3).eval()
    x3 = torch.randn(1, 1, 5, 9, 4)
    assert net3.tokens(x3) == 2 * 3 * 1
    with torch.no_grad():
        assert net3(x3).shape == (1, 2)
    # image_size itself needs not be a multiple of the patch size
    assert _small(2, image_size=(28, 30)).patch_embed.grid_size == (7, 8)


def test_cls_vs_mean_pooling() -> None:
    torch.manual_seed(0)
    cls_net, mean_net = _small(2, pool="cls").eval(), _small(2, pool="mean").eval()
    assert cls_net.num_prefix_tokens == 1 and cls_net.cls_token is not None
    assert mean_net.num_prefix_tokens == 0 and mean_net.cls_token is None
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        t_mean = mean_net.encode(x)
        assert t_mean.shape == (2, 16, 16)
        torch.testing.assert_close(mean_net.features(x), t_mean.mean(1))
        torch.testing.assert_close(cls_net.features(x), cls_net.encode(x)[:, 0])
    # the CLS-pooled output depends on the learnable CLS token
    with torch.no_grad():
        before = cls_net(x)
        cls_net.cls_token.add_(1.0)
        assert not torch.allclose(before, cls_net(x))
    with pytest.raises(ValueError, match="pool"):
        _small(2, pool="max")


@pytest.mark.parametrize(("spatial_dims", "pool"), [(2, "cls"), (2, "mean"), (3, "cls")])
def test_every_parameter_gets_a_gradient(spatial_dims: int, pool: str) -> None:
    torch.manual_seed(1)
    net = _small(spatial_dims, pool=pool, num_classes=3).train()
    x = torch.randn(2, 1, *([12] * spatial_dims))  # other grid (3^d) than the learned one
    out = net(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert torch.any(p.grad != 0), name


def test_eval_is_deterministic_and_dropout_layers() -> None:
    net = _small(2, dropout=0.2, attn_dropout=0.1, depth=2)
    # pos_drop + per block (attention projection, two in the MLP) + head_drop
    layers = net.dropout_layers()
    assert len(layers) == 1 + 2 * 3 + 1 and all(m.p == 0.2 for m in layers)
    assert _small(2).dropout_layers() == []
    x = torch.randn(2, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


def test_input_errors() -> None:
    net = _small(2, in_channels=2)
    with pytest.raises(ValueError, match="input channel"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="expects a"):
        net(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="heads"):
        ViTClassifier(2, dim=10, heads=4)
    with pytest.raises(ValueError, match="spatial_dims"):
        ViTClassifier(1)


def test_learns_bright_vs_dark() -> None:
    torch.manual_seed(0)
    n = 32
    y = torch.arange(n) % 2
    # dark images around 0.2, bright around 0.8, with noise
    x = 0.2 + 0.6 * y.float().view(n, 1, 1, 1) + 0.1 * torch.randn(n, 1, 28, 28)
    net = ViTClassifier(2, 1, 2, image_size=28, patch_size=7, dim=32, depth=2, heads=4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        loss0 = F.cross_entropy(net(x), y).item()
    net.train()
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        logits = net(x)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc == 1.0
    # it learned: the loss started near log(2) with chance accuracy
    assert F.cross_entropy(logits, y).item() < 0.2 * loss0
