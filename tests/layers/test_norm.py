"""Instance norm on channels-last inputs (group norm, one channel per group) equals
``F.instance_norm`` (float64 values, gradcheck), keeps the layout, and is still an
``nn.InstanceNorm*d`` with the same parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.inference import predict_probs
from medseg.inference.predictor import _weights_in
from medseg.layers.factories import norm_layer
from medseg.layers.norm import INSTANCE_NORM, channels_last_norms, is_channels_last
from medseg.networks import UNet

FMT = {2: torch.channels_last, 3: torch.channels_last_3d}


def _cl_input(dims: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, *(6, 5, 4)[:dims], generator=g, dtype=torch.float64) * 3 + 1.5
    return x.contiguous(memory_format=FMT[dims])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_instance_norm_equals_instance_norm(dims, affine):
    norm = INSTANCE_NORM[dims](5, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.linspace(0.5, 2.0, 5, dtype=torch.float64))
            norm.bias.copy_(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
    x = _cl_input(dims)
    assert is_channels_last(x)
    # outside channels_last_norms: nn.InstanceNorm's own computation, bit for bit
    parent = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    assert torch.equal(norm(x), parent.forward(norm, x))
    with channels_last_norms():
        y = norm(x)
    ref = F.instance_norm(x.contiguous(), weight=norm.weight, bias=norm.bias, eps=norm.eps)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=FMT[dims]) and not y.is_contiguous()  # no copy back
    # closed form for one (sample, channel): zero mean, unit (biased) variance before affine
    if not affine:
        v = y[1, 3].flatten()
        assert abs(float(v.mean())) < 1e-12
        assert float(v.var(unbiased=False)) == pytest.approx(
            float(x[1, 3].var(unbiased=False) / (x[1, 3].var(unbiased=False) + norm.eps)),
            rel=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_take_the_instance_norm_path(dims):
    """With a gradient to compute (training) the layer keeps instance norm's own path (its
    channels-last backward is faster than group norm's); values and gradients are instance
    norm's, checked by gradcheck; without one it takes the group-norm path."""
    norm = INSTANCE_NORM[dims](3, affine=True).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *(4, 3, 3)[:dims], generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=FMT[dims]).requires_grad_(True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
        norm.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    with channels_last_norms():
        assert norm(x).is_contiguous()  # instance norm's path: channels-first output
        assert torch.autograd.gradcheck(norm, (x,))
        with torch.no_grad():
            assert is_channels_last(norm(x))
    # the group-norm formulation itself is differentiable and equal, should it be used
    assert torch.autograd.gradcheck(
        lambda t: F.group_norm(t, 3, norm.weight, norm.bias, norm.eps), (x,))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_factory_instance_norm_is_still_an_instance_norm(dims):
    norm = norm_layer("instance", dims, 4)
    base = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    assert isinstance(norm, base)
    assert list(norm.state_dict()) == list(base(4, affine=True).state_dict())
    # a channels-first input takes the parent's path: bit-identical to nn.InstanceNorm
    x = torch.randn(2, 4, *(5, 6, 3)[:dims])
    ref = base(4, affine=True)
    ref.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), ref(x))


def test_is_channels_last_ignores_ambiguous_layouts():
    cl = torch.channels_last
    assert not is_channels_last(torch.randn(2, 1, 4, 4).contiguous(memory_format=cl))
    assert not is_channels_last(torch.randn(2, 3, 4, 4))
    assert is_channels_last(torch.randn(2, 3, 4, 4).contiguous(memory_format=cl))
    assert not is_channels_last(torch.randn(2, 3, 4))


def test_predict_converts_a_network_whose_first_weight_is_layout_ambiguous():
    # in_channels = 1: the first convolution's weight is contiguous in both layouts; the
    # network must still be converted (this check stopped at the first weight before)
    torch.manual_seed(0)
    net = UNet(3, in_channels=1, num_classes=2, channels=(4, 8)).eval()
    assert _weights_in(net, torch.channels_last_3d) is False
    seen: list[bool] = []
    last_norm = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)][-1]
    hook = last_norm.register_forward_pre_hook(lambda m, a: seen.append(is_channels_last(a[0])))
    img = torch.randn(1, 1, 20, 20, 20)
    layout = [(p.data_ptr(), p.stride()) for p in net.parameters()]
    ref = predict_probs(net, img, 16, precision="fp32")
    assert seen and not any(seen)
    seen.clear()
    out = predict_probs(net, img, 16, precision="fp32", channels_last=True)
    hook.remove()
    assert seen and all(seen)  # the deepest layers ran channels-last too
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert _weights_in(net, torch.channels_last_3d) is False  # weights put back ...
    # ... as the very tensors they were: converting back would change the strides of size-1
    # axes (the first conv's input channel), and with them oneDNN's kernel choice, so a model
    # validated channels-last during training did not resume bit-exactly
    assert [(p.data_ptr(), p.stride()) for p in net.parameters()] == layout
