"""Helpers shared by the uncertainty studies: running medseg commands, timing, data, metrics."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MEDSEG = str(Path(sys.executable).parent / "medseg")


def medseg_cmd() -> list[str]:
    """The ``medseg`` console script beside this interpreter, else ``python -m medseg.cli``."""
    return [MEDSEG] if Path(MEDSEG).exists() else [sys.executable, "-m", "medseg.cli"]


def run(cmd: list[str], log_path: Path, threads: int) -> float:
    """Run a command (torch limited to ``threads`` threads; ``<= 0``: not limited), its output
    appended to ``log_path``; returns the wall time in seconds. Raises on a non-zero exit."""
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    printable = " ".join(cmd).replace(MEDSEG, "medseg")
    print(f"$ {printable}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as f:
        f.write(f"\n$ {printable}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t0
    with open(log_path, "a") as f:
        f.write(f"# exit {r.returncode}, {dt:.1f} s\n")
    if r.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"command failed ({r.returncode}): {printable}\n" + "\n".join(tail))
    return dt


def run_medseg(args: list[str], log_path: Path, threads: int) -> float:
    """:func:`run` of ``medseg ARGS`` (see :func:`medseg_cmd`)."""
    return run([*medseg_cmd(), *args], log_path, threads)


class Timings:
    """Wall times of finished steps, kept in a JSON file so that a re-run skips them."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def step(self, key: str, done: bool, cmd: list[str], log: Path, threads: int) -> float:
        """Run ``cmd`` unless ``done`` (its output already exists) and a time is recorded."""
        if done and key in self.data:
            print(f"(done already: {key}, {self.data[key]:.1f} s)")
            return self.data[key]
        self.data[key] = run(cmd, log, threads)
        self.path.write_text(json.dumps(self.data, indent=2))
        return self.data[key]


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    return p


def foreground_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the foreground classes 1..C-1 (a class absent from both counts 1)."""
    ds = []
    for c in range(1, n_classes):
        p, r = pred == c, ref == c
        s = int(p.sum()) + int(r.sum())
        ds.append(1.0 if s == 0 else 2.0 * int((p & r).sum()) / s)
    return float(np.mean(ds))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"
