"""TransUNet (A5): CNN encoder -> Transformer bottleneck on the token grid -> U-Net decoder."""

from __future__ import annotations

import pytest
import torch

from medseg.networks import create_model, list_models, model_spatial_dims, model_task
from medseg.networks.transunet import TransUNet


def _net(**kw: object) -> TransUNet:
    torch.manual_seed(0)
    cfg: dict = {"spatial_dims": 2, "in_channels": 1, "num_classes": 3}
    cfg.update(kw)
    return TransUNet(**cfg)


def test_registered() -> None:
    assert "transunet" in list_models()
    assert model_task("transunet") == "segmentation"
    assert model_spatial_dims("transunet") == (2, 3)
    assert isinstance(create_model("transunet", num_classes=3), TransUNet)


@pytest.mark.parametrize(
    ("dims", "shape"), [(2, (64, 64)), (2, (37, 50)), (3, (16, 24, 20)), (3, (13, 16, 16))]
)
def test_output_shape_any_size(dims: int, shape: tuple[int, ...]) -> None:
    net = _net(spatial_dims=dims).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


def test_token_grid_and_counts() -> None:
    net = _net()  # channels (8, 16, 32, 64): tokens at 1/8
    assert net.size_divisor == (8, 8) and net.token_grid_size == (8, 8)
    assert net.num_tokens((128, 128)) == 256  # the spec's "few hundred tokens"
    assert net.num_tokens((60, 64)) == 64  # padded to 64 x 64
    deep = _net(channels=(4, 8, 8, 16, 16), image_size=256)  # 1/16
    assert deep.size_divisor == (16, 16) and deep.num_tokens((256, 256)) == 256
    seen: list[tuple[int, ...]] = []
    net.patch_embed.register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape)))
    net.eval()(torch.randn(1, 1, 128, 96))
    assert seen == [(1, 16 * 12, 64)]


def test_positional_embedding_is_interpolated_for_other_sizes() -> None:
    net = _net().eval()
    pe = net.patch_embed
    assert pe.interpolated_pos_embed((8, 8)) is pe.pos_embed
    resized = pe.interpolated_pos_embed((16, 16))
    assert resized.shape == (1, 256, 64)
    # Bilinear upsampling by 2 (align_corners=False) of a grid that is constant along x keeps it
    # constant, and the mean over the grid is preserved exactly for a linear ramp's symmetry.
    with torch.no_grad():
        pe.pos_embed.copy_(torch.arange(8.0).repeat_interleave(8)[None, :, None].expand(1, 64, 64))
    up = pe.interpolated_pos_embed((16, 16))[0, :, 0].reshape(16, 16)
    torch.testing.assert_close(up[:, 0], up[:, 7])
    torch.testing.assert_close(up.mean(), torch.tensor(3.5))
    torch.testing.assert_close(up[0, 0], torch.tensor(0.0))  # clamped at the border
    torch.testing.assert_close(up[1, 0], torch.tensor(0.25))


def test_forward_is_head_of_features() -> None:
    net = _net().eval()
    x = torch.randn(1, 1, 30, 40)
    with torch.no_grad():
        feats = net.forward_features(x)
        out = net(x)
    assert feats.shape == (1, 8, 32, 40)
    torch.testing.assert_close(out, net.head(feats)[..., :30, :40])


def test_transformer_gives_global_context() -> None:
    """A pixel in one corner changes the logits in the opposite corner: the CNN parts alone
    reach far less than 64 pixels, so only the attention can carry it (batch norm in eval mode
    is local; instance norm would couple globally by itself)."""
    net = _net(norm="batch").eval()
    x = torch.randn(1, 1, 64, 64)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 10.0
    with torch.no_grad():
        diff = (net(x2) - net(x))[0, :, 63, 63].abs().max()
        # Without the Transformer blocks (identity) the far corner does not move.
        blocks = net.blocks
        net.blocks = torch.nn.ModuleList()
        net.norm = torch.nn.Identity()
        local = (net(x2) - net(x))[0, :, 63, 63].abs().max()
    net.blocks = blocks
    assert diff > 1e-6
    assert local == 0


def test_skip_connections_and_decoder_channels() -> None:
    net = _net(channels=(4, 8, 16))
    assert len(net.ups) == len(net.decoder) == 2
    assert net.decoder[0][0][0].conv.in_channels == 2 * 8
    assert net.decoder[1][0][0].conv.in_channels == 2 * 4
    assert net.head.in_channels == 4 and net.head.out_channels == 3


def test_dropout_layers() -> None:
    assert _net().dropout_layers() == []
    net = _net(dropout=0.1, num_layers=2)
    # pos_drop + 3 per Transformer block (attention projection, 2 in the MLP) + 3 decoder stages.
    assert len(net.dropout_layers()) == 1 + 3 * 2 + 3


@pytest.mark.parametrize(
    "kw",
    [
        {"channels": (8,)},
        {"channels": (8, 0)},
        {"embed_dim": 30, "num_heads": 4},
        {"num_layers": 0},
        {"dropout": 1.0},
        {"mlp_ratio": 0.0},
        {"spatial_dims": 1},
        {"num_classes": 0},
    ],
)
def test_bad_config(kw: dict) -> None:
    with pytest.raises(ValueError):
        _net(**kw)


def test_bad_inputs() -> None:
    net = _net(pad_input=False)
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        net(torch.randn(1, 1, 60, 64))
    with pytest.raises(ValueError, match="in_channels=1"):
        net(torch.randn(1, 2, 64, 64))
    with pytest.raises(ValueError, match="expects a"):
        net(torch.randn(1, 1, 64, 64, 64))
    assert net.valid_size((60, 65)) == (64, 72)
