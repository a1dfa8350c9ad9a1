"""The one engine: the non-finite guard, deterministic mode and DDP for every task.

(Exact resume of every task is in test_task_registry.py; segmentation specifics in
test_training.py.)
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch

from helpers import write_toy_npz
from medseg.cli import main
from medseg.tasks import classification as cls_mod
from medseg.training.config import ExperimentConfig
from medseg.training.engine import TrainingError, train


@pytest.fixture()
def npz(tmp_path):
    return write_toy_npz(tmp_path / "toy.npz")[0]


def _cfg(npz, out, epochs=2) -> ExperimentConfig:
    cfg = ExperimentConfig(task="classification")
    cfg.data.dataset = str(npz)
    cfg.output_dir = str(out)
    cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.batch_size = epochs, 4, 4
    cfg.train.device = "cpu"
    cfg.model.options = {"channels": [4, 8], "blocks_per_stage": [1, 1]}
    return cfg


def _poison(monkeypatch, bad_calls: set[int], kind: str) -> list[int]:
    """Make ClassificationTrainer.loss non-finite (loss or only its gradient) on given calls."""
    real = cls_mod.ClassificationTrainer.loss
    calls = [0]

    def loss(self, net, batch):
        value, out = real(self, net, batch)
        calls[0] += 1
        if calls[0] in bad_calls:
            if kind == "loss":
                value = value * float("nan")
            else:  # finite loss, NaN gradient: d/dz sqrt(z) at 0 is inf, times 0
                z = out[0].sum() * 0.0
                value = value + 0.0 * torch.sqrt(z)
        return value, out

    monkeypatch.setattr(cls_mod.ClassificationTrainer, "loss", loss)
    return calls


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_logged(npz, tmp_path, monkeypatch, kind):
    train(_cfg(npz, tmp_path / "clean"), log=lambda _m: None)
    _poison(monkeypatch, {2}, kind)
    msgs: list[str] = []
    res = train(_cfg(npz, tmp_path / "m"), log=msgs.append)
    assert res.skipped_steps == 1 and not res.interrupted and res.epochs_done == 2
    assert [r["skipped_steps"] for r in res.history] == [1, 0]
    assert any("step 2: loss" in m and "step skipped (1 in a row)" in m for m in msgs), msgs
    rows = list(csv.DictReader(open(tmp_path / "m" / "train_log.csv")))
    assert [r["skipped_steps"] for r in rows] == ["1", "0"]
    state = torch.load(tmp_path / "m" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the skipped step changed nothing but its own update: the run differs from the clean one
    ref = torch.load(tmp_path / "clean" / "checkpoint_last.pt", weights_only=True)["model"]
    assert any(not torch.equal(ref[k], state[k]) for k in ref)
    assert math.isfinite(res.history[0]["train_loss"])


def test_consecutive_bad_steps_stop_with_a_clear_error(npz, tmp_path, monkeypatch):
    cfg = _cfg(npz, tmp_path / "m", epochs=3)
    cfg.train.max_bad_steps = 3
    _poison(monkeypatch, set(range(6, 100)), "loss")  # epoch 1 clean, epoch 2 diverges
    with pytest.raises(TrainingError, match="3 steps in a row with a non-finite loss"):
        train(cfg, log=lambda _m: None)
    ck = torch.load(tmp_path / "m" / "checkpoint_last.pt", weights_only=True)
    assert ck["epoch"] == 0  # epoch 1's checkpoint kept, nothing written after
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    rc = main(["train", "--task", "classification", "--dataset", str(npz), "--output",
               str(tmp_path / "cli"), "--epochs", "1", "--steps-per-epoch", "2", "--device",
               "cpu", "--set", "train.max_bad_steps=1",
               "--set", "model.options.channels=[4,8]",
               "--set", "model.options.blocks_per_stage=[1,1]"])
    assert rc == 2  # one line on stderr, no traceback (MedsegError)


def test_deterministic_mode_reaches_every_task(npz, tmp_path):
    cfg = _cfg(npz, tmp_path / "m", epochs=1)
    cfg.train.deterministic = True
    try:
        train(cfg, log=lambda _m: None)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def _torchrun(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "medseg.cli", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("task", ["classification", "restoration"])
def test_two_process_ddp_for_whole_array_tasks(task, tmp_path, npz):
    if task == "classification":
        data = ["--dataset", str(npz), "--set", "model.options.channels=[4,8]",
                "--set", "model.options.blocks_per_stage=[1,1]"]
    else:
        ds = tmp_path / "den"
        assert main(["restoration-data", "--output", str(ds), "--modality", "mr",
                     "--n-train", "6", "--n-test", "1", "--size", "32"]) == 0
        data = ["--dataset", str(ds), "--set", "model.options.channels=[4,8]"]
    model = tmp_path / "m"
    out = _torchrun(["--task", task, *data, "--output", str(model), "--epochs", "2",
                     "--steps-per-epoch", "2", "--batch-size", "2", "--device", "cpu"])
    assert out.count("model written to") == 1 and out.count("epoch 2/2") == 1  # rank 0 only
    rows = list(csv.DictReader(open(model / "train_log.csv")))
    assert [r["processes"] for r in rows] == ["2", "2"]
    state = torch.load(model / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["task"] == task
    assert not any(k.startswith("module.") for k in state["model"])
