"""Calibration (E5, U5): do predicted probabilities match observed frequencies?

* :func:`reliability_bins` — the reliability diagram's data: predictions grouped by confidence
  into ``n_bins`` equal-width bins on [0, 1] (bin ``k`` holds ``k/n < c <= (k+1)/n``, the first
  bin also ``c = 0``); per bin the count, mean confidence and observed frequency.
* :func:`expected_calibration_error` — ``ECE = sum_k (n_k / N) |freq_k - conf_k|`` (Guo et al.
  2017, equal-width bins), and the maximum gap ``MCE = max_k |freq_k - conf_k|`` over non-empty
  bins.
* :func:`brier_score` — mean squared error of the probability vector against the one-hot outcome,
  ``(1/N) sum_i sum_c (p_ic - y_ic)^2`` (0 is perfect; 2 is the worst for a multi-class row).
* :func:`classification_calibration` — what ``medseg evaluate`` reports for a classifier:
  single-label uses the top-label confidence (max probability; correct when the argmax is the
  true class); multi-label pools every *observed* (label != -1) entry, confidence ``p`` against
  outcome ``y`` (binary calibration of each sigmoid), and also reports it per label.

Missing labels (``-1``, T5) are excluded, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MISSING = -1


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15
                     ) -> dict[str, np.ndarray]:
    """Equal-width confidence bins with their mean confidence and observed frequency.

    Args:
        confidence: ``(N,)`` predicted probabilities in [0, 1].
        outcome: ``(N,)`` 0/1 (or boolean) observed outcomes.
        n_bins: Number of bins.

    Returns:
        ``{"edges" (n_bins + 1,), "count" (n_bins,), "confidence" (n_bins,), "frequency"
        (n_bins,)}``; empty bins have NaN confidence and frequency.

    Raises:
        ValueError: shapes differ, values outside [0, 1], outcomes not 0/1, ``n_bins < 1``.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    o = np.asarray(outcome, dtype=np.float64).ravel()
    if c.shape != o.shape:
        raise ValueError(f"confidence {c.shape} and outcome {o.shape} differ in shape")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if c.size and (np.nanmin(c) < 0 or np.nanmax(c) > 1 or not np.isfinite(c).all()):
        raise ValueError("confidences must be finite probabilities in [0, 1]")
    if o.size and not np.isin(o, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=c, minlength=n_bins) / count
        freq = np.bincount(idx, weights=o, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15
                               ) -> tuple[float, float]:
    """``(ECE, MCE)`` with equal-width bins (see the module docstring); NaN for no samples."""
    b = reliability_bins(confidence, outcome, n_bins)
    n = int(b["count"].sum())
    if n == 0:
        return float("nan"), float("nan")
    keep = b["count"] > 0
    gap = np.abs(b["frequency"][keep] - b["confidence"][keep])
    return float(np.sum(b["count"][keep] / n * gap)), float(gap.max())


def brier_score(probs: np.ndarray, onehot: np.ndarray) -> float:
    """Mean over rows of ``sum_c (p_c - y_c)^2``.

    Args:
        probs: ``(N, C)`` probabilities (or ``(N,)`` for one binary probability per row).
        onehot: Outcomes of the same shape, 0/1.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(onehot, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and outcomes {y.shape} differ in shape")
    if p.size == 0:
        return float("nan")
    sq = (p - y) ** 2
    return float(sq.sum(axis=1).mean() if sq.ndim == 2 else sq.mean())


def _bins_json(b: dict[str, np.ndarray]) -> dict[str, list]:
    def num(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    return {"edges": [float(e) for e in b["edges"]], "count": [int(v) for v in b["count"]],
            "confidence": [num(v) for v in b["confidence"]],
            "frequency": [num(v) for v in b["frequency"]]}


def classification_calibration(probs: np.ndarray, labels: np.ndarray, task: str,
                               class_names: Sequence[str] | None = None, n_bins: int = 15
                               ) -> dict[str, Any]:
    """ECE, MCE, Brier score and reliability bins of a classifier's probabilities.

    Args:
        probs: ``(N, C)`` softmax rows (single-label) or sigmoids (multi-label).
        labels: ``(N,)`` class indices (single) or ``(N, C)`` in {0, 1, -1} (multi).
        task: ``"single"`` or ``"multi"``.
        class_names: Label names for the per-label results (multi-label).
        n_bins: Equal-width bins.

    Returns:
        ``{"n_bins", "ece", "mce", "brier", "reliability": {edges, count, confidence,
        frequency}}`` plus ``"per_label": {name: {"ece", "mce", "brier", "n"}}`` (multi-label).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if task == "single":
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(np.float64)
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
        ece, mce = expected_calibration_error(conf, correct, n_bins)
        out: dict[str, Any] = {"n_bins": n_bins, "ece": ece, "mce": mce,
                               "brier": brier_score(p, onehot),
                               "reliability": _bins_json(reliability_bins(conf, correct, n_bins))}
        return out
    if task != "multi":
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}")
    obs = y != MISSING
    conf, outcome = p[obs], y[obs].astype(np.float64)
    ece, mce = expected_calibration_error(conf, outcome, n_bins)
    names = [str(i) for i in range(p.shape[1])] if class_names is None else list(class_names)
    per_label = {}
    for k, name in enumerate(names):
        m = obs[:, k]
        e_k, m_k = expected_calibration_error(p[m, k], y[m, k].astype(np.float64), n_bins)
        per_label[name] = {"ece": e_k, "mce": m_k, "n": int(m.sum()),
                           "brier": brier_score(p[m, k], y[m, k].astype(np.float64))}
    return {"n_bins": n_bins, "ece": ece, "mce": mce, "brier": brier_score(conf, outcome),
            "reliability": _bins_json(reliability_bins(conf, outcome, n_bins)),
            "per_label": per_label}
