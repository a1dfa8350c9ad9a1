"""U-Net (A1) and its building blocks: shapes, gradients, padding, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.layers import ConvNormAct, ResidualBlock, UpSample, act_layer
from medseg.networks import (
    UNet,
    add_variance_head,
    create_model,
    list_models,
    model_signature,
    model_spatial_dims,
    unet_feature_channels,
)
from medseg.networks.common import EncoderFeatures


def _all_params_get_grad(model: torch.nn.Module, out: torch.Tensor | list[torch.Tensor]) -> None:
    outs = out if isinstance(out, list) else [out]
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not bad, f"parameters without gradient: {bad}"


def test_feature_channels() -> None:
    assert unet_feature_channels(32, 5, 320) == (32, 64, 128, 256, 320)
    assert unet_feature_channels(16, 5, 256) == (16, 32, 64, 128, 256)
    assert unet_feature_channels(8, 3, 10) == (8, 10, 10)


@pytest.mark.parametrize(
    ("spatial_dims", "channels", "size"),
    [
        (2, (4, 8), (16, 24)),
        (2, (4, 8, 16, 32), (48, 64)),
        (3, (4, 8, 16), (16, 16, 16)),
        (3, (2, 4, 8, 16), (16, 32, 16)),
    ],
)
def test_unet_shapes_and_gradients(spatial_dims: int, channels: tuple, size: tuple) -> None:
    model = UNet(spatial_dims, in_channels=2, num_classes=3, channels=channels)
    assert model.size_divisor == (2 ** (len(channels) - 1),) * spatial_dims
    assert model.out_channels == 3
    out = model(torch.randn(2, 2, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()
    _all_params_get_grad(model, out)


def test_default_unet_is_nnunet_like() -> None:
    model = create_model("unet", spatial_dims=3)
    assert model.channels == (32, 64, 128, 256, 320)
    assert model.size_divisor == (16, 16, 16)
    # Two conv-norm-act per stage; strided first conv downsamples.
    stage = model.encoder[1][0]
    assert len(stage) == 2
    assert stage[0].conv.stride == (2, 2, 2) and stage[1].conv.stride == (1, 1, 1)
    assert isinstance(stage[0].act, torch.nn.LeakyReLU) and stage[0].act.negative_slope == 0.01
    assert isinstance(stage[0].norm, torch.nn.InstanceNorm3d)
    assert stage[0].conv.bias is None  # a norm follows
    assert model.dropout_layers() == []


def test_odd_size_is_padded_and_cropped() -> None:
    model = UNet(2, channels=(4, 8, 16)).eval()  # divisor 4
    x = torch.randn(1, 1, 61, 47)
    with torch.no_grad():
        out = model(x)
        ref = model(F.pad(x, (0, 1, 0, 3)))  # 61 -> 64, 47 -> 48, zero padding at the end
    assert out.shape == (1, 2, 61, 47)
    torch.testing.assert_close(out, ref[..., :61, :47], rtol=0, atol=0)


def test_no_padding_raises_with_valid_sizes() -> None:
    model = UNet(2, channels=(4, 8, 16), pad_input=False)
    with pytest.raises(ValueError, match=r"axis 0: 61 -> 60 or 64; axis 1: 47 -> 44 or 48"):
        model(torch.randn(1, 1, 61, 47))
    with pytest.raises(ValueError, match=r"\(64, 48\)"):
        model(torch.randn(1, 1, 61, 47))
    assert model(torch.randn(1, 1, 60, 44)).shape == (1, 2, 60, 44)


def test_bad_input_shapes() -> None:
    model = UNet(3, in_channels=2, channels=(4, 8))
    with pytest.raises(ValueError, match="in_channels=2"):
        model(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        model(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="strides"):
        UNet(2, channels=(4, 8, 16), strides=(2,))
    with pytest.raises(TypeError):
        UNet(2, chanels=(4, 8))  # misspelt option


def test_residual_variant() -> None:
    model = UNet(2, channels=(4, 8, 16), residual=True)
    assert isinstance(model.encoder[1][0], ResidualBlock)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    _all_params_get_grad(model, out)


def test_residual_block_is_identity_plus_branch() -> None:
    block = ResidualBlock(2, 4, 4)
    assert isinstance(block.shortcut, torch.nn.Identity)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        block.conv2.conv.weight.zero_()  # branch output 0, instance norm of 0 is 0
        out = block(x)
    torch.testing.assert_close(out, F.leaky_relu(x, 0.01))
    proj = ResidualBlock(3, 4, 6, stride=(1, 2, 2))
    assert proj(torch.randn(1, 4, 4, 8, 8)).shape == (1, 6, 4, 4, 4)


def test_deep_supervision_outputs() -> None:
    model = UNet(2, channels=(4, 8, 16, 32), deep_supervision=True)
    outs = model(torch.randn(2, 1, 64, 64))
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 64, 64), (2, 2, 32, 32), (2, 2, 16, 16)]
    _all_params_get_grad(model, outs)
    # Odd input: level k is cropped to ceil(size / 2^k).
    outs = model(torch.randn(1, 1, 61, 47))
    assert [tuple(o.shape[2:]) for o in outs] == [(61, 47), (31, 24), (16, 12)]
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 64, 64)


@pytest.mark.parametrize(("where", "count"), [("decoder", 3), ("bottleneck", 1), ("all", 7)])
def test_dropout_layers(where: str, count: int) -> None:
    model = UNet(2, channels=(4, 8, 16, 32), dropout=0.3, dropout_where=where)
    layers = model.dropout_layers()
    assert len(layers) == count
    assert all(isinstance(m, torch.nn.Dropout2d) and m.p == 0.3 for m in layers)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))  # stochastic in training
        model.eval()
        assert torch.equal(model(x), model(x))
        for m in layers:  # MC Dropout: re-enable only the dropout layers
            m.train()
        assert not torch.equal(model(x), model(x))


def test_anisotropic_strides_3d() -> None:
    model = UNet(3, channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)))
    assert model.size_divisor == (2, 4, 4)
    seen: dict[str, torch.Size] = {}

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["b"] = output.shape

    model.encoder[-1].register_forward_hook(hook)
    out = model(torch.randn(1, 1, 6, 16, 20))
    assert out.shape == (1, 2, 6, 16, 20)
    assert seen["b"] == (1, 16, 3, 4, 5)
    _all_params_get_grad(model, out)
    with pytest.raises(ValueError, match="axis 0: 5 -> 4 or 6"):
        UNet(3, channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), pad_input=False)(
            torch.randn(1, 1, 5, 16, 16)
        )


def test_linear_upsampling_and_maxpool() -> None:
    model = UNet(3, channels=(4, 8, 16), upsample="trilinear", downsample="maxpool")
    out = model(torch.randn(1, 1, 8, 12, 16))
    assert out.shape == (1, 2, 8, 12, 16)
    _all_params_get_grad(model, out)


def test_upsample_linear_is_interpolate_then_conv() -> None:
    up = UpSample(2, 3, 2, scale=(2, 3), mode="linear")
    x = torch.randn(1, 3, 5, 4)
    ref = up.conv(F.interpolate(x, scale_factor=(2, 3), mode="bilinear", align_corners=False))
    torch.testing.assert_close(up(x), ref, rtol=1e-5, atol=1e-6)
    t = UpSample(3, 3, 2, scale=(1, 2, 2))
    assert t(torch.randn(1, 3, 3, 4, 5)).shape == (1, 2, 3, 8, 10)


def test_conv_norm_act_dilation_keeps_size() -> None:
    layer = ConvNormAct(2, 3, 5, kernel_size=3, dilation=3, norm="batch", act="relu")
    assert layer.conv.weight.numel() == 9 * 3 * 5  # same parameters as a plain 3x3 (A2)
    assert layer.conv.padding == (3, 3)
    assert layer(torch.randn(2, 3, 11, 9)).shape == (2, 5, 11, 9)
    assert isinstance(act_layer("none"), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown activation"):
        act_layer("swish2")


# ------------------------------------------- encoder / decoder split (decoder-only MC, U2)

SEG_SMALL = {  # small widths; the architecture is the registered one
    "unet": {"channels": (4, 8, 16)},
    "unetpp": {"channels": (4, 8, 16)},
    "deeplabv3plus": {"channels": (4, 8, 16, 16), "decoder_channels": 8,
                      "low_level_channels": 4},
    "transunet": {"channels": (4, 8, 16), "embed_dim": 16, "num_heads": 2, "num_layers": 1},
}
SEG_ODD_SIZES = {2: (37, 30), 3: (13, 11, 14)}  # odd sizes: the padding / cropping path too
SPLIT_CASES = [
    (name, d, kw)
    for name in list_models("segmentation")
    for d in model_spatial_dims(name)
    for kw in (
        [{}, {"deep_supervision": True, "dropout": 0.2, "dropout_where": "all"}]
        if name == "unet"
        else [{}, {"deep_supervision": False}, {"prune_depth": 1}] if name == "unetpp"
        else [{}, {"dropout": 0.2, "dropout_where": "all"}]
    )
]


def _seg_net(name: str, spatial_dims: int, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"in_channels": 1, "num_classes": 3, **SEG_SMALL[name], **kw}
    return create_model(name, spatial_dims=spatial_dims, **cfg)


def _as_list(out: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]


def test_every_segmentation_network_is_split() -> None:
    assert set(list_models("segmentation")) == set(SEG_SMALL)  # a new network needs a split
    for name in list_models("segmentation"):
        model = _seg_net(name, 2)
        assert callable(model.encode) and callable(model.decode), name
        assert "dropout_where" in model_signature(name).parameters, name


@pytest.mark.parametrize(("name", "spatial_dims", "kw"), SPLIT_CASES)
def test_forward_is_decode_of_encode(name: str, spatial_dims: int, kw: dict) -> None:
    model = _seg_net(name, spatial_dims, **kw).eval()
    x = torch.randn(2, 1, *SEG_ODD_SIZES[spatial_dims])
    with torch.no_grad():
        feats = model.encode(x)
        assert isinstance(feats, EncoderFeatures)
        assert feats.spatial == x.shape[2:] and feats.batch_size == 2
        assert all(t.shape[0] == 2 for t in feats)
        split = model.decode(feats)
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *x.shape[2:])
    assert torch.equal(split, out)  # bit-identical
    # Training mode (dropout and deep-supervision lists included): same seed, same output.
    model.train()
    torch.manual_seed(1)
    ref = _as_list(model(x))
    torch.manual_seed(1)
    got = _as_list(model.decode(model.encode(x)))
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    if kw.get("deep_supervision") or (name == "unetpp" and kw.get("deep_supervision", True)):
        assert len(ref) > 1  # the deep-supervision list goes through decode too


def test_decode_takes_any_batch_of_features() -> None:
    """Features repeated along the batch axis decode to the repeated output (what batched
    decoder-only MC Dropout relies on)."""
    for name in list_models("segmentation"):
        model = _seg_net(name, 2).eval()
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            feats = model.encode(x)
            out = model.decode(feats.map(lambda t: t.repeat(3, *([1] * (t.ndim - 1)))))
            torch.testing.assert_close(out, model(x).repeat(3, 1, 1, 1), rtol=0, atol=1e-6)


def test_variance_head_keeps_the_split() -> None:
    net = add_variance_head(_seg_net("unet", 2)).eval()
    x = torch.randn(1, 1, 30, 30)
    with torch.no_grad():
        logits, log_var = net(x)
        s_logits, s_log_var = net.decode(net.encode(x))
    assert torch.equal(logits, s_logits) and torch.equal(log_var, s_log_var)
    with pytest.raises(TypeError, match="encode/decode"):
        add_variance_head(create_model("resnet10_cls", num_classes=2)).encode(x)


def test_unetpp_pruned_features_are_checked() -> None:
    model = _seg_net("unetpp", 2, prune_depth=1).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        feats = model.encode(x)
    assert len(feats) == 2  # pruned: only X^{0,0} and X^{1,0} are computed
    model.prune_depth = None
    with pytest.raises(ValueError, match="encode again"):
        model.decode(feats)


def _dropout_split(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[str], list[str]]:
    """Names of the dropout modules (p > 0) that ``encode`` and ``decode`` run through."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(names[m]))
             for m in model.dropout_layers()]
    with torch.no_grad():
        feats = model.encode(x)
        enc = list(seen)
        seen.clear()
        model.decode(feats)
    for h in hooks:
        h.remove()
    return enc, list(seen)


@pytest.mark.parametrize("name", list_models("segmentation"))
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dropout_where_decoder_keeps_the_encoder_free(name: str, spatial_dims: int) -> None:
    model = _seg_net(name, spatial_dims, dropout=0.3, dropout_where="decoder").eval()
    x = torch.randn(1, 1, *SEG_ODD_SIZES[spatial_dims])
    enc, dec = _dropout_split(model, x)
    assert enc == [] and len(dec) >= 1
    assert set(dec) == {n for n, m in model.named_modules() if m in model.dropout_layers()}
    everywhere = _seg_net(name, spatial_dims, dropout=0.3, dropout_where="all").eval()
    enc_all, dec_all = _dropout_split(everywhere, x)
    assert len(enc_all) >= 1 and len(dec_all) >= len(dec)
    # Dropout has no parameters: both placements load the same weights.
    assert list(model.state_dict()) == list(everywhere.state_dict())


def test_dropout_where_defaults_keep_todays_placement() -> None:
    assert model_signature("unet").parameters["dropout_where"].default == "decoder"
    assert model_signature("unetpp").parameters["dropout_where"].default == "decoder"
    assert model_signature("deeplabv3plus").parameters["dropout_where"].default == "decoder"
    assert model_signature("transunet").parameters["dropout_where"].default == "all"
    # TransUNet by default also drops out in its Transformer (pos_drop + 3 per block).
    net = _seg_net("transunet", 2, dropout=0.1, num_layers=2)
    assert len(net.dropout_layers()) == 1 + 3 * 2 + 2
    dec = _seg_net("transunet", 2, dropout=0.1, num_layers=2, dropout_where="decoder")
    assert len(dec.dropout_layers()) == 2


def test_unet_bottleneck_dropout_belongs_to_decode() -> None:
    model = _seg_net("unet", 2, channels=(4, 8, 16, 32), dropout=0.3,
                     dropout_where="bottleneck").eval()
    enc, dec = _dropout_split(model, torch.randn(1, 1, 32, 32))
    assert enc == [] and dec == ["bottleneck_dropout"]


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_unknown_dropout_where_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="dropout_where"):
        _seg_net(name, 2, dropout=0.1, dropout_where="encoder_only")
