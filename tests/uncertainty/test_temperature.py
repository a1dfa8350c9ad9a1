"""Temperature scaling (U5): recovery of a known T, brute-force optimum, masks, ECE, caps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.metrics.calibration import expected_calibration_error
from medseg.uncertainty import (
    apply_temperature,
    fit_temperature,
    fit_temperature_subsampled,
    observed_elements,
    temperature_nll,
)
from medseg.uncertainty.calibration import T_MAX, T_MIN


def _softmax_data(t_star: float, shape=(50, 4, 40, 100), scale=2.0, seed=0):
    """Logits z ~ N(0, scale^2) and labels ~ Categorical(softmax(z / t_star)) per voxel."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    cum = torch.softmax(z / t_star, dim=1).cumsum(dim=1)
    u = torch.rand((shape[0], 1, *shape[2:]), generator=g, dtype=torch.float64)
    y = (cum < u).sum(dim=1).clamp_max(shape[1] - 1)
    return z, y


def _sigmoid_data(t_star: float, shape=(20_000, 10), scale=2.0, seed=0, missing=0.0):
    """Logits z ~ N(0, scale^2), labels ~ Bernoulli(sigmoid(z / t_star)), some set to -1."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    y = (torch.rand(shape, generator=g, dtype=torch.float64) < torch.sigmoid(z / t_star)).long()
    if missing:
        y[torch.rand(shape, generator=g, dtype=torch.float64) < missing] = -1
    return z, y


@pytest.mark.parametrize("t_star", [0.5, 2.0])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_recovers_a_known_temperature(kind, t_star):
    # 200 000 voxels (softmax, (50, 4, 40, 100)) or multi-label entries (sigmoid, (20000, 10))
    if kind == "softmax":
        z, y = _softmax_data(t_star)
    else:
        z, y = _sigmoid_data(t_star, missing=0.1)
    t = fit_temperature(z, y, kind=kind)
    # measured (seed 0): softmax 0.5 -> 0.503, 2.0 -> 2.008; sigmoid 0.5 -> 0.4999, 2.0 -> 1.993
    assert abs(t / t_star - 1) < 0.03, (kind, t_star, t)
    # the fitted T is at least as good as the true one on the data it was fitted on
    assert temperature_nll(z, y, t, kind=kind) <= temperature_nll(z, y, t_star, kind=kind)
    # float32 logits give the same answer (the fit runs in float64)
    assert fit_temperature(z.float(), y, kind=kind) == pytest.approx(t, rel=1e-5)


def _reference_nll(z: torch.Tensor, y: torch.Tensor, t: float, kind: str) -> float:
    if kind == "softmax":
        return float(F.cross_entropy(z / t, y))
    return float(F.binary_cross_entropy_with_logits(z / t, y.to(z.dtype)))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_equals_the_brute_force_grid_minimum(kind):
    if kind == "softmax":
        z, y = _softmax_data(1.3, shape=(300, 3), seed=3)
    else:
        z, y = _sigmoid_data(0.7, shape=(300,), seed=3)
    log_grid = np.linspace(math.log(T_MIN), math.log(T_MAX), 4001)
    nll = np.array([_reference_nll(z, y, math.exp(u), kind) for u in log_grid])
    best = int(nll.argmin())
    assert 0 < best < len(log_grid) - 1  # an interior minimum
    t = fit_temperature(z, y, kind=kind)
    step = log_grid[1] - log_grid[0]
    assert abs(math.log(t) - log_grid[best]) <= step
    assert temperature_nll(z, y, t, kind=kind) <= nll[best] + 1e-12
    assert temperature_nll(z, y, t, kind=kind) == pytest.approx(
        _reference_nll(z, y, t, kind), abs=1e-12)
    # the starting point does not matter
    for init in (0.06, 1.0, 15.0):
        assert fit_temperature(z, y, kind=kind, init=init) == pytest.approx(t, rel=1e-8)


def test_masked_voxels_change_nothing():
    z, y = _softmax_data(1.5, shape=(3, 4, 30, 30), seed=5)
    g = torch.Generator().manual_seed(6)
    mask = torch.rand((3, 30, 30), generator=g) < 0.6
    t = fit_temperature(z, y, mask=mask)
    z2, y2 = z.clone(), y.clone()
    z2.masked_fill_(~mask[:, None], 0.0)
    z2[:, 0][~mask] = 50.0  # a confident, wrong-or-right logit at every masked voxel
    y2[~mask] = 255  # an ignore label
    assert fit_temperature(z2, y2, mask=mask) == t
    assert fit_temperature(z2, y2, mask=mask[:, None]) == t  # (N, 1, *spatial) mask
    assert fit_temperature(z2, y2[:, None], mask=mask.float()) == t  # (N, 1, *spatial) targets
    # the same as fitting on the observed voxels only
    zo = z.movedim(1, -1)[mask]
    assert fit_temperature(zo, y[mask]) == pytest.approx(t, rel=1e-12)
    assert t != pytest.approx(fit_temperature(z, y), rel=1e-6)  # the mask did matter


def test_missing_labels_change_nothing_for_sigmoid():
    z, y = _sigmoid_data(0.8, shape=(400, 6), seed=7, missing=0.3)
    t = fit_temperature(z, y, kind="sigmoid")
    z2 = z.clone()
    z2[y == -1] = -40.0
    assert fit_temperature(z2, y, kind="sigmoid") == t
    obs = y != -1
    assert fit_temperature(z[obs], y[obs], kind="sigmoid") == pytest.approx(t, rel=1e-12)
    # an explicit mask acts like -1
    keep = torch.ones_like(y, dtype=torch.bool)
    keep[:, 0] = False
    y3 = y.clone()
    y3[:, 0] = -1
    assert fit_temperature(z, y, mask=keep, kind="sigmoid") == fit_temperature(
        z, y3, kind="sigmoid")


def _top_label_ece(logits: torch.Tensor, y: torch.Tensor, binning: str) -> float:
    p = torch.softmax(logits, dim=1)
    conf, pred = p.max(dim=1)
    return expected_calibration_error(conf.numpy(), (pred == y).numpy().astype(float), 15,
                                      binning)[0]


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_fitting_an_overconfident_model_lowers_the_ece(binning):
    g = torch.Generator().manual_seed(11)
    z_true = 1.5 * torch.randn(100_000, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z_true, dim=1), 1, generator=g)[:, 0]
    logits = 3.0 * z_true  # same ranking, over-confident: T* = 3
    before = _top_label_ece(logits, y, binning)
    t = fit_temperature(logits, y)
    after = _top_label_ece(apply_temperature(logits, t), y, binning)
    # measured: T = 2.994, ECE 0.257 -> 0.003 (both binnings)
    assert t == pytest.approx(3.0, rel=0.03)
    assert before > 0.1 and after < 0.01 and after < before / 10


def test_caps_for_separable_anti_informative_and_constant_logits():
    y = torch.tensor([0, 1, 2, 1])
    z = 4.0 * F.one_hot(y, 3).double()  # every argmax right: the NLL falls as T -> 0
    assert fit_temperature(z, y) == T_MIN
    assert fit_temperature(-z, y) == T_MAX  # always wrong: best is as uniform as allowed
    assert fit_temperature(torch.zeros(4, 3), y, init=1.7) == 1.7  # the NLL does not depend on T
    assert fit_temperature(z, y, bounds=(0.2, 5.0)) == 0.2
    yb = torch.tensor([1, 0, 1, -1])
    zb = torch.tensor([3.0, -2.0, 0.5, -9.0])
    assert fit_temperature(zb, yb, kind="sigmoid") == T_MIN


def test_subsampled_fit_is_deterministic_and_close():
    z, y = _softmax_data(1.4, shape=(4, 3, 64, 64), seed=13)
    mask = torch.ones((4, 64, 64), dtype=torch.bool)
    mask[:, :8] = False
    full = fit_temperature(z, y, mask=mask)
    a = fit_temperature_subsampled(z, y, mask=mask, max_elements=5000, seed=1)
    assert fit_temperature_subsampled(z, y, mask=mask, max_elements=5000, seed=1) == a
    b = fit_temperature_subsampled(z, y, mask=mask, max_elements=5000, seed=2)
    assert a != b
    assert a == pytest.approx(full, rel=0.1) and b == pytest.approx(full, rel=0.1)
    assert fit_temperature_subsampled(z, y, mask=mask, max_elements=10**8) == full
    zs, ys = observed_elements(z, y, mask, max_elements=5000, seed=1)
    assert zs.shape == (5000, 3) and ys.shape == (5000,) and zs.dtype == torch.float64
    assert fit_temperature(zs, ys) == a
    with pytest.raises(TypeError, match="unknown keyword"):
        fit_temperature_subsampled(z, y, max_elments=10)


def test_apply_temperature_and_bad_input():
    z = torch.randn(2, 3, 4, 4)
    assert torch.equal(apply_temperature(z, 2.0), z / 2.0)
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0)
    with pytest.raises(ValueError, match="kind"):
        fit_temperature(z, y, kind="tanh")
    with pytest.raises(ValueError, match="targets"):
        fit_temperature(z, y[:, :3])
    with pytest.raises(ValueError, match="mask"):
        fit_temperature(z, y, mask=torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_temperature(z, y + 3)
    with pytest.raises(ValueError, match="C >= 2"):
        fit_temperature(z[:, :1], y)
    with pytest.raises(ValueError, match="no observed"):
        fit_temperature(z, y, mask=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="0 or 1"):
        fit_temperature(torch.zeros(3, 2), torch.full((3, 2), 2), kind="sigmoid")
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, y, bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match="floating"):
        fit_temperature(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------ ensembles (one shared T)
def test_ensemble_nll_by_hand_and_one_member_is_the_single_model_problem():
    from medseg.uncertainty.calibration import ensemble_nll, fit_ensemble_temperature

    z = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # K=2, M=1, C=2
    y = torch.tensor([0])
    p0 = 0.5 * (1 / (1 + math.exp(-1.0)) + 1 / (1 + math.exp(0.5)))  # T = 2
    assert ensemble_nll(z, y, 2.0) == pytest.approx(-math.log(p0), rel=1e-12)
    zs = torch.tensor([[0.5, -1.0]], dtype=torch.float64)  # sigmoid, K=1, M=2
    ys = torch.tensor([1.0, 0.0])
    want = -(math.log(1 / (1 + math.exp(-0.25))) + math.log(1 - 1 / (1 + math.exp(0.5)))) / 2
    assert ensemble_nll(zs, ys, 2.0, kind="sigmoid") == pytest.approx(want, rel=1e-12)
    g = torch.Generator().manual_seed(4)
    logits = 3.0 * torch.randn(2000, 4, generator=g, dtype=torch.float64)
    targets = torch.multinomial(torch.softmax(logits / 1.7, 1), 1, generator=g)[:, 0]
    assert fit_ensemble_temperature(logits[None], targets) == pytest.approx(
        fit_temperature(logits, targets), rel=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_ensemble_temperature_recovers_a_known_temperature(kind):
    """Labels drawn from the mean of the members' tempered probabilities at T* = 0.6: the
    shared fit finds T*, and fitting one member or the mean of the logits does not."""
    from medseg.uncertainty.calibration import ensemble_nll, fit_ensemble_temperature

    g = torch.Generator().manual_seed(0)
    m, k, t_star = 60_000, 5, 0.6
    base = 2.0 * torch.randn(m, 3, generator=g, dtype=torch.float64)
    members = base[None] + 1.5 * torch.randn(k, m, 3, generator=g, dtype=torch.float64)
    if kind == "softmax":
        p = torch.softmax(members / t_star, -1).mean(0)
        y = torch.multinomial(p, 1, generator=g)[:, 0]
    else:
        members = members[..., 0]
        p = torch.sigmoid(members / t_star).mean(0)
        y = torch.bernoulli(p, generator=g)
    t = fit_ensemble_temperature(members, y, kind=kind)
    assert t == pytest.approx(t_star, rel=0.03)
    one = fit_temperature(members[0], y, kind=kind)
    mean_logits = fit_temperature(members.mean(0), y, kind=kind)
    nll = ensemble_nll(members, y, t, kind)
    assert nll < ensemble_nll(members, y, one, kind) - 1e-4
    assert nll < ensemble_nll(members, y, mean_logits, kind) - 1e-4
    assert abs(one - t_star) > 0.05 and abs(mean_logits - t_star) > 0.05


def test_calibrate_an_ensemble_set_reports_the_shared_fit():
    from medseg.training.calibration import CalibrationSet, calibrate
    from medseg.uncertainty.calibration import ensemble_nll

    g = torch.Generator().manual_seed(1)
    members = 4.0 * torch.randn(3, 5000, 3, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(members / 2.5, -1).mean(0), 1, generator=g)[:, 0]
    cs = CalibrationSet.from_members(members, y, "softmax", "synthetic", 5000)
    doc = calibrate(cs)
    assert doc["level"].startswith("ensemble of 3 members")
    assert doc["temperature"] == pytest.approx(2.5, rel=0.08)
    assert doc["nll_after"] == pytest.approx(ensemble_nll(members, y, doc["temperature"]))
    assert doc["ece_after"]["width"] < doc["ece_before"]["width"]
    # the averaged prediction is what cs.logits holds (log of the mean probabilities)
    torch.testing.assert_close(torch.softmax(cs.logits, 1),
                               torch.softmax(members, -1).mean(0), rtol=0, atol=1e-12)
    single = CalibrationSet.from_members(members[:1], y, "softmax", "one", 5000)
    assert single.member_logits is None and calibrate(single)["level"] == "one model"
