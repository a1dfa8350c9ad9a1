"""Split-conformal prediction intervals for one scalar per case (SPEC U5).

Typical use: the volume of a structure in mm^3. Each calibration case has a predicted value
``yhat`` (e.g. the volume of the mean-probability segmentation), a per-case ``spread`` (e.g. the
sample standard deviation of the volume over MC Dropout passes or ensemble members; may be 0)
and the true value ``y``. Two non-conformity scores:

* ``"absolute"``: ``s = |y - yhat|``; intervals ``yhat +- q`` (the same width for every case);
* ``"normalized"``: ``s = |y - yhat| / (spread + eps)``; intervals
  ``yhat +- q (spread + eps)`` (narrow where the model is sure, wide where it is not).
  ``eps`` (in the units of ``spread``) keeps the score finite when ``spread = 0``.

The quantile is the ``k``-th smallest of the ``n`` calibration scores with
``k = ceil((n + 1)(1 - alpha))``, i.e. the empirical quantile at level
``ceil((n + 1)(1 - alpha)) / n`` (the finite-sample correction). If calibration and test cases
are exchangeable, a new case's interval then contains its true value with probability
``>= 1 - alpha``; for continuous scores (no ties) the coverage, averaged over calibration sets,
is exactly ``k / (n + 1)``, and below ``1 - alpha + 1 / (n + 1)``. The guarantee is marginal
(over cases), not per case.

When ``n`` is too small (``k > n``, i.e. ``n < 1 / alpha - 1``: fewer than 9 cases for
``alpha = 0.1``, 4 for ``alpha = 0.2``), no finite quantile gives the guarantee: the quantile is
``+inf`` and every interval is ``(-inf, +inf)``.

:class:`ConformalCalibration` holds the result (quantile, alpha, score, n, eps) and round-trips
through a JSON-able dict (:meth:`ConformalCalibration.to_dict`, ``from_dict``) so it can be
stored in a model folder; an infinite quantile is written as the string ``"inf"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SCORES",
    "ConformalCalibration",
    "calibrate_conformal",
    "conformal_interval",
    "conformal_quantile",
    "conformal_rank",
    "conformity_scores",
]

SCORES = ("absolute", "normalized")
#: Default ``eps`` of the normalized score, in the units of ``spread``.
DEFAULT_EPS = 1e-6
_FORMAT = "medseg-conformal/1"


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0 < a < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return a


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def _check_eps(eps: float) -> float:
    e = float(eps)
    if not (math.isfinite(e) and e > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return e


def _vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim == 0:
        v = v.reshape(1)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one value per case, shape (n,), got {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name} must have {n} values (one per case), got {v.shape[0]}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v


def _width(spread: Any, score: str, eps: float, n: int) -> np.ndarray:
    if score == "absolute":
        return np.ones(n)
    if spread is None:
        raise ValueError("spread is required for score='normalized'")
    s = _vector(spread, "spread", n)
    if (s < 0).any():
        raise ValueError("spread must be >= 0 (a standard deviation)")
    return s + eps


def conformity_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    spread: np.ndarray | None = None,
    score: str = "absolute",
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """Non-conformity scores of calibration cases.

    Args:
        y_true: ``(n,)`` true values (e.g. volumes in mm^3).
        y_pred: ``(n,)`` predicted values.
        spread: ``(n,)`` per-case spread ``>= 0`` (e.g. the std of the volume over samples);
            required for ``"normalized"``, ignored for ``"absolute"``.
        score: ``"absolute"`` (``|y - yhat|``) or ``"normalized"``
            (``|y - yhat| / (spread + eps)``).
        eps: ``> 0``, added to ``spread`` (units of ``spread``).

    Returns:
        ``(n,)`` float64 scores ``>= 0``.

    Raises:
        ValueError: bad ``score`` or ``eps``, shapes that differ, non-finite values, a negative
            or missing ``spread``.
    """
    _check_score(score)
    eps = _check_eps(eps)
    y = _vector(y_true, "y_true")
    yhat = _vector(y_pred, "y_pred", y.shape[0])
    return np.abs(y - yhat) / _width(spread, score, eps, y.shape[0])


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, the rank of the conformal quantile among n scores.

    The product is rounded to 9 decimals before the ceiling, so that e.g. ``n = 9``,
    ``alpha = 0.1`` gives ``k = 9`` and not 10 through floating-point error.

    Raises:
        ValueError: ``n < 0`` or ``alpha`` outside ``(0, 1)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    a = _check_alpha(alpha)
    return math.ceil(round((n + 1) * (1.0 - a), 9))


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1)(1 - alpha))``-th smallest score.

    Args:
        scores: ``(n,)`` calibration scores (finite, ``>= 0`` for the scores of this module).
        alpha: Miscoverage level in ``(0, 1)``.

    Returns:
        The quantile, or ``+inf`` when ``n`` is too small (``k > n``, including ``n = 0``):
        then no finite interval carries the ``1 - alpha`` guarantee.

    Raises:
        ValueError: ``alpha`` outside ``(0, 1)``, scores not a finite vector.
    """
    s = _vector(scores, "scores") if np.size(scores) else np.zeros(0)
    k = conformal_rank(s.shape[0], alpha)
    if k > s.shape[0]:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


@dataclass(frozen=True)
class ConformalCalibration:
    """A calibrated split-conformal interval rule.

    Attributes:
        quantile: The conformal quantile ``q`` (``inf`` when ``n`` was too small).
        alpha: Miscoverage level; intervals aim at coverage ``1 - alpha``.
        score: ``"absolute"`` or ``"normalized"``.
        n: Number of calibration cases.
        eps: The ``eps`` of the normalized score (kept for the absolute score too).
    """

    quantile: float
    alpha: float
    score: str
    n: int
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        _check_score(self.score)
        _check_eps(self.eps)
        if not (isinstance(self.n, int | np.integer) and self.n >= 0):
            raise ValueError(f"n must be an integer >= 0, got {self.n!r}")
        q = float(self.quantile)
        if math.isnan(q) or q < 0:
            raise ValueError(f"quantile must be >= 0 (or inf), got {self.quantile!r}")

    @property
    def finite(self) -> bool:
        """Whether the intervals are finite (``n`` was large enough for ``alpha``)."""
        return math.isfinite(self.quantile)

    def interval(self, y_pred: np.ndarray, spread: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Intervals for new cases; see :func:`conformal_interval`."""
        return conformal_interval(self, y_pred, spread)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``quantile`` is the string ``"inf"`` when infinite)."""
        return {"format": _FORMAT,
                "quantile": float(self.quantile) if self.finite else "inf",
                "alpha": float(self.alpha), "score": self.score, "n": int(self.n),
                "eps": float(self.eps)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConformalCalibration:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a missing or unknown key, another ``format``, or invalid values.
        """
        keys = {"format", "quantile", "alpha", "score", "n", "eps"}
        missing = keys - set(d)
        unknown = set(d) - keys
        if missing or unknown:
            raise ValueError(f"conformal calibration dict: missing keys {sorted(missing)}, "
                             f"unknown keys {sorted(unknown)}")
        if d["format"] != _FORMAT:
            raise ValueError(f"conformal calibration format must be {_FORMAT!r}, got "
                             f"{d['format']!r}")
        q = d["quantile"]
        quantile = math.inf if q == "inf" else float(q)
        return cls(quantile=quantile, alpha=float(d["alpha"]), score=str(d["score"]),
                   n=int(d["n"]), eps=float(d["eps"]))


def calibrate_conformal(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    spread: np.ndarray | None = None,
    alpha: float = 0.1,
    score: str = "absolute",
    eps: float = DEFAULT_EPS,
) -> ConformalCalibration:
    """Calibrate split-conformal intervals on held-out cases.

    Args:
        y_true: ``(n,)`` true values of the calibration cases.
        y_pred: ``(n,)`` predicted values.
        spread: ``(n,)`` per-case spread ``>= 0`` (required for ``"normalized"``).
        alpha: Miscoverage level in ``(0, 1)``.
        score: ``"absolute"`` or ``"normalized"``.
        eps: ``> 0``, added to the spread in the normalized score.

    Returns:
        The :class:`ConformalCalibration`; its quantile is ``+inf`` when
        ``n < 1 / alpha - 1``.

    Raises:
        ValueError: as :func:`conformity_scores` and :func:`conformal_quantile`.
    """
    s = conformity_scores(y_true, y_pred, spread, score, eps)
    return ConformalCalibration(quantile=conformal_quantile(s, alpha), alpha=float(alpha),
                                score=score, n=int(s.shape[0]), eps=float(eps))


def conformal_interval(
    calibration: ConformalCalibration,
    y_pred: np.ndarray,
    spread: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction intervals ``[lower, upper]`` for new cases.

    Args:
        calibration: From :func:`calibrate_conformal` (or loaded with ``from_dict``).
        y_pred: ``(m,)`` predicted values of the new cases (a scalar gives ``(1,)``).
        spread: ``(m,)`` spreads ``>= 0``, required for the normalized score.

    Returns:
        ``(lower, upper)``, each ``(m,)``: ``y_pred -+ q`` (absolute) or
        ``y_pred -+ q (spread + eps)`` (normalized); ``-inf`` / ``+inf`` when the quantile is
        infinite.

    Raises:
        ValueError: non-finite ``y_pred``, a missing, negative or mis-shaped ``spread``.
    """
    yhat = _vector(y_pred, "y_pred")
    half = calibration.quantile * _width(spread, calibration.score, calibration.eps,
                                         yhat.shape[0])
    return yhat - half, yhat + half
