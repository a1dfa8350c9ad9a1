"""Time to quality (issue 11): held-out Dice reached in a fixed CPU budget, per configuration.

The default 2D and 3D configurations (network width, depth, patch size, batch size, schedule)
should be the ones that reach the best Dice per CPU-minute, not the ones that look right. For
each configuration this script writes (once) a phantom dataset, trains through the ordinary
engine with the wall-clock budget ``train.max_minutes`` (the epoch count and the poly schedule
are fitted into it, exactly as a user's ``--minutes`` run), predicts the held-out phantoms and
prints one row: held-out mean foreground Dice, the epochs and optimiser steps the budget
allowed, the training time and the CPU seconds of the whole run (training + prediction; the
process's user + system time, so a busy machine shows up as wall >> CPU / threads).

Every configuration is one fresh subprocess (no shared caches or thread pools); same phantoms
(seed 0), same training seed (``--seed``; run a second seed to see the noise), same validation
cadence. The machine should be otherwise idle: the budget is
wall-clock time.

    python benchmarks/bench_time_to_quality.py --dims 2 --minutes 1.5 --work /tmp/ttq
    python benchmarks/bench_time_to_quality.py --dims 3 --minutes 3 --work /tmp/ttq
    python benchmarks/bench_time_to_quality.py --dims 2 --configs demo narrow --minutes 0.5 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

#: name -> (description, overrides of the demo's configuration) per dimensionality. ``demo`` is
#: the configuration ``medseg demo`` uses (``medseg.workflows.demo.demo_config``).
CONFIGS: dict[int, dict[str, tuple[str, dict[str, Any]]]] = {
    2: {
        "demo": ("demo default: U-Net 16..256 (5 levels), batch 8, patch 128^2, lr 3e-3", {}),
        "narrow": ("U-Net 8..128 (5 levels)", {"channels": [8, 16, 32, 64, 128]}),
        "wide": ("U-Net 32..320 (5 levels, nnU-Net widths)",
                 {"channels": [32, 64, 128, 256, 320]}),
        "shallow": ("U-Net 16..128 (4 levels)", {"channels": [16, 32, 64, 128]}),
        "batch4": ("batch 4", {"batch_size": 4}),
        "batch16": ("batch 16", {"batch_size": 16}),
        "patch64": ("patch 64^2, batch 16", {"patch_size": [64, 64], "batch_size": 16}),
        "lr1e-2": ("lr 1e-2", {"lr": 1e-2}),
        "shallow_b4": ("U-Net 16..128 (4 levels), batch 4",
                       {"channels": [16, 32, 64, 128], "batch_size": 4}),
        "narrow_b4": ("U-Net 8..128 (5 levels), batch 4",
                      {"channels": [8, 16, 32, 64, 128], "batch_size": 4}),
    },
    3: {
        "demo": ("demo default: U-Net 16..128 (4 levels), batch 2, patch 48^3, lr 3e-3", {}),
        "narrow": ("U-Net 8..64 (4 levels)", {"channels": [8, 16, 32, 64]}),
        "wide": ("U-Net 32..256 (4 levels)", {"channels": [32, 64, 128, 256]}),
        "deep": ("U-Net 16..256 (5 levels)", {"channels": [16, 32, 64, 128, 256]}),
        "batch1": ("batch 1", {"batch_size": 1}),
        "batch4": ("batch 4", {"batch_size": 4}),
        "patch32": ("patch 32^3, batch 4", {"patch_size": [32, 32, 32], "batch_size": 4}),
    },
}


def _data(work: Path, dims: int, seed: int = 0) -> Path:
    from medseg.physics import PhantomSpec, write_phantom_dataset

    data = work / f"phantoms_{dims}d"
    if not (data / "dataset.json").exists():
        size, n_train, n_test = (128, 40, 10) if dims == 2 else (48, 16, 4)
        spec = PhantomSpec(shape=(size,) * dims, modality="mr", lesion_fraction=0.005)
        write_phantom_dataset(data, spec, n_train=n_train, n_test=n_test, seed=seed)
    return data


def run_one(work: Path, dims: int, name: str, minutes: float, seed: int) -> dict[str, Any]:
    """Train and score one configuration in this process; returns the table row."""
    import torch

    from medseg.tasks.segmentation import SegmentationModel, evaluate_folders, predict_inputs
    from medseg.training.engine import train
    from medseg.workflows.demo import DemoSettings, demo_config

    torch.set_num_threads(int(os.environ.get("MEDSEG_BENCH_THREADS", "2")))
    data = _data(work, dims)  # the same phantoms for every training seed
    out = work / f"{dims}d_{name}_{minutes:g}min_seed{seed}"
    cfg = demo_config(DemoSettings(dims=dims, seed=seed), data, out / "model")
    over = CONFIGS[dims][name][1]
    if "channels" in over:
        cfg.model.options = {**cfg.model.options, "channels": over["channels"]}
    if "batch_size" in over:
        cfg.train.batch_size = over["batch_size"]
    if "patch_size" in over:
        cfg.train.patch_size = over["patch_size"]
    if "lr" in over:
        cfg.optim.lr = over["lr"]
    cfg.train.epochs = 1000  # the budget decides
    cfg.train.max_minutes = minutes
    cfg.train.calibrate = False
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(cfg, log=lambda _m: None)
    train_s = time.perf_counter() - t0
    model = SegmentationModel.load(out / "model")
    predict_inputs(model, data / "imagesTs", out / "pred", log=lambda _m: None)
    ev = evaluate_folders(out / "pred", data / "labelsTs", out / "eval",
                          dataset_json=data / "dataset.json", log=lambda _m: None)
    cpu = time.process_time() - c0
    return {"dims": dims, "config": name, "description": CONFIGS[dims][name][0],
            "budget_min": minutes, "dice": ev["summary"]["pooled"]["dice"]["mean"],
            "epochs": res.epochs_done,
            "steps": res.epochs_done * cfg.train.steps_per_epoch,
            "train_s": round(train_s, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, choices=(2, 3), default=2)
    ap.add_argument("--configs", nargs="*", default=None, help="names (default: all)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.5],
                    help="training budgets to try (wall-clock minutes each)")
    ap.add_argument("--work", default="runs/time_to_quality")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the phantoms are "
                                                                 "always those of seed 0)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "name:minutes": run in this process
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        name, minutes = a.one.rsplit(":", 1)
        print(json.dumps(run_one(work, a.dims, name, float(minutes), a.seed)))
        return 0
    names = a.configs or list(CONFIGS[a.dims])
    unknown = sorted(set(names) - set(CONFIGS[a.dims]))
    if unknown:
        ap.error(f"unknown {a.dims}D configurations {unknown}; known: {list(CONFIGS[a.dims])}")
    _data(work, a.dims)
    rows = []
    print("| config | what | budget min | epochs | steps | held-out Dice | train s | CPU s "
          "| peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for minutes in a.minutes:
        for name in names:
            cmd = [sys.executable, __file__, "--dims", str(a.dims), "--work", str(work),
                   "--seed", str(a.seed), "--one", f"{name}:{minutes}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {name} | {r['description']} | {minutes:g} | {r['epochs']} | {r['steps']} "
                  f"| {r['dice']:.4f} | {r['train_s']} | {r['cpu_s']} | {r['peak_rss_mib']} |",
                  flush=True)
    (work / f"results_{a.dims}d_seed{a.seed}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
