"""The matrix-product paths of 1x1 and kernel = stride transposed convolutions equal PyTorch's
convolutions (values in float64, gradients by gradcheck), and fall back where they would not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.layers import pointwise
from medseg.layers.factories import conv_nd, conv_transpose_nd
from medseg.layers.pointwise import patch_transpose_conv, pointwise_conv

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_conv_equals_conv(dims, with_bias):
    g = _gen(dims)
    x = torch.randn(3, 5, *(6, 7, 4)[:dims], generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, *(1,) * dims, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(pointwise_conv(x, w, b), CONV[dims](x, w, b), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("kernel", [(2,), (3,), (2, 2), (1, 3), (2, 2, 2), (1, 2, 2), (3, 1, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_patch_transpose_conv_equals_conv_transpose(kernel, with_bias):
    dims = len(kernel)
    g = _gen(len(kernel) * 10 + sum(kernel))
    x = torch.randn(2, 5, *(3, 4, 5)[:dims], generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64) if with_bias else None
    ref = CONVT[dims](x, w, b, stride=kernel)
    out = patch_transpose_conv(x, w, b)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_float64(dims):
    g = _gen(7)
    x = torch.randn(2, 3, *(3,) * dims, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 3, *(1,) * dims, generator=g, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(3, 2, *(2,) * dims, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pointwise_conv, (x, w1, b))
    assert torch.autograd.gradcheck(patch_transpose_conv, (x, wt, b))


@pytest.mark.parametrize("dims", [2, 3])
def test_modules_are_torch_layers_with_the_same_state(dims):
    conv = conv_nd(dims)(8, 2, kernel_size=1)
    up = conv_transpose_nd(dims)(8, 4, kernel_size=2, stride=2)
    assert isinstance(conv, (nn.Conv2d, nn.Conv3d)[dims - 2])
    assert isinstance(up, (nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 2])
    plain = (nn.Conv2d, nn.Conv3d)[dims - 2](8, 2, kernel_size=1)
    plain_up = (nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 2](8, 4, 2, stride=2)
    plain.load_state_dict(conv.state_dict())
    plain_up.load_state_dict(up.state_dict())
    x = torch.randn(2, 8, *(6,) * dims, generator=_gen(1))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(up(x), plain_up(x), rtol=1e-5, atol=1e-5)
        # bf16 autocast: the matrix product runs in bf16 like the convolution would
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = up(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), plain_up(x), rtol=0.02, atol=0.05)


def test_fallbacks_use_the_parent_forward(monkeypatch):
    """Other kernels, strided / padded / grouped 1x1, non-contiguous (channels-last) inputs,
    ``output_size`` and ONNX export take the convolution itself."""
    calls = {"pw": 0, "pt": 0}
    real_pw, real_pt = pointwise.pointwise_conv, pointwise.patch_transpose_conv

    def pw(*a):
        calls["pw"] += 1
        return real_pw(*a)

    def pt(*a):
        calls["pt"] += 1
        return real_pt(*a)

    monkeypatch.setattr(pointwise, "pointwise_conv", pw)
    monkeypatch.setattr(pointwise, "patch_transpose_conv", pt)
    x = torch.randn(1, 4, 6, 6, 6, generator=_gen(2))
    cl = x.to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        for layer in (conv_nd(3)(4, 4, 3, padding=1), conv_nd(3)(4, 4, 1, stride=2),
                      conv_nd(3)(4, 4, 1, groups=2), conv_nd(3)(4, 4, 1, padding=1)):
            layer(x)
        conv_nd(3)(4, 4, 1)(cl)
        assert calls["pw"] == 0
        conv_nd(3)(4, 4, 1)(x)
        assert calls["pw"] == 1
        for layer in (conv_transpose_nd(3)(4, 2, 3, stride=2), conv_transpose_nd(3)(4, 2, 2),
                      conv_transpose_nd(3)(4, 2, 2, stride=2, output_padding=1)):
            layer(x)
        up = conv_transpose_nd(3)(4, 2, 2, stride=2)
        up(cl)
        up(x, output_size=[12, 12, 12])
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        up(x)
        assert calls["pt"] == 0
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
        up(x)
        assert calls["pt"] == 1
