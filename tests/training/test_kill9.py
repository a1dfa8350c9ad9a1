"""kill -9 at random moments, checkpoint writes included: every run resumes, loses at most the
epoch in progress, and no file under its final name is ever partial or unreadable.

The default suite runs a short form (2 kills, the first while a checkpoint is being
written); ``-m slow`` runs 24 trials.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from medseg.cli import main
from medseg.model_folder import Plan
from medseg.training.checkpoint import load_checkpoint

EPOCHS = 6
FLAGS = ["--epochs", str(EPOCHS), "--steps-per-epoch", "1", "--batch-size", "1",
         "--patch-size", "32", "32", "--device", "cpu",
         "--set", "model.options.channels=[32,64,128,256]", "--set", "data.val_fraction=0.3",
         "--set", "train.num_threads=1", "--set", "train.prefetch=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ds = tmp_path_factory.mktemp("k9") / "ds"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "3", "--n-test", "0"]) == 0
    return ds


def _start(ds: Path, out: Path, resume: bool) -> tuple[subprocess.Popen, list[int]]:
    cmd = [sys.executable, "-u", "-m", "medseg.cli", "train", "--dataset", str(ds), "--output",
           str(out), *FLAGS] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    said: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.match(r"\s+epoch (\d+)/\d+\s+loss", line)
            if m:
                said.append(int(m.group(1)))

    threading.Thread(target=read, daemon=True).start()
    return proc, said


def _check_files(out: Path) -> int:
    """Every file under its final name is whole; returns the epochs the last checkpoint holds."""
    done = 0
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if (out / name).exists():
            ck = load_checkpoint(out / name)  # raises on a partial file
            if name == "checkpoint_last.pt":
                done = int(ck["epoch"]) + 1
    if (out / "config.yaml").exists():
        assert isinstance(yaml.safe_load((out / "config.yaml").read_text()), dict)
    if (out / "plan.json").exists():
        Plan.from_dict(json.loads((out / "plan.json").read_text()))
    if (out / "train_log.csv").exists():
        rows = list(csv.DictReader(open(out / "train_log.csv")))
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        # the log is written right after the checkpoint (the record of truth, whose history
        # resume writes back): a kill between the two leaves it one epoch behind, never ahead
        assert len(rows) in (done - 1, done)
    return done


def _trial(ds: Path, out: Path, rng: random.Random, during_write: bool,
           duration: float) -> dict:
    resume = (out / "checkpoint_last.pt").exists()
    proc, said = _start(ds, out, resume)
    t0 = time.perf_counter()
    if during_write:  # wait until a checkpoint write is under way, then kill
        while proc.poll() is None and time.perf_counter() - t0 < 120:
            if any(p.name.startswith(".checkpoint") and ".partial" in p.name
                   for p in out.iterdir()) if out.is_dir() else False:
                break
            time.sleep(0.002)
    else:  # anywhere in a run, as long as this machine takes for one
        time.sleep(rng.uniform(0.1, 1.0) * duration)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.05)  # the reader thread drains stdout
    done = _check_files(out)
    lost_ok = done >= (max(said) if said else 0)  # at most the epoch in progress is lost
    partial = [p.name for p in out.iterdir() if ".partial" in p.name] if out.is_dir() else []
    return {"said": max(said) if said else 0, "checkpoint": done, "ok": lost_ok,
            "partial_left": partial}


def _finish(ds: Path, out: Path) -> None:
    resume = (out / "checkpoint_last.pt").exists()
    proc, _ = _start(ds, out, resume)
    assert proc.wait(timeout=300) == 0
    assert _check_files(out) == EPOCHS
    assert len(list(csv.DictReader(open(out / "train_log.csv")))) == EPOCHS
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def _campaign(ds: Path, root: Path, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    _finish(ds, root / "timing")  # how long one whole run takes here, start-up included
    duration = time.perf_counter() - t0
    results = []
    for i in range(n):
        out = root / f"run{i}"
        r = _trial(ds, out, rng, during_write=i % 4 == 0, duration=duration)
        # killed again while resuming
        r2 = _trial(ds, out, rng, during_write=i % 4 == 1, duration=duration)
        results += [r, r2]
        _finish(ds, out)
    return results


def test_kill9_short(dataset, tmp_path):
    results = _campaign(dataset, tmp_path, 1, seed=0)
    assert all(r["ok"] for r in results), results


@pytest.mark.slow
def test_kill9_long(dataset, tmp_path):
    results = _campaign(dataset, tmp_path, 12, seed=1)
    assert all(r["ok"] for r in results), results
    print("kill -9 trials:", results)
