"""The shared whole-array epoch loop (classification, restoration): exact resume after Ctrl-C."""

from __future__ import annotations

import numpy as np
import torch

from medseg.training.classify import ClsArrays, train_classifier
from medseg.training.config import ExperimentConfig


def _data() -> ClsArrays:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 16, 16)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    x[y == 1] += 1.0
    return ClsArrays(x[:18], y[:18], x[18:], y[18:], "single", ["a", "b"])


def _cfg(out) -> ExperimentConfig:
    cfg = ExperimentConfig(task="classification")
    cfg.output_dir = str(out)
    cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.batch_size = 3, 2, 4
    cfg.train.device, cfg.train.val_every, cfg.train.max_minutes = "cpu", 1, 0.0
    cfg.model.options = {"channels": [4, 8], "blocks_per_stage": [1, 1]}
    return cfg


def test_interrupted_then_resumed_equals_straight(tmp_path):
    data = _data()
    straight = train_classifier(_cfg(tmp_path / "a"), data, log=lambda _m: None)
    assert straight.epochs_done == 3 and not straight.interrupted

    def stop_after_epoch_2(msg: str) -> None:
        if "epoch 2/3" in msg:  # printed after epoch 2's checkpoint is written
            raise KeyboardInterrupt

    cut = train_classifier(_cfg(tmp_path / "b"), data, log=stop_after_epoch_2)
    assert cut.interrupted and cut.epochs_done == 1
    resumed = train_classifier(_cfg(tmp_path / "b"), data, resume=True, log=lambda _m: None)
    assert resumed.epochs_done == 3 and len(resumed.history) == 3
    a = torch.load(tmp_path / "a" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best_dice == straight.best_dice
