"""Calibration metrics (E5): hand values, an independent loop, calibrated vs overconfident."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.calibration import (
    brier_score,
    classification_calibration,
    ece_if_calibrated,
    expected_calibration_error,
    reliability_bins,
    segmentation_calibration,
    voxel_confidence,
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


def test_equal_mass_hand_values():
    # N = 6, 3 bins: target ranks 1-2, 3-4, 5-6; the three 0.3s (ranks 3-5) stay together in the
    # bin of their lowest rank, so the counts are 2, 3, 1
    conf = np.array([0.3, 0.9, 0.1, 0.3, 0.2, 0.3])
    out = np.array([0, 1, 0, 1, 1, 1])
    b = reliability_bins(conf, out, 3, binning="mass")
    np.testing.assert_allclose(b["edges"], [0.1, 0.2, 0.3, 0.9])
    assert b["count"].tolist() == [2, 3, 1]
    np.testing.assert_allclose(b["confidence"], [0.15, 0.3, 0.9])
    np.testing.assert_allclose(b["frequency"], [0.5, 2 / 3, 1.0])
    ece, mce = expected_calibration_error(conf, out, 3, binning="mass")
    assert ece == pytest.approx(2 / 6 * 0.35 + 3 / 6 * (2 / 3 - 0.3) + 1 / 6 * 0.1)  # 0.31667
    assert mce == pytest.approx(2 / 3 - 0.3)
    # no ties, N = 8 in 3 bins: ranks 1-3, 4-6, 7-8
    c8 = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75])
    o8 = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    b8 = reliability_bins(c8[::-1], o8[::-1], 3, binning="mass")  # order does not matter
    assert b8["count"].tolist() == [3, 3, 2]
    np.testing.assert_allclose(b8["frequency"], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(b8["edges"], [0.05, 0.25, 0.55, 0.75])
    # fewer samples than bins: empty bins are allowed (NaN), never split samples
    b2 = reliability_bins(np.array([0.4, 0.7]), np.array([0, 1]), 4, binning="mass")
    assert b2["count"].tolist() == [1, 0, 1, 0] and np.isnan(b2["frequency"][1])
    # one bin: ECE = |mean outcome - mean confidence| for both binnings
    assert expected_calibration_error(conf, out, 1, "mass")[0] == pytest.approx(
        expected_calibration_error(conf, out, 1, "width")[0])
    with pytest.raises(ValueError, match="binning"):
        reliability_bins(conf, out, 3, binning="quantile")


def _loop_mass_ece(conf, out, n_bins):
    """Reference: rank bins by sorted position, then move every tie run to its first rank's bin."""
    pairs = sorted(zip(conf, out, strict=True))
    n = len(pairs)
    bins = []
    for r in range(1, n + 1):  # 1-based rank r is in bin k when ceil(kN/B) < r <= ceil((k+1)N/B)
        k = 0
        while -(-(k + 1) * n // n_bins) < r:
            k += 1
        bins.append(k)
    for i in range(1, n):
        if pairs[i][0] == pairs[i - 1][0]:
            bins[i] = bins[i - 1]
    total = 0.0
    for k in range(n_bins):
        sel = [p for p, b in zip(pairs, bins, strict=True) if b == k]
        if sel:
            cs, os_ = zip(*sel, strict=True)
            total += len(sel) / n * abs(np.mean(os_) - np.mean(cs))
    return total


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize(("n", "n_bins"), [(500, 10), (37, 6), (5, 15)])
def test_equal_mass_agrees_with_a_plain_loop(n, n_bins, decimals):
    rng = np.random.default_rng(n + n_bins)
    conf = rng.uniform(0, 1, n)
    if decimals is not None:  # many ties
        conf = np.round(conf, decimals)
    out = (rng.uniform(0, 1, n) < conf**2).astype(int)
    assert expected_calibration_error(conf, out, n_bins, "mass")[0] == pytest.approx(
        _loop_mass_ece(conf, out, n_bins), abs=1e-12)
    perm = rng.permutation(n)
    assert expected_calibration_error(conf[perm], out[perm], n_bins, "mass")[0] == \
        pytest.approx(expected_calibration_error(conf, out, n_bins, "mass")[0], abs=1e-15)
    counts = reliability_bins(conf, out, n_bins, "mass")["count"]
    if decimals is None and n >= n_bins:  # no ties: counts differ by at most one
        assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_equal_mass_calibrated_and_overconfident():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 100_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(p, y, 15, "mass")[0] < 0.01
    sharp = np.clip(0.5 + 1.8 * (p - 0.5), 0, 1)
    assert expected_calibration_error(sharp, y, 15, "mass")[0] == pytest.approx(1 / 9, abs=0.01)


def test_classification_records_binning():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    r = classification_calibration(probs, labels, "single", n_bins=10)
    assert r["binning"] == "width"
    m = classification_calibration(probs, labels, "single", n_bins=3, binning="mass")
    # one sample per bin: the same per-sample gaps as equal-width bins of width 0.1
    assert m["binning"] == "mass" and m["ece"] == pytest.approx(r["ece"])
    assert m["reliability"]["edges"] == pytest.approx([0.6, 0.6, 0.7, 0.9])


def test_voxel_level_hand_values_and_mask():
    # (C=3, 2, 2) probabilities, a label map and a mask hiding voxel (1, 1)
    probs = np.array([[[0.7, 0.2], [0.1, 0.5]],
                      [[0.2, 0.5], [0.3, 0.4]],
                      [[0.1, 0.3], [0.6, 0.1]]])
    labels = np.array([[0, 2], [2, 255]])
    mask = np.array([[1, 1], [1, 0]])
    conf, correct = voxel_confidence(probs, labels, mask)
    np.testing.assert_allclose(conf, [0.7, 0.5, 0.6])
    np.testing.assert_allclose(correct, [1.0, 0.0, 1.0])
    r = segmentation_calibration(probs, labels[None], mask, n_bins=10)
    assert r["n"] == 3 and r["binning"] == "width"
    # bins (0.6, 0.7] conf 0.7 correct; (0.5, 0.6] 0.6 correct; (0.4, 0.5] 0.5 wrong
    assert r["ece"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert r["mce"] == pytest.approx(0.5)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.2**2 + 0.5**2 + 0.7**2)
             + (0.1**2 + 0.3**2 + 0.4**2)) / 3
    assert r["brier"] == pytest.approx(brier)
    # the masked voxel changes nothing whatever its probabilities and label
    p2 = probs.copy()
    p2[:, 1, 1] = [0.0, 0.0, 1.0]
    l2 = labels.copy()
    l2[1, 1] = 0
    assert segmentation_calibration(p2, l2, mask, n_bins=10) == r
    # without the mask the fourth voxel (label 255) is refused
    with pytest.raises(ValueError, match="labels"):
        voxel_confidence(probs, labels)
    with pytest.raises(ValueError, match="mask"):
        voxel_confidence(probs, labels, np.ones((3, 2)))
    with pytest.raises(ValueError, match="C >= 2"):
        voxel_confidence(probs[:1], labels)


def test_voxel_level_mask_excludes_exactly_on_a_volume():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 7, 8))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    labels = rng.integers(0, 4, (6, 7, 8))
    mask = rng.uniform(size=(6, 7, 8)) < 0.5
    for binning in ("width", "mass"):
        r = segmentation_calibration(probs, labels, mask, n_bins=8, binning=binning)
        conf = probs.max(0)[mask]
        correct = (probs.argmax(0) == labels)[mask].astype(float)
        ece, mce = expected_calibration_error(conf, correct, 8, binning)
        assert r["n"] == int(mask.sum())
        assert r["ece"] == pytest.approx(ece, abs=1e-15) and r["mce"] == pytest.approx(mce)
        assert r["ece"] == pytest.approx(_loop_ece(conf, correct, 8) if binning == "width"
                                         else _loop_mass_ece(conf, correct, 8), abs=1e-12)
    empty = segmentation_calibration(probs, labels, np.zeros((6, 7, 8)), binning="mass")
    assert empty["n"] == 0 and empty["ece"] is None and empty["brier"] is None


def test_ece_of_a_calibrated_forecaster_matches_the_binomial_closed_form():
    # n cases all at confidence c fall in one bin: ECE = |Y / n - c|, Y ~ Binomial(n, c), whose
    # mean is a finite sum over the binomial pmf
    from scipy.stats import binom

    n, c = 40, 0.8
    k = np.arange(n + 1)
    exact = float(np.sum(binom.pmf(k, n, c) * np.abs(k / n - c)))  # 0.0508...
    r = ece_if_calibrated(np.full(n, c), n_sim=4000, seed=1)
    se = 0.04 / np.sqrt(4000)  # the ECE's sd here is below 0.04
    assert r["mean"] == pytest.approx(exact, abs=4 * se)
    assert r["n_sim"] == 4000 and "p_value" not in r
    lo, hi = r["interval95"]
    vals, order = np.abs(k / n - c), np.argsort(np.abs(k / n - c), kind="stable")
    cdf = np.cumsum(binom.pmf(k, n, c)[order])
    q975 = vals[order][np.searchsorted(cdf, 0.975)]  # the exact 97.5% quantile
    assert abs(hi - q975) <= 1 / n + 1e-12  # within one step of the discrete distribution
    assert lo <= 1 / n and lo < exact < hi
    # the floor shrinks like 1 / sqrt(n)
    big = ece_if_calibrated(np.full(4 * n, c), n_sim=4000, seed=1)
    assert big["mean"] == pytest.approx(r["mean"] / 2, rel=0.1)


def test_ece_if_calibrated_p_value_tells_overconfident_from_calibrated():
    rng = np.random.default_rng(7)  # not the function's own seed 0: independent draws
    conf = rng.uniform(0.55, 1.0, 300)
    calibrated = (rng.random(300) < conf).astype(float)
    over = (rng.random(300) < conf - 0.2).astype(float)  # 0.2 too confident everywhere
    e_cal = expected_calibration_error(conf, calibrated)[0]
    e_over = expected_calibration_error(conf, over)[0]
    r_cal = ece_if_calibrated(conf, e_cal, n_sim=500)
    r_over = ece_if_calibrated(conf, e_over, n_sim=500)
    assert r_cal["p_value"] > 0.05
    assert r_over["p_value"] == pytest.approx(1 / 501)
    # the same draws through expected_calibration_error, one outcome set at a time
    draws = np.random.default_rng(0)
    direct = [expected_calibration_error(conf, (draws.random(300) < conf).astype(float))[0]
              for _ in range(50)]
    for binning in ("width", "mass"):
        draws = np.random.default_rng(0)
        want = [expected_calibration_error(conf, (draws.random(300) < conf).astype(float),
                                           binning=binning)[0] for _ in range(50)]
        assert ece_if_calibrated(conf, binning=binning, n_sim=50)["mean"] == pytest.approx(
            np.mean(want), abs=1e-12)
    assert ece_if_calibrated(conf, n_sim=50)["mean"] == pytest.approx(np.mean(direct), abs=1e-12)
    assert ece_if_calibrated(np.array([]), 0.1) is None
    assert ece_if_calibrated(conf, 0.1, n_sim=0) is None
    # evaluate's calibration block carries it, for single- and multi-label
    p = np.stack([1 - conf, conf], 1)
    out = classification_calibration(p, np.ones(300, int), "single", n_sim=50)
    assert out["ece_if_calibrated"]["n_sim"] == 50
    assert out["ece_if_calibrated"]["mean"] == pytest.approx(
        ece_if_calibrated(conf, n_sim=50)["mean"])
    multi = classification_calibration(p, np.stack([np.zeros(300), np.ones(300)], 1), "multi",
                                       n_sim=0)
    assert multi["ece_if_calibrated"] is None
