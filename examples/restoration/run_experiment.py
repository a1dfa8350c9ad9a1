"""L2 versus the physically correct likelihood for denoising CT, MR and US phantoms (P4).

For each modality the same 2D U-Net (same seed, data, steps and optimiser) is trained with
``loss.restoration = l2`` and ``likelihood`` (and ``anscombe_l2`` for CT), with noisy targets
(a second independent realisation, Noise2Noise) and with clean targets. Every model predicts
the held-out noisy images; PSNR / SSIM against the clean truth and the NLL of an independent
held-out noisy realisation are written to ``results.json`` and printed as a Markdown table.

    python examples/restoration/run_experiment.py --out runs/restoration

Single-threaded on purpose (other jobs share the CPU); about 2 minutes per model on one core
with the defaults (96 training pairs of 64^2, 48^2 crops, 1000 steps of 8).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from medseg.io import read_image
from medseg.io.atomic import atomic_write_text
from medseg.losses.restoration import restoration_nll
from medseg.metrics.image_quality import psnr, ssim
from medseg.model_folder import ModelFolder
from medseg.physics.restoration_data import read_restoration_json, write_restoration_dataset
from medseg.tasks.restoration import evaluate_restoration, predict_restoration
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train

LEVELS = {"ct": 5.0, "mr": 3.0, "us": 2.0}
LOSSES = {"ct": ["l2", "likelihood", "anscombe_l2"], "mr": ["l2", "likelihood"],
          "us": ["l2", "likelihood"]}


def _baselines(ds: Path) -> dict[str, dict[str, float]]:
    """Noisy input and the clean truth itself, scored like a prediction."""
    _, noise = read_restoration_json(ds)
    rows: dict[str, list[dict[str, float]]] = {"noisy input": [], "clean truth (oracle)": []}
    for f in sorted((ds / "cleanTs").glob("*.nii.gz")):
        cid = f.name[:-7]
        clean = torch.from_numpy(read_image(f)[0]).double()
        noisy = torch.from_numpy(read_image(ds / "imagesTs" / f"{cid}_0000.nii.gz")[0]).double()
        held = torch.from_numpy(read_image(ds / "targetsTs" / f.name)[0]).double()
        for name, img in (("noisy input", noisy), ("clean truth (oracle)", clean)):
            rows[name].append({"psnr": psnr(img, clean, noise.data_range),
                               "ssim": ssim(img[None], clean[None], noise.data_range),
                               "nll": float(restoration_nll(img, held, noise)),
                               "mean_error": float((img - clean).mean())})
    return {k: {m: float(np.mean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}


def _mean_error(pred_dir: Path, ds: Path) -> float:
    errs = []
    for f in sorted((ds / "cleanTs").glob("*.nii.gz")):
        errs.append(float((read_image(pred_dir / f.name)[0].astype(np.float64)
                           - read_image(f)[0]).mean()))
    return float(np.mean(errs))


#: Clean-image threshold of the body (inside vs the air / fluid around it), image units.
BODY = {"ct": -500.0, "mr": 0.1, "us": 255.0 * (1.0 - 28.5 / 60.0)}


def _body_rmse(pred_dir: Path, ds: Path, mod: str, suffix: str = "") -> float:
    """RMSE (image units) over the body voxels of the held-out cases."""
    sq, n = 0.0, 0
    for f in sorted((ds / "cleanTs").glob("*.nii.gz")):
        clean = read_image(f)[0].astype(np.float64)
        body = clean > BODY[mod]
        name = f.name.replace(".nii.gz", f"{suffix}.nii.gz")
        err = read_image(pred_dir / name)[0].astype(np.float64) - clean
        sq += float((err[body] ** 2).sum())
        n += int(body.sum())
    return float(np.sqrt(sq / max(n, 1)))


def add_body_rmse(out: Path, results: dict) -> None:
    """Add ``body_rmse`` to every trained model of ``results`` (from its saved predictions)."""
    for key, entry in results.items():
        mod, target = key.split("/")
        for name, m in entry.items():
            ds = out / f"data_{mod}_{target}"
            pred = out / f"model_{mod}_{target}_{name}" / "pred_test"
            if isinstance(m, dict) and pred.is_dir():
                m["body_rmse"] = _body_rmse(pred, ds, mod)
            elif name == "noisy input":
                m["body_rmse"] = _body_rmse(ds / "imagesTs", ds, mod, "_0000")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/restoration")
    ap.add_argument("--modalities", nargs="+", default=["mr", "us", "ct"])
    ap.add_argument("--targets", nargs="+", default=["noisy", "clean"])
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-only", action="store_true",
                    help="only add body RMSE to results.json and print the table")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if a.table_only:
        add_body_rmse(out, results)
        atomic_write_text(res_path, json.dumps(results, indent=2))
        print(table(results))
        return
    for target in a.targets:
        for mod in a.modalities:
            ds = out / f"data_{mod}_{target}"
            if not (ds / "dataset.json").is_file():
                if ds.exists():
                    shutil.rmtree(ds)
                write_restoration_dataset(ds, mod, a.n_train, a.n_test, size=a.size,
                                          target=target, level=LEVELS[mod], seed=a.seed)
            key = f"{mod}/{target}"
            entry = results.setdefault(key, {"level": LEVELS[mod]})
            entry.update(_baselines(ds))
            for loss in LOSSES[mod]:
                if loss in entry:
                    continue
                mdir = out / f"model_{mod}_{target}_{loss}"
                if mdir.exists():
                    shutil.rmtree(mdir)
                cfg = ExperimentConfig.from_dict({
                    "task": "restoration", "output_dir": str(mdir),
                    "data": {"dataset": str(ds)},
                    "model": {"name": "unet", "options": {"channels": [16, 32, 64]}},
                    "loss": {"restoration": loss},
                    "optim": {"name": "adamw", "lr": 3e-3, "schedule": "poly"},
                    "train": {"epochs": a.epochs, "steps_per_epoch": a.steps, "batch_size": 8,
                              "patch_size": [a.patch, a.patch], "seed": a.seed,
                              "device": "cpu", "num_threads": a.threads, "val_every": 2},
                })
                t0 = time.perf_counter()
                train(cfg, log=print)
                pred = mdir / "pred_test"
                predict_restoration(ModelFolder.open(mdir), ds / "imagesTs", pred, device="cpu")
                ev = evaluate_restoration(pred, ds, mdir / "eval")["result"]["mean"]
                ev["mean_error"] = _mean_error(pred, ds)
                ev["train_seconds"] = time.perf_counter() - t0
                entry[loss] = ev
                atomic_write_text(res_path, json.dumps(results, indent=2))
                print(f"== {key} {loss}: {ev}", flush=True)
            atomic_write_text(res_path, json.dumps(results, indent=2))
    add_body_rmse(out, results)
    atomic_write_text(res_path, json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    """Markdown table of ``results.json``."""
    lines = ["| modality / target | model | PSNR (dB) | SSIM | NLL held-out (nats/voxel) | "
             "mean error | body RMSE |", "|---|---|---|---|---|---|---|"]
    for key, entry in results.items():
        for name, m in entry.items():
            if not isinstance(m, dict):
                continue
            ps = "inf" if m["psnr"] is None or m["psnr"] == float("inf") else f"{m['psnr']:.2f}"
            lines.append(f"| {key} | {name} | {ps} | {m['ssim']:.4f} | "
                         f"{m['nll']:.4f} | {m['mean_error']:+.4g} | "
                         + (f"{m['body_rmse']:.4g} |" if "body_rmse" in m else "- |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
