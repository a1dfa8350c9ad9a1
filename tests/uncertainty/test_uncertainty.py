"""Uncertainty core (SPEC U1-U4): decomposition identities, heteroscedastic CE, samplers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.networks import add_variance_head, create_model
from medseg.uncertainty import (
    bernoulli_variance_split,
    ensemble_predict,
    entropy,
    expected_entropy,
    heteroscedastic_ce,
    mc_dropout,
    mc_dropout_predict,
    mutual_information,
    predict_with_uncertainty,
    predictive_entropy,
    sample_softmax_with_logit_noise,
    total_variance_split,
)


def _unet(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", spatial_dims=2, in_channels=1, num_classes=3,
                        channels=[8, 16, 32], dropout=dropout)


# ---------------------------------------------------------------- total variance (U4)

def test_total_variance_split_recovers_hierarchical_model() -> None:
    # theta ~ N(0, a^2), y | theta ~ N(theta, b^2); T groups of n draws each.
    a, b, T, n = 2.0, 1.0, 4000, 100
    g = torch.Generator().manual_seed(0)
    theta = a * torch.randn(T, 1, generator=g, dtype=torch.float64)
    y = theta + b * torch.randn(T, n, generator=g, dtype=torch.float64)
    means, variances = y.mean(dim=1), y.var(dim=1, correction=0)
    s = total_variance_split(means, variances)
    # E[aleatoric] = b^2 (n-1)/n, E[epistemic] = a^2 + b^2/n; sampling error ~2 %.
    assert s["aleatoric"].item() == pytest.approx(b**2, rel=0.03)
    assert s["epistemic"].item() == pytest.approx(a**2, rel=0.06)
    # Exact identity for the empirical mixture: total = population variance of pooled draws.
    assert s["total"].item() == pytest.approx(y.reshape(-1).var(correction=0).item(), rel=1e-12)
    assert s["mean"].item() == pytest.approx(y.mean().item(), abs=1e-12)


def test_total_variance_split_gaussian_mixture_moments_by_hand() -> None:
    # Mixture 1/2 N(1, 4) + 1/2 N(3, 2): variance = (4 + 2)/2 + ((1-2)^2 + (3-2)^2)/2 = 4.
    means = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    variances = torch.tensor([[4.0], [2.0]], dtype=torch.float64)
    s = total_variance_split(means, variances)
    assert s["mean"].item() == 2.0
    assert s["aleatoric"].item() == 3.0
    assert s["epistemic"].item() == 1.0
    assert s["total"].item() == 4.0
    s0 = total_variance_split(means)
    assert s0["aleatoric"].item() == 0.0 and s0["total"].item() == 1.0
    with pytest.raises(ValueError, match="same shape"):
        total_variance_split(means, variances[:1])


def test_bernoulli_split_identity_float64() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(7, 2, 4, 5, 6, generator=g, dtype=torch.float64), 2)
    s = bernoulli_variance_split(probs)
    pbar = probs.mean(0)
    torch.testing.assert_close(s["total"], pbar * (1 - pbar), rtol=0, atol=1e-12)
    torch.testing.assert_close(s["aleatoric"], (probs * (1 - probs)).mean(0), rtol=0, atol=1e-15)
    torch.testing.assert_close(s["epistemic"], probs.var(0, correction=0), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- entropies / BALD

def test_entropies_by_hand() -> None:
    # Two samples disagreeing: p1 = (1, 0), p2 = (0, 1). Mean (1/2, 1/2): H = log 2.
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # (T=2, B=1, C=2)
    assert predictive_entropy(probs).item() == pytest.approx(math.log(2), abs=1e-15)
    assert expected_entropy(probs).item() == 0.0  # xlogy: 0 log 0 = 0, no NaN
    assert mutual_information(probs).item() == pytest.approx(math.log(2), abs=1e-15)
    # Agreeing samples (1/4, 3/4): MI = 0, both entropies equal.
    q = torch.tensor([[[0.25, 0.75]]] * 3, dtype=torch.float64)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert predictive_entropy(q).item() == pytest.approx(h, abs=1e-15)
    assert expected_entropy(q).item() == pytest.approx(h, abs=1e-15)
    assert mutual_information(q).item() == pytest.approx(0.0, abs=1e-15)
    # Class axis elsewhere: (T, B, H, W, C) with class_dim=-1 equals the default layout.
    r = torch.softmax(torch.randn(4, 2, 3, 5, 5, dtype=torch.float64), dim=2)
    torch.testing.assert_close(mutual_information(r.movedim(2, -1), class_dim=-1),
                               mutual_information(r))
    torch.testing.assert_close(entropy(r[0], dim=1), -(r[0] * r[0].log()).sum(1))


def test_mutual_information_nonnegative_before_clamp() -> None:
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(5, 3, 4, 8, 8, generator=g, dtype=torch.float64), dim=2)
    probs[:, 0] = probs[:1, 0]  # batch item 0: all samples agree (MI 0 up to round-off)
    raw = mutual_information(probs, clamp=False)
    assert raw.min().item() >= -1e-12
    assert raw[0].abs().max().item() < 1e-12
    assert raw[1:].min().item() > 0
    assert mutual_information(probs).min().item() >= 0.0


# ---------------------------------------------------------------- heteroscedastic CE (U1)

def test_heteroscedastic_ce_equals_ce_without_noise() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    log_var = torch.full_like(logits, -30.0)
    loss = heteroscedastic_ce(logits, log_var, target, 10, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-5)
    # (B, 1, *spatial) target and a mask: average over observed voxels only.
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, :2] = True
    masked = heteroscedastic_ce(logits, log_var, target[:, None], 10, None, mask=mask[:, None])
    ref = F.cross_entropy(logits, target, reduction="none")[mask].mean()
    assert masked.item() == pytest.approx(ref.item(), abs=1e-5)
    with pytest.raises(ValueError, match="target"):
        heteroscedastic_ce(logits, log_var, target[:, :3], 2)


def test_heteroscedastic_ce_gradcheck_and_grad_reaches_log_var() -> None:
    logits = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    log_var = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1], [2, 1]]])

    def f(lg: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        return heteroscedastic_ce(lg, lv, target, 5, torch.Generator().manual_seed(7))

    assert torch.autograd.gradcheck(f, (logits, log_var))
    f(logits, log_var).backward()
    assert log_var.grad is not None and log_var.grad.abs().sum() > 0


def test_sample_softmax_with_logit_noise() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])  # (B=1, C=3)
    p = sample_softmax_with_logit_noise(logits, torch.full_like(logits, -30.0), 4,
                                        torch.Generator().manual_seed(0))
    assert p.shape == (4, 1, 3)
    torch.testing.assert_close(p, torch.softmax(logits, 1).expand(4, 1, 3), rtol=0, atol=1e-6)
    q = sample_softmax_with_logit_noise(logits, torch.zeros_like(logits), 200,
                                        torch.Generator().manual_seed(0))
    torch.testing.assert_close(q.sum(-1), torch.ones(200, 1))
    assert q.std(0).min() > 0.01  # unit logit variance spreads the samples


def test_heteroscedastic_ce_learns_higher_variance_on_noisy_labels() -> None:
    # 1-D toy: 64 voxels, true class 1 everywhere; in the right half (region 1) half of the
    # labels are flipped at random. Shared logits, one log-variance per region.
    g = torch.Generator().manual_seed(0)
    n = 64
    region = (torch.arange(n) >= n // 2).long()
    target = torch.ones(n, dtype=torch.long)
    flip = (torch.rand(n, generator=g) < 0.5) & (region == 1)
    target[flip] = 0
    logit_param = torch.zeros(2, requires_grad=True)
    lv_param = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([logit_param, lv_param], lr=0.05)
    for _ in range(300):
        logits = logit_param[None, :, None].expand(1, 2, n)
        log_var = lv_param[region][None, None, :].expand(1, 2, n)
        loss = heteroscedastic_ce(logits, log_var, target[None], 16, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clean, noisy = lv_param.detach().tolist()
    assert noisy > clean + 1.0
    assert logit_param[1] > logit_param[0]  # the majority (true) class still wins


# ---------------------------------------------------------------- MC Dropout (U2)

def test_mc_dropout_context_sets_and_restores_modes() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout2d(0.3),
                        nn.InstanceNorm2d(4), nn.Dropout(0.0))
    net.train()
    with mc_dropout(net):
        assert net[2].training
        assert not net[0].training and not net[1].training and not net[3].training
        assert not net[4].training and not net.training  # p = 0 dropout is not activated
    assert all(m.training for m in net.modules())
    net.eval()
    net[1].train()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(net):
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before
    with pytest.raises(ValueError, match="dropout > 0"), mc_dropout(nn.Sequential(nn.Linear(2, 2))):
        pass


def test_mc_dropout_predict_on_unet() -> None:
    net = _unet()
    net.train()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    p = mc_dropout_predict(net, x, n_samples=4, generator_seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert p.shape == (4, 1, 3, 32, 32)
    assert not torch.allclose(p[0], p[1])  # dropout masks differ between passes
    torch.testing.assert_close(p.mean(0).sum(1), torch.ones(1, 32, 32))
    assert p.min() >= 0
    assert torch.equal(p, mc_dropout_predict(net, x, n_samples=4, generator_seed=5))
    assert torch.equal(p[1:], mc_dropout_predict(net, x, n_samples=3, generator_seed=6)[:3])
    assert all(m.training for m in net.modules())  # modes restored
    assert mutual_information(p).mean() > 0
    s = torch.sigmoid(mc_dropout_predict(net, x, 2, activation=None))
    torch.testing.assert_close(s, mc_dropout_predict(net, x, 2, activation="sigmoid"))
    with pytest.raises(ValueError, match="activation"):
        mc_dropout_predict(net, x, 2, activation="relu")
    with pytest.raises(ValueError, match="dropout > 0"):
        mc_dropout_predict(_unet(dropout=0.0), x, 2)


def test_predict_with_uncertainty_mc_dropout_and_variance_head() -> None:
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    net = _unet()
    maps = predict_with_uncertainty(net, x, n_samples=3)
    assert set(maps) == {"mean", "predictive_entropy", "expected_entropy", "mutual_information"}
    p = mc_dropout_predict(net, x, 3)
    torch.testing.assert_close(maps["mean"], p.mean(0))
    torch.testing.assert_close(maps["mutual_information"], mutual_information(p))
    torch.testing.assert_close(maps["predictive_entropy"],
                               maps["expected_entropy"] + maps["mutual_information"])
    assert maps["predictive_entropy"].max() <= math.log(3) + 1e-6
    vnet = add_variance_head(_unet())
    vmaps = predict_with_uncertainty(vnet, x, n_samples=2, variance_head=True)
    # zero-initialised variance layer: log_var = 0, variance 1
    torch.testing.assert_close(vmaps["aleatoric_logit_variance"], torch.ones(2, 3, 32, 32))
    with pytest.raises(ValueError, match="variance_head=True"):
        predict_with_uncertainty(vnet, x, n_samples=2)


# ---------------------------------------------------------------- deep ensembles (U3)

def test_ensemble_epistemic_zero_for_copies_positive_for_seeds() -> None:
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    members = [_unet(seed=s, dropout=0.0) for s in range(3)]
    for m in members:
        m.train()
    p = ensemble_predict(members, x)
    assert p.shape == (3, 1, 3, 32, 32)
    assert all(m.training for m in members)  # modes restored
    assert mutual_information(p).mean() > 1e-4
    same = _unet(seed=0, dropout=0.0)
    copies = [same, _unet(seed=0, dropout=0.0), _unet(seed=0, dropout=0.0)]
    for c in copies[1:]:
        c.load_state_dict(same.state_dict())
    maps = predict_with_uncertainty(copies, x)
    assert maps["mutual_information"].abs().max() < 1e-6
    torch.testing.assert_close(maps["mean"], ensemble_predict(copies, x)[0])
    other = create_model("unet", spatial_dims=2, in_channels=1, num_classes=2, channels=[8, 16])
    with pytest.raises(ValueError, match="share"):
        ensemble_predict([members[0], other], x)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_predict([], x)
