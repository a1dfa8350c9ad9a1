"""One table row per ``medseg train --folds K`` run: the out-of-fold estimate, honestly.

Usage::

    python examples/medmnist/cv_summary.py runs/breast_base runs/breast_aug ... \
        [--tta --data ../shared/data/cls_breastmnist/breastmnist_trainval.npz]

For each model folder it reads the folds' out-of-fold logits (``fold_<k>/oof.json``) and
prints AUROC and accuracy (most probable class) with 95% bootstrap intervals, balanced
accuracy, the ECE before temperature scaling, and two figures that are *cross-fitted* over the
folds so that nothing is tuned on the cases it scores: the ECE after temperature scaling
(the temperature of fold ``k``'s cases fitted on the other folds' out-of-fold logits) and the
accuracy at the Youden threshold (chosen on the other folds' tempered probabilities). The
in-sample figures that ``medseg train`` writes (``calibration.json``, ``decision.json``) fit
and score on the same cases and are slightly optimistic.

``--tta`` recomputes each fold's out-of-fold logits from its best checkpoint with the
flip-averaged probabilities (the flips its training augmentation used), so the row shows
the effect of ``medseg predict --tta`` on the same models. Runs on the same folds (same
cases, same ``data.split_seed``) are also compared with the first run given: the change in
AUROC and accuracy with a paired bootstrap interval over the cases. The CPU time is read from
``<folder>.log`` when a ``/usr/bin/time`` line (``CPU user U sys S wall W``) is in it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from medseg.data.classification import load_images, open_classification
from medseg.metrics.aggregate import bootstrap_mean_ci
from medseg.metrics.calibration import classification_calibration
from medseg.metrics.classification import evaluate_classification
from medseg.metrics.thresholds import choose_threshold
from medseg.model_folder import ModelFolder
from medseg.tasks.classification import classifier_logits, preprocess_cls_images, tta_flip_axes
from medseg.uncertainty.calibration import fit_ensemble_temperature, fit_temperature


def fold_rows(run: Path, data: Path | None, tta: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """``(logits (R, N, K), labels (N,), fold (N,), class names, ids)`` of the out-of-fold
    cases, sorted by id; ``R`` models scored each case (the repeats of ``--folds K
    --ensemble R``, 1 otherwise), in the order of the folder's members."""
    logits, labels, folds, ids = [], [], [], []
    names: list[str] = []
    for member in ModelFolder.open(run).plan.members:
        sub = run / member
        doc = json.loads((sub / "oof.json").read_text())
        rows = doc["rows"]
        folder = ModelFolder.open(sub)
        names = list(folder.plan.class_names)
        if tta:
            ds = open_classification(data)
            pos = {cid: k for k, cid in enumerate(ds.ids)}
            part = ds.subset(indices=[pos[r["id"]] for r in rows])
            x = preprocess_cls_images(list(load_images(part)), folder.plan["image_size"],
                                      [r["id"] for r in rows])
            net, dev = folder.load_network("best", "cpu")
            axes = tta_flip_axes(folder.config(), folder.plan.spatial_dims)
            z = classifier_logits(net, x, dev, tta=axes).double().numpy()
        else:
            z = np.array([r["logits"] for r in rows], dtype=np.float64)
        logits.append(z)
        labels += [int(r["label"]) for r in rows]
        folds += [int(doc["fold"])] * len(rows)
        ids += [r["id"] for r in rows]
    z, y, f = np.concatenate(logits), np.array(labels), np.array(folds)
    by_id: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        by_id.setdefault(cid, []).append(i)
    keys = sorted(by_id)
    rows = np.array([by_id[k] for k in keys])  # (N, R): every case scored R times
    return (np.transpose(z[rows], (1, 0, 2)), y[rows[:, 0]], f[rows[:, 0]], names, keys)


def paired_delta(p_a: np.ndarray, p_b: np.ndarray, labels: np.ndarray, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """AUROC and accuracy of run ``b`` minus run ``a`` on the same cases, with a 95% paired
    bootstrap interval (both runs scored on the same resampled cases)."""
    from medseg.metrics.classification import auroc

    def stats(idx: np.ndarray) -> np.ndarray:
        y = labels[idx]
        acc = [np.mean(np.argmax(p[idx], 1) == y) for p in (p_a, p_b)]
        auc = [auroc(p[idx, 1], y) for p in (p_a, p_b)]
        return np.array([auc[1] - auc[0], acc[1] - acc[0]])

    rng = np.random.default_rng(seed)
    point = stats(np.arange(len(labels)))
    boots = np.array([stats(rng.integers(0, len(labels), len(labels))) for _ in range(n_boot)])
    lo, hi = np.nanquantile(boots, 0.025, 0), np.nanquantile(boots, 0.975, 0)
    return {k: (float(point[i]), float(lo[i]), float(hi[i]))
            for i, k in enumerate(("auroc", "accuracy"))}


def tempered(logits: np.ndarray, t: float) -> np.ndarray:
    """The members' ``(R, N, K)`` logits tempered, then their probabilities averaged."""
    return torch.softmax(torch.from_numpy(logits) / t, -1).mean(0).numpy()


def cross_fitted(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Tempered probabilities and hard labels at the Youden threshold, fold ``k``'s both fitted
    on the other folds (one temperature shared by the ``R`` models of a case, as
    ``medseg train`` fits it)."""
    probs = np.zeros(logits.shape[1:])
    hard = np.zeros(len(labels), dtype=np.int64)
    for k in np.unique(folds):
        out, inn = folds != k, folds == k
        z_out, y_out = torch.from_numpy(logits[:, out]), torch.from_numpy(labels[out])
        t = fit_temperature(z_out[0], y_out) if len(logits) == 1 else \
            fit_ensemble_temperature(z_out, y_out)
        p_out = tempered(logits[:, out], t)
        th = choose_threshold(p_out[:, 1], labels[out] == 1, "youden")["threshold"]
        probs[inn] = tempered(logits[:, inn], t)
        hard[inn] = (probs[inn, 1] >= th).astype(np.int64)
    return probs, hard


def cpu_time(run: Path) -> str:
    """``user+sys`` CPU seconds and wall seconds from ``<run>.log`` (a ``CPU user U sys S wall
    W`` line) or ``<run>.out`` (``/usr/bin/time -v``), or ``-``."""
    log, out = run.with_suffix(".log"), run.with_suffix(".out")
    m = re.search(r"CPU user ([\d.]+) sys ([\d.]+) wall ([\d.]+)",
                  log.read_text()) if log.is_file() else None
    if m:
        return f"{float(m[1]) + float(m[2]):.0f} / {float(m[3]):.0f}"
    text = out.read_text() if out.is_file() else ""
    u = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sy = re.search(r"System time \(seconds\): ([\d.]+)", text)
    w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not (u and sy and w):
        return "-"
    wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w[1].split(":"))))
    return f"{float(u[1]) + float(sy[1]):.0f} / {wall:.0f}"


def row(run: Path, data: Path | None, tta: bool, ref: tuple[np.ndarray, list[str]] | None
        ) -> tuple[str, tuple[np.ndarray, list[str]]]:
    """One Markdown table row, and this run's ``(probabilities, ids)``."""
    logits, labels, folds, names, ids = fold_rows(run, data, tta)
    probs = tempered(logits, 1.0)
    res = evaluate_classification(probs, labels, "single", names, n_boot=1000, seed=0)
    m, ci = res["macro"], res["ci"]["macro"]
    p_t, hard = cross_fitted(logits, labels, folds)
    ece_after = classification_calibration(p_t, labels, "single", names)["ece"]
    correct = (hard == labels).astype(np.float64)
    lo, hi = bootstrap_mean_ci(correct)

    def iv(key: str) -> str:
        return f"{m[key]:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]"

    delta = "-"
    if ref is not None and ref[1] == ids:
        d = paired_delta(ref[0], probs, labels)
        delta = " / ".join(f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" for v in d.values())
    name = run.name + (" + TTA" if tta else "")
    return (f"| {name} | {iv('auroc')} | {iv('accuracy')} | {m['balanced_accuracy']:.3f} | "
            f"{correct.mean():.3f} [{lo:.3f}, {hi:.3f}] | {res['calibration']['ece']:.3f} | "
            f"{ece_after:.3f} | {delta} | "
            f"{cpu_time(run) if not tta else '(same models)'} |"), (probs, ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="medseg train --folds K model folders")
    ap.add_argument("--tta", action="store_true", help="also rows with test-time flips")
    ap.add_argument("--data", type=Path, help="the training .npz (needed with --tta)")
    a = ap.parse_args()
    if a.tta and a.data is None:
        ap.error("--tta needs --data")
    print("| run | AUROC [95% CI] | accuracy (argmax) [95% CI] | balanced acc. | "
          "accuracy at cross-fitted Youden threshold [95% CI] | ECE | ECE after T "
          "(cross-fitted) | change in AUROC / accuracy vs the first run [paired 95% CI] | "
          "CPU s (user+sys) / wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref = None
    for run in a.runs:
        text, mine = row(run, a.data, False, ref)
        ref = ref or mine
        print(text)
        if a.tta:
            print(row(run, a.data, True, ref)[0])


if __name__ == "__main__":
    main()
