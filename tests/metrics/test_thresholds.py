"""Threshold rules on hand-made score sets give the hand-computed thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.thresholds import choose_threshold

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
