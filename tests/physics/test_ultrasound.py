"""Ultrasound physics in torch (P3): Gamma speckle, log compression, homomorphic log."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from medseg.physics.noise import log_compress
from medseg.physics.ultrasound import (
    bmode_to_intensity,
    envelope_to_bmode,
    inverse_log_transform,
    log_transform,
    speckle,
)

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_speckle_preserves_the_mean_and_has_variance_x2_over_L():
    x, L = 3.0, 4.0
    s = speckle(torch.full((1_000_000,), x, dtype=D), L, _gen(0))
    assert abs(float(s.mean()) / x - 1.0) < 0.01
    assert float(s.var()) == pytest.approx(x * x / L, rel=0.02)


@pytest.mark.parametrize("looks", [1.0, 2.5, 8.0])
def test_speckle_follows_the_gamma_law(looks: float):
    x = 0.7
    s = speckle(torch.full((100_000,), x, dtype=D), looks, _gen(1)).numpy()
    assert stats.kstest(s, stats.gamma(a=looks, scale=x / looks).cdf).pvalue > 0.01
    # a wrong number of looks is rejected by the same test
    assert stats.kstest(s, stats.gamma(a=2 * looks, scale=x / (2 * looks)).cdf).pvalue < 1e-6


def test_log_domain_speckle_is_signal_independent_with_trigamma_variance():
    L = 3.0
    expected = math.sqrt(float(special.polygamma(1, L)))
    stds = []
    for level in (0.5, 5e3):
        s = speckle(torch.full((400_000,), level, dtype=D), L, _gen(2))
        y = log_transform(s, eps=1e-12)
        stds.append(float(y.std()))
        # additive offset log(level) + E[log G] with E[log G] = digamma(L) - log L
        assert float(y.mean()) == pytest.approx(
            math.log(level) + float(special.digamma(L)) - math.log(L), abs=0.005)
    assert stds[0] == pytest.approx(stds[1], rel=0.01)
    assert stds[0] == pytest.approx(expected, rel=0.01)
    # in the linear domain the std is proportional to the signal (multiplicative)
    lo = speckle(torch.full((100_000,), 0.5, dtype=D), L, _gen(3)).std()
    hi = speckle(torch.full((100_000,), 5e3, dtype=D), L, _gen(3)).std()
    assert float(hi / lo) == pytest.approx(1e4, rel=1e-9)  # same generator: exactly scaled


def test_speckle_per_sample_looks_and_determinism():
    x = torch.ones(2, 1, 300, 300, dtype=D)
    looks = torch.tensor([1.0, 9.0], dtype=D).reshape(2, 1, 1, 1)
    s = speckle(x, looks, _gen(4))
    assert float(s[0].var()) == pytest.approx(1.0, rel=0.03)
    assert float(s[1].var()) == pytest.approx(1.0 / 9.0, rel=0.03)
    torch.manual_seed(99)  # the global RNG is not used
    assert torch.equal(speckle(x, looks, _gen(4)), s)
    assert not torch.equal(speckle(x, looks, _gen(5)), s)
    assert speckle(x.float(), 2.0, _gen(4)).dtype == torch.float32


def test_speckle_rejects_bad_input():
    with pytest.raises(ValueError, match=r"looks must be >= 1.*got 0.5"):
        speckle(torch.ones(3), 0.5, _gen(0))
    with pytest.raises(ValueError, match=r"looks must be >= 1"):
        speckle(torch.ones(3), torch.tensor([1.0, 0.9, 2.0]), _gen(0))
    with pytest.raises(ValueError, match="intensity must be >= 0"):
        speckle(torch.tensor([1.0, -0.1]), 2.0, _gen(0))


def test_envelope_to_bmode_equals_numpy_log_compress_and_inverts():
    rng = np.random.default_rng(0)
    inten = rng.exponential(1.0, size=(64, 64)) * np.logspace(-8, 0, 64)[None, :]
    for dr, ref in ((60.0, None), (40.0, 0.5)):
        ours = envelope_to_bmode(torch.from_numpy(inten), dr, ref).numpy()
        np.testing.assert_allclose(ours, log_compress(inten, dr, ref), atol=2e-5)
    # hand value: I = I_ref 10^-3 at 60 dB is 30 dB down, grey 127.5
    g = envelope_to_bmode(torch.tensor([1e-3, 1.0, 1e-9], dtype=D), 60.0, 1.0)
    np.testing.assert_allclose(g.numpy(), [127.5, 255.0, 0.0], atol=1e-12)
    # bmode_to_intensity is the exact inverse on (0, 255]
    grey = torch.linspace(0.5, 255.0, 101, dtype=D)
    back = envelope_to_bmode(bmode_to_intensity(grey, 50.0, 2.0), 50.0, 2.0)
    np.testing.assert_allclose(back.numpy(), grey.numpy(), rtol=1e-12)
    assert float(bmode_to_intensity(torch.tensor(0.0, dtype=D), 60.0)) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match=r"\[0, 255"):
        bmode_to_intensity(torch.tensor([256.0]))
    with pytest.raises(ValueError, match="dynamic_range_db"):
        envelope_to_bmode(torch.ones(2), 0.0)


def test_log_transform_round_trip():
    x = torch.tensor([0.0, 1e-3, 1.0, 1e4], dtype=D)
    y = log_transform(x, eps=1e-6)
    np.testing.assert_allclose(y.numpy(), np.log(x.numpy() + 1e-6), rtol=1e-15)
    np.testing.assert_allclose(inverse_log_transform(y, eps=1e-6).numpy(), x.numpy(),
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=">= 0"):
        log_transform(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="eps"):
        log_transform(x, eps=0.0)
