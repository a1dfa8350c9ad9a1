"""MR physics in torch (P2): complex noise (image and k-space), Rician moments, sigma estimation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from medseg.physics.mri import (
    complex_noise,
    estimate_noise_sigma,
    otsu_threshold,
    rician_bias_correct,
    rician_mean,
)

D = torch.float64
N_SIDE = 320  # 102400 voxels per simulated image


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("snr", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("domain", ["image", "kspace"])
def test_complex_noise_is_rician_with_the_closed_form_mean(snr: float, domain: str):
    sigma = 2.0
    nu = torch.full((N_SIDE, N_SIDE), snr * sigma, dtype=D)
    m = complex_noise(nu, sigma, _gen(11), domain=domain).numpy().ravel()
    p = stats.kstest(m, stats.rice(b=snr, scale=sigma).cdf).pvalue
    assert p > 0.01
    expected = float(rician_mean(snr * sigma, sigma))
    assert abs(m.mean() / expected - 1.0) < 0.01


def test_ks_rejects_gaussian_noise_on_the_magnitude_at_low_snr():
    # the same test that accepts complex noise tells the naive model apart
    sigma, snr = 2.0, 1.0
    g = _gen(11)
    naive = snr * sigma + sigma * torch.randn(N_SIDE * N_SIDE, generator=g, dtype=D)
    assert stats.kstest(naive.numpy(), stats.rice(b=snr, scale=sigma).cdf).pvalue < 1e-6
    # and even its absolute value (folded Gaussian) is not Rician
    assert stats.kstest(naive.abs().numpy(), stats.rice(b=snr, scale=sigma).cdf).pvalue < 1e-6


def test_kspace_and_image_noise_have_the_same_law_and_sigma():
    sigma = 1.5
    nu = torch.full((N_SIDE, N_SIDE), 1.0 * sigma, dtype=D)
    a = complex_noise(nu, sigma, _gen(1), domain="image").numpy().ravel()
    b = complex_noise(nu, sigma, _gen(2), domain="kspace").numpy().ravel()
    assert stats.ks_2samp(a, b).pvalue > 0.01
    # orthonormal DFT: k-space white noise of std sigma is image white noise of std sigma
    bg = complex_noise(torch.zeros(N_SIDE, N_SIDE, dtype=D), sigma, _gen(3), domain="kspace")
    assert float(torch.sqrt((bg**2).mean() / 2)) == pytest.approx(sigma, rel=0.01)
    # neighbouring voxels stay uncorrelated (white noise), in a 2-axis FFT of a batch
    zeros = torch.zeros(2, 1, 128, 128, dtype=D)
    sig = torch.tensor([0.5, 3.0], dtype=D).reshape(2, 1, 1, 1)
    m = complex_noise(zeros, sig, _gen(4), domain="kspace", spatial_dims=2)
    for i, s in enumerate((0.5, 3.0)):
        est = float(torch.sqrt((m[i] ** 2).mean() / 2))
        assert est == pytest.approx(s, rel=0.02)


def test_phase_does_not_change_the_law_and_seed_determines_output():
    nu = torch.full((200, 200), 2.0, dtype=D)
    a = complex_noise(nu, 1.0, _gen(5), phase=0.7)
    b = complex_noise(nu, 1.0, _gen(6))
    assert stats.ks_2samp(a.numpy().ravel(), b.numpy().ravel()).pvalue > 0.01
    torch.manual_seed(123)  # the global RNG is not used
    assert torch.equal(complex_noise(nu, 1.0, _gen(5), phase=0.7), a)
    assert not torch.equal(complex_noise(nu, 1.0, _gen(7), phase=0.7), a)
    assert complex_noise(nu.float(), 1.0, _gen(5)).dtype == torch.float32


def test_complex_noise_rejects_bad_input():
    x = torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"must be > 0, got 0"):
        complex_noise(x, 0.0, _gen(0))
    with pytest.raises(ValueError, match=r"must be > 0, got -1"):
        complex_noise(x, -1.0, _gen(0))
    with pytest.raises(ValueError, match="magnitudes must be >= 0"):
        complex_noise(-x, 1.0, _gen(0))
    with pytest.raises(ValueError, match="domain"):
        complex_noise(x, 1.0, _gen(0), domain="fourier")
    with pytest.raises(ValueError, match="constant along the spatial axes"):
        complex_noise(x, torch.rand(4, 4) + 0.1, _gen(0), domain="kspace")


def test_rician_mean_matches_scipy_and_high_snr_quadrature():
    snr = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0])
    for sigma in (0.3, 1.0, 7.0):
        got = rician_mean(torch.tensor(snr * sigma, dtype=D), sigma).numpy()
        ref = stats.rice.mean(snr, scale=sigma)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    # scipy's mean overflows beyond b ~ 37: integrate x p(x) (its pdf uses i0e: stable)
    for b in (40.0, 50.0):
        ref = integrate.quad(lambda x, b=b: x * stats.rice.pdf(x, b), b - 20, b + 20,
                             epsabs=0, epsrel=1e-12)[0]
        assert float(rician_mean(b, 1.0)) == pytest.approx(ref, rel=1e-6)
    # Rayleigh limit and no overflow at huge SNR (-> nu + sigma^2 / (2 nu))
    assert float(rician_mean(0.0, 2.0)) == pytest.approx(2.0 * math.sqrt(math.pi / 2), rel=1e-12)
    assert float(rician_mean(1e6, 1.0)) == pytest.approx(1e6 + 0.5e-6, rel=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        rician_mean(1.0, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        rician_mean(-1.0, 1.0)


def _phantom(sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Air background (Rayleigh) around a bright disk (SNR 20): ``(image, true_background)``."""
    n = 400
    yy, xx = torch.meshgrid(torch.arange(n, dtype=D), torch.arange(n, dtype=D), indexing="ij")
    disk = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.3 * n) ** 2
    nu = torch.where(disk, 20.0 * sigma, 0.0)
    return complex_noise(nu, sigma, _gen(seed)), ~disk


@pytest.mark.parametrize("method", ["rayleigh_mean", "rayleigh_mode", "rayleigh_m2"])
def test_sigma_estimators_recover_sigma_within_3_percent(method: str):
    sigma = 3.0
    img, bg = _phantom(sigma, seed=21)
    assert float(estimate_noise_sigma(img, bg, method)) == pytest.approx(sigma, rel=0.03)
    # automatic (Otsu) background mask
    assert float(estimate_noise_sigma(img, None, method)) == pytest.approx(sigma, rel=0.03)


def test_mode_estimator_is_robust_to_tissue_in_the_mask():
    sigma = 3.0
    img, bg = _phantom(sigma, seed=22)
    # a mask that wrongly includes 10 % tissue voxels (SNR 20): the mean estimator breaks, the
    # mode does not
    tissue = (~bg).flatten().nonzero().flatten()
    bad = bg.clone().flatten()
    bad[tissue[: int(0.1 * bg.sum())]] = True
    bad = bad.reshape(bg.shape)
    assert float(estimate_noise_sigma(img, bad, "rayleigh_mean")) > 1.5 * sigma
    assert float(estimate_noise_sigma(img, bad, "rayleigh_mode")) == pytest.approx(sigma, rel=0.03)


def test_otsu_threshold_separates_two_levels_and_estimator_errors():
    v = torch.cat([torch.zeros(100), torch.full((50,), 10.0)])
    t = otsu_threshold(v)
    assert 0.0 < t < 10.0
    assert otsu_threshold(torch.full((5,), 3.0)) == 3.0
    img = torch.ones(4, 4)
    with pytest.raises(ValueError, match="method"):
        estimate_noise_sigma(img, method="median")
    with pytest.raises(ValueError, match="no voxel"):
        estimate_noise_sigma(img, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        estimate_noise_sigma(img, torch.ones(3, 3, dtype=torch.bool))


def test_rician_bias_correction_values_and_documented_low_snr_bias():
    m = torch.tensor([5.0, 1.0, 0.0], dtype=D)
    np.testing.assert_allclose(rician_bias_correct(m, 2.0).numpy(), [math.sqrt(17.0), 0.0, 0.0])
    sigma = 1.0
    high = complex_noise(torch.full((N_SIDE, N_SIDE), 20.0, dtype=D), sigma, _gen(8))
    # E[m^2 - 2 sigma^2] = nu^2, and at high SNR the corrected mean is close to nu
    assert float((high**2 - 2).mean()) == pytest.approx(400.0, rel=0.005)
    assert float(rician_bias_correct(high, sigma).mean()) == pytest.approx(20.0, rel=0.002)
    assert float(high.mean()) > 20.02  # the uncorrected magnitude is biased upwards
    # at nu = 0 the clamp keeps a positive bias (documented)
    low = complex_noise(torch.zeros(N_SIDE, N_SIDE, dtype=D), sigma, _gen(9))
    assert float(rician_bias_correct(low, sigma).mean()) > 0.3
    with pytest.raises(ValueError, match="sigma"):
        rician_bias_correct(m, -1.0)
