"""Instance segmentation metrics (T4): IoU matching, F1, AP (DSB2018 / StarDist), PQ.

Reference and prediction are instance label maps (0 background, any positive ids). The IoU of
every (reference, prediction) pair comes from one joint histogram of the two maps (no per-pair
mask loops). A match is a one-to-one pairing chosen by the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) among pairs with ``IoU >= t``: it maximises the
number of matches first and, among those, the summed IoU (StarDist's rule). For ``t >= 0.5``
the matching is unique anyway; below 0.5 greedy matching can lose matches, Hungarian cannot.

At a threshold ``t``, with TP matches, FP unmatched predictions and FN unmatched references:

* precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1 ``2TP / (2TP + FP + FN)``;
* ``ap`` — the DSB2018 / StarDist "average precision" ``TP / (TP + FP + FN)`` (a per-image
  score, not the area under a precision-recall curve);
* ``sq`` mean IoU of the matches, ``rq`` = F1, ``pq = sq * rq`` (panoptic quality);
* ``map`` — ``ap`` averaged over ``t = 0.50, 0.55, ..., 0.95``.

Empty-case policy (STYLE habit 11): both maps empty -> every score is 1.0 (nothing to find,
nothing wrongly found); exactly one empty -> every score is 0.0 (precision with no prediction and
recall with no reference are 0.0 too). ``sq`` with no match between two non-empty maps is 0.0.

:func:`coco_average_precision` adds a score-ranked AP (area under the interpolated
precision-recall curve, COCO style) when per-instance scores are known.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

#: ``0.50, 0.55, ..., 0.95`` (rounded, so IoU 0.6 passes t = 0.6 exactly).
MAP_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))
#: Per-case values reported by :func:`evaluate_instances` and summarised across cases.
INSTANCE_SUMMARY_KEYS = ("f1@0.5", "ap@0.5", "map", "pq@0.5", "sq@0.5", "precision@0.5",
                         "recall@0.5")


def _ids_and_index(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)``: the sorted ids of ``a`` with 0 (background) always first, and each
    voxel's position in them (flattened). Label maps of non-negative ids up to a few times
    their size (the usual case) are indexed by counting, in linear time; others by sorting."""
    flat = a.ravel()
    if flat.size and np.issubdtype(flat.dtype, np.integer) and int(flat.min()) >= 0 and \
            int(flat.max()) <= 4 * flat.size:
        present = np.bincount(flat) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return np.flatnonzero(present), lut[flat]
    ids, inv = np.unique(flat, return_inverse=True)
    # index 0 means background: 0 moved to the front (negative ids sort before it), or
    # prepended when the map has none
    other = ids != 0
    pos = np.zeros(ids.size, dtype=np.int64)
    pos[other] = np.arange(1, int(other.sum()) + 1)
    return np.concatenate([[0], ids[other]]), pos[inv.ravel()]


def iou_matrix(ref: np.ndarray, pred: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every reference instance with every predicted instance.

    Args:
        ref: ``(*spatial)`` integer instance map, 0 background.
        pred: ``(*spatial)`` integer instance map of the same shape.

    Returns:
        ``(iou (R, P) float64, ref_ids (R,), pred_ids (P,))`` with ids in increasing order.
    """
    r = np.asarray(ref)
    p = np.asarray(pred)
    if r.shape != p.shape:
        raise ValueError(f"reference {r.shape} and prediction {p.shape} differ in shape")
    r_ids, r_inv = _ids_and_index(r)
    p_ids, p_inv = _ids_and_index(p)
    nr, npd = r_ids.size, p_ids.size
    joint = np.bincount(r_inv * npd + p_inv, minlength=nr * npd).reshape(nr, npd)
    area_r = joint.sum(1)[1:, None].astype(np.float64)
    area_p = joint.sum(0)[None, 1:].astype(np.float64)
    inter = joint[1:, 1:].astype(np.float64)
    union = area_r + area_p - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, r_ids[1:].astype(np.int64), p_ids[1:].astype(np.int64)


def match_instances(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching at ``IoU >= threshold`` (most matches, then largest summed IoU).

    Args:
        iou: ``(R, P)`` IoU matrix.
        threshold: Smallest IoU of a match.

    Returns:
        ``(ref_index (K,), pred_index (K,))`` of the K matches.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ok = iou >= threshold
    n = max(1, min(iou.shape))
    cost = -ok.astype(np.float64) - np.where(ok, iou, 0.0) / (2.0 * n)
    ri, pi = linear_sum_assignment(cost)
    keep = ok[ri, pi]
    return ri[keep].astype(np.int64), pi[keep].astype(np.int64)


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return num / den
    return 1.0 if both_empty else 0.0


def scores_at(iou: np.ndarray, threshold: float) -> dict[str, float]:
    """TP/FP/FN and the derived scores at one IoU threshold (policy in the module docstring).

    Returns:
        ``{"tp", "fp", "fn", "precision", "recall", "f1", "ap", "sq", "rq", "pq"}``.
    """
    nr, npd = iou.shape
    ri, pi = match_instances(iou, threshold)
    tp = int(ri.size)
    fp, fn = npd - tp, nr - tp
    both_empty = nr == 0 and npd == 0
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
    sq = float(iou[ri, pi].mean()) if tp else (1.0 if both_empty else 0.0)
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": _ratio(tp, tp + fp, both_empty),
            "recall": _ratio(tp, tp + fn, both_empty),
            "f1": f1, "ap": _ratio(tp, tp + fp + fn, both_empty),
            "sq": sq, "rq": f1, "pq": sq * f1}


def coco_average_precision(iou: np.ndarray, scores: Sequence[float], threshold: float) -> float:
    """Score-ranked AP at one IoU threshold (COCO 101-point interpolation).

    Predictions are taken in decreasing score order; each is a TP when it overlaps a not yet
    matched reference with ``IoU >= threshold`` (the best such reference), else an FP.

    Args:
        iou: ``(R, P)`` IoU matrix.
        scores: ``(P,)`` prediction scores.
        threshold: IoU threshold.

    Returns:
        AP in [0, 1]; both empty 1.0, one empty 0.0.
    """
    nr, npd = iou.shape
    if nr == 0 or npd == 0:
        return 1.0 if nr == npd == 0 else 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    taken = np.zeros(nr, dtype=bool)
    tp = np.zeros(npd)
    for k, j in enumerate(order):
        cand = np.where(~taken & (iou[:, j] >= threshold), iou[:, j], -1.0)
        i = int(np.argmax(cand))
        if cand[i] >= 0:
            taken[i] = True
            tp[k] = 1.0
    ctp = np.cumsum(tp)
    recall = ctp / nr
    precision = ctp / np.arange(1, npd + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolated envelope
    grid = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, grid, side="left")
    return float(np.where(idx < npd, precision[np.minimum(idx, npd - 1)], 0.0).mean())


def evaluate_instances(ref_map: np.ndarray, pred_map: np.ndarray,
                       thresholds: Sequence[float] = (0.5, 0.75),
                       pred_scores: Sequence[float] | None = None,
                       case_id: str | None = None) -> dict[str, Any]:
    """Every instance score of one image.

    Args:
        ref_map: ``(*spatial)`` reference instance map (0 background).
        pred_map: ``(*spatial)`` predicted instance map.
        thresholds: IoU thresholds reported in full under ``"thresholds"``.
        pred_scores: Optional per-prediction scores in increasing id order; adds
            ``"coco_ap@0.5"`` and ``"coco_map"``.
        case_id: Stored in the result.

    Returns:
        ``{"case", "n_ref", "n_pred", "f1@0.5", "ap@0.5", "map", "pq@0.5", "sq@0.5",
        "precision@0.5", "recall@0.5", "thresholds": {t: scores_at(...)}}``.
    """
    iou, r_ids, p_ids = iou_matrix(ref_map, pred_map)
    per = {float(t): scores_at(iou, float(t)) for t in sorted(set(thresholds) | {0.5})}
    maps = [per[t]["ap"] if t in per else scores_at(iou, t)["ap"] for t in MAP_THRESHOLDS]
    s5 = per[0.5]
    out: dict[str, Any] = {
        "case": case_id, "n_ref": int(r_ids.size), "n_pred": int(p_ids.size),
        "f1@0.5": s5["f1"], "ap@0.5": s5["ap"], "map": float(np.mean(maps)),
        "pq@0.5": s5["pq"], "sq@0.5": s5["sq"], "precision@0.5": s5["precision"],
        "recall@0.5": s5["recall"],
        "thresholds": {f"{t:g}": v for t, v in per.items() if t in {float(x) for x in thresholds}
                       or t == 0.5},
    }
    if pred_scores is not None:
        sc = np.asarray(pred_scores, dtype=np.float64)
        if sc.size != p_ids.size:
            raise ValueError(f"{sc.size} scores for {p_ids.size} predicted instances")
        out["coco_ap@0.5"] = coco_average_precision(iou, sc, 0.5)
        out["coco_map"] = float(np.mean([coco_average_precision(iou, sc, t)
                                         for t in MAP_THRESHOLDS]))
    return out


def summarize_instances(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean over cases of each per-case score, plus scores of the TP/FP/FN pooled over cases.

    Returns:
        ``{"n_cases", "mean": {key: value}, "pooled@0.5": {"tp", "fp", "fn", "f1", "ap",
        "precision", "recall"}, "policy"}``; means over no case are NaN.
    """
    keys = [k for k in (*INSTANCE_SUMMARY_KEYS, "coco_ap@0.5", "coco_map")
            if cases and all(k in c for c in cases)]
    mean = {k: float(np.mean([c[k] for c in cases])) if cases else math.nan for k in keys}
    tp = sum(int(c["thresholds"]["0.5"]["tp"]) for c in cases)
    fp = sum(int(c["thresholds"]["0.5"]["fp"]) for c in cases)
    fn = sum(int(c["thresholds"]["0.5"]["fn"]) for c in cases)
    both = tp + fp + fn == 0
    pooled = {"tp": tp, "fp": fp, "fn": fn,
              "precision": _ratio(tp, tp + fp, both), "recall": _ratio(tp, tp + fn, both),
              "f1": _ratio(2 * tp, 2 * tp + fp + fn, both), "ap": _ratio(tp, tp + fp + fn, both)}
    return {"n_cases": len(cases), "mean": mean, "pooled@0.5": pooled,
            "policy": "both empty -> 1.0, one empty -> 0.0; map over IoU 0.50:0.05:0.95"}


CSV_COLUMNS = ("case", "n_ref", "n_pred", "tp@0.5", "fp@0.5", "fn@0.5", "f1@0.5", "ap@0.5",
               "map", "pq@0.5", "sq@0.5", "precision@0.5", "recall@0.5")


def instance_metrics_csv(cases: Sequence[Mapping[str, Any]]) -> str:
    """One row per case (:data:`CSV_COLUMNS`, plus COCO AP columns when present)."""
    extra = [k for k in ("coco_ap@0.5", "coco_map") if cases and all(k in c for c in cases)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *extra])
    for c in cases:
        t5 = c["thresholds"]["0.5"]
        row = {**c, "tp@0.5": t5["tp"], "fp@0.5": t5["fp"], "fn@0.5": t5["fn"]}
        w.writerow([_fmt(row[k]) for k in (*CSV_COLUMNS, *extra)])
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    return f"{v:.6f}" if isinstance(v, float) else v


def write_instance_metrics(out_dir: str | Path, cases: Sequence[Mapping[str, Any]],
                           summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` atomically (the names ``medseg evaluate`` uses).

    Returns:
        ``(json path, csv path)``.
    """
    from medseg.metrics.aggregate import write_metrics_pair

    doc = {"format": "medseg-instance-metrics/1", "cases": list(cases), "summary": summary}
    return write_metrics_pair(out_dir, _nan_to_none(doc), instance_metrics_csv(cases))


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    return o
