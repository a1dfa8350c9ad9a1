"""The out-of-fold estimate of a K-fold run: every case predicted by the model that never saw it.

Each fold member writes ``oof.json`` (its validation rows, from the task's
:meth:`~medseg.tasks.base.TaskTrainer.out_of_fold`) with its best checkpoint; when all folds are
complete :func:`write_out_of_fold` joins them in the top model folder:

* classification: ``oof_predictions.csv`` (``id, fold, p_<class>..., label``) and
  ``oof_metrics.json`` (the evaluation of :func:`medseg.metrics.classification
  .evaluate_classification` with 95% bootstrap intervals), and the folder's
  ``calibration.json``: the temperature fitted on the out-of-fold logits (the fold ensemble's
  predictions use it);
* segmentation / instances: ``oof_metrics.csv`` (Dice per case and class) and
  ``oof_metrics.json`` (mean per class with a 95% bootstrap interval over cases).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.io.atomic import atomic_write_text
from medseg.metrics.aggregate import bootstrap_mean_ci, json_safe

OOF_NAME = "oof.json"


def _rows(out: Path, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        doc = json.loads((out / name / OOF_NAME).read_text())
        rows += [{**r, "fold": int(doc["fold"])} for r in doc["rows"]]
    return rows


def write_out_of_fold(out: Path, names: list[str], task: str,
                      group_regex: str | None = None) -> str:
    """Join the folds' ``oof.json`` into the top folder's estimate; returns a one-line summary.

    ``group_regex`` (``data.group_regex``): the intervals resample subjects, not cases (the
    folds keep each subject in one fold already; :func:`bootstrap_mean_ci`,
    :func:`medseg.metrics.aggregate.bootstrap_ci`)."""
    from medseg.model_folder import ModelFolder

    rows = _rows(out, names)
    if not rows:
        return "no out-of-fold rows (the task has no per-case estimate)"
    plan = ModelFolder.open(out / names[0]).plan
    if task == "classification":
        return _classification(out, rows, plan, _subjects(rows, group_regex))
    return _per_case(out, rows, _subjects(rows, group_regex))


def _subjects(rows: list[dict[str, Any]], group_regex: str | None) -> list[str] | None:
    """The subject of each row's case id (``data.group_regex``); ``None`` without a regex."""
    from medseg.data.splits import subject_of

    return [subject_of(str(r["id"]), group_regex) for r in rows] if group_regex else None


def _interval(groups: list[str] | None) -> str:
    return (f"95% percentile bootstrap over subjects ({len(set(groups))}, data.group_regex; "
            "1000)" if groups else "95% percentile bootstrap over cases (1000)")


def _classification(out: Path, rows: list[dict[str, Any]], plan: Any,
                    groups: list[str] | None = None) -> str:
    from medseg.metrics.classification import evaluate_classification
    from medseg.training.calibration import CalibrationSet, calibrate, write_calibration
    from medseg.uncertainty.calibration import observed_elements

    single = plan["label_task"] == "single"
    names = list(plan.class_names)
    logits = torch.tensor([r["logits"] for r in rows], dtype=torch.float64)
    labels = np.array([r["label"] for r in rows])
    probs = (torch.softmax(logits, 1) if single else torch.sigmoid(logits)).numpy()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "fold", *[f"p_{n}" for n in names], "label"])
    for r, p in zip(rows, probs, strict=True):
        w.writerow([r["id"], r["fold"], *[f"{v:.6f}" for v in p],
                    r["label"] if single else ";".join(str(int(v)) for v in r["label"])])
    atomic_write_text(out / "oof_predictions.csv", buf.getvalue())
    task = "single" if single else "multi"
    res = evaluate_classification(probs, labels, task, names, n_boot=1000, seed=0,
                                  clusters=groups)
    atomic_write_text(out / "oof_metrics.json", json.dumps(
        {"estimate": "out-of-fold", "folds": len({r["fold"] for r in rows}),
         "n_cases": len(rows), "interval": _interval(groups), **json_safe(res)}, indent=2))
    kind = "softmax" if single else "sigmoid"
    z, y = observed_elements(logits, torch.from_numpy(labels), kind=kind)
    doc = calibrate(CalibrationSet(z, y, kind, f"the out-of-fold predictions ({len(rows)} "
                                   "image(s))", len(rows)))
    doc["source"] = "out-of-fold"  # single fold models' logits (the model card reads it)
    write_calibration(out, doc, overwrite=True)
    decision = _decision(out, logits, doc["temperature"], labels, single, names)
    m, ci = res["macro"], res.get("ci", {}).get("macro", {})
    parts = []
    for key in ("auroc", "accuracy"):
        if m.get(key) is not None:
            lo, hi = ci.get(key, (None, None))
            parts.append(f"{key} {m[key]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None
                                                  else ""))
    text = ", ".join(parts) + f"; temperature {doc['temperature']:.3f}"
    if decision:
        text += "; thresholds " + ", ".join(f"{k} {v:.3f}"
                                            for k, v in decision["thresholds"].items())
    return text


def _decision(out: Path, logits: torch.Tensor, temperature: float, labels: np.ndarray,
              single: bool, names: list[str]) -> dict[str, Any] | None:
    """``decision.json``: the operating point of ``train.threshold`` on the out-of-fold
    probabilities at ``temperature`` — binary single-label (class 1) or every label. The
    temperature is stored with the thresholds, so a later ``medseg calibrate`` keeps the operating
    point (:func:`medseg.tasks.classification.model_decision`)."""
    from medseg.metrics.thresholds import choose_threshold
    from medseg.model_folder import ModelFolder

    cfg = ModelFolder.open(out / "fold_0").config()
    rule, _, target = cfg.train.threshold.partition(":")
    if single and len(names) != 2:
        return None  # multi-class: the most probable class
    z = logits / temperature
    probs = (torch.softmax(z, 1) if single else torch.sigmoid(z)).numpy()
    chosen = {}
    if single:
        chosen[names[1]] = choose_threshold(probs[:, 1], labels == 1, rule,
                                            float(target) if target else None)
    else:
        for k, n in enumerate(names):
            keep = labels[:, k] >= 0
            y = labels[keep, k]
            if y.size and 0 < y.sum() < y.size:
                chosen[n] = choose_threshold(probs[keep, k], y, rule,
                                             float(target) if target else None)
            else:
                chosen[n] = {"threshold": 0.5, "sensitivity": None, "specificity": None,
                             "youden": None}
    doc = {"rule": cfg.train.threshold, "chosen_on": "out-of-fold probabilities after "
           "temperature scaling", "n_cases": int(len(labels)),
           "temperature": float(temperature),
           "thresholds": {n: c["threshold"] for n, c in chosen.items()},
           "operating_points": chosen}
    atomic_write_text(out / "decision.json", json.dumps(json_safe(doc), indent=2))
    return doc


def _per_case(out: Path, rows: list[dict[str, Any]], groups: list[str] | None = None) -> str:
    keys = [k for k in rows[0] if k.startswith("dice_")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "fold", *keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in ["id", "fold", *keys]})
    atomic_write_text(out / "oof_metrics.csv", buf.getvalue())
    summary = {}
    for k in keys:
        v = np.array([np.nan if r[k] is None else float(r[k]) for r in rows])
        lo, hi = bootstrap_mean_ci(v, groups=groups)
        summary[k] = {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                      "ci95": [lo, hi], "n": int(np.isfinite(v).sum())}
    atomic_write_text(out / "oof_metrics.json", json.dumps(
        {"estimate": "out-of-fold", "folds": len({r["fold"] for r in rows}),
         "n_cases": len(rows), "interval": _interval(groups),
         "per_class": json_safe(summary)}, indent=2))
    return ", ".join(f"{k[5:]} {s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
                     for k, s in summary.items() if s["mean"] is not None)
