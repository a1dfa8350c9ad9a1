"""Nested cross-validation: how the 5-fold ensemble does on images no fold model ever saw.

The out-of-fold estimate of ``medseg train --folds K`` scores each image with the one fold
model that did not train on it; ``medseg predict`` on new images averages all K models (the
fold ensemble), each with the temperature fitted on the out-of-fold logits. The two can differ:
an average of K models is usually better ranked (AUROC) and less confident than one of them,
so a temperature fitted on single models may leave the ensemble under-confident. This script
measures it without the official test split: an outer stratified split holds out a fifth of
the pooled train+val images, the ordinary ``medseg train --folds K`` runs on the rest, and the
fold ensemble (``medseg predict``) scores the held-out fifth; repeated over the 5 outer folds,
every image is scored once by an ensemble that never saw it.

Usage::

    python examples/medmnist/nested_cv.py --data ../shared/data/cls_breastmnist/\
breastmnist_trainval.npz --work runs/nested_breast [--parallel 2] -- <medseg train flags>

Everything after ``--`` is passed to ``medseg train`` (the recipe; ``--folds`` included).
Prints the pooled outer-fold figures (AUROC, accuracy, ECE with 95% bootstrap intervals) of
the fold ensemble (with its out-of-fold temperature; and, as a diagnostic, after a second
temperature cross-fitted over the outer folds) beside the inner out-of-fold ones, and
writes ``nested_summary.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from medseg.data.splits import assign_folds
from medseg.metrics.calibration import classification_calibration
from medseg.metrics.classification import evaluate_classification
from medseg.tasks.classification import read_predictions
from medseg.uncertainty.calibration import fit_temperature

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "uncertainty"))
from study_utils import run_medseg  # noqa: E402  (the runner the example studies share)


def write_split(src: dict[str, np.ndarray], inner: np.ndarray, outer: np.ndarray,
                folder: Path) -> tuple[Path, Path]:
    """An ``.npz`` of the inner images (as ``train_*``; ``--folds`` pools train and val) and
    one of the held-out images (as ``test_*``)."""
    x = np.concatenate([src["train_images"], src["val_images"]])
    y = np.concatenate([src["train_labels"].reshape(-1), src["val_labels"].reshape(-1)])
    folder.mkdir(parents=True, exist_ok=True)
    tr, te = folder / "inner.npz", folder / "outer.npz"
    np.savez(tr, train_images=x[inner], train_labels=y[inner],
             val_images=x[inner[:0]], val_labels=y[inner[:0]])
    np.savez(te, test_images=x[outer], test_labels=y[outer])
    return tr, te


def run_outer(k: int, tr: Path, te: Path, work: Path, train_flags: list[str],
              tta: bool) -> None:
    model, log = work / f"outer_{k}" / "model", work / f"outer_{k}" / "log.txt"
    if not (model / "oof_metrics.json").exists():
        run_medseg(["train", "--task", "classification", "--dataset", str(tr), "--output",
                    str(model), *train_flags], log, threads=1)
    for name, extra in (("pred", []),) + ((("pred_tta", ["--tta"]),) if tta else ()):
        out = work / f"outer_{k}" / name
        if not (out / "predictions.csv").exists():
            run_medseg(["predict", "--model", str(model), "--input", str(te), "--split",
                        "test", "--output", str(out), *extra], log, threads=1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, flags = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MedMNIST .npz (train_* and val_*)")
    ap.add_argument("--work", required=True, help="folder for the outer folds' runs")
    ap.add_argument("--outer", type=int, default=5, help="outer folds")
    ap.add_argument("--seed", type=int, default=1, help="seed of the outer split")
    ap.add_argument("--parallel", type=int, default=1, help="outer folds run at once")
    ap.add_argument("--tta", action="store_true", help="also score the ensemble with --tta")
    a = ap.parse_args(argv)
    work = Path(a.work)
    src = dict(np.load(a.data))
    y = np.concatenate([src["train_labels"].reshape(-1), src["val_labels"].reshape(-1)])
    ids = [str(i) for i in range(len(y))]
    fold_of = assign_folds(ids, a.outer, a.seed, strata=[int(v) for v in y])
    folds = np.array([fold_of[i] for i in ids])
    jobs = []
    for k in range(a.outer):
        outer, inner = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        tr, te = write_split(src, inner, outer, work / f"outer_{k}")
        jobs.append((k, tr, te, outer))
    with ThreadPoolExecutor(a.parallel) as pool:
        list(pool.map(lambda j: run_outer(j[0], j[1], j[2], work, flags, a.tta), jobs))

    summary: dict[str, object] = {"data": a.data, "train_flags": flags, "outer": a.outer,
                                  "seed": a.seed}
    labels = np.concatenate([y[outer] for *_, outer in jobs])
    for name in ("pred",) + (("pred_tta",) if a.tta else ()):
        parts = [read_predictions(work / f"outer_{k}" / name)[2] for k, *_ in jobs]
        probs = np.concatenate(parts)
        m = evaluate_classification(probs, labels, "single", n_boot=1000, seed=0)
        # diagnostic: a second temperature on the ensemble's log-probabilities, fitted on the
        # other outer folds (cross-fitted) -- below 1 means the ensemble is under-confident
        refit, second = [], []
        for k, *_ in jobs:
            rest = [i for i, *_ in jobs if i != k]
            z = torch.from_numpy(np.concatenate([parts[i] for i in rest])).clamp_min(1e-12).log()
            t = fit_temperature(z, torch.from_numpy(np.concatenate(
                [y[jobs[i][3]] for i in rest])).long())
            second.append(t)
            refit.append(torch.softmax(torch.log(torch.from_numpy(parts[k]).clamp_min(1e-12)) / t,
                                       1).numpy())
        ece_refit = classification_calibration(np.concatenate(refit), labels, "single")["ece"]
        summary[name] = {"auroc": m["macro"]["auroc"], "auroc_ci": m["ci"]["macro"]["auroc"],
                         "accuracy": m["macro"]["accuracy"],
                         "accuracy_ci": m["ci"]["macro"]["accuracy"],
                         "ece": m["calibration"]["ece"], "n": int(len(labels)),
                         "second_temperature_per_outer_fold": second,
                         "ece_after_second_temperature (cross-fitted)": ece_refit}
    inner = []
    for k, *_ in jobs:
        inner.append(json.loads((work / f"outer_{k}" / "model" / "oof_metrics.json")
                                .read_text()))
    summary["inner_out_of_fold"] = inner
    (work / "nested_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "inner_out_of_fold"},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
