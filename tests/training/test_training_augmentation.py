"""The training augmenter picks the noise model by modality and applies physical noise in the raw
domain of each case (P4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from medseg.data.preprocess import ChannelNorm, channel_affine, normalize_channel, to_raw
from medseg.errors import ConfigError
from medseg.training.augmentation import RawDomainNoise, make_augmenter, resolve_noise_model
from medseg.transforms.augment import AugmentConfig, Augmenter
from medseg.transforms.physics_noise import PhysicsNoiseConfig


def test_resolve_noise_model():
    assert resolve_noise_model("auto", ["MR"]) == "physics"
    assert resolve_noise_model("auto", ["XR", "ct"]) == "physics"
    assert resolve_noise_model("auto", ["PNG"]) == "gaussian"
    assert resolve_noise_model("auto", [None]) == "gaussian"
    assert resolve_noise_model("gaussian", ["MR"]) == "gaussian"
    with pytest.raises(ConfigError, match="noise_model"):
        resolve_noise_model("poisson", ["CT"])
    with pytest.raises(ConfigError, match="noise_model"):
        AugmentConfig(noise_model="speckle")


def _mr_cases(rng):
    """Two MR 'cases' of very different raw scales (per-image z-score differs)."""
    a = np.full((64, 64), 100.0)
    a[:32] = 0.0
    b = np.full((64, 64), 3000.0)
    b[:32] = 0.0
    a[32:] += rng.normal(0, 0.1, (32, 64))
    b[32:] += rng.normal(0, 3.0, (32, 64))
    return [a, b]


def test_raw_domain_noise_is_rician_in_each_case_units():
    rng = np.random.default_rng(0)
    raws = _mr_cases(rng)
    norm = ChannelNorm("zscore", modality="MR")
    affines = [np.array([channel_affine(r, norm)]) for r in raws]
    x = torch.from_numpy(np.stack([normalize_channel(r, norm) for r in raws])[:, None])
    cfg = PhysicsNoiseConfig(p_mr=1.0, mr_sigma_range=(0.05, 0.05))
    hook = RawDomainNoise(cfg, [norm], affines, lambda: [0, 1])
    out = hook(x, torch.Generator().manual_seed(0))
    scale = torch.tensor([a[0, 0] for a in affines])
    offset = torch.tensor([a[0, 1] for a in affines])
    raw_out = to_raw(out[:, 0].double(), norm, scale, offset).numpy()
    for i, r in enumerate(raws):
        sigma = 0.05 * np.percentile(r, 99)
        tissue = raw_out[i][32:].ravel()  # nu ~ signal level: Rician with b = nu / sigma
        nu = float(r[32:].mean())
        assert stats.kstest(tissue, stats.rice(b=nu / sigma, scale=sigma).cdf).pvalue > 0.01
        bg = raw_out[i][:32].ravel()  # nu = 0: Rayleigh, mean sigma sqrt(pi/2)
        assert bg.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)


def test_raw_domain_noise_leaves_undrawn_pairs_bit_exact_and_checks_batch():
    rng = np.random.default_rng(1)
    raws = _mr_cases(rng)
    norm = ChannelNorm("zscore", modality="MR")
    affines = [np.array([channel_affine(r, norm)]) for r in raws]
    x = torch.from_numpy(np.stack([normalize_channel(r, norm) for r in raws])[:, None])
    off = RawDomainNoise(PhysicsNoiseConfig(p_mr=0.0), [norm], affines, lambda: [0, 1])
    assert off(x, torch.Generator().manual_seed(0)) is x
    half = RawDomainNoise(PhysicsNoiseConfig(p_mr=0.5), [norm], affines, lambda: [1, 0])
    outs = [half(x, torch.Generator().manual_seed(s)) for s in range(8)]
    same = [[torch.equal(o[i], x[i]) for i in range(2)] for o in outs]
    assert any(all(s) is False and any(s) for s in same)  # some batches: one drawn, one exact
    with pytest.raises(ValueError, match="does not match"):
        RawDomainNoise(PhysicsNoiseConfig(), [norm], affines, lambda: [0])(x, torch.Generator())


def test_ct_vst_channels_get_noise_in_hu():
    """Through the nonlinear VST the added noise is still the CT transmission noise in HU."""
    norm = ChannelNorm("ct_vst", clip_low=-1024.0, clip_high=3000.0, mean=0.0, std=200.0,
                       modality="CT")
    hu = np.zeros((1, 64, 64))
    affines = [np.array([channel_affine(hu[0], norm)])]
    x = torch.from_numpy(normalize_channel(hu, norm)[None])
    cfg = PhysicsNoiseConfig(p_ct=1.0, ct_dose_range=(0.25, 0.25), ct_sigma_hu_water=10.0)
    out = RawDomainNoise(cfg, [norm], affines, lambda: [0])(x, torch.Generator().manual_seed(0))
    raw = to_raw(out[:, 0].double(), norm, torch.tensor([affines[0][0, 0]]),
                 torch.tensor([affines[0][0, 1]]))
    # dose 1/4 of a sigma-10 scan: total 20 HU, of which the input already "has" 10 -> added
    # std sqrt(20^2 - 10^2) = 17.3 HU at water
    assert float(raw.std()) == pytest.approx(np.sqrt(20.0**2 - 10.0**2), rel=0.1)


def test_augmenter_noise_hook_replaces_the_gaussian_step():
    calls = []

    def hook(img, g):
        calls.append(img.shape)
        return img + 1.0

    cfg = AugmentConfig.identity()
    cfg.p_noise = 1.0
    x = torch.zeros(2, 1, 8, 8)
    out, _ = Augmenter(cfg, 2, seed=0, noise=hook)(x)
    assert calls == [(2, 1, 8, 8)] and torch.equal(out, x + 1.0)
    gauss, _ = Augmenter(cfg, 2, seed=0)(x)
    assert float(gauss.abs().sum()) > 0 and not torch.equal(gauss, x + 1.0)


def test_make_augmenter_resolves_by_modality():
    mr = [ChannelNorm("zscore", modality="MR")]
    png = [ChannelNorm("minmax_zscore", modality="PNG")]
    aff = [np.array([[1.0, 0.0]])]
    a = make_augmenter(AugmentConfig(), PhysicsNoiseConfig(), 2, 0, mr, aff, lambda: [0])
    assert isinstance(a.noise, RawDomainNoise)
    assert make_augmenter(AugmentConfig(), PhysicsNoiseConfig(), 2, 0, png, aff,
                          lambda: [0]).noise is None
    assert make_augmenter(AugmentConfig(noise_model="gaussian"), PhysicsNoiseConfig(), 2, 0,
                          mr, aff, lambda: [0]).noise is None
    assert make_augmenter(AugmentConfig(enabled=False), PhysicsNoiseConfig(), 2, 0, mr, aff,
                          lambda: [0]) is None
