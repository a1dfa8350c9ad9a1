"""Calibration (E5, U5): do predicted probabilities match observed frequencies?

* :func:`reliability_bins` — the reliability diagram's data: predictions grouped by confidence
  into ``n_bins`` bins; per bin the count, mean confidence and observed frequency. Two binnings:

  - ``binning="width"`` (default): equal-width bins on [0, 1] (bin ``k`` holds
    ``k/n < c <= (k+1)/n``, the first bin also ``c = 0``);
  - ``binning="mass"``: equal-mass (equal-count) bins whose edges are the empirical quantiles of
    the confidences, ``e_0 = min c`` and ``e_k = c_(ceil(k N / n_bins))`` (the
    ``ceil(k N / n_bins)``-th smallest confidence, 1-based), right-closed like the equal-width
    bins (bin ``k`` holds ``e_k < c <= e_{k+1}``, the first bin also ``c = e_0``). Without ties
    bin ``k`` holds exactly the ranks ``ceil(k N / n_bins) + 1 .. ceil((k+1) N / n_bins)``
    (counts differ by at most one). **Ties**: a run of equal confidences is never split; it
    falls wholly into the bin of its lowest rank, which can leave later bins smaller or empty
    (count 0, NaN confidence and frequency). The result depends only on the multiset of
    ``(confidence, outcome)`` pairs, never on their order.
* :func:`expected_calibration_error` — ``ECE = sum_k (n_k / N) |freq_k - conf_k|`` (Guo et al.
  2017), and the maximum gap ``MCE = max_k |freq_k - conf_k|`` over non-empty bins, for either
  binning.
* :func:`brier_score` — mean squared error of the probability vector against the one-hot outcome,
  ``(1/N) sum_i sum_c (p_ic - y_ic)^2`` (0 is perfect; 2 is the worst for a multi-class row).
* :func:`ece_if_calibrated` — what the ECE of *these* confidences would be if they were
  perfectly calibrated (consistency resampling, Bröcker & Smith 2007): outcomes drawn as
  Bernoulli(confidence), the ECE recomputed each time; its mean and 95% range are the
  measurement's floor at this sample size, and the share of draws at or above the observed ECE
  is a p-value for "calibrated". On 156 images an ECE of 0.05 can be what a calibrated model
  shows; on 5000 it cannot.
* :func:`classification_calibration` — what ``medseg evaluate`` reports for a classifier:
  single-label uses the top-label confidence (max probability; correct when the argmax is the
  true class); multi-label pools every *observed* (label != -1) entry, confidence ``p`` against
  outcome ``y`` (binary calibration of each sigmoid), and also reports it per label.
* :func:`voxel_confidence` and :func:`segmentation_calibration` — the same for segmentation:
  the top-label confidence ``max_c p_c`` of every *observed* voxel of a ``(C, *spatial)``
  probability map against whether its arg-max equals the label. Voxels of several cases pool
  by concatenating :func:`voxel_confidence` outputs before :func:`expected_calibration_error`.

Missing labels (``-1``, T5) and unobserved voxels (observation mask 0) are excluded, as
everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MISSING = -1


BINNINGS = ("width", "mass")


def _check_binning(binning: str) -> None:
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")


def _mass_edges(c: np.ndarray, n_bins: int) -> np.ndarray:
    """Empirical-quantile edges ``(n_bins + 1,)`` of the equal-mass bins (NaN for no data)."""
    if c.size == 0:
        return np.full(n_bins + 1, np.nan)
    srt = np.sort(c)
    ranks = -(-np.arange(1, n_bins + 1) * c.size // n_bins)  # ceil(k N / n_bins), 1-based
    return np.concatenate([srt[:1], srt[ranks - 1]])


def _bin_index(c: np.ndarray, n_bins: int, binning: str) -> tuple[np.ndarray, np.ndarray]:
    """``(edges (n_bins + 1,), bin of each confidence (N,))`` of either binning."""
    if binning == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return edges, np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    edges = _mass_edges(c, n_bins)
    # the first bin whose upper edge is >= c: right-closed bins, a tie run stays together
    return edges, np.clip(np.searchsorted(edges[1:], c, side="left"), 0, n_bins - 1)


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15,
                     binning: str = "width") -> dict[str, np.ndarray]:
    """Confidence bins with their mean confidence and observed frequency.

    Args:
        confidence: ``(N,)`` predicted probabilities in [0, 1].
        outcome: ``(N,)`` 0/1 (or boolean) observed outcomes.
        n_bins: Number of bins.
        binning: ``"width"`` (equal-width bins on [0, 1]) or ``"mass"`` (equal-count bins at
            the empirical quantiles; ties kept together, see the module docstring).

    Returns:
        ``{"edges" (n_bins + 1,), "count" (n_bins,), "confidence" (n_bins,), "frequency"
        (n_bins,)}``; empty bins have NaN confidence and frequency. Equal-mass edges run from
        the smallest to the largest confidence (all NaN when ``N = 0``).

    Raises:
        ValueError: shapes differ, values outside [0, 1], outcomes not 0/1, ``n_bins < 1``, an
            unknown ``binning``.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    o = np.asarray(outcome, dtype=np.float64).ravel()
    if c.shape != o.shape:
        raise ValueError(f"confidence {c.shape} and outcome {o.shape} differ in shape")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    _check_binning(binning)
    if c.size and (np.nanmin(c) < 0 or np.nanmax(c) > 1 or not np.isfinite(c).all()):
        raise ValueError("confidences must be finite probabilities in [0, 1]")
    if o.size and not np.isin(o, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    edges, idx = _bin_index(c, n_bins, binning)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=c, minlength=n_bins) / count
        freq = np.bincount(idx, weights=o, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": conf, "frequency": freq}


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 15,
                               binning: str = "width") -> tuple[float, float]:
    """``(ECE, MCE)`` with equal-width or equal-mass bins (see the module docstring).

    Args:
        confidence: ``(N,)`` predicted probabilities in [0, 1].
        outcome: ``(N,)`` 0/1 outcomes.
        n_bins: Number of bins.
        binning: ``"width"`` or ``"mass"``.

    Returns:
        ``(ECE, MCE)``; NaN for no samples.
    """
    b = reliability_bins(confidence, outcome, n_bins, binning)
    n = int(b["count"].sum())
    if n == 0:
        return float("nan"), float("nan")
    keep = b["count"] > 0
    gap = np.abs(b["frequency"][keep] - b["confidence"][keep])
    return float(np.sum(b["count"][keep] / n * gap)), float(gap.max())


def ece_if_calibrated(confidence: np.ndarray, observed: float | None = None, n_bins: int = 15,
                      binning: str = "width", n_sim: int = 1000, seed: int = 0
                      ) -> dict[str, Any] | None:
    """The ECE a perfectly calibrated forecaster with these confidences shows on this many
    cases (consistency resampling): outcomes drawn as Bernoulli(confidence), ``n_sim`` times.

    Args:
        confidence: ``(N,)`` probabilities in [0, 1] (the top-label confidence, or a sigmoid).
        observed: The ECE measured with the real outcomes (for the p-value), or ``None``.
        n_bins: Number of bins (as for the observed ECE).
        binning: ``"width"`` or ``"mass"`` (as for the observed ECE).
        n_sim: Number of simulated outcome sets.
        seed: Seed of the draws.

    Returns:
        ``{"mean", "interval95": [lo, hi], "n_sim"}`` and, with ``observed``,
        ``"p_value"`` = ``(1 + #{simulated ECE >= observed}) / (1 + n_sim)`` (small: the
        observed miscalibration is more than this sample size explains); ``None`` for no
        cases or ``n_sim < 1``.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    if c.size == 0 or n_sim < 1:
        return None
    reliability_bins(c, np.zeros_like(c), n_bins, binning)  # the same checks as the ECE's
    _, idx = _bin_index(c, n_bins, binning)
    count = np.bincount(idx, minlength=n_bins)
    keep = count > 0
    mean_conf = np.bincount(idx, weights=c, minlength=n_bins)[keep] / count[keep]
    rng = np.random.default_rng(seed)
    sims = np.empty(n_sim)
    for i in range(n_sim):  # the bins depend on the confidences only: count the outcomes
        hits = np.bincount(idx, weights=rng.random(c.size) < c, minlength=n_bins)[keep]
        sims[i] = np.sum(np.abs(hits - count[keep] * mean_conf)) / c.size
    lo, hi = np.percentile(sims, [2.5, 97.5])
    out: dict[str, Any] = {"mean": float(sims.mean()), "interval95": [float(lo), float(hi)],
                           "n_sim": int(n_sim)}
    if observed is not None and np.isfinite(observed):
        out["p_value"] = float((1 + np.sum(sims >= observed - 1e-12)) / (1 + n_sim))
    return out


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


def bins_json(b: dict[str, np.ndarray]) -> dict[str, list]:
    """Reliability bins as JSON-able lists (``None`` for empty bins / NaN edges)."""

    def num(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    return {"edges": [num(e) for e in b["edges"]], "count": [int(v) for v in b["count"]],
            "confidence": [num(v) for v in b["confidence"]],
            "frequency": [num(v) for v in b["frequency"]]}


def classification_calibration(probs: np.ndarray, labels: np.ndarray, task: str,
                               class_names: Sequence[str] | None = None, n_bins: int = 15,
                               binning: str = "width", n_sim: int = 1000) -> dict[str, Any]:
    """ECE, MCE, Brier score and reliability bins of a classifier's probabilities.

    Args:
        probs: ``(N, C)`` softmax rows (single-label) or sigmoids (multi-label).
        labels: ``(N,)`` class indices (single) or ``(N, C)`` in {0, 1, -1} (multi).
        task: ``"single"`` or ``"multi"``.
        class_names: Label names for the per-label results (multi-label).
        n_bins: Number of bins.
        binning: ``"width"`` (equal-width, the default) or ``"mass"`` (equal-count).
        n_sim: Simulated outcome sets of :func:`ece_if_calibrated` (0: none).

    Returns:
        ``{"n_bins", "binning", "ece", "mce", "brier", "reliability": {edges, count,
        confidence, frequency}, "ece_if_calibrated"}`` plus ``"per_label": {name: {"ece",
        "mce", "brier", "n"}}`` (multi-label).
    """
    _check_binning(binning)
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if task == "single":
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(np.float64)
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
        ece, mce = expected_calibration_error(conf, correct, n_bins, binning)
        out: dict[str, Any] = {"n_bins": n_bins, "binning": binning, "ece": ece, "mce": mce,
                               "brier": brier_score(p, onehot),
                               "reliability": bins_json(reliability_bins(conf, correct, n_bins,
                                                                          binning)),
                               "ece_if_calibrated": ece_if_calibrated(conf, ece, n_bins, binning,
                                                                      n_sim)}
        return out
    if task != "multi":
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}")
    obs = y != MISSING
    conf, outcome = p[obs], y[obs].astype(np.float64)
    ece, mce = expected_calibration_error(conf, outcome, n_bins, binning)
    names = [str(i) for i in range(p.shape[1])] if class_names is None else list(class_names)
    per_label = {}
    for k, name in enumerate(names):
        m = obs[:, k]
        e_k, m_k = expected_calibration_error(p[m, k], y[m, k].astype(np.float64), n_bins,
                                              binning)
        per_label[name] = {"ece": e_k, "mce": m_k, "n": int(m.sum()),
                           "brier": brier_score(p[m, k], y[m, k].astype(np.float64))}
    return {"n_bins": n_bins, "binning": binning, "ece": ece, "mce": mce,
            "brier": brier_score(conf, outcome),
            "reliability": bins_json(reliability_bins(conf, outcome, n_bins, binning)),
            "ece_if_calibrated": ece_if_calibrated(conf, ece, n_bins, binning, n_sim),
            "per_label": per_label}


def _spatial_like(x: Any, spatial: tuple[int, ...], name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape == spatial:
        return a
    if a.shape == (1, *spatial):
        return a[0]
    raise ValueError(f"{name} must have the spatial shape {spatial} of probs (or (1, *spatial)),"
                     f" got {a.shape}")


def voxel_confidence(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of every observed voxel of one case.

    Args:
        probs: ``(C, *spatial)`` class probabilities (softmax output, ``C >= 2``).
        labels: ``(*spatial)`` or ``(1, *spatial)`` integer label map.
        mask: Optional observation mask of the label map's shape; nonzero = observed. Labels
            of unobserved voxels may be anything (e.g. an ignore label 255).

    Returns:
        ``(confidence, correct)``, each ``(M,)`` over the ``M`` observed voxels in C order:
        ``max_c p_c`` (float64) and ``1.0`` where the arg-max (lowest class index on ties)
        equals the label, else ``0.0``.

    Raises:
        ValueError: ``probs`` with fewer than 2 axes or 2 classes, shapes that do not match,
            observed labels outside ``[0, C)``.
    """
    p = np.asarray(probs)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"probs must be (C, *spatial) with C >= 2 classes, got {p.shape}; "
                         "for a batch pass one case at a time")
    spatial = tuple(p.shape[1:])
    y = _spatial_like(labels, spatial, "labels")
    obs = np.ones(spatial, dtype=bool) if mask is None else \
        _spatial_like(mask, spatial, "mask") != 0
    yo = y[obs].astype(np.int64)
    if yo.size and (yo.min() < 0 or yo.max() >= p.shape[0]):
        raise ValueError(f"observed labels must be class indices in [0, {p.shape[0]}), got "
                         f"values in [{yo.min()}, {yo.max()}]; mask out ignore labels")
    po = p[:, obs]  # (C, M)
    conf = po.max(axis=0).astype(np.float64)
    correct = (po.argmax(axis=0) == yo).astype(np.float64)
    return conf, correct


def segmentation_calibration(probs: np.ndarray, labels: np.ndarray,
                             mask: np.ndarray | None = None, n_bins: int = 15,
                             binning: str = "width") -> dict[str, Any]:
    """Voxel-level calibration of one segmentation: ECE, MCE, Brier, reliability bins.

    Args:
        probs: ``(C, *spatial)`` class probabilities.
        labels: ``(*spatial)`` or ``(1, *spatial)`` integer label map.
        mask: Optional observation mask (nonzero = observed); only observed voxels count.
        n_bins: Number of bins.
        binning: ``"width"`` or ``"mass"``.

    Returns:
        ``{"n_bins", "binning", "n" (observed voxels), "ece", "mce", "brier" (mean over
        observed voxels of ``sum_c (p_c - y_c)^2``), "reliability": {edges, count, confidence,
        frequency}}`` (JSON-able lists; ``None`` for empty bins). With no observed voxel the
        numbers are ``None``.

    Raises:
        ValueError: as :func:`voxel_confidence` and :func:`reliability_bins`.
    """
    _check_binning(binning)
    conf, correct = voxel_confidence(probs, labels, mask)
    p = np.asarray(probs)
    spatial = tuple(p.shape[1:])
    obs = np.ones(spatial, dtype=bool) if mask is None else \
        _spatial_like(mask, spatial, "mask") != 0
    po = p[:, obs].astype(np.float64).T  # (M, C)
    onehot = np.zeros_like(po)
    onehot[np.arange(po.shape[0]), _spatial_like(labels, spatial, "labels")[obs].astype(
        np.int64)] = 1.0
    ece, mce = expected_calibration_error(conf, correct, n_bins, binning)
    brier = brier_score(po, onehot)

    def num(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    return {"n_bins": n_bins, "binning": binning, "n": int(conf.size), "ece": num(ece),
            "mce": num(mce), "brier": num(brier),
            "reliability": bins_json(reliability_bins(conf, correct, n_bins, binning))}
