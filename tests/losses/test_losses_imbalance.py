"""Imbalance losses (L2-L5, T5, T6): BCE, gradient balancing, adaptive weights, focal, GDL."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.losses import (
    AdaptiveClassWeights,
    FocalLoss,
    GeneralizedDiceLoss,
    MaskedBCEWithLogitsLoss,
    SigmoidFocalLoss,
    class_fractions,
    focal_loss,
    generalized_dice_loss,
    gradient_balance,
    gradient_balance_weights,
    masked_bce_with_logits,
    masked_cross_entropy,
    one_hot,
    prediction_statistics,
    sigmoid_focal_loss,
)

D64 = torch.float64


def _ml_case(shape=(2, 3, 4, 5), seed=0, missing=0.0):
    """Multi-label logits, {0,1} targets (some -1 when ``missing``) and a pixel mask."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=D64) * 2
    target = (torch.rand(*shape, generator=g) > 0.6).to(D64)
    if missing:
        target[torch.rand(*shape, generator=g) < missing] = -1
    mask = torch.rand(shape[0], *shape[2:], generator=g) > 0.4
    return logits, target, mask


def _mc_case(b=2, c=3, sp=(4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *sp, generator=g, dtype=D64)
    target = torch.randint(0, c, (b, *sp), generator=g)
    mask = torch.rand(b, *sp, generator=g) > 0.4
    return logits, target, mask


# -------------------------------------------------------------- L3 / L4 gradient balancing


EXACT_W1 = 0.999 * 0.02 / (0.001 * 0.70)  # 28.542857...


def test_gradient_balance_spec_numbers():
    ratio, w1 = gradient_balance(alpha=0.001, p0=0.02, p1=0.30)
    assert ratio == pytest.approx(28.54, rel=1e-3)
    assert w1 == pytest.approx(28.54, rel=1e-3)
    assert ratio == pytest.approx(EXACT_W1, rel=1e-12)
    assert w1 == pytest.approx(EXACT_W1, rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        gradient_balance(0.0, 0.02, 0.3)
    with pytest.raises(ValueError, match="p1"):
        gradient_balance(0.001, 0.02, 1.0)


def _l3_volume():
    """N = 100000 voxels, 100 lesion; predictions exactly p1 = 0.30 (lesion), p0 = 0.02 (bg)."""
    n, n_les = 100_000, 100
    labels = torch.zeros(1, n, dtype=torch.long)
    labels[0, :n_les] = 1
    p = torch.where(labels == 1, 0.30, 0.02).to(D64)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)  # (1, 2, N)
    return logits, labels


def _grad_totals(class_weights):
    logits, labels = _l3_volume()
    z = logits.clone().requires_grad_(True)
    masked_cross_entropy(z, labels, class_weights=class_weights, reduction="sum").backward()
    g = z.grad.abs().sum(1)[0]  # per voxel, over both logits
    lesion = labels[0] == 1
    return float(g[~lesion].sum()), float(g[lesion].sum()), z.grad


def test_l3_volume_predictions_are_exact():
    logits, labels = _l3_volume()
    p1 = torch.softmax(logits, 1)[:, 1]
    torch.testing.assert_close(p1[labels == 1], torch.full((100,), 0.30, dtype=D64))
    torch.testing.assert_close(p1[labels == 0], torch.full((99_900,), 0.02, dtype=D64))


def test_l3_unweighted_gradient_ratio_is_28_54():
    bg, les, grad = _grad_totals(None)
    # Per-voxel gradients on the lesion logit: -0.70 on lesion, 0.02 on background.
    logits, labels = _l3_volume()
    torch.testing.assert_close(grad[0, 1, labels[0] == 1], torch.full((100,), -0.70, dtype=D64))
    torch.testing.assert_close(grad[0, 1, labels[0] == 0], torch.full((99_900,), 0.02, dtype=D64))
    assert bg / les == pytest.approx(EXACT_W1, rel=1e-7)  # float64 sums of 1e5 terms
    assert bg / les == pytest.approx(28.54, rel=1e-3)


def test_l4_weighted_ce_equalises_gradient_totals():
    _, w1 = gradient_balance(0.001, 0.02, 0.30)
    bg, les, _ = _grad_totals(torch.tensor([1.0, w1], dtype=D64))
    assert bg == pytest.approx(les, rel=1e-6)
    assert bg == pytest.approx(2 * 99_900 * 0.02, rel=1e-7)  # background total is unchanged


def test_fixed_weights_from_dataset_statistics():
    logits, labels = _l3_volume()
    alpha = class_fractions(labels, 2)
    torch.testing.assert_close(alpha, torch.tensor([0.999, 0.001], dtype=D64))
    counts, p_own, p_rest = prediction_statistics(torch.softmax(logits, 1), labels)
    torch.testing.assert_close(counts, torch.tensor([99_900.0, 100.0], dtype=D64))
    torch.testing.assert_close(p_own, torch.tensor([0.98, 0.30], dtype=D64))
    torch.testing.assert_close(p_rest, torch.tensor([0.70, 0.02], dtype=D64))
    w = gradient_balance_weights(alpha, p_own, p_rest)
    torch.testing.assert_close(w, torch.tensor([1.0, EXACT_W1], dtype=D64))
    # Clipping and the reference class.
    torch.testing.assert_close(
        gradient_balance_weights(alpha, p_own, p_rest, w_max=10.0),
        torch.tensor([1.0, 10.0], dtype=D64),
    )
    w_ref1 = gradient_balance_weights(alpha, p_own, p_rest, reference=1)
    torch.testing.assert_close(w_ref1, torch.tensor([1.0 / EXACT_W1, 1.0], dtype=D64))


def test_multiclass_one_vs_rest_formula():
    # 3 classes on 10 voxels: labels 0 x6, 1 x3, 2 x1; hand-made probabilities.
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 2]])
    p2 = torch.tensor([0.1, 0.1, 0.0, 0.0, 0.1, 0.1, 0.2, 0.0, 0.1, 0.5], dtype=D64)
    p1 = torch.tensor([0.1, 0.2, 0.1, 0.1, 0.0, 0.1, 0.6, 0.5, 0.7, 0.2], dtype=D64)
    probs = torch.stack([1 - p1 - p2, p1, p2])[None]
    alpha = class_fractions(labels, 3)
    _, s, q = prediction_statistics(probs, labels)
    w = gradient_balance_weights(alpha, s, q)
    # class 1: alpha 0.3, s = 0.6, q = mean p1 over others = (0.6 + 0.2) / 7
    w1 = 0.7 * (0.8 / 7) / (0.3 * 0.4)
    # class 2: alpha 0.1, s = 0.5, q = (0.4 + 0.3) / 9
    w2 = 0.9 * (0.7 / 9) / (0.1 * 0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, w1, w2], dtype=D64))


# ------------------------------------------------------------------ AdaptiveClassWeights


def _batch(labels, p1):
    y = torch.tensor([labels])
    p = torch.tensor([p1], dtype=D64)
    return torch.stack([1 - p, p], 1), y


def test_adaptive_weights_ema_arithmetic():
    acw = AdaptiveClassWeights(2, momentum=0.5, w_min=0.0, w_max=1000.0)
    torch.testing.assert_close(acw.weights, torch.ones(2))  # nothing seen yet
    p, y = _batch([0, 0, 0, 1], [0.1, 0.3, 0.2, 0.4])
    acw.update(p, y)
    # first update sets the EMA: s1 = 0.4, q1 = 0.2, alpha1 = 1/4 -> w1 = .75*.2/(.25*.6) = 1
    torch.testing.assert_close(acw.p_own, torch.tensor([0.8, 0.4], dtype=D64))
    torch.testing.assert_close(acw.p_rest, torch.tensor([0.6, 0.2], dtype=D64))
    torch.testing.assert_close(acw.weights, torch.tensor([1.0, 1.0]))
    p, y = _batch([0, 0, 1, 1], [0.1, 0.1, 0.5, 0.7])
    acw.update(p, y)
    # s1 = .5*.4 + .5*.6 = .5; q1 = .5*.2 + .5*.1 = .15; alpha1 = 3/8 (cumulative counts)
    torch.testing.assert_close(acw.p_own[1], torch.tensor(0.5, dtype=D64))
    torch.testing.assert_close(acw.p_rest[1], torch.tensor(0.15, dtype=D64))
    torch.testing.assert_close(acw.alpha, torch.tensor([5 / 8, 3 / 8], dtype=D64))
    w1 = (5 / 8) * 0.15 / ((3 / 8) * 0.5)
    torch.testing.assert_close(acw.weights, torch.tensor([1.0, w1], dtype=torch.float32))
    assert acw.last["raw_weights"][1] == pytest.approx(w1, rel=1e-12)
    # A batch without lesion updates q1 only; s1 keeps its value.
    p, y = _batch([0, 0, 0, 0], [0.05, 0.05, 0.05, 0.05])
    acw.update(p, y)
    assert float(acw.p_own[1]) == pytest.approx(0.5, rel=1e-12)
    assert float(acw.p_rest[1]) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05, rel=1e-12)
    assert acw.num_updates == 3


def test_adaptive_weights_fixed_fractions_reach_l4_value_and_clip():
    logits, labels = _l3_volume()
    probs = torch.softmax(logits, 1)
    acw = AdaptiveClassWeights(2, momentum=0.9, class_fractions=[0.999, 0.001])
    acw.update(probs, labels)
    assert float(acw.weights[1]) == pytest.approx(EXACT_W1, rel=1e-6)
    assert float(acw.weights[0]) == 1.0
    low = AdaptiveClassWeights(2, w_min=1.0, w_max=10.0)
    low.update(probs, labels)
    assert float(low.weights[1]) == 10.0
    assert low.last["raw_weights"][1] == pytest.approx(EXACT_W1, rel=1e-7)
    # Inside the bounds the raw weight is used as is ...
    p, y = _batch([0, 0, 0, 1], [0.1, 0.1, 0.1, 0.9])
    acw2 = AdaptiveClassWeights(2, momentum=0.0, w_min=1.0, w_max=10.0)
    acw2.update(p, y)
    assert acw2.last["raw_weights"][1] == pytest.approx(0.75 * 0.1 / (0.25 * 0.1))  # 3.0
    assert float(acw2.weights[1]) == pytest.approx(3.0)
    # ... and a well-predicted lesion (raw weight below 1) is clipped up to w_min.
    # Cumulative alpha1 = 4/8, s1 = 0.95, q1 = 0.01: raw = .5 * .01 / (.5 * .05) = 0.2.
    p, y = _batch([0, 1, 1, 1], [0.01, 0.95, 0.95, 0.95])
    acw2.update(p, y)
    assert acw2.last["raw_weights"][1] == pytest.approx(0.2)
    assert float(acw2.weights[1]) == 1.0


def test_adaptive_weights_respect_mask():
    p, y = _batch([0, 0, 0, 1], [0.1, 0.3, 0.9, 0.4])
    mask = torch.tensor([[1, 1, 0, 1]])
    acw = AdaptiveClassWeights(2, momentum=0.0, w_min=0.0)
    acw.update(p, y, mask)
    torch.testing.assert_close(acw.p_rest[1], torch.tensor(0.2, dtype=D64))  # pixel 2 ignored
    torch.testing.assert_close(acw.alpha, torch.tensor([2 / 3, 1 / 3], dtype=D64))


def test_adaptive_weights_state_dict_round_trip_resumes_exactly():
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(4):
        y = (torch.rand(2, 6, 6, generator=g) > 0.9).long()
        p1 = torch.rand(2, 6, 6, generator=g, dtype=D64)
        batches.append((torch.stack([1 - p1, p1], 1), y))
    ref = AdaptiveClassWeights(2, momentum=0.7, w_min=0.5, w_max=50.0)
    for p, y in batches[:2]:
        ref.update(p, y)
    ref.end_epoch()
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    resumed = AdaptiveClassWeights(2)  # default settings: the state brings its own
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.momentum == 0.7 and resumed.w_max == 50.0
    assert resumed.history == ref.history
    for p, y in batches[2:]:
        ref.update(p, y)
        resumed.update(p, y)
    assert torch.equal(ref.weights, resumed.weights)
    for key in ("p_own", "p_rest", "counts"):
        assert torch.equal(ref.state_dict()[key], resumed.state_dict()[key])
    entry = ref.end_epoch()
    assert entry["epoch"] == 1 and entry["update"] == 4 and len(ref.history) == 2
    with pytest.raises(ValueError, match="classes"):
        AdaptiveClassWeights(3).load_state_dict(ref.state_dict())


def test_adaptive_weights_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        AdaptiveClassWeights(2, momentum=1.0)
    with pytest.raises(ValueError, match="w_min"):
        AdaptiveClassWeights(2, w_min=5.0, w_max=1.0)
    with pytest.raises(ValueError, match="classes"):
        AdaptiveClassWeights(3).update(torch.rand(1, 2, 3, 3), torch.zeros(1, 3, 3).long())


# ---------------------------------------------------------------------------- BCE (L2)


def test_bce_gradient_is_y_hat_minus_y():
    logits, target, _ = _ml_case()
    z = logits.clone().requires_grad_(True)
    masked_bce_with_logits(z, target, reduction="sum").backward()
    torch.testing.assert_close(z.grad, torch.sigmoid(logits) - target, atol=1e-12, rtol=0)


def test_bce_mean_gradient_over_observed_count():
    logits, target, mask = _ml_case()
    z = logits.clone().requires_grad_(True)
    masked_bce_with_logits(z, target, mask).backward()
    m = mask[:, None].expand_as(logits).to(D64)
    expected = (torch.sigmoid(logits) - target) * m / m.sum()
    torch.testing.assert_close(z.grad, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5)])
def test_bce_matches_torch_with_weight_and_pos_weight(shape):
    logits, target, _ = _ml_case(shape)
    c = shape[1]
    pw = torch.tensor([0.5, 2.0, 3.0, 1.5, 4.0][:c], dtype=D64)
    w = torch.tensor([1.0, 0.3, 2.0, 0.7, 1.1][:c], dtype=D64)
    view = (c,) + (1,) * (len(shape) - 2)
    for red in ("mean", "sum", "none"):
        ours = masked_bce_with_logits(logits, target, pos_weight=pw, class_weights=w,
                                      reduction=red)
        ref = F.binary_cross_entropy_with_logits(
            logits, target, weight=w.view(view), pos_weight=pw.view(view), reduction=red
        )
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)


def test_bce_masked_equals_bce_on_observed_subset():
    logits, target, mask = _ml_case()
    m = mask[:, None].expand_as(logits)
    ours = masked_bce_with_logits(logits, target, mask)
    ref = F.binary_cross_entropy_with_logits(logits[m], target[m])
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    # Full-shape and (B, 1, *spatial) masks mean the same.
    torch.testing.assert_close(masked_bce_with_logits(logits, target, m), ours)
    torch.testing.assert_close(masked_bce_with_logits(logits, target, mask[:, None]), ours)


def test_bce_missing_labels_change_nothing():
    logits, target, _ = _ml_case((6, 4), missing=0.3)
    missing = target == -1
    assert 0 < int(missing.sum()) < missing.numel()
    z = logits.clone().requires_grad_(True)
    loss = masked_bce_with_logits(z, target)
    loss.backward()
    assert torch.all(z.grad[missing] == 0)
    present = ~missing
    ref = F.binary_cross_entropy_with_logits(logits[present], target[present])
    torch.testing.assert_close(loss.detach(), ref, atol=1e-12, rtol=0)
    z2 = logits.clone()
    z2[missing] = torch.randn(int(missing.sum()), dtype=D64) * 50
    assert float(masked_bce_with_logits(z2, target)) == float(loss.detach())
    # Per-image mask for (B, C) outputs: image 0 unobserved.
    img_mask = torch.ones(6, dtype=torch.bool)
    img_mask[0] = False
    sel = present.clone()
    sel[0] = False
    torch.testing.assert_close(
        masked_bce_with_logits(logits, target, img_mask),
        F.binary_cross_entropy_with_logits(logits[sel], target[sel]),
        atol=1e-12, rtol=0,
    )


@pytest.mark.parametrize(
    "fn", ["bce", "sigmoid_focal", "focal", "gdl"],
)
def test_fully_unobserved_is_zero_with_finite_grad(fn):
    logits, target, mask = _mc_case()
    ml_logits, ml_target, _ = _ml_case()
    z = (ml_logits if fn in ("bce", "sigmoid_focal") else logits).clone().requires_grad_(True)
    none = torch.zeros_like(mask)
    if fn == "bce":
        loss = masked_bce_with_logits(z, ml_target, none)
    elif fn == "sigmoid_focal":
        loss = sigmoid_focal_loss(z, torch.full_like(ml_target, -1.0))
    elif fn == "focal":
        loss = focal_loss(z, torch.full_like(target, 255), none)
    else:
        loss = generalized_dice_loss(torch.softmax(z, 1), one_hot(target, 3), none)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(z.grad).all()
    assert float(z.grad.abs().max()) == 0.0


def test_bce_rejects_bad_targets():
    logits, target, _ = _ml_case()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_bce_with_logits(logits, target * 2)
    with pytest.raises(ValueError, match="shape"):
        masked_bce_with_logits(logits, target[:, :1])
    with pytest.raises(ValueError, match="pos_weight"):
        masked_bce_with_logits(logits, target, pos_weight=torch.ones(2))


# -------------------------------------------------------------------------------- focal


def test_focal_gamma0_equals_cross_entropy():
    logits, target, mask = _mc_case()
    torch.testing.assert_close(
        focal_loss(logits, target, mask, gamma=0.0),
        masked_cross_entropy(logits, target, mask), atol=1e-12, rtol=0,
    )
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0, reduction="none"),
        F.cross_entropy(logits, target, reduction="none"), atol=1e-12, rtol=0,
    )


def test_focal_hand_value():
    # One pixel, logits (0, ln 3): p = (1/4, 3/4), label 1, gamma 2, alpha_1 = 0.25:
    # l = -0.25 (1/4)^2 ln(3/4)
    z = torch.tensor([0.0, math.log(3.0)], dtype=D64).view(1, 2, 1, 1)
    y = torch.ones(1, 1, 1, dtype=torch.long)
    got = focal_loss(z, y, gamma=2.0, alpha=[0.75, 0.25])
    assert float(got) == pytest.approx(-0.25 * 0.0625 * math.log(0.75), rel=1e-12)


def test_focal_masked_equals_focal_on_observed_subset():
    logits, target, mask = _mc_case()
    ours = focal_loss(logits, target, mask, gamma=2.0, alpha=[0.2, 0.3, 0.5])
    sub_logits = logits.movedim(1, -1)[mask].T[None, :, :, None]  # (1, C, n, 1)
    sub_target = target[mask][None, :, None]
    ref = focal_loss(sub_logits, sub_target, gamma=2.0, alpha=[0.2, 0.3, 0.5])
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_sigmoid_focal_gamma0_equals_bce_and_matches_formula():
    logits, target, mask = _ml_case(missing=0.2)
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, target, mask, gamma=0.0),
        masked_bce_with_logits(logits, target, mask), atol=1e-12, rtol=0,
    )
    # torchvision's sigmoid_focal_loss formula, written out, on the fully observed entries.
    lg, tg, _ = _ml_case(seed=1)
    p = torch.sigmoid(lg)
    ce = -(tg * torch.log(p) + (1 - tg) * torch.log(1 - p))
    p_t = p * tg + (1 - p) * (1 - tg)
    ref = ((0.25 * tg + 0.75 * (1 - tg)) * ce * (1 - p_t) ** 2).mean()
    torch.testing.assert_close(sigmoid_focal_loss(lg, tg, gamma=2.0, alpha=0.25), ref,
                               atol=1e-12, rtol=1e-10)


def test_sigmoid_focal_missing_entries_have_zero_gradient():
    logits, target, mask = _ml_case(missing=0.3)
    z = logits.clone().requires_grad_(True)
    sigmoid_focal_loss(z, target, mask, gamma=2.0, alpha=0.25).backward()
    unobserved = (target == -1) | ~mask[:, None].expand_as(target)
    assert torch.all(z.grad[unobserved] == 0)
    assert float(z.grad[~unobserved].abs().min()) > 0


# --------------------------------------------------------------------- generalised Dice


def test_generalized_dice_hand_two_class_example():
    # 4 pixels, y1 = (0,0,0,1), p1 = (.1,.2,.1,.6). S_y = (3, 1) -> w = (1/9, 1) ~ (.1, .9)
    # I = (2.6, .6), S_p + S_y = (6, 2): l = 1 - 2(.26 + .54)/(.6 + 1.8) = 1 - 1.6/2.4 = 1/3.
    p1 = torch.tensor([0.1, 0.2, 0.1, 0.6], dtype=D64)
    probs = torch.stack([1 - p1, p1])[None, :, None, :]  # (1, 2, 1, 4)
    y = one_hot(torch.tensor([[[0, 0, 0, 1]]]), 2, dtype=D64)
    eps = 1e-5
    got = generalized_dice_loss(probs, y, eps=eps)
    assert float(got) == pytest.approx(1 - (1.6 + eps) / (2.4 + eps), rel=1e-12)
    assert float(got) == pytest.approx(1 / 3, rel=1e-4)
    # Class 1 absent: its weight is capped at class 0's (1/16) -> w = (.5, .5);
    # I = (3, 0), S_p + S_y = (7, 1): l = 1 - 3 / 4.
    y_empty = one_hot(torch.zeros(1, 1, 4, dtype=torch.long), 2, dtype=D64)
    got = generalized_dice_loss(probs, y_empty, eps=eps)
    assert float(got) == pytest.approx(1 - (3 + eps) / (4 + eps), rel=1e-12)


def test_generalized_dice_perfect_and_empty():
    y = one_hot(torch.tensor([[[0, 1], [1, 0]]]), 2, dtype=D64)
    assert float(generalized_dice_loss(y, y)) == pytest.approx(0.0, abs=1e-12)
    zero = torch.zeros(1, 2, 2, 2, dtype=D64)
    assert float(generalized_dice_loss(zero, zero)) == 0.0


def test_generalized_dice_masked_equals_subset_per_sample():
    logits, target, mask = _mc_case(b=3, sp=(5, 6))
    probs = torch.softmax(logits, 1)
    oh = one_hot(target, 3, dtype=D64)
    ours = generalized_dice_loss(probs, oh, mask, reduction="none")
    for b in range(3):
        mb = mask[b]
        sub_p = probs[b].movedim(0, -1)[mb].T[None, :, :, None]
        sub_y = oh[b].movedim(0, -1)[mb].T[None, :, :, None]
        torch.testing.assert_close(ours[b], generalized_dice_loss(sub_p, sub_y)[()],
                                   atol=1e-12, rtol=0)
    # batch_dice pools the three samples into one loss.
    pooled = generalized_dice_loss(probs, oh, mask, batch_dice=True)
    flat_p = probs.movedim(1, -1)[mask].T[None, :, :, None]
    flat_y = oh.movedim(1, -1)[mask].T[None, :, :, None]
    torch.testing.assert_close(pooled, generalized_dice_loss(flat_p, flat_y), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ gradcheck


def test_gradcheck_new_losses():
    logits, target, mask = _mc_case(b=2, c=3, sp=(3, 3))
    mlz, mly, mlm = _ml_case((2, 3, 3, 3), missing=0.2)
    fm = torch.rand(2, 3, 3, dtype=D64)  # float mask as weights
    w = torch.tensor([0.5, 2.0, 28.5], dtype=D64)
    oh = one_hot(target, 3, dtype=D64)
    checks = {
        "weighted_ce": (lambda z: masked_cross_entropy(z, target, mask, class_weights=w), logits),
        "focal": (lambda z: focal_loss(z, target, fm, gamma=2.0, alpha=[0.2, 0.3, 0.5]), logits),
        "focal_g1.5": (lambda z: focal_loss(z, target, mask, gamma=1.5), logits),
        "sigmoid_focal": (lambda z: sigmoid_focal_loss(z, mly, mlm, gamma=2.0, alpha=0.25), mlz),
        "bce": (lambda z: masked_bce_with_logits(z, mly, fm, pos_weight=[2.0, 0.5, 1.0],
                                                 class_weights=[1.0, 3.0, 0.2]), mlz),
        "gdl": (lambda p: generalized_dice_loss(p, oh, mask, eps=1e-3), torch.rand_like(logits)),
        "gdl_batch": (lambda p: generalized_dice_loss(p, oh, fm, batch_dice=True,
                                                      include_background=False),
                      torch.rand_like(logits)),
    }
    for name, (fn, x) in checks.items():
        assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),)), name


# -------------------------------------------------------------------------------- modules


def test_modules_agree_with_functions():
    logits, target, mask = _mc_case()
    mlz, mly, mlm = _ml_case(missing=0.1)
    torch.testing.assert_close(
        MaskedBCEWithLogitsLoss(pos_weight=[1.0, 2.0, 3.0], class_weights=[1.0, 1.0, 0.5])
        .double()(mlz, mly, mlm),
        masked_bce_with_logits(mlz, mly, mlm, [1.0, 2.0, 3.0], [1.0, 1.0, 0.5]),
    )
    torch.testing.assert_close(
        FocalLoss(gamma=2.0, alpha=[0.2, 0.3, 0.5]).double()(logits, target, mask),
        focal_loss(logits, target, mask, 2.0, [0.2, 0.3, 0.5]),
    )
    torch.testing.assert_close(
        SigmoidFocalLoss(gamma=1.0, alpha=0.3)(mlz, mly, mlm),
        sigmoid_focal_loss(mlz, mly, mlm, 1.0, 0.3),
    )
    probs = torch.softmax(logits, 1)
    oh = one_hot(target, 3, dtype=D64)
    torch.testing.assert_close(
        GeneralizedDiceLoss(eps=1e-4, batch_dice=True)(probs, oh, mask),
        generalized_dice_loss(probs, oh, mask, eps=1e-4, batch_dice=True),
    )
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)


# ---------------------------------------------------------------- tiny training comparison


def _phantom_run(size: int, n_train: int, steps: int, seed_model: int = 0):
    """Lesion Dice on held-out phantoms after training with plain vs adaptive-weighted CE.

    Binary task: the organ label (1) is merged into the background, lesion (2) -> 1.
    """
    from medseg.networks import create_model
    from medseg.physics import PhantomSpec, make_phantom

    def data(seeds):
        ims, lbs = [], []
        for s in seeds:
            im, lb, _ = make_phantom(PhantomSpec(shape=(size, size), modality="mr",
                                                 lesion_fraction=0.001, n_lesions=1), seed=s)
            ims.append(im)
            lbs.append(lb == 2)
        return torch.tensor(np.stack(ims))[:, None], torch.tensor(np.stack(lbs)).long()

    x_tr, y_tr = data(range(n_train))
    x_te, y_te = data(range(100, 106))
    results = {}
    for mode in ("plain", "adaptive"):
        torch.manual_seed(seed_model)
        model = create_model("unet", spatial_dims=2, in_channels=1, num_classes=2,
                             channels=[8, 16, 32, 64])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        acw = AdaptiveClassWeights(2, momentum=0.9, w_min=1.0, w_max=100.0)
        for _ in range(steps):
            logits = model(x_tr)
            cw = acw.weights if mode == "adaptive" else None
            loss = masked_cross_entropy(logits, y_tr, class_weights=cw)
            opt.zero_grad()
            loss.backward()
            opt.step()
            acw.update(torch.softmax(logits.detach(), 1), y_tr)
        model.eval()
        with torch.no_grad():
            pred = model(x_te).argmax(1) == 1
        truth = y_te == 1
        inter = int((pred & truth).sum())
        results[mode] = 2 * inter / (int(pred.sum()) + int(truth.sum()))
        results[f"{mode}_final_weights"] = acw.weights.tolist()
    print(f"phantom {size}^2, {n_train} train, {steps} steps, held-out lesion Dice: {results}")
    return results


def test_adaptive_weighting_beats_plain_ce_on_tiny_lesions_fast():
    r = _phantom_run(size=64, n_train=4, steps=60)
    assert r["adaptive"] > r["plain"] + 0.2


@pytest.mark.slow
def test_adaptive_weighting_beats_plain_ce_on_tiny_lesions():
    r = _phantom_run(size=96, n_train=6, steps=150)
    assert r["adaptive"] > r["plain"] + 0.5
