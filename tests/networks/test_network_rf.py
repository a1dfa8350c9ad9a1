"""Receptive field per stage and at the output of the networks built here (A2), checked
against the empirical gradient support of one unit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medseg.layers import backward_interval, empirical_receptive_field
from medseg.layers.conv import UpSample
from medseg.networks import DeepLabV3Plus, TransUNet, UNet, UNetPlusPlus
from medseg.networks.receptive_field import network_receptive_field, output_field, stage_field


def _box_mask(iv: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(max(lo, 0), min(hi, n - 1) + 1) for (lo, hi), n in zip(iv, shape,
                                                                             strict=True))] = True
    return mask


class _Stage(nn.Module):
    """Encoder stage ``i`` of a network as a module (for the empirical measurement)."""

    def __init__(self, net: DeepLabV3Plus, i: int) -> None:
        super().__init__()
        self.net, self.i = net, i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)[self.i]


def test_unet_hand_values() -> None:
    # Per level two 3x3 convs (the first strided by 2 below the top): 1 -> 3 -> 5 (jump 1),
    # 5 + 2 = 7 -> 7 + 4 = 11 (jump 2), 11 + 4 = 15 -> 15 + 8 = 23 (jump 4); back up: each
    # decoder level adds two 3x3 convs at its jump: 23 + 2*2*2 = 31, 31 + 2*2*1 = 35.
    rf = network_receptive_field(UNet(2, 1, 2, channels=(2, 4, 8)))
    assert [s.rf for s in rf.stages] == [(5, 5), (11, 11), (23, 23)]
    assert [s.jump for s in rf.stages] == [(1, 1), (2, 2), (4, 4)]
    assert rf.output == (35, 35)


@pytest.mark.parametrize("size", [64, 65, 66, 67])
@pytest.mark.parametrize(
    "kw", [{}, {"upsample": "linear", "residual": True}, {"strides": [(1, 2), 2]}]
)
def test_unet_output_matches_empirical(size: int, kw: dict) -> None:
    net = UNet(2, 1, 2, channels=(2, 4, 8), norm="none", **kw)
    emp = empirical_receptive_field(net, (1, 1, size, size))
    iv = output_field(net, emp.output_index)
    assert all(lo > 0 and hi < size - 1 for lo, hi in iv)  # not clipped by the border
    assert torch.equal(emp.mask, _box_mask(iv, (size, size)))
    full = network_receptive_field(net).output
    assert all(hi - lo + 1 <= f for (lo, hi), f in zip(iv, full, strict=True))


def test_linear_upsampling_field_depends_on_position() -> None:
    net = UNet(2, 1, 2, channels=(2, 4, 8), norm="none", upsample="linear", residual=True)
    sizes = {output_field(net, (p, p))[0][1] - output_field(net, (p, p))[0][0] + 1
             for p in range(32, 36)}
    assert sizes == {39, 43}
    assert network_receptive_field(net).output == (43, 43)


@pytest.mark.parametrize("kw", [{}, {"prune_depth": 1}, {"deep_supervision": False}])
def test_unetpp_output_matches_empirical(kw: dict) -> None:
    net = UNetPlusPlus(2, 1, 2, channels=(2, 4, 8), norm="none", **kw)
    emp = empirical_receptive_field(net, (1, 1, 64, 64))
    iv = output_field(net, emp.output_index)
    assert torch.equal(emp.mask, _box_mask(iv, (64, 64)))
    expected = 15 if kw.get("prune_depth") == 1 else 35  # depth-1 sub-network vs full depth
    assert network_receptive_field(net).output == (expected, expected)


def test_deeplab_stages_match_empirical_and_output_is_global() -> None:
    net = DeepLabV3Plus(2, 1, 2, channels=(2, 4, 4, 4), output_stride=8, norm="none",
                        decoder_channels=4, low_level_channels=2)
    rf = network_receptive_field(net)
    # Residual stages, first conv strided by 2: 1 + 2*1 + 2*2 = 7 (jump 2),
    # 7 + 2*2 + 2*4 = 19 (jump 4), 19 + 2*4 + 2*8 = 43 (jump 8); the dilated stage (rate 2:
    # two 3-tap convs spanning 5 each, at jump 8) adds 2 * 4 * 8 = 64.
    assert [s.rf[0] for s in rf.stages] == [7, 19, 43, 107]
    assert [s.jump[0] for s in rf.stages] == [2, 4, 8, 8]
    assert rf.output is None and "global" in rf.note
    for i, step in enumerate(rf.stages):
        emp = empirical_receptive_field(_Stage(net, i), (1, 1, 128, 128))
        iv = stage_field(net, i, emp.output_index)
        assert torch.equal(emp.mask, _box_mask(iv, (128, 128)))
        assert emp.extent == step.rf
    with pytest.raises(ValueError, match="global"):
        output_field(net, (10, 10))


def test_transunet_stages_and_global_output() -> None:
    rf = network_receptive_field(TransUNet(3, channels=(2, 4, 8)))
    assert [s.rf for s in rf.stages] == [(5,) * 3, (11,) * 3, (23,) * 3]
    assert rf.output is None and "attention" in rf.note


def test_backward_interval_of_layers() -> None:
    # Transposed conv k = s = 2: outputs 4 and 5 both come from input 2.
    up = UpSample(1, 1, 1, 2, "transpose")
    assert backward_interval(up, ((4, 4),)) == ((2, 2),)
    assert backward_interval(up, ((5, 5),)) == ((2, 2),)
    # Dilated 3-tap conv, rate 3, padding 3: output 10 reads 7, 10, 13.
    conv = nn.Conv1d(1, 1, 3, padding=3, dilation=3)
    assert backward_interval(conv, ((10, 10),)) == ((7, 13),)
    with pytest.raises(ValueError, match="global"):
        backward_interval(nn.Sequential(nn.AdaptiveAvgPool1d(1)), ((0, 0),))


def test_rejects_other_networks() -> None:
    with pytest.raises(ValueError, match="module_receptive_field"):
        network_receptive_field(nn.Conv2d(1, 1, 3))
