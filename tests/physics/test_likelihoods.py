"""Likelihoods (L7), Anscombe VST (P1) and TV / homomorphic despeckling (P3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from skimage.restoration import denoise_tv_chambolle

from medseg.physics import (
    anscombe,
    anscombe_expectation,
    gamma_nll,
    gaussian_hetero_nll,
    homomorphic_tv_despeckle,
    inverse_anscombe_algebraic,
    inverse_anscombe_asymptotic,
    inverse_anscombe_unbiased,
    poisson_nll,
    rician_nll,
    total_variation,
    tv_denoise,
)

D = torch.float64

# ------------------------------------------------------------------------------- Poisson


def test_poisson_nll_hand_value_and_zero_counts():
    # rate 2, counts 3: 2 - 3 log 2 ; + log 3! when full
    v = poisson_nll(torch.tensor([2.0], dtype=D), torch.tensor([3.0], dtype=D), reduction="none")
    assert v.item() == pytest.approx(2.0 - 3.0 * math.log(2.0), abs=1e-12)
    v = poisson_nll(torch.tensor([2.0], dtype=D), torch.tensor([3]), full=True, reduction="sum")
    assert v.item() == pytest.approx(2.0 - 3.0 * math.log(2.0) + math.log(6.0), abs=1e-12)
    # counts 0: exactly the rate, even for tiny and huge rates
    rate = torch.tensor([1e-30, 1.0, 1e12], dtype=D)
    v = poisson_nll(rate, torch.zeros(3, dtype=D), reduction="none")
    assert torch.equal(v, rate)


def test_poisson_nll_matches_torch_and_scipy():
    g = torch.Generator().manual_seed(0)
    rate = torch.rand(200, generator=g, dtype=D) * 50 + 0.1
    counts = torch.poisson(rate, generator=g)
    ours = poisson_nll(rate, counts, reduction="none")
    ref = torch.nn.functional.poisson_nll_loss(
        rate, counts, log_input=False, full=False, eps=0.0, reduction="none"
    )
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    full = poisson_nll(rate, counts, full=True, reduction="none")
    ref_full = -stats.poisson.logpmf(counts.numpy(), rate.numpy())
    np.testing.assert_allclose(full.numpy(), ref_full, rtol=1e-10, atol=1e-10)
    # large rate: finite and still exact
    big = poisson_nll(torch.tensor([1e8], dtype=D), torch.tensor([1e8 + 3e4], dtype=D),
                      full=True, reduction="none")
    assert big.item() == pytest.approx(-stats.poisson.logpmf(1e8 + 3e4, 1e8), rel=1e-8)


def test_poisson_nll_rejects_bad_input():
    with pytest.raises(ValueError, match="counts must be >= 0"):
        poisson_nll(torch.ones(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson_nll(torch.tensor([0.0, 1.0]), torch.ones(2))


# -------------------------------------------------------------------------------- Rician


def test_rician_nll_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.01, 10, 300)
    nu = rng.uniform(0.0, 8, 300)
    sigma = rng.uniform(0.3, 3, 300)
    ours = rician_nll(torch.tensor(x), torch.tensor(nu), torch.tensor(sigma), reduction="none")
    ref = -stats.rice.logpdf(x, nu / sigma, scale=sigma)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_rician_nll_high_snr_tends_to_gaussian():
    # SNR 1e4: I0(x nu / sigma^2) overflows naively; the stable form gives the Gaussian limit
    # -log p = 0.5 log(2 pi sigma^2) + (x - nu)^2 / (2 sigma^2) + 0.5 log(nu / x) + O(1 / z)
    nu = torch.tensor([1e4], dtype=D, requires_grad=True)
    sigma = torch.tensor([1.0], dtype=D, requires_grad=True)
    x = torch.tensor([1e4 + 0.7], dtype=D)
    v = rician_nll(x, nu, sigma, reduction="sum")
    assert torch.isfinite(v)
    gauss = 0.5 * math.log(2 * math.pi) + 0.5 * 0.7**2
    assert v.item() == pytest.approx(gauss, abs=1e-4)
    v.backward()
    assert torch.isfinite(nu.grad).all() and torch.isfinite(sigma.grad).all()
    # d/dnu of the Gaussian limit: -(x - nu) / sigma^2
    assert nu.grad.item() == pytest.approx(-0.7, abs=1e-3)
    # float32 too
    v32 = rician_nll(x.float(), nu.detach().float(), 1.0, reduction="sum")
    assert torch.isfinite(v32) and v32.item() == pytest.approx(gauss, abs=1e-2)


def test_rician_nll_finite_at_zero_and_gradients():
    nu = torch.tensor([0.0, 0.5, 3.0], dtype=D, requires_grad=True)
    sigma = torch.tensor(1.5, dtype=D, requires_grad=True)
    x = torch.zeros(3, dtype=D)
    v = rician_nll(x, nu, sigma, reduction="sum")
    assert torch.isfinite(v)
    v.backward()
    assert torch.isfinite(nu.grad).all() and torch.isfinite(sigma.grad)
    # at x = 0, d/dnu = nu / sigma^2 (the Bessel term is constant)
    torch.testing.assert_close(nu.grad, nu.detach() / 1.5**2)


def test_rician_nll_gradcheck_and_errors():
    x = torch.tensor([0.3, 1.2, 4.0, 0.0], dtype=D)
    nu = torch.tensor([0.5, 1.0, 3.5, 2.0], dtype=D, requires_grad=True)
    sigma = torch.tensor([0.8, 1.1, 0.6, 1.0], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda n, s: rician_nll(x, n, s, reduction="none"), (nu, sigma)
    )
    with pytest.raises(ValueError, match="sigma must be > 0"):
        rician_nll(x, nu, 0.0)
    with pytest.raises(ValueError, match="x must be >= 0"):
        rician_nll(-x - 1, nu, 1.0)


# --------------------------------------------------------------------------------- Gamma


def test_gamma_nll_matches_scipy_and_gradcheck():
    rng = np.random.default_rng(2)
    for L in (1.0, 4.0, 12.5):
        mean = rng.uniform(0.1, 5, 100)
        y = mean * rng.gamma(L, 1.0 / L, 100)
        ours = gamma_nll(torch.tensor(y), torch.tensor(mean), L, reduction="none")
        ref = -stats.gamma.logpdf(y, L, scale=mean / L)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-10)
    # y = 0 with L = 1 (exponential): -log p = log(mean)
    v = gamma_nll(torch.zeros(1, dtype=D), torch.tensor([2.0], dtype=D), 1.0, reduction="sum")
    assert v.item() == pytest.approx(math.log(2.0), abs=1e-12)
    y = torch.tensor([0.5, 1.7, 3.0], dtype=D)
    mean = torch.tensor([1.0, 2.0, 2.5], dtype=D, requires_grad=True)
    looks = torch.tensor([1.5, 3.0, 8.0], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m, L: gamma_nll(y, m, L, reduction="none"), (mean, looks)
    )
    with pytest.raises(ValueError, match="looks must be >= 1"):
        gamma_nll(y, mean, 0.5)


# ------------------------------------------------------------------------------ Gaussian


@pytest.mark.parametrize("full", [False, True])
def test_gaussian_hetero_nll_matches_torch(full):
    g = torch.Generator().manual_seed(3)
    y, mean = torch.randn(2, 50, generator=g, dtype=D)
    log_var = torch.randn(50, generator=g, dtype=D)
    ours = gaussian_hetero_nll(y, mean, log_var, full=full, reduction="mean")
    ref = torch.nn.GaussianNLLLoss(full=full, eps=1e-12)(mean, y, log_var.exp())
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # hand value: y=1, mean=0, log_var=0 -> 0.5
    one = gaussian_hetero_nll(torch.ones(1), torch.zeros(1), torch.zeros(1))
    assert one.item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------ Anscombe


def test_anscombe_closed_forms():
    x = torch.tensor([0.0, 1.0, 10.0], dtype=D)
    torch.testing.assert_close(anscombe(x), 2 * torch.sqrt(x + 0.375))
    torch.testing.assert_close(inverse_anscombe_algebraic(anscombe(x)), x)
    # the tabulated exact inverse and the Makitalo-Foi closed form agree at moderate counts
    y = torch.tensor(anscombe_expectation(np.array([5.0, 30.0, 150.0])))
    torch.testing.assert_close(inverse_anscombe_unbiased(y), torch.tensor([5.0, 30.0, 150.0],
                                                                          dtype=D), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(inverse_anscombe_asymptotic(y),
                               torch.tensor([5.0, 30.0, 150.0], dtype=D), rtol=2e-3, atol=0)
    # beyond the table: the closed form; continuous across the junction
    big = inverse_anscombe_unbiased(torch.tensor([28.0, 28.4, 100.0], dtype=D))
    assert big[1] > big[0] and big[1] - big[0] < 6.0
    assert big[2].item() == pytest.approx(0.25 * 100**2 - 0.125, rel=1e-4)
    assert inverse_anscombe_unbiased(torch.tensor([0.5])).item() == 0.0


@pytest.mark.parametrize("lam", [0.5, 2.0, 10.0, 100.0])
def test_unbiased_inverse_recovers_poisson_mean(lam):
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.poisson(lam, 400_000).astype(np.float64))
    a = anscombe(x)
    y = a.mean().reshape(1)
    unbiased = inverse_anscombe_unbiased(y).item()
    algebraic = inverse_anscombe_algebraic(y).item()
    assert abs(unbiased - lam) / lam < 0.02
    if lam <= 2.0:
        assert abs(algebraic - lam) / lam > 0.05
        assert abs(algebraic - lam) > 3 * abs(unbiased - lam)
    if lam >= 10.0:
        assert a.var().item() == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------------------------------------ TV


def _phantom_2d(n: int = 48) -> np.ndarray:
    img = np.zeros((n, n))
    img[8:30, 10:40] = 1.0
    img[30:44, 5:20] = 0.5
    return img


def test_tv_denoise_reduces_rmse_and_energy_2d_3d():
    rng = np.random.default_rng(5)
    clean = _phantom_2d()
    noisy = clean + 0.2 * rng.standard_normal(clean.shape)
    f = torch.from_numpy(noisy)
    u = tv_denoise(f, weight=0.15, n_iter=100)
    rmse_in = np.sqrt(((noisy - clean) ** 2).mean())
    rmse_out = np.sqrt(((u.numpy() - clean) ** 2).mean())
    assert rmse_out < 0.5 * rmse_in
    energy = 0.5 * ((u - f) ** 2).sum() + 0.15 * total_variation(u)
    assert energy < 0.15 * total_variation(f)
    assert total_variation(u) < 0.3 * total_variation(f)
    # 3D, with a leading channel axis
    clean3 = np.zeros((20, 20, 20))
    clean3[4:14, 5:15, 6:16] = 1.0
    noisy3 = clean3 + 0.2 * rng.standard_normal(clean3.shape)
    u3 = tv_denoise(torch.from_numpy(noisy3)[None], weight=0.15, n_iter=60, spatial_dims=3)
    assert u3.shape == (1, 20, 20, 20)
    rmse3 = np.sqrt(((u3[0].numpy() - clean3) ** 2).mean())
    assert rmse3 < 0.5 * np.sqrt(((noisy3 - clean3) ** 2).mean())


def test_total_variation_hand_value():
    img = torch.tensor([[0.0, 1.0], [0.0, 3.0]], dtype=D)
    # (0,0): grad (0, 1) -> 1 ; (0,1): (2, 0) -> 2 ; (1,0): (0, 3) -> 3 ; (1,1): 0
    assert total_variation(img).item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        tv_denoise(torch.zeros(5), 0.1)


def test_tv_denoise_agrees_with_skimage():
    rng = np.random.default_rng(6)
    noisy = _phantom_2d(24) + 0.2 * rng.standard_normal((24, 24))
    # skimage's max_num_iter=N returns the image after N - 1 dual updates (its last update of
    # p is not used), so it matches n_iter=N - 1 here, to round-off.
    ref = denoise_tv_chambolle(noisy, weight=0.1, eps=0.0, max_num_iter=150)
    ours = tv_denoise(torch.from_numpy(noisy), weight=0.1, n_iter=149).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    vol = noisy[None].repeat(4, 0) + 0.1 * rng.standard_normal((4, 24, 24))
    ref3 = denoise_tv_chambolle(vol, weight=0.1, eps=0.0, max_num_iter=50)
    ours3 = tv_denoise(torch.from_numpy(vol), weight=0.1, n_iter=49).numpy()
    np.testing.assert_allclose(ours3, ref3, atol=1e-10)


def test_log_speckle_is_additive_with_constant_variance():
    L = 3.0
    expected = torch.special.polygamma(1, torch.tensor(L, dtype=D)).item()
    rng = np.random.default_rng(7)
    for level in (0.05, 40.0):
        speckled = level * rng.gamma(L, 1.0 / L, 200_000)
        logv = torch.log(torch.from_numpy(speckled))
        assert logv.var().item() == pytest.approx(expected, rel=0.03)
        mean_shift = logv.mean().item() - math.log(level)
        assert mean_shift == pytest.approx(
            torch.special.digamma(torch.tensor(L, dtype=D)).item() - math.log(L), abs=0.01
        )


def test_homomorphic_despeckle_reduces_log_error():
    rng = np.random.default_rng(8)
    clean = 1.0 + 9.0 * _phantom_2d()  # intensities 1, 5.5, 10
    L = 4.0
    speckled = clean * rng.gamma(L, 1.0 / L, clean.shape)
    out = homomorphic_tv_despeckle(torch.from_numpy(speckled), weight=0.3, n_iter=100, looks=L)
    err_in = np.sqrt(((np.log(speckled) - np.log(clean)) ** 2).mean())
    err_out = np.sqrt(((np.log(out.numpy()) - np.log(clean)) ** 2).mean())
    assert err_out < 0.5 * err_in
    # bias correction: the mean intensity of the flat background is recovered within 10%
    bg = out.numpy()[clean == 1.0]
    assert bg.mean() == pytest.approx(1.0, rel=0.1)
