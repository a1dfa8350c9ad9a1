"""Threshold rules on hand-made score sets give the hand-computed thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.thresholds import choose_threshold, threshold_at_temperature

# scores of 4 negatives and 4 positives
S = np.array([0.1, 0.3, 0.35, 0.6, 0.4, 0.55, 0.8, 0.9])
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_youden_and_balanced_accuracy():
    # t = 0.4: sens 4/4, spec 3/4 (0.6 is a false positive): J = 0.75, the maximum
    r = choose_threshold(S, Y, "youden")
    assert r == {"threshold": 0.4, "sensitivity": 1.0, "specificity": 0.75, "youden": 0.75}
    assert choose_threshold(S, Y, "balanced_accuracy") == r


def test_target_sensitivity_takes_the_largest_threshold_that_reaches_it():
    # sens >= 0.75 first reached (descending) at t = 0.55 (0.55, 0.8, 0.9 of 4): spec 3/4
    r = choose_threshold(S, Y, "sensitivity", target=0.75)
    assert r["threshold"] == 0.55 and r["sensitivity"] == 0.75 and r["specificity"] == 0.75
    assert choose_threshold(S, Y, "sensitivity", target=1.0)["threshold"] == 0.4
    assert choose_threshold(S, Y, "sensitivity", target=0.25)["threshold"] == 0.9


def test_argmax_and_ties_and_errors():
    r = choose_threshold(S, Y, "argmax")
    assert r["threshold"] == 0.5 and r["sensitivity"] == 0.75 and r["specificity"] == 0.75
    # two thresholds with the same J: the larger (more specific) one is chosen
    s = np.array([0.2, 0.4, 0.6, 0.8])
    y = np.array([0, 1, 0, 1])
    # t=0.8: sens .5 spec 1 (J .5); t=0.4: sens 1 spec .5 (J .5)
    assert choose_threshold(s, y, "youden")["threshold"] == 0.8
    with pytest.raises(ValueError, match="both positive and negative"):
        choose_threshold(s, np.ones(4), "youden")
    with pytest.raises(ValueError, match="target"):
        choose_threshold(S, Y, "sensitivity")
    with pytest.raises(ValueError, match="rule must be"):
        choose_threshold(S, Y, "f1")


def test_a_threshold_moves_with_the_temperature_to_the_same_decisions():
    # hand-computed: t = 0.75 at T = 2 is the logit 2 ln 3 = 2.1972; at T = 1 that logit is
    # sigmoid(2.1972) = 9 / 10 (sigmoid(2 ln 3) = 3^2 / (1 + 3^2))
    assert threshold_at_temperature(0.75, 2.0, 1.0) == pytest.approx(0.9, abs=1e-12)
    assert threshold_at_temperature(0.25, 2.0, 1.0) == pytest.approx(0.1, abs=1e-12)
    assert threshold_at_temperature(0.5, 0.7, 1.9) == 0.5  # the logit 0 stays
    assert threshold_at_temperature(0.0, 1.0, 2.0) == 0.0
    assert threshold_at_temperature(1.0, 1.0, 2.0) == 1.0
    assert threshold_at_temperature(0.3, 1.3, 1.3) == 0.3
    # every case keeps its decision: a binary softmax and a sigmoid, random logits
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, (2000, 2))
    for t_from, t_to, th in [(0.8, 1.0, 0.62), (1.0, 0.8, 0.62), (1.7, 0.9, 0.18)]:
        new = threshold_at_temperature(th, t_from, t_to)
        p_from = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0]) / t_from))  # softmax(z / T)[:, 1]
        p_to = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0]) / t_to))
        assert new != th
        np.testing.assert_array_equal(p_from >= th, p_to >= new)
    with pytest.raises(ValueError, match="finite and positive"):
        threshold_at_temperature(0.4, 0.0, 1.0)
