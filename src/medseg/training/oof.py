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

With repeated folds (``train.folds`` K and ``train.ensemble`` R) every case has R rows, one
per model that did not train on it: classification averages their probabilities (the way
prediction averages members) and fits one temperature shared by them on that average
(:meth:`~medseg.training.calibration.CalibrationSet.from_members`); segmentation reports each
case's Dice averaged over the R models (``"per_case"`` in ``oof_metrics.json`` says so).
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


def _rows(out: Path, names: list[str]) -> list[list[dict[str, Any]]]:
    """The out-of-fold rows grouped by case id (first-seen order): one row per model that
    did not train on the case (one per repeat of its fold)."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        doc = json.loads((out / name / OOF_NAME).read_text())
        for r in doc["rows"]:
            cases.setdefault(str(r["id"]), []).append({**r, "fold": int(doc["fold"])})
    return list(cases.values())


def write_out_of_fold(out: Path, names: list[str], task: str,
                      group_regex: str | None = None) -> str:
    """Join the folds' ``oof.json`` into the top folder's estimate; returns a one-line summary.

    ``group_regex`` (``data.group_regex``): the intervals resample subjects, not cases (the
    folds keep each subject in one fold already; :func:`bootstrap_mean_ci`,
    :func:`medseg.metrics.aggregate.bootstrap_ci`)."""
    from medseg.model_folder import ModelFolder

    cases = _rows(out, names)
    if not cases:
        return "no out-of-fold rows (the task has no per-case estimate)"
    repeats = {len(c) for c in cases}
    if len(repeats) != 1 or len({r["fold"] for c in cases for r in c}) * repeats.pop() != len(
            names):
        raise ValueError(f"the out-of-fold rows of {out} do not cover every case once per "
                         "repeat of its fold")
    plan = ModelFolder.open(out / names[0]).plan
    heads = [c[0] for c in cases]
    if task == "classification":
        return _classification(out, cases, plan, _subjects(heads, group_regex))
    return _per_case(out, cases, _subjects(heads, group_regex))


def _subjects(rows: list[dict[str, Any]], group_regex: str | None) -> list[str] | None:
    """The subject of each row's case id (``data.group_regex``); ``None`` without a regex."""
    from medseg.data.splits import subject_of

    return [subject_of(str(r["id"]), group_regex) for r in rows] if group_regex else None


def _interval(groups: list[str] | None) -> str:
    return (f"95% percentile bootstrap over subjects ({len(set(groups))}, data.group_regex; "
            "1000)" if groups else "95% percentile bootstrap over cases (1000)")


def _classification(out: Path, cases: list[list[dict[str, Any]]], plan: Any,
                    groups: list[str] | None = None) -> str:
    from medseg.metrics.classification import evaluate_classification
    from medseg.training.calibration import CalibrationSet, calibrate, write_calibration

    single = plan["label_task"] == "single"
    names = list(plan.class_names)
    rows = [c[0] for c in cases]
    # (R, N, C): the R models that did not train on each case, in repeat order
    member_logits = torch.tensor([[c[r]["logits"] for c in cases] for r in range(len(cases[0]))],
                                 dtype=torch.float64)
    labels = np.array([r["label"] for r in rows])
    act = torch.softmax(member_logits, -1) if single else torch.sigmoid(member_logits)
    probs = act.mean(0).numpy()
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
    source = f"the out-of-fold predictions ({len(rows)} image(s)" + (
        f", {len(member_logits)} models each)" if len(member_logits) > 1 else ")")
    if single:
        y = torch.from_numpy(labels).long()
        cs = CalibrationSet.from_members(member_logits, y, kind, source, len(rows))
    else:  # missing labels (-1) dropped element-wise, the same elements for every member
        keep = torch.from_numpy(labels >= 0)
        cs = CalibrationSet.from_members(member_logits[:, keep], torch.from_numpy(
            labels)[keep].long(), kind, source, len(rows))
    doc = calibrate(cs)
    doc["source"] = "out-of-fold"  # fold models' logits (the model card reads it)
    write_calibration(out, doc, overwrite=True)
    decision = _decision(out, member_logits, doc["temperature"], labels, single, names)
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


def _decision(out: Path, member_logits: torch.Tensor, temperature: float, labels: np.ndarray,
              single: bool, names: list[str]) -> dict[str, Any] | None:
    """``decision.json``: the operating point of ``train.threshold`` on the out-of-fold
    probabilities at ``temperature`` (``member_logits`` ``(R, N, C)``: each model tempered,
    then averaged) — binary single-label (class 1) or every label. The
    temperature is stored with the thresholds, so a later ``medseg calibrate`` keeps the operating
    point (:func:`medseg.tasks.classification.model_decision`)."""
    from medseg.metrics.thresholds import choose_threshold
    from medseg.model_folder import ModelFolder

    cfg = ModelFolder.open(out / "fold_0").config()
    rule, _, target = cfg.train.threshold.partition(":")
    if single and len(names) != 2:
        return None  # multi-class: the most probable class
    z = member_logits / temperature
    probs = (torch.softmax(z, -1) if single else torch.sigmoid(z)).mean(0).numpy()
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


def _per_case(out: Path, cases: list[list[dict[str, Any]]],
              groups: list[str] | None = None) -> str:
    keys = [k for k in cases[0][0] if k.startswith("dice_")]
    rows = []
    for c in cases:  # one row per case: its Dice averaged over the models that did not see it
        row = dict(c[0])
        for k in keys:
            v = [float(r[k]) for r in c if r.get(k) is not None]
            row[k] = float(np.mean(v)) if v else None
        rows.append(row)
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
         "per_case": "Dice of the one model that did not train on the case" if len(
             cases[0]) == 1 else f"Dice averaged over the {len(cases[0])} models (seeds) that "
         "did not train on the case",
         "per_class": json_safe(summary)}, indent=2))
    return ", ".join(f"{k[5:]} {s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
                     for k, s in summary.items() if s["mean"] is not None)
