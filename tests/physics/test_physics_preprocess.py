"""Physics-aware normalisation (P4): the VST for CT, the log domain for linear ultrasound, and the
exact raw <-> normalised round trip the physical noise augmentation relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.data import (
    ChannelNorm,
    PreprocessPlan,
    channel_affine,
    from_raw,
    make_plan,
    normalize_channel,
    open_dataset,
    to_raw,
    validate_dataset,
)
from medseg.physics.noise import ct_transmission_noise, us_speckle

CT = dict(clip_low=-1000.0, clip_high=1500.0, mean=40.0, std=300.0)


@pytest.mark.parametrize(
    "norm",
    [ChannelNorm("zscore"), ChannelNorm("minmax_zscore"), ChannelNorm("log_zscore"),
     ChannelNorm("none"), ChannelNorm("ct", **CT), ChannelNorm("ct_vst", **CT)],
    ids=lambda n: n.scheme,
)
def test_raw_normalised_round_trip(norm):
    """normalize_channel == from_raw(raw, channel_affine) and to_raw inverts it."""
    rng = np.random.default_rng(1)
    raws = [rng.uniform(-900.0, 1400.0, (12, 10)) if norm.scheme.startswith("ct")
            else rng.gamma(2.0, 50.0, (12, 10)) + 1.0 for _ in range(3)]
    u = np.stack([normalize_channel(r, norm) for r in raws])
    aff = np.array([channel_affine(r, norm) for r in raws])
    scale = torch.tensor(aff[:, 0], dtype=torch.float64)
    offset = torch.tensor(aff[:, 1], dtype=torch.float64)
    raw_t = torch.tensor(np.stack(raws))
    np.testing.assert_allclose(from_raw(raw_t, norm, scale, offset).numpy(), u, atol=1e-5)
    back = to_raw(torch.tensor(u, dtype=torch.float64), norm, scale, offset).numpy()
    np.testing.assert_allclose(back, np.stack(raws), rtol=1e-4, atol=1e-3)


def test_ct_vst_is_the_ct_zscore_to_first_order_and_monotone():
    vst, lin = ChannelNorm("ct_vst", **CT), ChannelNorm("ct", **CT)
    near = np.array([39.0, 40.0, 41.0])
    np.testing.assert_allclose(normalize_channel(near, vst), normalize_channel(near, lin),
                               atol=1e-5)
    h = np.linspace(-1000, 1500, 101)
    u = normalize_channel(h, vst).astype(np.float64)
    assert np.all(np.diff(u) > 0)
    # a = mu_w L / 2000 = 0.00192 / HU; at h = mean + 1000: (1 - e^-1.92) / (a * std)
    a = 0.0192 * 200.0 / 2000.0
    want = -np.expm1(-a * 1000.0) / (a * 300.0)
    assert normalize_channel(np.array([1040.0]), vst)[0] == pytest.approx(want, rel=1e-5)


def test_ct_vst_stabilises_transmission_noise():
    """Per-voxel Poisson transmission noise: std grows ~4.6x from 0 to 800 HU in the plain
    z-score (exp(mu_w L 0.8 / 2)); after the VST it is the same at both levels (within 8%)."""
    rng = np.random.default_rng(0)
    levels = (0.0, 800.0)
    stds = {"ct": [], "ct_vst": []}
    for h in levels:
        noisy = ct_transmission_noise(np.full(200_000, h), rng, photons=2e5)
        for scheme in stds:
            norm = ChannelNorm(scheme, clip_low=-3000.0, clip_high=5000.0, mean=40.0, std=300.0)
            stds[scheme].append(float(normalize_channel(noisy, norm).std()))
    assert stds["ct"][1] / stds["ct"][0] == pytest.approx(np.exp(0.0192 * 200 * 0.8 / 2), rel=0.08)
    assert stds["ct_vst"][1] / stds["ct_vst"][0] == pytest.approx(1.0, abs=0.08)


def test_log_zscore_makes_speckle_signal_independent():
    rng = np.random.default_rng(0)
    lo, hi = us_speckle(np.full(100_000, 1.0), 4, rng), us_speckle(np.full(100_000, 500.0), 4, rng)
    both = np.concatenate([lo, hi])
    for norm, same in ((ChannelNorm("log_zscore"), True), (ChannelNorm("zscore"), False)):
        scale, offset = channel_affine(both, norm)
        u = normalize_channel(both, norm)
        s_lo, s_hi = float(u[: lo.size].std()), float(u[lo.size:].std())
        assert (abs(s_hi / s_lo - 1.0) < 0.03) is same, (norm.scheme, s_lo, s_hi, scale, offset)


def test_make_plan_physics_choices(tmp_path):
    from medseg.physics import PhantomSpec, write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "ct", PhantomSpec(shape=(24, 24), modality="ct"),
                                 n_train=2, n_test=0, seed=0)
    ds = open_dataset(root)
    summary = validate_dataset(ds, 2)
    assert [n.scheme for n in make_plan(summary, ds).normalization] == ["ct"]
    plan = make_plan(summary, ds, physics=True)
    assert [(n.scheme, n.modality) for n in plan.normalization] == [("ct_vst", "CT")]
    again = PreprocessPlan.from_dict(plan.to_dict())
    assert again.normalization[0] == plan.normalization[0]
    # ultrasound: B-mode stays in its (already log) domain, linear envelope data goes to log
    ds.modalities = ["US"]
    assert make_plan(summary, ds, physics=True).normalization[0].scheme == "minmax_zscore"
    ds.channel_names = ["US envelope"]
    assert make_plan(summary, ds, physics=True).normalization[0].scheme == "log_zscore"
