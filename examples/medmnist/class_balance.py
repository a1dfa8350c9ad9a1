"""Do the stored operating points hold under another class balance?

A test population can have other class frequencies than the training data (PneumoniaMNIST's
official test split has 62.5% pneumonia, the train/val images here 88%). Sensitivity and
specificity do not depend on the class balance, so a threshold chosen for them (Youden's J,
``medseg train --folds``'s default ``train.threshold``) keeps them under a pure change of balance;
accuracy and calibration do depend on it. This script measures that on the predictions of
``nested_cv.py`` (every image scored once by a fold ensemble that never saw it): it draws
image sets with a chosen share of positives (without replacement, ``--draws`` times) and
reports, for each share, the accuracy, sensitivity and specificity of the stored decisions
(the ``prediction`` column that ``medseg predict`` wrote with the model's ``decision.json``)
and of the most probable class, and the ECE of the probabilities.

Usage::

    python examples/medmnist/class_balance.py --work runs/nested_pneumonia \\
        --positive 0.4 0.625 0.742 --n 624

What it cannot show: a shift of the images themselves (other scanners, other patients), which
no re-weighting of the classes corrects.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from medseg.metrics.calibration import expected_calibration_error


def load(work: Path, name: str = "pred") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p(class 1), stored decision 0/1, label)`` of every outer-fold image of a
    ``nested_cv.py`` work folder (binary single-label)."""
    p, d, y = [], [], []
    for outer in sorted(work.glob("outer_*"), key=lambda q: int(q.name.split("_")[1])):
        rows = list(csv.DictReader(open(outer / name / "predictions.csv", newline="")))
        labels = np.load(outer / "outer.npz")["test_labels"].reshape(-1)
        if len(rows) != len(labels):
            raise SystemExit(f"{outer}: {len(rows)} predictions for {len(labels)} images")
        p += [float(r["p_1"]) for r in rows]
        d += [int(r["prediction"]) for r in rows]
        y += labels.tolist()
    if not p:
        raise SystemExit(f"no outer_* folders with {name}/predictions.csv in {work}")
    return np.array(p), np.array(d), np.array(y)


def scores(p: np.ndarray, d: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy / sensitivity / specificity of the stored decisions and of the most probable
    class, and the top-label ECE (15 equal-width bins)."""
    pos = y == 1
    argmax = (p >= 0.5).astype(int)
    conf = np.maximum(p, 1 - p)
    return {"accuracy_stored": float((d == y).mean()),
            "sensitivity_stored": float((d[pos] == 1).mean()),
            "specificity_stored": float((d[~pos] == 0).mean()),
            "accuracy_argmax": float((argmax == y).mean()),
            "ece": expected_calibration_error(conf, (argmax == y).astype(float))[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="the --work folder of nested_cv.py")
    ap.add_argument("--positive", type=float, nargs="+", required=True,
                    help="shares of class 1 to draw")
    ap.add_argument("--n", type=int, default=None,
                    help="images per draw (default: as many as every share allows)")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="pred", help="prediction folder in each outer fold")
    a = ap.parse_args(argv)
    p, d, y = load(Path(a.work), a.name)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    most = min(min(n_pos / f, n_neg / (1 - f)) for f in a.positive)
    n = int(most) if a.n is None else min(a.n, int(most))
    if a.n is not None and n < a.n:
        print(f"note: {a.n} images per draw are more than the shares allow; drawing {n}")
    rng = np.random.default_rng(a.seed)
    out = {"work": a.work, "n_images": int(len(y)), "share_in_pool": float(y.mean()),
           "pool": scores(p, d, y), "n_per_draw": n, "draws": a.draws, "shares": {}}
    idx_pos, idx_neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for f in a.positive:
        k = int(round(f * n))
        got = []
        for _ in range(a.draws):
            i = np.concatenate([rng.choice(idx_pos, k, replace=False),
                                rng.choice(idx_neg, n - k, replace=False)])
            got.append(scores(p[i], d[i], y[i]))
        out["shares"][str(f)] = {key: {"mean": float(np.mean([g[key] for g in got])),
                                       "range95": [float(v) for v in np.percentile(
                                           [g[key] for g in got], [2.5, 97.5])]}
                                 for key in got[0]}
    print(f"{len(y)} images, {y.mean():.3f} positive; draws of {n} images, {a.draws} each")
    keys = list(out["pool"])
    print("| share of class 1 | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    print(f"| {y.mean():.3f} (the pool, every image) | "
          + " | ".join(f"{out['pool'][k]:.3f}" for k in keys) + " |")
    for f, s in out["shares"].items():
        print(f"| {float(f):.3f} | " + " | ".join(
            f"{s[k]['mean']:.3f} [{s[k]['range95'][0]:.3f}, {s[k]['range95'][1]:.3f}]"
            for k in keys) + " |")
    (Path(a.work) / "class_balance.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
