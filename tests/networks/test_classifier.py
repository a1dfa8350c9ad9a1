"""ResNet-style classifier (A7): shapes in 2D/3D, tiny MedMNIST inputs, dropout, registry."""

from __future__ import annotations

import pytest
import torch

from medseg.layers.conv import ResidualBlock
from medseg.networks import ResNetClassifier, create_model, list_models, model_task
from medseg.tasks import ClassProbs


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_as_classification() -> None:
    for name in ("resnet_classifier", "resnet10_cls", "resnet18_cls"):
        assert name in list_models("classification")
        assert model_task(name) == "classification"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_small_inputs_and_shapes(spatial_dims: int) -> None:
    net = ResNetClassifier(spatial_dims, in_channels=2, num_classes=3, channels=(8, 16, 16),
                           blocks_per_stage=(1, 1, 1)).eval()
    size = (28, 28) if spatial_dims == 2 else (9, 9, 9)
    x = torch.randn(4, 2, *size)
    with torch.no_grad():
        logits = net(x)
        feats = net.features(x)
    assert logits.shape == (4, 3) and feats.shape == (4, 16)
    # logits are the linear layer applied to the pooled features
    torch.testing.assert_close(logits, net.fc(feats))
    probs = ClassProbs.from_logits(logits)
    torch.testing.assert_close(probs.probs.sum(1), torch.ones(4))
    # even a 1-voxel input survives every stride-2 stage (ceil(1 / 2) = 1)
    with torch.no_grad():
        assert net(torch.randn(2, 2, *([1] * spatial_dims))).shape == (2, 3)


def test_stage_strides_on_28x28() -> None:
    """stem 1 + three stride-2 stages: 28 -> 14 -> 7 -> 4; stem 2 halves once more."""
    for stem, expected in ((1, [28, 14, 7, 4]), (2, [14, 7, 4, 2])):
        net = ResNetClassifier(2, 1, 2, channels=(4, 4, 4, 4), stem_stride=stem).eval()
        x = net.stem(torch.randn(1, 1, 28, 28))
        sizes = []
        for stage in net.stages:
            x = stage(x)
            sizes.append(x.shape[-1])
        assert sizes == expected


def test_uses_residual_blocks_and_preset_sizes() -> None:
    net = create_model("resnet18_cls", spatial_dims=2, in_channels=1, num_classes=2)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 8
    assert net.feature_channels == (64, 128, 256, 512)
    # 2D ResNet-18 (basic blocks, 1-channel 7x7 stem, 2 classes) has about 11.2 M parameters
    assert 11.0e6 < _n_params(net) < 11.3e6
    r10 = create_model("resnet10_cls", spatial_dims=2, in_channels=1, num_classes=2)
    assert len([m for m in r10.modules() if isinstance(m, ResidualBlock)]) == 4
    assert _n_params(r10) < _n_params(net)


def test_dropout_layers_and_mc_behaviour() -> None:
    assert ResNetClassifier(2, 1, 2, channels=(4, 8), blocks_per_stage=(1, 1)).dropout_layers() \
        == []
    net = ResNetClassifier(2, 1, 2, channels=(4, 8), blocks_per_stage=(1, 1), dropout=0.5).eval()
    layers = net.dropout_layers()
    assert len(layers) == 1 and layers[0].p == 0.5
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        a = net(x)
        assert torch.equal(a, net(x))
        for m in layers:
            m.train()
        b, c = net(x), net(x)
    assert not torch.equal(b, c)  # MC Dropout: stochastic passes differ


def test_bad_config_and_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        ResNetClassifier(2, 1, 2, channels=(8, 16), blocks_per_stage=(1,))
    with pytest.raises(ValueError, match="stem_stride"):
        ResNetClassifier(2, 1, 2, stem_stride=4)
    net = ResNetClassifier(2, 1, 2, channels=(4,), blocks_per_stage=(1,))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="1 input channel"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="chanels"):
        create_model("resnet18_cls", chanels=(1,))


def test_learns_a_separable_toy_problem() -> None:
    """Bright vs dark 12x12 images: a few Adam steps drive the loss down and accuracy to 1."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % 2
    x = torch.randn(16, 1, 12, 12, generator=g) * 0.3 + (2.0 * y - 1.0).view(-1, 1, 1, 1)
    net = ResNetClassifier(2, 1, 2, channels=(8, 16), blocks_per_stage=(1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert loss.item() < 0.25 * first
    assert acc == 1.0
