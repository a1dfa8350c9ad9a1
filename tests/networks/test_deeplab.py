"""ASPP and DeepLabV3+ (spec A3): shapes, parameter counts, output stride, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.layers import ASPP, DilatedConv
from medseg.networks import DeepLabV3Plus, create_model, list_models, model_spatial_dims

SMALL = {"channels": (8, 8, 16, 16), "decoder_channels": 8, "low_level_channels": 4}


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("spatial", [(13, 17), (7, 9, 11)])
def test_aspp_keeps_spatial_size(spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    aspp = ASPP(len(spatial), 6, 5, rates=(2, 3), norm="instance").train()
    y = aspp(torch.randn(2, 6, *spatial))
    assert y.shape == (2, 5, *spatial)
    assert torch.isfinite(y).all()


def test_aspp_branches_and_parameter_count() -> None:
    c_in, c_out, rates = 8, 4, (6, 12, 18)
    aspp = ASPP(2, c_in, c_out, rates=rates, norm="batch")
    # 1x1 + one per rate + image pooling.
    assert aspp.num_branches == 5
    assert len(aspp.branches) == 4
    for branch, r in zip(aspp.branches[1:], rates, strict=True):
        assert isinstance(branch.conv, DilatedConv)
        assert branch.conv.conv.dilation == (r, r)
        # Same weight count as a plain 3x3, span 2r + 1.
        assert branch.conv.conv.weight.numel() == 9 * c_in * c_out
        assert branch.conv.effective_kernel_size == (2 * r + 1, 2 * r + 1)
    bn = 2 * c_out  # batch-norm weight + bias
    expected = (
        (c_in * c_out + bn)  # 1x1 branch (no conv bias before a norm)
        + len(rates) * (9 * c_in * c_out + bn)  # dilated branches
        + (c_in * c_out + c_out)  # pooling branch: 1x1 conv with bias
        + (5 * c_out * c_out + c_out)  # fusing 1x1 conv with bias
    )
    assert _n_params(aspp) == expected == 40 + 888 + 36 + 84


def test_aspp_matches_functional_reference() -> None:
    """rates=() and norm='none': 1x1 branch + pooling branch fused, written out by hand."""
    torch.manual_seed(1)
    aspp = ASPP(2, 3, 2, rates=(), norm="none", act="relu").eval()
    for p in aspp.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 3, 5, 4)
    b0 = F.relu(F.conv2d(x, aspp.branches[0].conv.weight, aspp.branches[0].conv.bias))
    mean = x.mean(dim=(2, 3), keepdim=True)
    pooled = F.relu(F.conv2d(mean, aspp.pool_branch.conv.weight, aspp.pool_branch.conv.bias))
    cat = torch.cat((b0, pooled.expand(-1, -1, 5, 4)), dim=1)
    ref = F.relu(F.conv2d(cat, aspp.project.conv.weight, aspp.project.conv.bias))
    torch.testing.assert_close(aspp(x), ref)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_aspp_pooling_branch_survives_per_sample_norm(norm: str) -> None:
    """At batch size 1 the image-level branch must still change the output."""
    torch.manual_seed(2)
    aspp = ASPP(2, 4, 4, rates=(2,), norm=norm).train()
    x = torch.randn(1, 4, 6, 6)
    y0 = aspp(x)
    with torch.no_grad():
        aspp.pool_branch.conv.bias.add_(1.0)
    y1 = aspp(x)
    assert (y1 - y0).abs().max() > 1e-2


def test_aspp_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="rates"):
        ASPP(2, 4, 4, rates=(0, 6))


@pytest.mark.parametrize(
    ("spatial", "output_stride"),
    [((37, 45), 8), ((37, 45), 16), ((19, 21, 23), 8), ((19, 21, 23), 16)],
)
def test_deeplab_output_shape_odd_sizes(spatial: tuple[int, ...], output_stride: int) -> None:
    torch.manual_seed(0)
    net = DeepLabV3Plus(
        len(spatial), in_channels=2, num_classes=3, output_stride=output_stride, **SMALL
    ).eval()
    y = net(torch.randn(2, 2, *spatial))
    assert y.shape == (2, 3, *spatial)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("output_stride", "strides", "dilations", "rates"),
    [
        (16, (2, 4, 8, 16), (1, 1, 1, 1), (6, 12, 18)),
        (8, (2, 4, 8, 8), (1, 1, 1, 2), (12, 24, 36)),
        (4, (2, 4, 4, 4), (1, 1, 2, 4), (24, 48, 72)),
    ],
)
def test_deeplab_encoder_output_stride(
    output_stride: int,
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    rates: tuple[int, ...],
) -> None:
    net = DeepLabV3Plus(2, output_stride=output_stride, **SMALL).eval()
    assert net.output_stride == output_stride
    assert net.feature_strides == strides
    assert net.feature_dilations == dilations
    assert net.aspp_rates == rates
    spatial = (50, 33)
    feats = net.encode(torch.randn(1, 1, *spatial))
    assert len(feats) == 4
    padded = tuple(math.ceil(n / output_stride) * output_stride for n in spatial)
    assert net.valid_size(spatial) == padded
    for f, c, s in zip(feats, SMALL["channels"], strides, strict=True):
        assert f.shape == (1, c, *(n // s for n in padded))
    assert feats[-1].shape[2:] == tuple(math.ceil(n / output_stride) for n in spatial)
    # A dilated stage really uses dilation (its convolutions, not only the bookkeeping).
    last = net.encoder[-1].conv1.conv
    assert last.dilation == (dilations[-1],) * 2
    assert last.stride == ((2, 2) if dilations[-1] == 1 else (1, 1))


def test_deeplab_encoder_hook_sees_output_stride_3d() -> None:
    net = DeepLabV3Plus(3, output_stride=8, **SMALL).eval()
    seen: list[torch.Size] = []
    net.aspp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    net(torch.randn(1, 1, 24, 17, 32))
    assert seen == [torch.Size((1, 16, 3, 3, 4))]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deeplab_every_parameter_gets_gradient(spatial_dims: int) -> None:
    torch.manual_seed(3)
    net = DeepLabV3Plus(spatial_dims, output_stride=8, dropout=0.1, **SMALL).train()
    x = torch.randn(2, 1, *(24,) * spatial_dims)
    y = net(x)
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    assert not missing


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_deeplab_batch_size_one_train(norm: str) -> None:
    torch.manual_seed(4)
    net = DeepLabV3Plus(2, output_stride=16, norm=norm, **SMALL).train()
    y = net(torch.randn(1, 1, 40, 36))
    assert y.shape == (1, 2, 40, 36)
    (y * torch.randn_like(y)).sum().backward()
    assert net.aspp.pool_branch.conv.weight.grad.abs().max() > 0
    assert torch.isfinite(y).all()


def test_deeplab_dropout_layers_and_validation() -> None:
    assert DeepLabV3Plus(2, **SMALL).dropout_layers() == []
    layers = DeepLabV3Plus(2, dropout=0.3, **SMALL).dropout_layers()
    assert len(layers) == 2 and all(m.p == 0.3 for m in layers)
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(2, output_stride=12, **SMALL)
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(2, output_stride=32, **SMALL)
    with pytest.raises(ValueError, match="low_level_index"):
        DeepLabV3Plus(2, low_level_index=3, **SMALL)
    with pytest.raises(ValueError, match="in_channels"):
        DeepLabV3Plus(2, in_channels=2, **SMALL)(torch.randn(1, 1, 16, 16))


def test_deeplab_registered() -> None:
    assert "deeplabv3plus" in list_models("segmentation")
    assert model_spatial_dims("deeplabv3plus") == (2, 3)
    net = create_model("deeplabv3plus", spatial_dims=2, in_channels=1, num_classes=2)
    assert isinstance(net, DeepLabV3Plus)
    with pytest.raises(TypeError):
        create_model("deeplabv3plus", spatial_dims=2, output_strid=8)
