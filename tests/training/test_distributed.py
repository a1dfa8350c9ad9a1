"""DDP under torchrun (E7): two CPU processes (Gloo) train one model; rank 0 alone reports."""

from __future__ import annotations

import csv
import subprocess
import sys

import torch

from medseg.cli import main


def test_two_process_ddp_training_on_cpu(tmp_path):
    ds = tmp_path / "ds"
    assert main(["phantoms", "--out", str(ds), "--dims", "2", "--size", "32", "--n-train", "6",
                 "--n-test", "1"]) == 0
    model = tmp_path / "m"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "medseg.cli", "train", "--dataset", str(ds), "--output", str(model),
           "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32",
           "32", "--device", "cpu", "--set", "model.options.channels=[8,16,32]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("model written to") == 1  # rank 0 only
    assert out.count("epoch 2/2") == 1
    rows = list(csv.DictReader(open(model / "train_log.csv")))
    assert [r["processes"] for r in rows] == ["2", "2"]
    state = torch.load(model / "checkpoint_last.pt", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])
