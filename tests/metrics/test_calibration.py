"""Calibration metrics (E5): hand values, an independent loop, calibrated vs overconfident."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.calibration import (
    brier_score,
    classification_calibration,
    expected_calibration_error,
    reliability_bins,
)


def test_hand_values():
    # bins of width 0.5: (0, 0.5] holds 0.2, 0.4 ; (0.5, 1] holds 0.6, 0.9
    conf = np.array([0.2, 0.4, 0.6, 0.9])
    out = np.array([0, 1, 1, 1])
    b = reliability_bins(conf, out, n_bins=2)
    assert b["count"].tolist() == [2, 2]
    np.testing.assert_allclose(b["confidence"], [0.3, 0.75])
    np.testing.assert_allclose(b["frequency"], [0.5, 1.0])
    ece, mce = expected_calibration_error(conf, out, n_bins=2)
    assert ece == pytest.approx(0.5 * 0.2 + 0.5 * 0.25)
    assert mce == pytest.approx(0.25)
    # a confidence of exactly 0 goes to the first bin, 1 to the last
    assert reliability_bins(np.array([0.0, 1.0]), np.array([0, 1]), 4)["count"].tolist() == \
        [1, 0, 0, 1]
    assert brier_score(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[1, 0], [1, 0]])) == \
        pytest.approx(((0.09 + 0.09) + (0.64 + 0.64)) / 2)


def _loop_ece(conf, out, n_bins):
    total, n = 0.0, len(conf)
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        sel = [(c, o) for c, o in zip(conf, out, strict=True)
               if (lo < c <= hi) or (k == 0 and c == 0)]
        if sel:
            cs, os_ = zip(*sel, strict=True)
            total += len(sel) / n * abs(np.mean(os_) - np.mean(cs))
    return total


def test_agrees_with_a_plain_loop():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 500)
    out = (rng.uniform(0, 1, 500) < conf**2).astype(int)
    assert expected_calibration_error(conf, out, 10)[0] == pytest.approx(
        _loop_ece(conf, out, 10), abs=1e-12)


def test_calibrated_is_small_and_overconfident_is_large():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 100_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)  # y ~ Bernoulli(p): calibrated
    assert expected_calibration_error(p, y)[0] < 0.01
    sharp = np.clip(0.5 + 1.8 * (p - 0.5), 0, 1)  # same ranking, overconfident
    ece = expected_calibration_error(sharp, y)[0]
    # closed form: unclipped (p in [2/9, 7/9], mass 5/9) the gap is (1 - 1/1.8)|s - 0.5| with
    # mean 4/9 * 1/4; clipped (mass 4/9) conf 0 or 1 against frequency 1/9 -> total 1/9
    assert ece == pytest.approx(1 / 9, abs=0.005)


def test_classification_single_and_multi_with_missing():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    r = classification_calibration(probs, labels, "single", n_bins=10)
    # top-label confidences 0.9 (correct), 0.7 (correct), 0.6 (wrong): three separate bins
    assert r["ece"] == pytest.approx((0.1 + 0.3 + 0.6) / 3)
    assert r["reliability"]["count"][8] == 1
    multi = np.array([[0.9, 0.2], [0.1, 0.8]])
    y = np.array([[1, -1], [0, 1]])
    m = classification_calibration(multi, y, "multi", ["a", "b"], n_bins=10)
    assert m["per_label"]["b"]["n"] == 1 and m["per_label"]["a"]["n"] == 2
    y_changed = y.copy()
    multi_changed = multi.copy()
    multi_changed[0, 1] = 0.99  # the missing entry's probability changes nothing
    assert classification_calibration(multi_changed, y_changed, "multi", n_bins=10)["ece"] == \
        pytest.approx(m["ece"])
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.01, 0.04]))


def test_bad_input():
    with pytest.raises(ValueError, match="differ"):
        reliability_bins(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_bins(np.array([1.2]), np.array([1]))
    with pytest.raises(ValueError, match="0 or 1"):
        reliability_bins(np.array([0.2]), np.array([2]))
