"""Dilated convolution and receptive-field calculator (spec A2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medseg.layers import (
    DilatedConv,
    effective_kernel_size,
    empirical_receptive_field,
    module_receptive_field,
    receptive_field,
)


@pytest.mark.parametrize(
    ("k", "r", "expected"), [(3, 1, 3), (3, 2, 5), (3, 3, 7), (5, 2, 9), (1, 4, 1)]
)
def test_effective_kernel_size(k: int, r: int, expected: int) -> None:
    assert effective_kernel_size(k, r) == expected


def test_effective_kernel_size_rejects_zero() -> None:
    with pytest.raises(ValueError):
        effective_kernel_size(3, 0)


@pytest.mark.parametrize("bias", [True, False])
def test_dilated_parameter_count_equals_plain(bias: bool) -> None:
    c_in, c_out = 4, 6
    dil = DilatedConv(2, c_in, c_out, kernel_size=3, dilation=3, bias=bias)
    plain = nn.Conv2d(c_in, c_out, 3, bias=bias)
    n = sum(p.numel() for p in dil.parameters())
    assert n == 9 * c_in * c_out + (c_out if bias else 0)
    assert n == sum(p.numel() for p in plain.parameters())
    assert dil.effective_kernel_size == (7, 7)


@pytest.mark.parametrize(("dims", "shape"), [(2, (13, 10)), (3, (9, 8, 11))])
@pytest.mark.parametrize("rate", [1, 2, 3])
def test_stride1_keeps_size(dims: int, shape: tuple[int, ...], rate: int) -> None:
    conv = DilatedConv(dims, 2, 3, kernel_size=3, dilation=rate)
    y = conv(torch.randn(1, 2, *shape))
    assert y.shape == (1, 3, *shape)


def test_dilated_matches_functional_reference() -> None:
    torch.manual_seed(0)
    conv = DilatedConv(2, 2, 3, kernel_size=3, dilation=2).double()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, conv.conv.weight, conv.conv.bias, padding=2, dilation=2)
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-12)


def test_receptive_field_hand_values() -> None:
    # k3 -> 3; k5 s2 -> 7 (jump 2); k3 d2 (k_eff 5) -> 7 + 4*2 = 15; k3 d3 (k_eff 7) -> 27.
    steps = receptive_field([(3, 1, 1), (5, 2, 1), (3, 1, 2), (3, 1, 3)], spatial_dims=1)
    assert [s.rf for s in steps] == [(3,), (7,), (15,), (27,)]
    assert [s.jump for s in steps] == [(1,), (2,), (2,), (2,)]


def test_receptive_field_per_axis() -> None:
    steps = receptive_field([((3, 5), (2, 1), (1, 2)), (3, 2, 1)], spatial_dims=2)
    # axis 0: 3 (jump 2) then 3 + 2*2 = 7 (jump 4); axis 1: k_eff 9 -> 9 (jump 1), 11 (jump 2)
    assert steps[-1].rf == (7, 11)
    assert steps[-1].jump == (4, 2)


def _stack_2d() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 5, stride=2, padding=2),
        nn.BatchNorm2d(2),
        nn.Conv2d(2, 2, 3, padding=2, dilation=2),
        nn.Conv2d(2, 1, 3, padding=3, dilation=3),
    )


def _stack_3d() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(1, 2, 3, stride=2, padding=1),
        nn.LeakyReLU(),
        nn.Conv3d(2, 2, 3, padding=2, dilation=2),
        nn.AvgPool3d(2),
        nn.Conv3d(2, 1, (3, 5, 3), padding=(1, 2, 1)),
    )


def _stack_anisotropic() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 1, (5, 3), stride=(2, 1), padding=(2, 1)),
        nn.Conv2d(1, 1, 3, stride=2, padding=3, dilation=3),
        nn.Conv2d(1, 1, 3, padding=1),
    )


def test_module_receptive_field_hand_values() -> None:
    steps = module_receptive_field(_stack_2d(), 2)
    assert [s.name for s in steps] == ["0", "2", "4", "5"]
    assert [s.rf for s in steps] == [(3, 3), (7, 7), (15, 15), (27, 27)]
    steps3 = module_receptive_field(_stack_3d(), 3)
    # 3 (j2); 3 + 4*2 = 11; pool k2: 11 + 2 = 13 (j4); last: 13 + 2*4 = 21, or 13 + 4*4 = 29.
    assert steps3[-1].rf == (21, 29, 21)
    assert steps3[-1].jump == (4, 4, 4)


@pytest.mark.parametrize(
    ("stack", "dims", "shape"),
    [
        (_stack_2d, 2, (1, 1, 48, 48)),
        (_stack_3d, 3, (1, 1, 40, 48, 40)),
        (_stack_anisotropic, 2, (1, 1, 48, 48)),
    ],
)
def test_calculator_matches_empirical(stack, dims: int, shape: tuple[int, ...]) -> None:
    net = stack()
    computed = module_receptive_field(net, dims)[-1].rf
    measured = empirical_receptive_field(net, shape)
    assert measured.extent == computed
    # the central unit's field lies inside the input, so it was not clipped
    assert all(e < s for e, s in zip(measured.extent, shape[2:], strict=True))


def test_empirical_does_not_touch_module() -> None:
    net = _stack_2d()
    before = [p.clone() for p in net.parameters()]
    empirical_receptive_field(net, (1, 1, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert next(net.parameters()).dtype == torch.float32


def test_module_receptive_field_rejects_transposed() -> None:
    with pytest.raises(ValueError, match="ConvTranspose2d"):
        module_receptive_field(nn.Sequential(nn.ConvTranspose2d(1, 1, 2, stride=2)), 2)
