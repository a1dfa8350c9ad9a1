"""Classification metrics (E5) for single-label (T1) and multi-label (T2) outputs, NumPy only.

Inputs are probabilities ``(N, C)`` and labels: ``(N,)`` class indices (single-label) or
``(N, C)`` in {0, 1, -1} (multi-label; -1 = not annotated, excluded per class, T5).

Empty-case policy: a ratio whose denominator is zero is NaN (sensitivity without positives,
specificity without negatives, precision without predicted positives, F1 when TP + FP + FN = 0),
and AUROC is NaN when a class has no positive or no negative case. Macro averages skip NaN
classes (and are NaN when every class is NaN). In JSON output NaN is written as ``null``.

* :func:`auroc` — rank-based (Mann-Whitney U) area under the ROC curve, ties count 1/2.
* :func:`roc_curve` — ``(fpr, tpr, thresholds)``.
* :func:`confusion_matrix`, :func:`binary_counts`, :func:`binary_rates`.
* :func:`bootstrap_ci` — percentile bootstrap intervals, resampling cases (optionally within
  strata).
* :func:`evaluate_classification` — everything above in one JSON-serialisable dict;
  :func:`classification_case_rows` and :func:`write_classification_metrics` write
  ``metrics.json`` / ``metrics.csv``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.metrics.aggregate import bootstrap_ci, json_safe
from medseg.metrics.calibration import classification_calibration

MISSING = -1
#: Per-class metrics reported by :func:`evaluate_classification`.
CLASS_METRICS = ("auroc", "sensitivity", "specificity", "precision", "f1")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of a binary problem (Mann-Whitney U statistic).

    Equals the probability that a random positive scores higher than a random negative, ties
    counting 1/2.

    Args:
        scores: ``(N,)`` scores (higher = more likely positive).
        labels: ``(N,)`` in {0, 1}; entries equal to -1 are ignored (missing).

    Returns:
        The AUROC, or NaN when there is no positive or no negative case.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    keep = y != MISSING
    s, y = s[keep], y[keep].astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a binary problem: one point per distinct score, predicting ``score >= t``.

    Args:
        scores: ``(N,)`` scores.
        labels: ``(N,)`` in {0, 1}; -1 entries are ignored.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` for ``K`` distinct scores: thresholds
        decreasing from ``+inf`` (the point (0, 0)) to the lowest score (the point (1, 1)).
        With no negatives ``fpr`` is NaN, with no positives ``tpr`` is NaN. The trapezoid area
        under ``(fpr, tpr)`` equals :func:`auroc`.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    keep = y != MISSING
    s, y = s[keep], y[keep].astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=int)
    tp = np.r_[0, np.cumsum(y)[last]].astype(np.float64)
    fp = np.r_[0, np.cumsum(~y)[last]].astype(np.float64)
    n_pos, n_neg = tp[-1], fp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_pos if n_pos > 0 else np.full_like(tp, np.nan)
        fpr = fp / n_neg if n_neg > 0 else np.full_like(fp, np.nan)
    thresholds = np.r_[np.inf, s[last]]
    return fpr, tpr, thresholds


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class.

    Args:
        pred: ``(N,)`` predicted class indices.
        labels: ``(N,)`` true class indices.
        num_classes: ``C``.
    """
    p = np.asarray(pred, dtype=np.int64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"pred {p.shape} and labels {y.shape} differ in length")
    for name, a in (("pred", p), ("labels", y)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds values outside 0..{num_classes - 1}")
    return np.bincount(y * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def binary_counts(pred: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """``{"tp", "fp", "tn", "fn"}`` of binary predictions; labels equal to -1 are skipped."""
    p = np.asarray(pred).ravel().astype(bool)
    y = np.asarray(labels).ravel()
    keep = y != MISSING
    p, y = p[keep], y[keep].astype(bool)
    return {
        "tp": int(np.sum(p & y)), "fp": int(np.sum(p & ~y)),
        "tn": int(np.sum(~p & ~y)), "fn": int(np.sum(~p & y)),
    }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def binary_rates(counts: Mapping[str, int]) -> dict[str, float]:
    """Sensitivity, specificity, precision and F1 from :func:`binary_counts` (NaN on 0/0)."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


# ------------------------------------------------------------------------------ evaluation


def _check_inputs(probs: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, ...]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    n, c = p.shape
    if task == "single":
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.shape != (n,):
            raise ValueError(f"single-label labels must be ({n},), got shape {y.shape}")
        if n and (y.min() < 0 or y.max() >= c):
            raise ValueError(f"labels must be class indices 0..{c - 1}")
        return p, y.astype(np.int64)
    if task == "multi":
        if y.shape != (n, c):
            raise ValueError(f"multi-label labels must be ({n}, {c}), got shape {y.shape}")
        if np.setdiff1d(np.unique(y), [MISSING, 0, 1]).size:
            raise ValueError("multi-label labels must be 0, 1 or -1 (missing)")
        return p, y.astype(np.int64)
    raise ValueError(f"task must be 'single' or 'multi', got {task!r}")


def _thresholds(thresholds: float | Sequence[float] | None, task: str, c: int) -> np.ndarray | None:
    if task == "single":
        if thresholds is None:
            return None
        t = np.asarray(thresholds, dtype=np.float64).ravel()
        if c != 2 or t.size != 1:
            raise ValueError(
                "single-label thresholds: one value (on the probability of class 1) for a "
                "binary problem only; leave it None for argmax"
            )
        return t
    if thresholds is None:
        return np.full(c, 0.5)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if t.size == 1:
        return np.full(c, float(t[0]))
    if t.size != c:
        raise ValueError(f"need one threshold per label ({c}), got {t.size}")
    return t


def predict_classes(
    probs: np.ndarray, task: str, thresholds: float | Sequence[float] | None = None
) -> np.ndarray:
    """Hard predictions: ``(N,)`` argmax (or ``p_1 >= t`` for a binary single-label problem with
    a threshold) or ``(N, C)`` ``p_c >= t_c`` in {0, 1} for multi-label (default ``t_c = 0.5``).
    """
    p = np.asarray(probs, dtype=np.float64)
    t = _thresholds(thresholds, task, p.shape[1])
    if task == "single":
        if t is None:
            return np.argmax(p, axis=1).astype(np.int64)
        return (p[:, 1] >= t[0]).astype(np.int64)
    return (p >= t[None, :]).astype(np.int64)


def _one_vs_rest(y: np.ndarray, task: str, c: int) -> np.ndarray:
    """``(N, C)`` binary targets with -1 for missing."""
    if task == "single":
        return (y[:, None] == np.arange(c)[None, :]).astype(np.int64)
    return y


def _point_metrics(p: np.ndarray, y: np.ndarray, task: str, t: np.ndarray | None) -> np.ndarray:
    """Flat vector: per class (CLASS_METRICS) then macro (CLASS_METRICS) then accuracy,
    balanced accuracy."""
    c = p.shape[1]
    pred = predict_classes(p, task, None if t is None else t)
    target = _one_vs_rest(y, task, c)
    pred_bin = _one_vs_rest(pred, task, c) if task == "single" else pred
    per = np.empty((c, len(CLASS_METRICS)))
    for k in range(c):
        rates = binary_rates(binary_counts(pred_bin[:, k], target[:, k]))
        per[k] = [auroc(p[:, k], target[:, k])] + [rates[m] for m in CLASS_METRICS[1:]]
    with np.errstate(invalid="ignore"):
        macro = [_nanmean(per[:, j]) for j in range(len(CLASS_METRICS))]
    if task == "single":
        acc = float(np.mean(pred == y)) if len(y) else float("nan")
        present = [k for k in range(c) if np.any(y == k)]
        bal = _nanmean([per[k, 1] for k in present])
    else:
        obs = target != MISSING
        acc = float(np.mean(pred[obs] == target[obs])) if obs.any() else float("nan")
        bal = _nanmean([(per[k, 1] + per[k, 2]) / 2 for k in range(c)])
    return np.concatenate([per.ravel(), macro, [acc, bal]])


def _json_num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def evaluate_classification(
    probs: np.ndarray,
    labels: np.ndarray,
    task: str,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stratified: bool = False,
    clusters: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All classification metrics with bootstrap confidence intervals.

    Args:
        probs: ``(N, C)`` probabilities (softmax rows for single-label, sigmoids for multi).
        labels: ``(N,)`` class indices (single) or ``(N, C)`` in {0, 1, -1} (multi; -1 missing).
        task: ``"single"`` or ``"multi"``.
        class_names: ``C`` names (default ``"0" .. "C-1"``).
        thresholds: Single-label: None (argmax) or one threshold on ``p_1`` (binary only).
            Multi-label: one value or one per label (default 0.5).
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Bootstrap seed.
        level: Interval coverage.
        stratified: Resample within each true class (single-label only).
        clusters: ``N`` subject ids: resample subjects instead of cases
            (:func:`bootstrap_ci`); wins over ``stratified``.

    Returns:
        A JSON-serialisable dict (NaN written as ``None``)::

            {"task", "class_names", "n_cases", "thresholds",
             "per_class": {name: {"auroc", "sensitivity", "specificity", "precision", "f1",
                                  "n_positive", "n_negative", "n_missing"}},
             "macro": {"auroc", ..., "f1", "accuracy", "balanced_accuracy"},
             "confusion": {"labels": names, "matrix": [[...]]}          # single-label
                        | {name: {"tp", "fp", "tn", "fn"}},               # multi-label
             "calibration": {"ece", "mce", "brier", "reliability", ...},  # metrics.calibration
             "ci": {"level", "n_boot", "seed", "stratified",
                    "per_class": {name: {metric: [low, high]}}, "macro": {metric: [low, high]}}}

        ``accuracy`` is the fraction of correct cases (single) or of correct observed entries
        (multi); ``balanced_accuracy`` the mean sensitivity over the classes present (single)
        or the mean of (sensitivity + specificity) / 2 over labels (multi).
    """
    p, y = _check_inputs(probs, labels, task)
    n, c = p.shape
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    t = _thresholds(thresholds, task, c)
    point = _point_metrics(p, y, task, t)
    nm = len(CLASS_METRICS)
    target = _one_vs_rest(y, task, c)
    pred = predict_classes(p, task, t)
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        d: dict[str, Any] = {m: _json_num(point[k * nm + j]) for j, m in enumerate(CLASS_METRICS)}
        d["n_positive"] = int(np.sum(target[:, k] == 1))
        d["n_negative"] = int(np.sum(target[:, k] == 0))
        d["n_missing"] = int(np.sum(target[:, k] == MISSING))
        per_class[name] = d
    macro = {m: _json_num(point[c * nm + j]) for j, m in enumerate(CLASS_METRICS)}
    macro["accuracy"] = _json_num(point[c * nm + nm])
    macro["balanced_accuracy"] = _json_num(point[c * nm + nm + 1])
    if task == "single":
        confusion: dict[str, Any] = {
            "labels": names, "matrix": confusion_matrix(pred, y, c).tolist(),
        }
    else:
        confusion = {name: binary_counts(pred[:, k], y[:, k]) for k, name in enumerate(names)}
    result: dict[str, Any] = {
        "task": task,
        "class_names": names,
        "n_cases": int(n),
        "thresholds": None if t is None else [float(v) for v in t],
        "per_class": per_class,
        "macro": macro,
        "confusion": confusion,
        "calibration": json_safe(classification_calibration(p, y, task, names)),
    }
    if n_boot > 0 and n > 0:
        strat = y if (stratified and task == "single" and clusters is None) else None
        lo, hi = bootstrap_ci(
            lambda pp, yy: _point_metrics(pp, yy, task, t), p, y,
            n_boot=n_boot, seed=seed, level=level, stratify=strat, clusters=clusters,
        )
        ci_per = {
            name: {
                m: [_json_num(lo[k * nm + j]), _json_num(hi[k * nm + j])]
                for j, m in enumerate(CLASS_METRICS)
            }
            for k, name in enumerate(names)
        }
        keys = [*CLASS_METRICS, "accuracy", "balanced_accuracy"]
        ci_macro = {
            m: [_json_num(lo[c * nm + j]), _json_num(hi[c * nm + j])] for j, m in enumerate(keys)
        }
        result["ci"] = {
            "level": level, "n_boot": int(n_boot), "seed": int(seed),
            "stratified": strat is not None, "per_class": ci_per, "macro": ci_macro,
            "resampled": "subjects" if clusters is not None else "cases",
        }
    return result


def classification_case_rows(
    ids: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    task: str,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per case for ``metrics.csv``.

    Single-label rows: ``id, label, prediction, correct, p_<name>...``; multi-label rows:
    ``id, <name> (0/1/-1), pred_<name>, p_<name>`` per label.
    """
    p, y = _check_inputs(probs, labels, task)
    c = p.shape[1]
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    pred = predict_classes(p, task, thresholds)
    rows = []
    for i, case in enumerate(ids):
        row: dict[str, Any] = {"id": case}
        if task == "single":
            row.update(label=names[y[i]], prediction=names[pred[i]], correct=int(pred[i] == y[i]))
            row.update({f"p_{n}": float(p[i, k]) for k, n in enumerate(names)})
        else:
            for k, n in enumerate(names):
                row[n] = int(y[i, k])
                row[f"pred_{n}"] = int(pred[i, k])
                row[f"p_{n}"] = float(p[i, k])
        rows.append(row)
    return rows


def write_classification_metrics(
    out_dir: str | Path,
    result: Mapping[str, Any],
    per_case_rows: Sequence[Mapping[str, Any]],
) -> tuple[Path, Path]:
    """Write ``metrics.json`` (``{"summary": result, "cases": rows}``) and ``metrics.csv``
    (one row per case; columns in first-seen order) atomically into ``out_dir``.

    Returns:
        Paths of ``metrics.json`` and ``metrics.csv``.
    """
    from medseg.metrics.aggregate import write_metrics_pair

    doc = {"summary": json_safe(result), "cases": [json_safe(dict(r)) for r in per_case_rows]}
    cols: list[str] = []
    for r in per_case_rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in per_case_rows:
        writer.writerow({k: ("" if json_safe(v) is None else v) for k, v in r.items()})
    return write_metrics_pair(out_dir, doc, buf.getvalue())
