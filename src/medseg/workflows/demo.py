"""The embedded default job (E6): phantoms -> train -> predict -> evaluate -> report.

Runs with no data of the user's, in minutes on two CPU cores, and prints the held-out mean
foreground Dice. Everything lands in one folder::

    OUT/data/          the phantom dataset (nnU-Net layout, NIfTI)
    OUT/model/         config.yaml, plan.json, checkpoints, train_log.csv
    OUT/predictions/   label maps of the held-out phantoms (input geometry kept)
    OUT/evaluation/    metrics.json, metrics.csv, overlays/, report.html, report.md
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError
from medseg.physics import PhantomSpec, write_phantom_dataset
from medseg.tasks.segmentation import SegmentationModel, evaluate_folders, predict_inputs
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train

_MARKER = ".medseg_demo"
#: Everything the demo writes in its output folder (``--force`` removes these and nothing else).
DEMO_ITEMS = ("data", "model", "predictions", "evaluation", ".medseg_cache", _MARKER)


@dataclass
class DemoSettings:
    """Knobs of the demo (the CLI's flags)."""

    out: str = "medseg_demo_output"
    dims: int = 2
    modality: str = "mr"
    size: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    lesion_fraction: float = 0.005
    epochs: int | None = None
    seed: int = 0
    device: str = "auto"
    force: bool = False


def demo_config(s: DemoSettings, data_dir: Path, model_dir: Path) -> ExperimentConfig:
    """The training configuration the demo uses (saved in the model folder like any other)."""
    cfg = ExperimentConfig()
    cfg.data.dataset = str(data_dir)
    cfg.data.val_fraction = 0.15
    cfg.output_dir = str(model_dir)
    cfg.train.seed = s.seed
    cfg.train.device = s.device
    cfg.train.val_every = 4
    # chosen by held-out Dice per CPU-minute (benchmarks/bench_time_to_quality.py, two seeds,
    # benchmarks/RESULTS.md): in 2D batch 4 beat batch 8 at the same time (0.9916 vs 0.9828
    # mean of two seeds), so the demo runs twice the steps of half the size; in 3D no
    # configuration tried was better by more than the seed-to-seed noise (0.002)
    if s.dims == 2:
        cfg.model.options = {"channels": [16, 32, 64, 128, 256]}
        cfg.train.batch_size = 4
        cfg.train.steps_per_epoch = 20
        cfg.train.epochs = s.epochs or 24
        cfg.train.max_minutes = 4.0
    else:
        cfg.model.options = {"channels": [16, 32, 64, 128]}
        cfg.train.batch_size = 2
        cfg.train.steps_per_epoch = 20
        cfg.train.epochs = s.epochs or 12
        cfg.train.max_minutes = 5.0
    cfg.optim.lr = 3e-3
    return cfg


def run_demo(s: DemoSettings, log: Callable[[str], None] = print) -> dict:
    """Run the whole demo; returns the evaluation summary and paths.

    Raises:
        InputError: the output folder exists and was not written by the demo (never
            overwritten), or exists and ``force`` is not set; the output path is a file or a
            symbolic link.
    """
    t0 = time.perf_counter()
    out = Path(s.out)
    if out.is_symlink():
        raise InputError("the output folder is a symbolic link (the demo writes and --force "
                         "deletes only in a real folder)", out,
                         "give the folder the link points to, or another --output")
    if out.exists() and not out.is_dir():
        raise InputError("the output path is not a folder", out,
                         "give a new or empty folder as --output")
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise InputError("the output folder exists and was not written by medseg demo", out,
                             "choose another --output (medseg never overwrites your files)")
        if not s.force:
            raise InputError("the demo output folder already exists", out,
                             "pass --force to replace it, or choose another --output")
        for name in DEMO_ITEMS:  # only what the demo writes; files a user added stay
            item = out / name
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            elif item.exists() or item.is_symlink():
                item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by medseg demo; safe to delete\n")
    size = s.size or (128 if s.dims == 2 else 48)
    n_train = s.n_train or (40 if s.dims == 2 else 16)
    n_test = s.n_test or (10 if s.dims == 2 else 4)
    data_dir, model_dir = out / "data", out / "model"
    log(f"medseg demo: {n_train}+{n_test} {s.dims}D {s.modality.upper()} phantoms of "
        f"{size}^{s.dims} (lesion fraction {s.lesion_fraction:g}) -> {data_dir}")
    spec = PhantomSpec(shape=(size,) * s.dims, modality=s.modality,
                       lesion_fraction=s.lesion_fraction)
    write_phantom_dataset(data_dir, spec, n_train=n_train, n_test=n_test, seed=s.seed)
    cfg = demo_config(s, data_dir, model_dir)
    result = train(cfg, log=log)
    if result.interrupted:
        raise KeyboardInterrupt
    log("predicting the held-out phantoms with sliding windows")
    model = SegmentationModel.load(model_dir, device=s.device)
    pred_dir = out / "predictions"
    predict_inputs(model, data_dir / "imagesTs", pred_dir, log=lambda _m: None)
    log("evaluating")
    ev = evaluate_folders(pred_dir, data_dir / "labelsTs", out / "evaluation",
                          dataset_json=data_dir / "dataset.json", images=data_dir / "imagesTs",
                          log=log)
    dice = ev["summary"]["pooled"]["dice"]["mean"]
    per_class = {ev["summary"].get("class_names", {}).get(c, c): st["dice"]["mean"]
                 for c, st in ev["summary"]["classes"].items()}
    minutes = (time.perf_counter() - t0) / 60
    log("")
    log(f"held-out mean foreground Dice: {dice:.3f}  "
        + "  ".join(f"{k}={v:.3f}" for k, v in per_class.items()))
    log(f"finished in {minutes:.1f} min; report: {ev['files'][-1]}")
    return {"dice": dice, "per_class": per_class, "report": ev["files"][-1], "out": out,
            "minutes": minutes}
