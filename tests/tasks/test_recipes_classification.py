"""Small-data recipes of the classification task (issue 13): label smoothing, mixup,
class-balanced sampling, test-time flips, input upsampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from medseg.cli import main
from medseg.errors import ConfigError
from medseg.tasks import get_task
from medseg.tasks.base import index_batches
from medseg.tasks.classification import (
    ClassificationTrainer,
    ClsArrays,
    balanced_batches,
    mixed_classification_loss,
    mixup,
    preprocess_cls_images,
    soft_targets,
    tta_flip_axes,
    tta_logits,
)
from medseg.training.config import ExperimentConfig, TrainConfig


def test_soft_targets_hand_values():
    t = soft_targets(torch.tensor([0, 1]), 2, "single", 0.1)
    assert torch.allclose(t, torch.tensor([[0.95, 0.05], [0.05, 0.95]], dtype=torch.float64))
    t3 = soft_targets(torch.tensor([2]), 3, "single", 0.3)
    assert torch.allclose(t3, torch.tensor([[0.1, 0.1, 0.8]], dtype=torch.float64))
    m = soft_targets(torch.tensor([[1.0, 0.0, -1.0]]), 3, "multi", 0.2)
    assert torch.allclose(m, torch.tensor([[0.9, 0.1, -1.0]], dtype=torch.float64))


def test_label_smoothed_ce_and_bce_hand_values():
    # CE, logits (2, 0), label 0, e = 0.1: targets (0.95, 0.05);
    # loss = -(0.95 (2 - log(1 + e^2)) + 0.05 (0 - log(1 + e^2))) = log(1 + e^2) - 1.9
    z = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    loss = mixed_classification_loss(z, y, y, 1.0, "single", smoothing=0.1)
    assert float(loss) == pytest.approx(math.log(1 + math.e ** 2) - 1.9, abs=1e-12)
    assert float(loss) == pytest.approx(0.226928, abs=1e-6)
    # independent reference: torch's own label smoothing
    ref = torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1)
    assert float(loss) == pytest.approx(float(ref), abs=1e-12)
    # BCE, logit 1, label 1, e = 0.2: target 0.9; loss = 0.9 softplus(-1) + 0.1 softplus(1)
    zb = torch.tensor([[1.0]], dtype=torch.float64)
    yb = torch.tensor([[1.0]])
    lb = mixed_classification_loss(zb, yb, yb, 1.0, "multi", smoothing=0.2)
    sp = math.log1p(math.exp(-1.0))
    assert float(lb) == pytest.approx(0.9 * sp + 0.1 * (sp + 1.0), abs=1e-12)
    assert float(lb) == pytest.approx(0.4132617, abs=1e-6)


def test_mixup_images_and_targets_are_the_convex_combination():
    rng = np.random.default_rng(3)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    mixed, perm, lam = mixup(x, 0.4, rng)
    ref = np.random.default_rng(3)
    lam_ref = ref.beta(0.4, 0.4)
    assert lam == pytest.approx(lam_ref) and (perm == ref.permutation(6)).all()
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[torch.from_numpy(perm)])
    # the loss is the cross-entropy against lam onehot(a) + (1 - lam) onehot(b)
    z = torch.tensor([[1.0, -0.5], [0.2, 0.3], [2.0, 1.0]], dtype=torch.float64)
    ya, yb = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0])
    loss = mixed_classification_loss(z, ya, yb, 0.7, "single")
    onehot = torch.nn.functional.one_hot
    target = 0.7 * onehot(ya, 2).double() + 0.3 * onehot(yb, 2).double()
    ref_loss = torch.nn.functional.cross_entropy(z, target)
    assert float(loss) == pytest.approx(float(ref_loss), abs=1e-12)
    # class weights w = (1, 3): sum_i [lam w_a l_a + (1 - lam) w_b l_b] / sum_i [lam w_a + ...]
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    nll = -torch.log_softmax(z, 1)
    num = sum(0.7 * w[a] * nll[i, a] + 0.3 * w[b] * nll[i, b]
              for i, (a, b) in enumerate(zip(ya.tolist(), yb.tolist(), strict=True)))
    den = sum(0.7 * w[a] + 0.3 * w[b] for a, b in zip(ya.tolist(), yb.tolist(), strict=True))
    assert float(mixed_classification_loss(z, ya, yb, 0.7, "single", class_weights=w)) == \
        pytest.approx(float(num / den), abs=1e-12)
    # multi-label: mixed where both are observed, missing otherwise
    zm = torch.zeros(1, 2, dtype=torch.float64)
    lm = mixed_classification_loss(zm, torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]]),
                                   0.25, "multi")
    assert float(lm) == pytest.approx(math.log(2.0), abs=1e-12)  # any target at p = 1/2


def test_trainer_batches_with_mixup_pair_each_image_with_a_permutation():
    rng = np.random.default_rng(0)
    data = ClsArrays(rng.normal(size=(20, 1, 8, 8)).astype(np.float32),
                     np.array([0, 1] * 10), np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]),
                     "single", ["0", "1"], ["a", "b"])
    cfg = ExperimentConfig(task="classification")
    cfg.augment.enabled = False
    cfg.train.batch_size, cfg.train.steps_per_epoch, cfg.train.mixup = 5, 3, 0.2
    batches = list(ClassificationTrainer(cfg, data, torch.device("cpu")).batches(0, 11, 0, 1))
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    # replay the generator: index batches, then (lam, perm) per batch
    ref = np.random.default_rng(11)
    idx = index_batches(20, 5, 3, ref)
    for (x, y, y_b, lam), i in zip(batches, idx, strict=True):
        lam_ref = ref.beta(0.2, 0.2)
        perm = ref.permutation(5)
        x0 = torch.from_numpy(data.train_x[i])
        assert lam == pytest.approx(lam_ref)
        assert torch.allclose(x, lam_ref * x0 + (1 - lam_ref) * x0[perm], atol=1e-6)
        assert (y.numpy() == data.train_y[i]).all() and (y_b.numpy() == data.train_y[i][perm]).all()


def test_balanced_sampler_frequencies_chi_square():
    labels = np.array([0] * 90 + [1] * 10)
    draws = np.concatenate(balanced_batches(labels, 16, 200, np.random.default_rng(0)))
    counts = np.bincount(labels[draws], minlength=2)
    assert counts.sum() == 3200
    # H0: both classes equally likely (1600 each); a fixed seed, so the p-value is fixed
    assert stats.chisquare(counts).pvalue > 0.05
    # within the minority class every image is equally likely (10 images, 160 each)
    minority = np.bincount(draws[draws >= 90] - 90, minlength=10)
    assert stats.chisquare(minority).pvalue > 0.05
    # the plain sampler keeps the 9:1 imbalance (a chi-square against 1:1 rejects it)
    plain = np.concatenate(index_batches(100, 16, 200, np.random.default_rng(0)))
    pc = np.bincount(labels[plain], minlength=2)
    assert pc[1] == pytest.approx(320, abs=20) and stats.chisquare(pc).pvalue < 1e-6


class _Asym(torch.nn.Module):
    """Logits ``(sum(x * w), 0)`` with a weight map that is not flip-symmetric."""

    def __init__(self):
        super().__init__()
        self.w = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4) / 40.0

    def forward(self, x):
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_tta_averages_the_probabilities_of_the_allowed_flips():
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = _Asym()
    p = torch.softmax(tta_logits(m, x, (1,), "single").double(), 1)
    ref = (torch.softmax(m(x), 1) + torch.softmax(m(x.flip(3)), 1)) / 2
    assert torch.allclose(p, ref, atol=1e-6)
    p2 = torch.softmax(tta_logits(m, x, (0, 1), "single").double(), 1)
    ref2 = sum(torch.softmax(m(x.flip(d) if d else x), 1) for d in ([], [2], [3], [2, 3])) / 4
    assert torch.allclose(p2, ref2, atol=1e-6)
    # multi-label: the sigmoid of the returned logit is the mean sigmoid
    pm = torch.sigmoid(tta_logits(m, x, (1,), "multi").double())
    refm = (torch.sigmoid(m(x)) + torch.sigmoid(m(x.flip(3)))) / 2
    assert torch.allclose(pm, refm, atol=1e-6)
    cfg = ExperimentConfig(task="classification")
    assert tta_flip_axes(cfg, 2) == (0, 1)
    cfg.augment.flip_axes = (1,)
    assert tta_flip_axes(cfg, 2) == (1,)
    cfg.augment.p_flip = 0.0
    assert tta_flip_axes(cfg, 2) == ()


def test_upsampling_28_to_64():
    img = np.tile(np.linspace(0, 27, 28), (28, 1))[None]  # a horizontal ramp (1, 28, 28)
    x = preprocess_cls_images([img], [64, 64], ["ramp"])
    assert x.shape == (1, 1, 64, 64)
    row = x[0, 0, 10]
    assert np.all(np.diff(row) >= -1e-6) and abs(float(x.mean())) < 1e-5
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)


def test_recipe_settings_are_checked():
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="mixup"):
        TrainConfig(mixup=-0.1)
    cfg = ExperimentConfig(task="classification")
    cfg.train.label_smoothing, cfg.train.mixup, cfg.train.balanced_sampling = 0.1, 0.2, True
    cfg.inference.tta, cfg.data.image_size = True, [64, 64]
    cfg.train.ema, cfg.augment.p_translate = 0.99, 0.5
    get_task("classification").check_config(cfg)  # every recipe is a setting the task reads
    with pytest.raises(ConfigError, match="does not use the setting"):
        get_task("segmentation").check_config(cfg)


@pytest.mark.slow
def test_recipes_train_predict_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (48, 28, 28)).astype(np.uint8)
    y = (np.arange(48) % 4 == 0).astype(int)  # 1:3 imbalance
    npz = tmp_path / "toy.npz"
    np.savez(npz, train_images=x[:36], train_labels=y[:36, None], val_images=x[36:],
             val_labels=y[36:, None])
    model = tmp_path / "m"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                 "--device", "cpu", "--set", "model.options.channels=[8,16]",
                 "--set", "model.options.blocks_per_stage=[1,1]",
                 "--set", "data.image_size=[32,32]", "--set", "train.label_smoothing=0.1",
                 "--set", "train.mixup=0.2", "--set", "train.balanced_sampling=true",
                 "--set", "inference.tta=true", "--set", "augment.flip_axes=[1]",
                 "--set", "train.ema=0.9", "--set", "augment.p_translate=0.5",
                 "--set", "augment.translate_fraction=0.1"]) == 0
    ck = torch.load(model / "checkpoint_best.pt", weights_only=True)
    assert ck["ema_steps"] == 2 and "train_model" in ck
    assert json.loads((model / "plan.json").read_text())["image_size"] == [32, 32]
    pred = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "val",
                 "--output", str(pred), "--device", "cpu", "--tta"]) == 0
    assert len((pred / "predictions.csv").read_text().splitlines()) == 13
