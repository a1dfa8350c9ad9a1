"""Losses (L1, L5, L6) and observation masks (T5): closed forms, hand values, torch agreement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    MaskedCrossEntropyLoss,
    SoftDiceLoss,
    deep_supervision_loss,
    deep_supervision_weights,
    dice_ce_loss,
    downsample_labels,
    masked_cross_entropy,
    one_hot,
    soft_dice_grad,
    soft_dice_loss,
)

D64 = torch.float64


def _case(b: int = 2, c: int = 3, sp: tuple[int, ...] = (4, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *sp, generator=g, dtype=D64)
    target = torch.randint(0, c, (b, *sp), generator=g)
    mask = torch.rand(b, *sp, generator=g) > 0.4
    return logits, target, mask


# ----------------------------------------------------------------------------- cross-entropy (L1)


def test_ce_gradient_is_p_minus_y():
    logits, target, _ = _case()
    z = logits.clone().requires_grad_(True)
    masked_cross_entropy(z, target, reduction="sum").backward()
    expected = torch.softmax(logits, 1) - F.one_hot(target, 3).movedim(-1, 1).to(D64)
    torch.testing.assert_close(z.grad, expected, atol=1e-10, rtol=0)


def test_ce_gradient_mean_divides_by_observed_count_and_zero_outside():
    logits, target, mask = _case()
    z = logits.clone().requires_grad_(True)
    masked_cross_entropy(z, target, mask).backward()
    n_obs = int(mask.sum())
    assert 0 < n_obs < mask.numel()
    expected = (torch.softmax(logits, 1) - F.one_hot(target, 3).movedim(-1, 1).to(D64))
    expected = expected * mask[:, None].to(D64) / n_obs
    torch.testing.assert_close(z.grad, expected, atol=1e-10, rtol=0)


def test_ce_hand_value():
    # One pixel, logits (0, ln 3): p = (1/4, 3/4); label 1 -> -ln(3/4); label 0 -> ln 4.
    z = torch.tensor([0.0, math.log(3.0)], dtype=D64).view(1, 2, 1, 1)
    assert masked_cross_entropy(z, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75))
    assert masked_cross_entropy(z, torch.tensor([[[0]]])).item() == pytest.approx(math.log(4.0))


@pytest.mark.parametrize("weighted", [False, True])
def test_ce_matches_torch_ignore_index(weighted: bool):
    logits, target, _ = _case(b=2, c=4, sp=(3, 4, 5), seed=1)
    target[:, 0, :2] = 255
    target[1, 2, 3:] = 255
    w = torch.tensor([0.2, 1.0, 3.0, 0.7], dtype=D64) if weighted else None
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    ours = masked_cross_entropy(logits, target, target != 255, class_weights=w)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    # (B, 1, *sp) labels and masks are accepted too.
    ours_c = masked_cross_entropy(logits, target[:, None], (target != 255)[:, None], w)
    torch.testing.assert_close(ours_c, ref, atol=1e-12, rtol=0)


def test_ce_masked_equals_ce_on_observed_subset():
    logits, target, mask = _case(seed=2)
    flat_z = logits.movedim(1, -1)[mask]  # (N_obs, C)
    flat_y = target[mask]
    ref = F.cross_entropy(flat_z, flat_y)
    torch.testing.assert_close(masked_cross_entropy(logits, target, mask), ref, atol=1e-12, rtol=0)


def test_ce_float_mask_is_a_weight():
    logits, target, _ = _case(seed=3)
    m = torch.rand(target.shape, dtype=D64)
    nll = F.cross_entropy(logits, target, reduction="none")
    expected = (m * nll).sum() / m.sum()
    torch.testing.assert_close(masked_cross_entropy(logits, target, m), expected)


def test_ce_fully_unobserved_is_zero_with_finite_grad():
    logits, target, _ = _case()
    target[:] = 255  # ignore label everywhere: must not raise
    z = logits.clone().requires_grad_(True)
    loss = masked_cross_entropy(z, target, torch.zeros_like(target, dtype=torch.bool),
                                class_weights=torch.ones(3, dtype=D64))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max().item() == 0.0


def test_ce_observed_label_out_of_range_raises():
    logits, target, _ = _case()
    target[0, 0, 0] = 255
    with pytest.raises(ValueError, match="observed labels"):
        masked_cross_entropy(logits, target)


def test_ce_shape_errors_explain():
    logits, target, _ = _case()
    with pytest.raises(ValueError, match="does not match"):
        masked_cross_entropy(logits, target[:, :3])
    with pytest.raises(ValueError, match="integer"):
        masked_cross_entropy(logits, target.double())


# ----------------------------------------------------------------------------- soft Dice (L5)


def test_soft_dice_hand_value_2x2():
    # p = [[0.9, 0.2], [0.6, 0.1]], y = [[1, 0], [1, 0]], eps = 1:
    # I = 0.9 + 0.6 = 1.5, S_p = 1.8, S_y = 2, D = 1.8 + 2 + 1 = 4.8
    # l = 1 - (2*1.5 + 1) / 4.8 = 1 - 4/4.8 = 1/6
    # dl/dp_k = -(2 y_k * 4.8 - 4) / 4.8^2:
    #   y=1 -> -5.6/23.04 = -0.2430556, y=0 -> 4/23.04 = 0.1736111
    p = torch.tensor([[0.9, 0.2], [0.6, 0.1]], dtype=D64).view(1, 1, 2, 2).requires_grad_(True)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D64).view(1, 1, 2, 2)
    loss = soft_dice_loss(p, y, eps=1.0)
    assert loss.item() == pytest.approx(1.0 / 6.0, abs=1e-14)
    loss.backward()
    expected = torch.tensor([[-5.6 / 23.04, 4 / 23.04], [-5.6 / 23.04, 4 / 23.04]], dtype=D64)
    torch.testing.assert_close(p.grad.view(2, 2), expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(soft_dice_grad(p.detach(), y, 1.0).view(2, 2), expected,
                               atol=1e-14, rtol=0)


def test_soft_dice_both_empty_is_zero_with_finite_gradient():
    p = torch.zeros(1, 1, 3, 3, dtype=D64, requires_grad=True)
    y = torch.zeros(1, 1, 3, 3, dtype=D64)
    loss = soft_dice_loss(p, y, eps=1.0)
    assert loss.item() == 0.0
    loss.backward()
    # dl/dp = -(0 - eps) / eps^2 = 1/eps
    torch.testing.assert_close(p.grad, torch.ones_like(p), atol=0, rtol=0)


def test_soft_dice_closed_form_gradient_matches_autograd():
    g = torch.Generator().manual_seed(4)
    p = torch.rand(1, 1, 5, 6, generator=g, dtype=D64, requires_grad=True)
    y = (torch.rand(1, 1, 5, 6, generator=g) > 0.5).to(D64)
    for eps in (1.0, 1e-3):
        p.grad = None
        soft_dice_loss(p, y, eps=eps).backward()
        torch.testing.assert_close(p.grad, soft_dice_grad(p.detach(), y, eps), atol=1e-12, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_soft_dice_gradcheck(with_mask: bool, batch_dice: bool):
    g = torch.Generator().manual_seed(5)
    p = torch.rand(2, 3, 3, 4, generator=g, dtype=D64, requires_grad=True)
    y = F.one_hot(torch.randint(0, 3, (2, 3, 4), generator=g), 3).movedim(-1, 1).to(D64)
    m = (torch.rand(2, 3, 4, generator=g) > 0.3) if with_mask else None
    assert torch.autograd.gradcheck(
        lambda q: soft_dice_loss(q, y, m, eps=0.5, batch_dice=batch_dice), (p,)
    )


def test_soft_dice_per_class_batch_and_background():
    # Two samples, two classes, 1x2 images; eps = 1.
    p = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]],
                      [[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=D64)
    y = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]],
                      [[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=D64)
    # sample 0: class 0: I=1.5, Sp=1.5, Sy=2 -> 1 - 4/4.5 = 1/9
    #           class 1: I=0, Sp=.5, Sy=0 -> 1 - 1/1.5 = 1/3
    # sample 1: both classes perfect: 1 - 3/3 = 0
    per = soft_dice_loss(p, y, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[1 / 9, 1 / 3], [0.0, 0.0]], dtype=D64))
    assert soft_dice_loss(p, y).item() == pytest.approx((1 / 9 + 1 / 3) / 4)
    fg = soft_dice_loss(p, y, include_background=False, reduction="none")
    torch.testing.assert_close(fg, torch.tensor([[1 / 3], [0.0]], dtype=D64))
    # batch dice: class 0: I=2.5, Sp=2.5, Sy=3 -> 1 - 6/6.5 = 1/13; class 1: I=1, Sp=1.5, Sy=1
    # -> 1 - 3/3.5 = 1/7
    bd = soft_dice_loss(p, y, batch_dice=True, reduction="none")
    torch.testing.assert_close(bd, torch.tensor([1 / 13, 1 / 7], dtype=D64))


def test_soft_dice_masked_equals_dice_on_observed_subset():
    g = torch.Generator().manual_seed(6)
    p = torch.softmax(torch.randn(1, 3, 6, 7, generator=g, dtype=D64), 1)
    lab = torch.randint(0, 3, (1, 6, 7), generator=g)
    m = torch.rand(1, 6, 7, generator=g) > 0.5
    y = one_hot(lab, 3, m, dtype=D64)
    sub_p = p.movedim(1, -1)[m].T[None, :, :]  # (1, C, N_obs)
    sub_y = F.one_hot(lab[m], 3).T[None].to(D64)
    torch.testing.assert_close(soft_dice_loss(p, y, m, reduction="none"),
                               soft_dice_loss(sub_p, sub_y, reduction="none"),
                               atol=1e-12, rtol=0)


def test_soft_dice_rejects_bad_input():
    p = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="eps"):
        soft_dice_loss(p, p, eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        soft_dice_loss(p, p[:, :1])


# ----------------------------------------------------------------------------- masking (T5)


@pytest.mark.parametrize("loss_name", ["ce", "dice_ce"])
def test_unobserved_pixels_change_neither_loss_nor_gradient(loss_name: str):
    logits, target, mask = _case(seed=7)

    def run(z0: torch.Tensor, t: torch.Tensor):
        z = z0.clone().requires_grad_(True)
        if loss_name == "ce":
            loss = masked_cross_entropy(z, t, mask)
        else:
            loss = dice_ce_loss(z, t, mask, include_background=True)
        loss.backward()
        return loss.detach(), z.grad

    l1, g1 = run(logits, target)
    z2 = logits.clone()
    t2 = target.clone()
    z2[~mask[:, None].expand_as(z2)] = 50.0 * torch.randn(int((~mask).sum()) * 3, dtype=D64)
    t2[~mask] = 255
    l2, g2 = run(z2, t2)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-12)
    obs = mask[:, None].expand_as(g1)
    torch.testing.assert_close(g1[obs], g2[obs], atol=1e-12, rtol=0)
    assert g2[~obs].abs().max().item() == 0.0


def test_dice_ce_masked_equals_losses_on_observed_subset():
    logits, target, mask = _case(b=1, seed=8)
    sub_z = logits.movedim(1, -1)[mask].T[None]  # (1, C, N_obs)
    sub_t = target[mask][None]  # (1, N_obs)
    ref = (soft_dice_loss(torch.softmax(sub_z, 1), F.one_hot(sub_t, 3).movedim(-1, 1).to(D64))
           + F.cross_entropy(sub_z, sub_t))
    ours = dice_ce_loss(logits, target, mask, include_background=True)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(dice_ce_loss(logits, target, mask, include_background=True),
                               dice_ce_loss(sub_z, sub_t, None, include_background=True),
                               atol=1e-12, rtol=0)


def test_dice_ce_fully_unobserved_is_zero_no_nan():
    logits, target, _ = _case()
    target[:] = -1
    z = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(z, target, torch.zeros(target.shape))
    # Dice of empty-vs-empty is 0, CE over no pixel is 0.
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_one_hot_with_ignore_label():
    t = torch.tensor([[[0, 2], [255, 1]]])
    m = t != 255
    oh = one_hot(t, 3, m)
    expected = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 1], [0, 0]]]],
                            dtype=torch.float32)
    torch.testing.assert_close(oh, expected)
    torch.testing.assert_close(one_hot(t[:, None], 3, m[:, None]), expected)
    # A 3D label map with a depth of 1 needs spatial_dims to disambiguate.
    assert one_hot(t[:, None], 3, spatial_dims=3, mask=m[:, None]).shape == (1, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="observed labels"):
        one_hot(t, 3)


def test_dice_ce_weights():
    logits, target, mask = _case(seed=9)
    d = soft_dice_loss(torch.softmax(logits, 1), one_hot(target, 3, mask, D64), mask,
                       include_background=False)
    ce = masked_cross_entropy(logits, target, mask)
    torch.testing.assert_close(dice_ce_loss(logits, target, mask, w_dice=0.3, w_ce=2.0),
                               0.3 * d + 2.0 * ce)
    torch.testing.assert_close(dice_ce_loss(logits, target, mask, w_dice=0.0), ce)


# ----------------------------------------------------------------------------- deep supervision


def test_downsample_labels_shapes_and_values():
    t = torch.arange(16).view(1, 4, 4)
    d = downsample_labels(t, (2, 2))
    torch.testing.assert_close(d, torch.tensor([[[0, 2], [8, 10]]]))  # floor(j * 4 / 2)
    assert downsample_labels(t[:, None], (2, 2)).shape == (1, 1, 2, 2)
    t3 = torch.randint(0, 3, (2, 8, 16, 12))
    for size in [(8, 16, 12), (4, 8, 6), (2, 4, 3), (1, 2, 2)]:
        assert downsample_labels(t3, size).shape == (2, *size)
    # Matches F.interpolate(mode="nearest") and keeps large labels exact.
    ref = F.interpolate(t3[:, None].float(), size=(4, 8, 6), mode="nearest")[:, 0].long()
    torch.testing.assert_close(downsample_labels(t3, (4, 8, 6)), ref)
    big = torch.full((1, 4, 4), 2**40 + 1)
    assert int(downsample_labels(big, (2, 2)).max()) == 2**40 + 1
    assert downsample_labels(t3 > 0, (4, 8, 6)).dtype == torch.bool


def test_deep_supervision_default_weights():
    w = deep_supervision_weights(3)
    assert w == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_deep_supervision_one_hot_weights_equal_plain_loss():
    logits, target, mask = _case(b=2, c=3, sp=(8, 8), seed=10)
    low1 = torch.randn(2, 3, 4, 4, dtype=D64)
    low2 = torch.randn(2, 3, 2, 2, dtype=D64)
    outs = [logits, low1, low2]
    plain = dice_ce_loss(logits, target, mask)
    ds = deep_supervision_loss(dice_ce_loss, outs, target, mask, weights=[1, 0, 0])
    torch.testing.assert_close(ds, plain, atol=0, rtol=0)


def test_deep_supervision_weighted_sum_of_downsampled_losses():
    logits, target, mask = _case(b=2, c=3, sp=(8, 8), seed=11)
    low = torch.randn(2, 3, 4, 4, dtype=D64)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def loss_fn(z, t, m):
        seen.append((tuple(t.shape), tuple(m.shape)))
        return masked_cross_entropy(z, t, m)

    ds = deep_supervision_loss(loss_fn, [logits, low], target, mask)
    assert seen == [((2, 8, 8), (2, 8, 8)), ((2, 4, 4), (2, 4, 4))]
    t_low = target[:, ::2, ::2]
    m_low = mask[:, ::2, ::2]
    expected = (2 / 3) * masked_cross_entropy(logits, target, mask) + (1 / 3) * (
        masked_cross_entropy(low, t_low, m_low)
    )
    torch.testing.assert_close(ds, expected)
    with pytest.raises(ValueError, match="weights"):
        deep_supervision_loss(loss_fn, [logits, low], target, mask, weights=[1.0])


# ----------------------------------------------------------------------------- modules == functions


def test_modules_agree_with_functions():
    logits, target, mask = _case(seed=12)
    w = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(
        MaskedCrossEntropyLoss(class_weights=w)(logits, target, mask),
        masked_cross_entropy(logits, target, mask, w.to(D64)),
    )
    probs = torch.softmax(logits, 1)
    oh = one_hot(target, 3, mask, D64)
    torch.testing.assert_close(
        SoftDiceLoss(eps=0.5, batch_dice=True)(probs, oh, mask),
        soft_dice_loss(probs, oh, mask, eps=0.5, batch_dice=True),
    )
    mod = DiceCELoss(w_dice=0.5, w_ce=1.5, class_weights=w, include_background=True)
    torch.testing.assert_close(
        mod(logits, target, mask),
        dice_ce_loss(logits, target, mask, 0.5, 1.5, w.to(D64), include_background=True),
    )
    low = torch.randn(2, 3, 2, 3, dtype=D64)
    ds = DeepSupervisionLoss(mod, weights=[0.7, 0.3])
    torch.testing.assert_close(
        ds([logits, low], target, mask),
        deep_supervision_loss(mod, [logits, low], target, mask, [0.7, 0.3]),
    )
    assert "class_weights" in dict(mod.named_buffers())
    with pytest.raises(TypeError):
        DiceCELoss(w_dise=1.0)  # type: ignore[call-arg]
