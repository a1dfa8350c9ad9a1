"""Sliding-window inference (E4), the Gaussian importance map, flip TTA and the predictor."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from medseg.inference import (
    FlipTTA,
    Predictor,
    flip_combinations,
    flip_tta,
    gaussian_importance_map,
    predict_probs,
    sliding_window_inference,
    window_starts,
)
from medseg.networks import UNet


def _pointwise(spatial_dims: int) -> nn.Module:
    """A non-linear per-voxel network (receptive field 1): windowing cannot change it."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.Sequential(conv(2, 8, 1), nn.Tanh(), conv(8, 3, 1)).eval()


def _conv_stack(spatial_dims: int, layers: int) -> nn.Module:
    """``layers`` zero-padded 3x3(x3) convolutions: receptive-field radius ``layers``."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(conv(2 if i == 0 else 4, 3 if i == layers - 1 else 4, 3, padding=1))
        if i < layers - 1:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods).eval()


def _exact_mask(size: tuple, roi: tuple, overlap: float, radius: int) -> torch.Tensor:
    """Voxels that every covering window sees with its full receptive field.

    A window's prediction is exact at voxels at least ``radius`` away from the window's edges,
    except edges on the image border (there the whole-image forward pads with zeros too).
    """
    cover = torch.zeros(size, dtype=torch.int32)
    exact = torch.zeros(size, dtype=torch.int32)
    starts = [window_starts(n, r, overlap) for n, r in zip(size, roi, strict=True)]
    for pos in itertools.product(*starts):
        win, inner = [], []
        for s, r, n in zip(pos, roi, size, strict=True):
            win.append(slice(s, s + r))
            inner.append(slice(s + radius if s > 0 else 0, s + r - radius if s + r < n else n))
        cover[tuple(win)] += 1
        exact[tuple(inner)] += 1
    return cover == exact


def test_window_starts_hand_values() -> None:
    assert window_starts(160, 64, 0.5) == [0, 32, 64, 96]
    assert window_starts(50, 25, 0.0) == [0, 25]
    assert window_starts(10, 4, 0.0) == [0, 3, 6]
    assert window_starts(37, 16, 0.5) == [0, 7, 14, 21]
    assert window_starts(30, 8, 0.5) == [0, 4, 7, 11, 15, 18, 22]  # step 22/6, rounded
    assert window_starts(16, 16, 0.5) == [0]
    for size, roi, ov in itertools.product((17, 40, 97), (8, 16), (0.0, 0.25, 0.5, 0.75)):
        s = window_starts(size, roi, ov)
        assert s[0] == 0 and s[-1] == size - roi
        assert max(b - a for a, b in zip(s, s[1:], strict=False)) <= roi * (1 - ov) + 0.5
    with pytest.raises(ValueError, match="overlap"):
        window_starts(20, 8, 1.0)


def test_gaussian_map_values() -> None:
    g = gaussian_importance_map((9,), 0.125)
    assert g.max() == 1.0 and g[4] == 1.0
    assert g[0].item() == pytest.approx(math.exp(-0.5 * (4 / 1.125) ** 2), rel=1e-6)
    assert g[2].item() == pytest.approx(math.exp(-0.5 * (2 / 1.125) ** 2), rel=1e-6)
    even = gaussian_importance_map((8,), 0.25)  # centre 3.5, sigma 2, normalised at 3 and 4
    assert even[3] == even[4] == 1.0
    expected = math.exp(-0.5 * ((3.5 / 2) ** 2 - (0.5 / 2) ** 2))  # = exp(-1.5)
    assert even[0].item() == pytest.approx(expected, rel=1e-6)
    g2 = gaussian_importance_map((7, 10), 0.2)
    assert g2.max() == 1.0
    for axes in ([0], [1], [0, 1]):
        assert torch.equal(g2, g2.flip(axes))
    outer = gaussian_importance_map((7,), 0.2)[:, None] * gaussian_importance_map((10,), 0.2)
    torch.testing.assert_close(g2, outer / outer.max())
    g3 = gaussian_importance_map((64, 64, 64))
    assert g3.min().item() == pytest.approx(1e-4)  # the floor, at the corners
    assert g3[0, 0, 0] == g3.min() and g3.max() == 1.0


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_constant_predictor_reconstructs_constant(mode: str) -> None:
    image = torch.randn(2, 1, 50, 23, 17)

    def const(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2, *x.shape[2:]), 3.7)

    out = sliding_window_inference(image, const, (16, 16, 16), overlap=0.5, sw_batch_size=5,
                                   mode=mode)
    assert out.shape == (2, 2, 50, 23, 17)
    torch.testing.assert_close(out, torch.full_like(out, 3.7), rtol=1e-6, atol=0)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_pointwise_network_is_reproduced_everywhere(overlap: float, mode: str) -> None:
    for spatial_dims, size, roi in ((2, (37, 50), (16, 20)), (3, (19, 23, 13), (8, 10, 12))):
        net = _pointwise(spatial_dims)
        image = torch.randn(2, 2, *size)
        with torch.no_grad():
            ref = net(image)
            out = sliding_window_inference(image, net, roi, overlap, sw_batch_size=3, mode=mode)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_conv_network_exact_away_from_window_borders(overlap: float) -> None:
    cases = ((2, (45, 38), (20, 16), 3), (3, (21, 18, 15), (10, 8, 8), 2))
    for spatial_dims, size, roi, radius in cases:
        net = _conv_stack(spatial_dims, radius)
        image = torch.randn(2, 2, *size)
        with torch.no_grad():
            ref = net(image)
            out = sliding_window_inference(image, net, roi, overlap, sw_batch_size=4)
        mask = _exact_mask(size, roi, overlap, radius)
        assert mask.float().mean() > 0.1  # a real region is compared
        torch.testing.assert_close(out[..., mask], ref[..., mask], rtol=0, atol=1e-5)
        # Near window borders the stitched result differs: the windows really are separate.
        assert (out[..., ~mask] - ref[..., ~mask]).abs().max() > 1e-3


def test_image_smaller_than_window() -> None:
    net = _pointwise(2)
    for size in ((5, 7), (5, 40)):
        image = torch.randn(1, 2, *size)
        with torch.no_grad():
            out = sliding_window_inference(image, net, (8, 8), overlap=0.5)
            ref = net(image)
        assert out.shape == (1, 3, *size)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_batch_items_are_not_mixed_and_sw_batch_size_is_irrelevant() -> None:
    net = _conv_stack(2, 2)
    image = torch.randn(3, 2, 33, 29)
    with torch.no_grad():
        full = sliding_window_inference(image, net, (16, 16), 0.5, sw_batch_size=7)
        one = sliding_window_inference(image, net, (16, 16), 0.5, sw_batch_size=1)
        single = [sliding_window_inference(image[b:b + 1], net, (16, 16), 0.5) for b in range(3)]
    torch.testing.assert_close(full, one, rtol=0, atol=1e-6)
    torch.testing.assert_close(full, torch.cat(single), rtol=0, atol=1e-6)


def test_bad_predictor_output() -> None:
    with pytest.raises(ValueError, match="predictor must map"):
        sliding_window_inference(torch.zeros(1, 1, 20, 20), lambda x: x[..., :-1], 8)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window_inference(torch.zeros(1, 1, 20, 20), lambda x: x, (8, 8, 8))


def test_flip_combinations() -> None:
    assert flip_combinations((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert len(flip_combinations((0, 1, 2))) == 8


def test_flip_tta_equivariant_function_is_unchanged() -> None:
    for spatial_dims, size in ((2, (6, 9)), (3, (4, 5, 6))):
        net = _pointwise(spatial_dims)
        x = torch.randn(2, 2, *size)
        with torch.no_grad():
            torch.testing.assert_close(flip_tta(net, x), torch.softmax(net(x), 1),
                                       rtol=0, atol=1e-6)


def test_flip_tta_hand_computed_average() -> None:
    # Logit of class 0 is x * (position + 1) along the last axis, class 1 is 0, so
    # p0 = sigmoid(logit0). Image [1, 3]: identity -> sigmoid([1, 6]);
    # flipped [3, 1] -> logits [3, 2], flipped back -> sigmoid([2, 3]).
    w = torch.tensor([1.0, 2.0])

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * w, torch.zeros_like(x)], dim=1)

    x = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    p = flip_tta(f, x, spatial_axes=(1,))
    expected0 = torch.tensor([(sig(1) + sig(2)) / 2, (sig(6) + sig(3)) / 2])
    torch.testing.assert_close(p[0, 0, 0], expected0)
    torch.testing.assert_close(p[0, 1, 0], 1 - expected0)
    # Axis 0 has length 1, so flipping it changes nothing: all four combinations average the same.
    torch.testing.assert_close(flip_tta(f, x), p)


def test_flip_tta_inside_sliding_window() -> None:
    net = _pointwise(3)
    x = torch.randn(1, 2, 12, 10, 9)
    with torch.no_grad():
        out = sliding_window_inference(x, FlipTTA(net), (8, 8, 8), 0.5)
        torch.testing.assert_close(out, torch.softmax(net(x), 1), rtol=0, atol=1e-5)


def test_predict_probs() -> None:
    model = UNet(2, in_channels=1, num_classes=3, channels=(4, 8, 16)).train()
    x = torch.randn(1, 1, 40, 36)
    probs = predict_probs(model, x, roi_size=(24, 24), overlap=0.5, sw_batch_size=3)
    assert model.training  # mode restored
    assert probs.shape == (1, 3, 40, 36) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 36))
    # One window the size of the image: exactly softmax of the plain forward pass.
    model.eval()
    with torch.no_grad():
        ref = torch.softmax(model(x), 1)
    one = predict_probs(model, x, roi_size=(40, 36))
    torch.testing.assert_close(one, ref, rtol=0, atol=1e-6)
    tta = Predictor(roi_size=(40, 36), tta=True).predict(model, x)
    with torch.no_grad():
        flips = [torch.softmax(model(x.flip(d)), 1).flip(d) for d in ([], [2], [3], [2, 3])]
    torch.testing.assert_close(tta, torch.stack(flips).mean(0), rtol=0, atol=1e-6)


def _closed_form_gaussian(roi: tuple[int, ...], scales: tuple[float, ...]) -> torch.Tensor:
    """``prod_a exp(-(i_a - (n_a - 1) / 2)^2 / (2 (s_a n_a)^2))``, max 1, floor 1e-4 (float64)."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in roi], indexing="ij")
    g = torch.ones(roi, dtype=torch.float64)
    for i, n, s in zip(grids, roi, scales, strict=True):
        g = g * torch.exp(-((i - (n - 1) / 2) ** 2) / (2 * (s * n) ** 2))
    return (g / g.max()).clamp_min(1e-4)


@pytest.mark.parametrize("sigma_scale", [0.125, 0.3, (0.1, 0.4)])
def test_gaussian_map_follows_sigma_scale(sigma_scale) -> None:
    roi = (12, 20)
    scales = sigma_scale if isinstance(sigma_scale, tuple) else (sigma_scale,) * 2
    g = gaussian_importance_map(roi, sigma_scale, dtype=torch.float64)
    torch.testing.assert_close(g, _closed_form_gaussian(roi, scales), rtol=1e-12, atol=0)
    if sigma_scale != 0.125:
        assert not torch.equal(g, gaussian_importance_map(roi, dtype=torch.float64))
    assert torch.equal(gaussian_importance_map(roi), gaussian_importance_map(roi, 0.125))
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_importance_map(roi, 0.0)


def test_predict_probs_honours_sigma_scale() -> None:
    torch.manual_seed(0)
    model = UNet(2, in_channels=1, num_classes=3, channels=(4, 8, 16)).eval()
    x = torch.randn(1, 1, 40, 36)
    roi, overlap = (24, 24), 0.5
    default = predict_probs(model, x, roi_size=roi, overlap=overlap)
    # the default is what predict_probs gave before it took sigma_scale: the window's own default
    with torch.no_grad():
        before = sliding_window_inference(x, lambda w: torch.softmax(model(w).float(), 1), roi,
                                          overlap)
    assert torch.equal(default, before)
    assert torch.equal(default, predict_probs(model, x, roi, overlap, sigma_scale=0.125))
    # another sigma: the stitch sum_w g p_w / sum_w g with the closed-form Gaussian of that sigma
    wide = predict_probs(model, x, roi_size=roi, overlap=overlap, sigma_scale=0.5)
    g = _closed_form_gaussian(roi, (0.5, 0.5))
    num = torch.zeros(1, 3, 40, 36, dtype=torch.float64)
    den = torch.zeros(40, 36, dtype=torch.float64)
    for s0 in window_starts(40, roi[0], overlap):
        for s1 in window_starts(36, roi[1], overlap):
            win = (slice(s0, s0 + roi[0]), slice(s1, s1 + roi[1]))
            with torch.no_grad():
                p = torch.softmax(model(x[(slice(None), slice(None), *win)]), 1).double()
            num[(slice(None), slice(None), *win)] += g * p
            den[win] += g
    torch.testing.assert_close(wide, (num / den).float(), rtol=0, atol=1e-6)
    assert (wide - default).abs().max() > 1e-4
    assert torch.equal(Predictor(roi_size=roi, overlap=overlap, sigma_scale=0.5).predict(model, x),
                       wide)
