"""Classification metrics (E5) against brute-force references and hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.metrics import (
    auroc,
    binary_counts,
    binary_rates,
    bootstrap_ci,
    classification_case_rows,
    confusion_matrix,
    evaluate_classification,
    roc_curve,
    write_classification_metrics,
)
from medseg.reports import save_roc_curve


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Brute force over every (positive, negative) pair, ties 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 7, 40):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 5, n) / 4.0  # many ties
        assert auroc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)
    # hand value: positives {0.8, 0.4}, negatives {0.4, 0.1}: pairs 1 + 1 + 0.5 + 1 = 3.5 / 4
    assert auroc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == 0.875
    assert auroc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert math.isnan(auroc(np.array([0.1, 0.9]), np.array([1, 1])))


def test_missing_entries_change_nothing() -> None:
    s = np.array([0.9, 0.3, 0.6, 0.2, 0.5])
    y = np.array([1, 0, 1, 0, 0])
    s_m = np.r_[s, 0.99, 0.01]
    y_m = np.r_[y, -1, -1]
    assert auroc(s_m, y_m) == auroc(s, y)
    assert binary_counts(s_m > 0.4, y_m) == binary_counts(s > 0.4, y)
    for a, b in zip(roc_curve(s_m, y_m), roc_curve(s, y), strict=True):
        np.testing.assert_array_equal(a, b)
    # multi-label: adding cases that are missing on every label leaves all metrics unchanged
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.2, 0.8]])
    lab = np.array([[1, 0], [0, 1], [1, -1], [0, 1]])
    extra_p = np.vstack([probs, [[0.99, 0.01], [0.01, 0.99]]])
    extra_y = np.vstack([lab, [[-1, -1], [-1, -1]]])
    a = evaluate_classification(probs, lab, "multi", n_boot=0)
    b = evaluate_classification(extra_p, extra_y, "multi", n_boot=0)
    assert a["per_class"]["0"] == {**b["per_class"]["0"], "n_missing": 0}
    assert a["macro"] == b["macro"] and a["confusion"] == b["confusion"]


def test_roc_curve_points_and_area() -> None:
    s = np.array([0.8, 0.4, 0.4, 0.1])
    y = np.array([1, 1, 0, 0])
    fpr, tpr, thr = roc_curve(s, y)
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    rng = np.random.default_rng(3)
    s2, y2 = rng.integers(0, 6, 50) / 5.0, rng.integers(0, 2, 50)
    f2, t2, _ = roc_curve(s2, y2)
    area = float(np.sum(np.diff(f2) * (t2[1:] + t2[:-1]) / 2))
    assert area == pytest.approx(auroc(s2, y2), abs=1e-12)


def test_confusion_and_rates_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    np.testing.assert_array_equal(confusion_matrix(pred, y, 3),
                                  [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    r = binary_rates({"tp": 3, "fp": 1, "tn": 4, "fn": 2})
    assert r == {"sensitivity": 0.6, "specificity": 0.8, "precision": 0.75, "f1": 6 / 9}
    assert math.isnan(binary_rates({"tp": 0, "fp": 0, "tn": 3, "fn": 0})["sensitivity"])


def test_evaluate_single_label_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    res = evaluate_classification(probs, y, "single", ["a", "b", "c"], n_boot=0)
    assert res["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert res["macro"]["accuracy"] == pytest.approx(4 / 6)
    # recalls 1/2, 2/2, 1/2
    assert res["macro"]["balanced_accuracy"] == pytest.approx(2 / 3)
    a = res["per_class"]["a"]
    assert a["sensitivity"] == 0.5 and a["specificity"] == 0.75 and a["precision"] == 0.5
    assert a["n_positive"] == 2 and a["n_negative"] == 4
    b = res["per_class"]["b"]
    assert b["precision"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(0.8)
    assert a["auroc"] == pytest.approx(_pairwise_auc(probs[:, 0], (y == 0).astype(int)))
    assert res["macro"]["auroc"] == pytest.approx(
        np.mean([_pairwise_auc(probs[:, k], (y == k).astype(int)) for k in range(3)])
    )
    json.dumps(res, allow_nan=False)
    # binary threshold on p_1
    p2 = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    r2 = evaluate_classification(p2, np.array([1, 0, 1]), "single", thresholds=0.25, n_boot=0)
    assert r2["confusion"]["matrix"] == [[0, 1], [0, 2]]


def test_evaluate_multi_label_by_hand() -> None:
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.2, 0.8]])
    lab = np.array([[1, 0], [0, 1], [1, -1], [0, 0]])
    res = evaluate_classification(probs, lab, "multi", ["x", "y"], thresholds=[0.5, 0.75],
                                  n_boot=0)
    # label x: pred 1,0,1,0 vs 1,0,1,0; label y (t=0.75): pred 0,0,-,1 vs 0,1,-,0
    assert res["confusion"]["x"] == {"tp": 2, "fp": 0, "tn": 2, "fn": 0}
    assert res["confusion"]["y"] == {"tp": 0, "fp": 1, "tn": 1, "fn": 1}
    assert res["macro"]["accuracy"] == pytest.approx(5 / 7)
    assert res["per_class"]["y"]["n_missing"] == 1
    assert res["per_class"]["y"]["auroc"] == pytest.approx(0.5)  # 0.7 > 0.2, 0.7 < 0.8
    assert res["per_class"]["y"]["f1"] == 0.0 and res["per_class"]["y"]["precision"] == 0.0
    # balanced accuracy: mean of (sens + spec) / 2 = ((1 + 1) / 2 + (0 + 0.5) / 2) / 2
    assert res["macro"]["balanced_accuracy"] == pytest.approx(0.625)


def test_undefined_metrics_are_null() -> None:
    probs = np.array([[0.8, 0.2], [0.6, 0.4]])
    res = evaluate_classification(probs, np.array([0, 0]), "single", n_boot=50)
    assert res["per_class"]["0"]["auroc"] is None
    assert res["per_class"]["1"]["sensitivity"] is None
    assert res["macro"]["auroc"] is None
    assert res["ci"]["macro"]["auroc"] == [None, None]
    json.dumps(res, allow_nan=False)


def test_bootstrap_ci_contains_estimate_and_shrinks() -> None:
    rng = np.random.default_rng(0)

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return rng.normal(size=n) + 1.2 * y, y

    widths = []
    for n in (40, 1000):
        s, y = data(n)
        lo, hi = bootstrap_ci(auroc, s, y, n_boot=400, seed=7)
        assert lo <= auroc(s, y) <= hi
        widths.append(hi - lo)
        assert bootstrap_ci(auroc, s, y, n_boot=400, seed=7) == (lo, hi)  # seeded
    assert widths[1] < 0.5 * widths[0]  # width ~ 1/sqrt(n): ratio about 0.2
    # the mean of 0/1 data: the interval matches the normal approximation
    x = (np.arange(400) % 4 == 0).astype(float)  # p = 0.25
    lo, hi = bootstrap_ci(np.mean, x, n_boot=2000, seed=1)
    half = 1.96 * math.sqrt(0.25 * 0.75 / 400)
    assert lo == pytest.approx(0.25 - half, abs=0.01) and hi == pytest.approx(0.25 + half, abs=0.01)
    # stratified resampling keeps class counts, so the resampled mean of y never varies
    y = np.r_[np.zeros(30), np.ones(10)]
    assert bootstrap_ci(np.mean, y, n_boot=100, seed=0, stratify=y) == (0.25, 0.25)
    lo_u, hi_u = bootstrap_ci(np.mean, y, n_boot=100, seed=0)
    assert hi_u > lo_u


def test_evaluate_ci_and_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(scale=0.25, size=60), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    res = evaluate_classification(probs, y, "single", ["neg", "pos"], n_boot=300, seed=0,
                                  stratified=True)
    for name in ("neg", "pos"):
        for m in ("auroc", "sensitivity", "specificity", "f1"):
            lo, hi = res["ci"]["per_class"][name][m]
            assert lo <= res["per_class"][name][m] <= hi
    lo, hi = res["ci"]["macro"]["accuracy"]
    assert lo <= res["macro"]["accuracy"] <= hi
    assert res["ci"]["stratified"] is True
    rows = classification_case_rows([f"c{i}" for i in range(60)], probs, y, "single",
                                    ["neg", "pos"])
    jpath, cpath = write_classification_metrics(tmp_path / "out", res, rows)
    doc = json.loads(jpath.read_text())
    assert doc["summary"]["macro"] == res["macro"] and len(doc["cases"]) == 60
    with open(cpath, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "label", "prediction", "correct", "p_neg", "p_pos"]
    assert sum(int(r["correct"]) for r in table) == round(res["macro"]["accuracy"] * 60)
    assert not [p for p in (tmp_path / "out").iterdir() if ".partial" in p.name]


def test_save_roc_curve(tmp_path: Path) -> None:
    s = np.array([0.8, 0.4, 0.4, 0.1])
    y = np.array([1, 1, 0, 0])
    fpr, tpr, _ = roc_curve(s, y)
    out = save_roc_curve(tmp_path / "fig" / "roc.png",
                         {"lesion": (fpr, tpr, auroc(s, y)), "empty": (*roc_curve(s, y * 0)[:2],
                                                                       float("nan"))})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["roc.png"]


def test_cluster_bootstrap_resamples_subjects() -> None:
    """Three identical images per subject are one observation, not three: resampling subjects
    gives exactly the interval of one image per subject (same seed, same draws), resampling
    images a narrower one (about 1/sqrt(3))."""
    from medseg.metrics.aggregate import bootstrap_mean_ci

    rng = np.random.default_rng(3)
    y1 = rng.integers(0, 2, 60)
    s1 = rng.normal(size=60) + y1
    s3, y3 = np.repeat(s1, 3), np.repeat(y1, 3)
    subjects = np.repeat([f"s{i:02d}" for i in range(60)], 3)
    one = bootstrap_ci(auroc, s1, y1, n_boot=300, seed=5)
    grouped = bootstrap_ci(auroc, s3, y3, n_boot=300, seed=5, clusters=subjects)
    assert grouped == one
    lo, hi = bootstrap_ci(auroc, s3, y3, n_boot=300, seed=5)
    assert (hi - lo) < 0.75 * (one[1] - one[0])
    with pytest.raises(ValueError, match="not both"):
        bootstrap_ci(auroc, s3, y3, stratify=y3, clusters=subjects)
    res = evaluate_classification(np.c_[1 - 1 / (1 + np.exp(-s3)), 1 / (1 + np.exp(-s3))], y3,
                                  "single", n_boot=300, seed=5, clusters=list(subjects))
    assert res["ci"]["resampled"] == "subjects"
    assert res["ci"]["macro"]["auroc"] == pytest.approx(list(one))
    # the per-case mean of the out-of-fold estimate (segmentation Dice), NaN left out
    v1 = rng.uniform(0.6, 1.0, 40)
    v3 = np.repeat(v1, 3)
    groups = list(np.repeat([f"p{i}" for i in range(40)], 3))
    assert bootstrap_mean_ci(v3, groups=groups, seed=2) == bootstrap_mean_ci(v1, seed=2)
    lo, hi = bootstrap_mean_ci(v3, seed=2)
    g_lo, g_hi = bootstrap_mean_ci(v3, groups=groups, seed=2)
    assert hi - lo < 0.75 * (g_hi - g_lo)
    # uneven subjects: each replicate is the mean over all drawn values, checked by hand
    vals, subj = np.array([1.0, 3.0, np.nan, 10.0]), ["a", "a", "b", "c"]
    draws = np.random.default_rng(0).integers(0, 2, (1000, 2))  # subjects a, c (b: all NaN)
    sums, counts = np.array([4.0, 10.0]), np.array([2.0, 1.0])
    means = sums[draws].sum(1) / counts[draws].sum(1)
    assert bootstrap_mean_ci(vals, groups=subj, seed=0) == (
        float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.array([np.nan]), groups=["a"]))
