"""Decision thresholds chosen by a stated rule (issue 13: thresholds that transfer).

For a binary score (the probability of the positive class, or of one label of a multi-label
task) and 0/1 labels, a case is called positive when ``score >= t``. The rules:

* ``"youden"`` — maximise Youden's J = sensitivity + specificity - 1. For two classes this is
  also the **balanced-accuracy optimum** (balanced accuracy = (1 + J) / 2), so the rule
  ``"balanced_accuracy"`` gives the same threshold;
* ``"sensitivity"`` — the largest threshold whose sensitivity is at least ``target`` (the
  screening use: miss at most ``1 - target`` of the positives);
* ``"argmax"`` — ``t = 0.5`` (what an un-tuned classifier does).

Candidates are the observed scores; among equally good thresholds the largest is taken (the
most specific). Choose thresholds on out-of-fold predictions, never on the data they are then
judged on.
"""

from __future__ import annotations

import numpy as np

RULES = ("youden", "balanced_accuracy", "sensitivity", "argmax")


def _rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (descending) with the sensitivity and specificity of each."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and "
                         f"{y.shape}")
    if y.all() or not y.any():
        raise ValueError("a threshold needs both positive and negative cases")
    cand = np.unique(s)[::-1]
    pos, neg = s[y], s[~y]
    sens = (pos[None, :] >= cand[:, None]).mean(1)
    spec = (neg[None, :] < cand[:, None]).mean(1)
    return cand, sens, spec


def choose_threshold(scores: np.ndarray, labels: np.ndarray, rule: str = "youden",
                     target: float | None = None) -> dict[str, float]:
    """The threshold of ``rule`` and its sensitivity and specificity on these cases.

    Args:
        scores: ``(N,)`` scores of the positive class.
        labels: ``(N,)`` 0/1 labels (missing labels removed by the caller).
        rule: One of :data:`RULES`.
        target: The sensitivity to reach with ``rule="sensitivity"``, in ``(0, 1]``.

    Returns:
        ``{"threshold", "sensitivity", "specificity", "youden"}``.

    Raises:
        ValueError: unknown rule, missing target, or only one class present.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    cand, sens, spec = _rates(scores, labels)
    if rule == "argmax":
        t = 0.5
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels).astype(bool)
        se, sp = float((s[y] >= t).mean()), float((s[~y] < t).mean())
        return {"threshold": t, "sensitivity": se, "specificity": sp, "youden": se + sp - 1}
    if rule == "sensitivity":
        if target is None or not 0.0 < target <= 1.0:
            raise ValueError(f"the sensitivity rule needs a target in (0, 1], got {target}")
        ok = np.flatnonzero(sens >= target - 1e-12)
        i = int(ok[0])  # candidates descend: the first that reaches it is the largest
    else:
        j = sens + spec - 1.0
        i = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    return {"threshold": float(cand[i]), "sensitivity": float(sens[i]),
            "specificity": float(spec[i]), "youden": float(sens[i] + spec[i] - 1.0)}


def threshold_at_temperature(threshold: float, t_from: float, t_to: float) -> float:
    """The probability threshold at temperature ``t_to`` that makes the decisions
    ``threshold`` made at temperature ``t_from``.

    A tempered probability is ``p = sigmoid(z / T)`` (a sigmoid output; for a two-class softmax
    ``z`` is the logit difference), so ``p >= t`` at ``T_from`` exactly when
    ``z >= T_from logit(t)``, i.e. when ``sigmoid(z / T_to) >= sigmoid(T_from logit(t) / T_to)``:
    the same operating point on the logits, re-expressed in the new probabilities. Exact for one
    model; for an ensemble (members tempered, then averaged) it is the threshold of a member
    whose logit sits at the old operating point.

    Args:
        threshold: The threshold at ``t_from``; 0 and 1 (every / no case positive) stay.
        t_from: The temperature it was chosen at (> 0).
        t_to: The temperature the probabilities now carry (> 0).

    Returns:
        The threshold at ``t_to``.

    Raises:
        ValueError: a temperature that is not a finite positive number.
    """
    import math

    for t in (t_from, t_to):
        if not (math.isfinite(t) and t > 0.0):
            raise ValueError(f"temperatures must be finite and positive, got {t}")
    th = float(threshold)
    if th <= 0.0 or th >= 1.0 or t_from == t_to:
        return th
    z = t_from * (math.log(th) - math.log1p(-th)) / t_to
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
