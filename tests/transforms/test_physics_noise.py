"""Physics noise augmentation on normalised patches (P1-P3) and its Gaussian twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from medseg.errors import ConfigError
from medseg.physics.ultrasound import bmode_to_intensity
from medseg.transforms.physics_noise import (
    GaussianNoise,
    GaussianNoiseConfig,
    PhysicsNoise,
    PhysicsNoiseConfig,
)

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _full(B: int, C: int, v: float) -> torch.Tensor:
    return torch.full((B, C), v, dtype=D)


@pytest.mark.parametrize("modality", ["MR", "US", "CT"])
def test_identity_when_probabilities_are_zero_or_disabled(modality: str):
    x = torch.rand(3, 2, 16, 16) * 2 - 1
    scale, offset = _full(3, 2, 40.0), _full(3, 2, 100.0)
    for cfg in (PhysicsNoiseConfig.identity(), PhysicsNoiseConfig(enabled=False)):
        assert torch.equal(PhysicsNoise(cfg)(x, _gen(0), scale, offset, modality), x)
    g = GaussianNoise(GaussianNoiseConfig(p_noise=0.0))
    assert torch.equal(g(x, _gen(0), scale, offset, modality), x)


def test_samples_not_drawn_and_untouched_modalities_stay_bit_identical():
    cfg = PhysicsNoiseConfig(p_mr=0.5, p_ct=0.5, p_us=0.5)
    x = torch.rand(16, 2, 8, 8) + 0.5
    y = PhysicsNoise(cfg)(x, _gen(3), _full(16, 2, 10.0), _full(16, 2, 5.0), ["MR", "XR"])
    assert torch.equal(y[:, 1], x[:, 1])  # XR: no physics model
    changed = [(not torch.equal(y[b, 0], x[b, 0])) for b in range(16)]
    assert 0 < sum(changed) < 16
    # PNG / other are accepted and left untouched, whatever the probability
    allp = PhysicsNoiseConfig(p_mr=1.0, p_us=1.0, p_ct=1.0)
    assert torch.equal(PhysicsNoise(allp)(x, _gen(3), 10.0, 5.0, "png"), x)


def test_mr_raw_magnitudes_are_rician_given_the_chosen_sigma():
    # raw magnitude: 0 (background) on one half, 100 on the other; robust max 100 and
    # mr_sigma_range fixed at 0.2 -> sigma = 20
    raw = torch.zeros(2, 1, 256, 256, dtype=D)
    raw[..., 128:] = 100.0
    scale, offset = _full(2, 1, 50.0), _full(2, 1, 30.0)
    x = (raw - offset[..., None, None]) / scale[..., None, None]
    cfg = PhysicsNoiseConfig(p_mr=1.0, mr_sigma_range=(0.2, 0.2))
    y = PhysicsNoise(cfg)(x, _gen(5), scale, offset, "MR")
    out = (y * scale[..., None, None] + offset[..., None, None]).numpy()
    tissue, air = out[..., 128:].ravel(), out[..., :128].ravel()
    assert stats.kstest(tissue, stats.rice(b=5.0, scale=20.0).cdf).pvalue > 0.01
    assert stats.kstest(air, stats.rice(b=0.0, scale=20.0).cdf).pvalue > 0.01
    assert out.min() >= 0.0
    # the naive twin (Gaussian on normalised values = on the magnitude) is not Rayleigh in air
    gx = GaussianNoise(GaussianNoiseConfig(p_noise=1.0, std_range=(0.4, 0.4)))(
        x, _gen(5), scale, offset, "MR")
    gair = (gx * scale[..., None, None] + offset[..., None, None])[..., :128].numpy().ravel()
    assert stats.kstest(gair, stats.rice(b=0.0, scale=20.0).cdf).pvalue < 1e-6


def test_us_speckle_preserves_mean_intensity_and_keeps_the_sector_mask():
    dr = 60.0
    grey = torch.zeros(2, 1, 200, 200, dtype=D)
    grey[..., 20:, :100] = 150.0
    grey[..., 20:, 100:] = 80.0
    scale, offset = _full(2, 1, 40.0), _full(2, 1, 120.0)
    x = (grey - 120.0) / 40.0
    L = 3.0
    cfg = PhysicsNoiseConfig(p_us=1.0, us_looks_range=(L, L), us_dynamic_range_db=dr)
    y = PhysicsNoise(cfg)(x, _gen(6), scale, offset, "US")
    out = y * 40.0 + 120.0
    assert torch.equal(y[..., :20, :], x[..., :20, :])  # grey 0: outside the sector, untouched
    for sl, g0 in ((np.s_[..., 20:, :100], 150.0), (np.s_[..., 20:, 100:], 80.0)):
        inten = bmode_to_intensity(out[sl].clamp(0, 255), dr)
        ref = float(bmode_to_intensity(torch.tensor(g0, dtype=D), dr))
        assert float(inten.mean()) == pytest.approx(ref, rel=0.01)
        # grey-level std: 255 / DR * 10 / ln 10 * sqrt(trigamma(L)) (additive in the log domain)
        std = 255.0 / dr * 10.0 / math.log(10.0) * math.sqrt(float(special.polygamma(1, L)))
        assert float(out[sl].std()) == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("dose", [0.25, 0.5])
def test_ct_noise_at_water_follows_the_requested_dose(dose: float):
    sig_ref = 10.0
    scale, offset = _full(2, 1, 200.0), _full(2, 1, -300.0)
    cfg = PhysicsNoiseConfig(p_ct=1.0, ct_dose_range=(dose, dose), ct_sigma_hu_water=sig_ref)
    # a full-dose water scan (noise sig_ref): the result has the noise of the reduced dose
    hu = sig_ref * torch.randn(2, 1, 200, 200, generator=_gen(7), dtype=D)
    y = PhysicsNoise(cfg)(((hu + 300.0) / 200.0), _gen(8), scale, offset, "CT")
    out = y * 200.0 - 300.0
    assert float(out.std()) == pytest.approx(sig_ref / math.sqrt(dose), rel=0.10)
    assert abs(float(out.mean())) < 0.5
    # on a noise-free input only the added part shows: sig_ref sqrt(1 / d - 1)
    clean = torch.full((2, 1, 200, 200), 300.0 / 200.0, dtype=D)
    out = PhysicsNoise(cfg)(clean, _gen(9), scale, offset, "CT") * 200.0 - 300.0
    assert float(out.std()) == pytest.approx(sig_ref * math.sqrt(1 / dose - 1), rel=0.10)
    # dose 1 adds nothing
    full = PhysicsNoiseConfig(p_ct=1.0, ct_dose_range=(1.0, 1.0))
    assert torch.equal(PhysicsNoise(full)(clean, _gen(9), scale, offset, "CT"), clean)


@pytest.mark.parametrize("shape", [(2, 1, 24, 24), (2, 2, 8, 12, 10)])
@pytest.mark.parametrize("modality", ["MR", "US", "CT"])
def test_shapes_dtype_and_determinism(shape: tuple[int, ...], modality: str):
    x = (torch.rand(shape) - 0.5).float()
    B, C = shape[:2]
    scale, offset = _full(B, C, 60.0), _full(B, C, 100.0)
    cfg = PhysicsNoiseConfig(p_mr=1.0, p_us=1.0, p_ct=1.0, ct_dose_range=(0.3, 0.6))
    aug = PhysicsNoise(cfg)
    y = aug(x, _gen(10), scale, offset, modality)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x) and bool(torch.isfinite(y).all())
    assert torch.equal(aug(x, _gen(10), scale, offset, modality), y)
    assert not torch.equal(aug(x, _gen(11), scale, offset, modality), y)
    gn = GaussianNoise(GaussianNoiseConfig(p_noise=1.0))
    assert torch.equal(gn(x, _gen(1), scale, offset, modality), gn(x, _gen(1), scale, offset,
                                                                        modality))


def test_gaussian_twin_adds_the_requested_std_in_normalised_units():
    x = torch.zeros(4, 1, 128, 128, dtype=D)
    y = GaussianNoise(GaussianNoiseConfig(p_noise=1.0, std_range=(0.1, 0.1)))(x, _gen(12))
    assert float(y.std()) == pytest.approx(0.1, rel=0.02)


def test_configs_round_trip_and_reject_bad_values():
    cfg = PhysicsNoiseConfig(p_mr=0.3, us_looks_range=(1.0, 4.0), ct_dose_range=(0.1, 0.9))
    assert PhysicsNoiseConfig.from_dict(cfg.to_dict()) == cfg
    assert PhysicsNoiseConfig.from_dict({"us_looks_range": [2, 3]}).us_looks_range == (2.0, 3.0)
    g = GaussianNoiseConfig(p_noise=0.2, std_range=(0.0, 0.3))
    assert GaussianNoiseConfig.from_dict(g.to_dict()) == g
    with pytest.raises(ConfigError, match="unknown"):
        PhysicsNoiseConfig.from_dict({"p_mri": 0.5})
    with pytest.raises(ConfigError, match="looks"):
        PhysicsNoiseConfig(us_looks_range=(0.5, 2.0))
    with pytest.raises(ConfigError, match="ct_dose_range"):
        PhysicsNoiseConfig(ct_dose_range=(0.5, 2.0))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PhysicsNoiseConfig(p_ct=1.5)
    with pytest.raises(ConfigError, match="low, high"):
        GaussianNoiseConfig(std_range=(0.3, 0.1))


def test_bad_calls_raise_value_errors():
    aug = PhysicsNoise(PhysicsNoiseConfig(p_us=1.0))
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="scale must be > 0"):
        aug(x, _gen(0), _full(2, 1, 0.0), _full(2, 1, 0.0), "US")
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        aug(x, _gen(0), torch.ones(3, 1), _full(2, 1, 0.0), "US")
    with pytest.raises(ValueError, match="unknown modality"):
        aug(x, _gen(0), 1.0, 0.0, "PET")
    with pytest.raises(ValueError, match="one per channel"):
        aug(x, _gen(0), 1.0, 0.0, ["US", "MR"])
    with pytest.raises(ValueError, match="us_max_grey"):
        aug(x, _gen(0), 1.0, 1000.0, "US")
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        aug(torch.zeros(8, 8), _gen(0), 1.0, 0.0, "US")


def test_us_intensity_domain_is_gamma_speckle_on_linear_intensity():
    raw = torch.full((2, 1, 200, 200), 5.0, dtype=D)
    cfg = PhysicsNoiseConfig(p_us=1.0, us_looks_range=(2.0, 2.0), us_domain="intensity")
    out = PhysicsNoise(cfg)(raw, _gen(13), 1.0, 0.0, "US").numpy().ravel()
    assert stats.kstest(out, stats.gamma(a=2.0, scale=5.0 / 2.0).cdf).pvalue > 0.01
    with pytest.raises(ConfigError, match="us_domain"):
        PhysicsNoiseConfig(us_domain="db")


@pytest.mark.parametrize("scheme", ["zscore", "minmax_zscore", "ct", "none"])
def test_documented_scale_offset_invert_the_preprocessing(scheme: str):
    # the contract of the module docstring, checked against data.preprocess
    from medseg.data.preprocess import ChannelNorm, channel_affine, normalize_channel

    rng = np.random.default_rng(0)
    x = rng.uniform(-200.0, 300.0, size=(12, 10))
    stats_kw = {"clip_low": -150.0, "clip_high": 250.0, "mean": 40.0, "std": 90.0}
    norm = ChannelNorm(scheme, **(stats_kw if scheme == "ct" else {}))
    u = normalize_channel(x, norm).astype(np.float64)
    if scheme == "zscore":
        scale, offset = x.std(), x.mean()
    elif scheme == "minmax_zscore":
        r = x.max() - x.min()
        y = (x - x.min()) / r
        scale, offset = r * y.std(), x.min() + r * y.mean()
    elif scheme == "ct":
        scale, offset = 90.0, 40.0
    else:
        scale, offset = 1.0, 0.0
    raw = np.clip(x, -150.0, 250.0) if scheme == "ct" else x
    np.testing.assert_allclose(u * scale + offset, raw, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(channel_affine(x, norm), (scale, offset), rtol=1e-9)
