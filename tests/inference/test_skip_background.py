"""Background-window skipping and the cached stitching buffers of the sliding window.

Skipping must change nothing where no window is skipped (bit for bit), be exact on a synthetic
volume whose skipped region is known (the number of skipped windows counted by hand, and the
stitched output equal to running every window with a predictor that is exactly background
there), never hand a skipped window to the network, and follow the documented rule (CT: at or
below -900 HU before normalisation; other modalities: the channel's minimum).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medseg.data.preprocess import ChannelNorm, PreprocessPlan
from medseg.inference import predict_probs, sliding_window_inference, window_starts
from medseg.inference.background import AIR_HU, background_mask, raw_background
from medseg.inference.sliding_window import (
    cached_importance_map,
    cached_weight_sum,
    gaussian_importance_map,
)
from medseg.io.meta import ImageMeta


def _onehot_predictor(calls: list[torch.Tensor]):
    """Probabilities ``[1 - s, s]`` with ``s = sigmoid(4 x)`` where ``x > 0``, else exactly
    ``[1, 0]``: exactly background on zero input, so skipping zero windows is exact."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.clone())
        s = torch.where(x > 0, torch.sigmoid(4 * x), torch.zeros_like(x))
        return torch.cat([1 - s, s], 1)

    return predict


def _image_with_empty_left(shape: tuple[int, int], empty_cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, *shape, generator=g) + 0.1
    img[..., :empty_cols] = 0.0
    return img


def test_nothing_skipped_is_bit_identical() -> None:
    img = _image_with_empty_left((40, 72), 0)
    background = torch.zeros(1, 40, 72, dtype=torch.bool)
    background[0, :, :20] = True  # windows at columns 0 and 8 would lie entirely in it ...
    background[0, ::7, ::7] = False  # ... but every window holds a non-background voxel
    calls: list[torch.Tensor] = []
    ref = sliding_window_inference(img, _onehot_predictor([]), (16, 16), overlap=0.5)
    stats: dict[str, int] = {}
    out = sliding_window_inference(img, _onehot_predictor(calls), (16, 16), overlap=0.5,
                                   background=background, skip_value=torch.tensor([1.0, 0.0]),
                                   stats=stats)
    n_windows = len(window_starts(40, 16, 0.5)) * len(window_starts(72, 16, 0.5))
    assert stats == {"windows": n_windows, "skipped": 0}
    assert sum(c.shape[0] for c in calls) == n_windows
    assert torch.equal(out, ref)


def test_exact_on_a_volume_whose_skipped_region_is_known() -> None:
    # 2D image 48 x 96, left 40 columns exactly zero (background), window 16, overlap 0.5:
    # starts along the columns are 0, 8, ..., 80; a window [s, s + 16) is entirely background
    # when s + 16 <= 40, i.e. s in {0, 8, 16, 24}: 4 column positions x 5 row positions.
    img = _image_with_empty_left((48, 96), 40)
    rows, cols = window_starts(48, 16, 0.5), window_starts(96, 16, 0.5)
    assert cols[:5] == [0, 8, 16, 24, 32] and len(rows) == 5
    expected_skipped = len(rows) * sum(1 for s in cols if s + 16 <= 40)
    assert expected_skipped == 20
    background = torch.from_numpy(raw_background(img[0].numpy(), [ChannelNorm("zscore")]))[None]
    assert bool(background[0, :, :40].all()) and not bool(background[0, :, 40:].any())
    calls: list[torch.Tensor] = []
    stats: dict[str, int] = {}
    out = sliding_window_inference(img, _onehot_predictor(calls), (16, 16), overlap=0.5,
                                   background=background, skip_value=torch.tensor([1.0, 0.0]),
                                   stats=stats)
    ref = sliding_window_inference(img, _onehot_predictor([]), (16, 16), overlap=0.5)
    assert stats == {"windows": len(rows) * len(cols), "skipped": expected_skipped}
    assert sum(c.shape[0] for c in calls) == len(rows) * len(cols) - expected_skipped
    assert all(bool((c.flatten(1) > 0).any(1).all()) for c in calls)  # no empty window ran
    # the same stitched field (only the summation order differs) and the same label map
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # columns covered by skipped windows only are background with probability exactly 1
    assert torch.equal(out[0, 0, :, :32], torch.ones(48, 32))


def test_skipped_windows_are_background_even_where_the_network_says_otherwise() -> None:
    img = torch.zeros(1, 1, 32, 64)
    img[..., 48:] = 1.0

    def always_foreground(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)], 1)

    background = img[:, 0] == 0
    out = sliding_window_inference(img, always_foreground, (32, 16), overlap=0.0,
                                   background=background, skip_value=torch.tensor([1.0, 0.0]))
    # windows are columns [0,16) [16,32) [32,48) [48,64): the first three are skipped
    assert torch.equal(out[0, 1, :, :48], torch.zeros(32, 48))
    assert torch.equal(out[0, 1, :, 48:], torch.ones(32, 16))


def test_padding_counts_as_background_and_3d_works() -> None:
    img = torch.zeros(1, 1, 20, 20, 8)  # last axis shorter than the window: padded to 16
    img[0, 0, 15:, 15:, :] = 2.0
    calls: list[torch.Tensor] = []
    stats: dict[str, int] = {}
    out = sliding_window_inference(img, _onehot_predictor(calls), (8, 8, 16), overlap=0.5,
                                   background=img[:, 0] <= 0, skip_value=torch.tensor([1.0, 0.]),
                                   stats=stats)
    ref = sliding_window_inference(img, _onehot_predictor([]), (8, 8, 16), overlap=0.5)
    starts = [window_starts(20, 8, 0.5), window_starts(20, 8, 0.5)]
    ran = sum(1 for a, b in itertools.product(*starts) if a + 8 > 15 and b + 8 > 15)
    assert stats["skipped"] == stats["windows"] - ran
    assert len(calls) and sum(c.shape[0] for c in calls) == ran
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_bad_background_arguments() -> None:
    img = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="background must be"):
        sliding_window_inference(img, lambda x: x, 8, background=torch.zeros(16, 16, dtype=bool),
                                 skip_value=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="skip_value"):
        sliding_window_inference(img, lambda x: x, 8, background=torch.zeros(1, 16, 16,
                                                                             dtype=bool))
    net = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(ValueError, match="activation='none'"):
        predict_probs(net, img, 8, activation="none",
                      background=torch.zeros(1, 16, 16, dtype=bool))


def test_predict_probs_skips_with_the_background_class() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    net.out_channels = 3
    img = torch.zeros(1, 1, 32, 32)
    img[..., 20:, 20:] = torch.rand(12, 12) + 1
    stats: dict[str, int] = {}
    out = predict_probs(net, img, 16, overlap=0.5, background=img[:, 0] == 0, stats=stats)
    assert stats["skipped"] > 0
    # voxel (0, 0) is covered only by the window at (0, 0), which is skipped
    assert out[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    sig = predict_probs(net, img, 16, overlap=0.5, activation="sigmoid",
                        background=img[:, 0] == 0)
    assert sig[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_rule_ct_air_and_channel_minimum() -> None:
    hu = np.array([[[-1024.0, -950.0, -900.0, -899.0, 40.0]]])  # (C=1, 1, 5)
    ct = ChannelNorm("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=30.0,
                     modality="CT")
    assert raw_background(hu, [ct]).tolist() == [[True, True, True, False, False]]
    assert AIR_HU == -900.0
    mr = np.array([[[0.0, 0.0, 3.0, 5.0]], [[1.0, 7.0, 1.0, 9.0]]])  # 2 channels
    mask = raw_background(mr, [ChannelNorm("zscore", modality="MR")] * 2)
    # background needs both channels at their minimum (0 and 1): only voxel 0
    assert mask.tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match="one entry per channel"):
        raw_background(mr, [ChannelNorm("zscore")])


def test_background_mask_on_the_resampled_grid() -> None:
    # 1 x 8 x 8 CT slab at 1 mm resampled to 2 mm: a network voxel is background only where
    # every raw voxel it interpolates from is air
    hu = np.full((1, 8, 8, 4), 40.0, dtype=np.float32)
    hu[:, :4] = -1000.0
    meta = ImageMeta(affine=np.eye(4), spatial_shape=(8, 8, 4))
    plan = PreprocessPlan(3, target_spacing=[2.0, 2.0, 2.0], normalization=[
        ChannelNorm("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=30.0,
                    modality="CT")])
    mask = background_mask(hu, meta, plan)
    assert mask.shape == (4, 4, 2)
    assert bool(mask[0].all()) and not bool(mask[2:].any())
    same = PreprocessPlan(3, normalization=plan.normalization)
    assert torch.equal(background_mask(hu, meta, same), torch.from_numpy(hu[0] <= -900))


def test_importance_map_and_weight_sum_are_cached_and_right() -> None:
    a = cached_importance_map((8, 8), "gaussian", 0.125, torch.device("cpu"), torch.float32)
    b = cached_importance_map((8, 8), "gaussian", 0.125, torch.device("cpu"), torch.float32)
    assert a is b
    torch.testing.assert_close(a, gaussian_importance_map((8, 8)), rtol=0, atol=0)
    w = cached_weight_sum((20, 12), (8, 8), 0.5, "gaussian", 0.125, torch.device("cpu"),
                          torch.float32)
    assert w is cached_weight_sum((20, 12), (8, 8), 0.5, "gaussian", 0.125,
                                  torch.device("cpu"), torch.float32)
    naive = torch.zeros(20, 12)
    for r, c in itertools.product(window_starts(20, 8, 0.5), window_starts(12, 8, 0.5)):
        naive[r:r + 8, c:c + 8] += a
    torch.testing.assert_close(w, naive, rtol=0, atol=0)
    # a constant predictor stitches to exactly that constant (weights divide out)
    out = sliding_window_inference(torch.rand(1, 1, 20, 12), lambda x: torch.ones_like(x) * 0.25,
                                   (8, 8), overlap=0.5)
    torch.testing.assert_close(out, torch.full((1, 1, 20, 12), 0.25))
