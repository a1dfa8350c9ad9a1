"""Segmentation robustness to noise (P4): physically correct vs naive Gaussian noise augmentation.

For each modality (CT, MR, US) the simulator writes a training set at the nominal noise level and
two held-out test sets from other seeds: nominal, and degraded (low dose for CT, low SNR for MR,
fully developed speckle for US). The same U-Net (same seed, same steps) is trained three times:

* ``none``     — no noise augmentation (every other augmentation as usual);
* ``gaussian`` — additive Gaussian noise on the normalised intensities (the naive model);
* ``physics``  — the modality's own noise model in the raw domain (Poisson transmission noise at
  a reduced dose, complex Gaussian noise then the modulus, Gamma speckle).

Both noise augmentations are drawn with the same probability and span the degraded test level.
It prints a table of held-out mean foreground Dice (and the lesion Dice) and writes
``results.json``. Run from the repository root::

    .venv/bin/python examples/robustness/run_robustness.py --out runs/robustness
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medseg.physics import PhantomSpec, write_phantom_dataset  # noqa: E402
from medseg.tasks.segmentation import (  # noqa: E402
    SegmentationModel,
    evaluate_folders,
    predict_inputs,
)
from medseg.training.config import ExperimentConfig  # noqa: E402
from medseg.training.engine import train  # noqa: E402

#: Degraded test level per modality (``noise_level``: CT ~10 HU x level at water, MR sigma
#: 0.05 x level on a 0.6 organ signal, US looks 4 / level^2).
DEGRADED = {"ct": 4.0, "mr": 4.0, "us": 2.0}


def configure(cfg: ExperimentConfig, aug: str, prob: float) -> None:
    """Set the noise augmentation of one arm (the other augmentations are left as default)."""
    cfg.augment.p_noise = 0.0
    cfg.physics_noise.p_ct = cfg.physics_noise.p_mr = cfg.physics_noise.p_us = 0.0
    if aug == "gaussian":
        cfg.augment.noise_model = "gaussian"
        cfg.augment.p_noise = prob
        cfg.augment.noise_std_range = (0.0, 0.6)
    elif aug == "physics":
        cfg.augment.noise_model = "physics"
        pn = cfg.physics_noise
        pn.p_ct = pn.p_mr = pn.p_us = prob
        pn.ct_dose_range = (1.0 / 16.0, 1.0)  # up to 4x the nominal noise std (10 HU -> 40 HU)
        pn.ct_sigma_hu_water = 10.0
        pn.mr_sigma_range = (0.0, 0.25)  # x the 99th percentile magnitude (~0.8): up to SNR ~3
        pn.us_looks_range = (1.0, 8.0)
    else:
        cfg.augment.noise_model = "gaussian"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--modalities", nargs="+", default=["ct", "mr", "us"])
    ap.add_argument("--arms", nargs="+", default=["none", "gaussian", "physics"])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--prob", type=float, default=0.5, help="noise augmentation probability")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                    help="training seeds (one model per arm and seed)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    results: dict = {}
    if (out / "results.json").exists():
        results = json.loads((out / "results.json").read_text())
    for mod in a.modalities:
        root = out / mod
        shape = (a.size, a.size)
        spec = PhantomSpec(shape=shape, modality=mod, lesion_fraction=0.01)
        write_phantom_dataset(root / "train", spec, n_train=a.n_train, n_test=0, seed=0)
        tests = {"nominal": 1.0, "degraded": DEGRADED[mod]}
        for name, level in tests.items():
            # held-out phantoms: another seed; the n_train cases of a test set are its images
            write_phantom_dataset(root / f"test_{name}", replace(spec, noise_level=level),
                                  n_train=a.n_test, n_test=0, seed=1000)
        for arm in a.arms:
            for seed in a.seeds:
                key = f"{mod}/{arm}/s{seed}"
                if key not in results:
                    results[key] = run_arm(root, arm, seed, a, tests)
                    (out / "results.json").write_text(json.dumps(results, indent=2))
                row = results[key]
                print(f"{key}: " + ", ".join(
                    f"{k} {v['dice']:.3f} (lesion {v['lesion_dice']:.3f})"
                    for k, v in row.items() if isinstance(v, dict)), flush=True)
    print("| modality | augmentation | nominal Dice | degraded Dice | degraded lesion Dice |")
    print("|---|---|---|---|---|")
    for mod in a.modalities:
        for arm in a.arms:
            rows = [results[f"{mod}/{arm}/s{s}"] for s in a.seeds if f"{mod}/{arm}/s{s}" in results]
            if not rows:
                continue

            def cell(test: str, metric: str, rows: list = rows) -> str:
                v = [r[test][metric] for r in rows]
                return f"{np.mean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"

            print(f"| {mod.upper()} | {arm} | {cell('nominal', 'dice')} | "
                  f"{cell('degraded', 'dice')} | {cell('degraded', 'lesion_dice')} |")


def run_arm(root: Path, arm: str, seed: int, a: argparse.Namespace,
            tests: dict[str, float]) -> dict:
    """Train one arm with one seed and score it on every test set."""
    t0 = time.perf_counter()
    cfg = ExperimentConfig()
    cfg.data.dataset = str(root / "train")
    cfg.data.val_fraction = 0.15
    cfg.output_dir = str(root / f"model_{arm}_s{seed}")
    cfg.model.options = {"channels": [16, 32, 64, 128]}
    cfg.train.batch_size = 8
    cfg.train.steps_per_epoch = 20
    cfg.train.epochs = a.epochs
    cfg.train.val_every = 4
    cfg.train.seed = seed
    cfg.optim.lr = 3e-3
    configure(cfg, arm, a.prob)
    if not (Path(cfg.output_dir) / "checkpoint_best.pt").exists():
        train(cfg, log=lambda _m: None)
    model = SegmentationModel.load(cfg.output_dir, device="cpu")
    row: dict = {}
    for name in tests:
        pred = root / f"pred_{arm}_s{seed}_{name}"
        if not pred.exists():
            predict_inputs(model, root / f"test_{name}" / "imagesTr", pred, log=lambda _m: None)
        ev = evaluate_folders(pred, root / f"test_{name}" / "labelsTr",
                              root / f"eval_{arm}_s{seed}_{name}",
                              dataset_json=root / "train" / "dataset.json", log=lambda _m: None)
        summ = ev["summary"]
        row[name] = {"dice": summ["pooled"]["dice"]["mean"],
                     "lesion_dice": summ["classes"][2]["dice"]["mean"],
                     "organ_dice": summ["classes"][1]["dice"]["mean"]}
    row["minutes"] = (time.perf_counter() - t0) / 60
    return row


if __name__ == "__main__":
    main()
