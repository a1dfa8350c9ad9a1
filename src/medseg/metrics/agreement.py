"""Volume agreement as clinicians read it: per-case volume differences and Bland-Altman (E5).

Measurement tasks are judged by how far a predicted volume lies from the reference volume, more
than by Dice. For one structure in one case:

* **volume difference** ``d = V_pred - V_ref`` in the unit of the volumes (ml for 3D, mm^2 for
  2D in :func:`medseg.metrics.evaluate_case`); positive = the prediction is larger;
* **percentage difference** ``100 * d / ((V_pred + V_ref) / 2)``, relative to the mean of the
  two measurements (the Bland-Altman percentage form), in ``[-200, 200]``.

Over cases, the **Bland-Altman** summary (Bland & Altman, Lancet 1986) of the differences
``d_i``: ``bias = mean(d_i)``, ``SD`` the sample standard deviation (``ddof=1``), the 95% limits
of agreement ``bias -/+ 1.96 SD`` and the 95% confidence interval of the bias
``bias -/+ t(0.975, n-1) SD / sqrt(n)``; the same for the percentage differences.

Empty-case policy (stated in every summary as :data:`VOLUME_EMPTY_POLICY`):

* both empty: ``d = 0`` (exact agreement; counted in the absolute form), the percentage
  difference is undefined (0/0, NaN) and left out of the percentage form;
* prediction empty (reference not): ``d = -V_ref``, percentage ``-200``; reference empty
  (prediction not): ``d = V_pred``, percentage ``+200``; both are counted;
* NaN values (a volume that could not be computed) are skipped and counted in ``n_nan``.

With fewer than two differences the SD, the limits and the interval are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

#: The empty-case policy of the volume differences, recorded in every summary.
VOLUME_EMPTY_POLICY = (
    "volume difference = predicted - reference; both empty: difference 0 (counted), percentage "
    "undefined (left out); one empty: difference -reference / +prediction, percentage "
    "-200 / +200 (counted)")

#: z of the 95% limits of agreement.
Z_95 = 1.96


def volume_difference(volume_pred: float, volume_ref: float) -> float:
    """Signed volume difference ``V_pred - V_ref`` (positive: over-segmentation).

    Args:
        volume_pred: Predicted volume (any unit, e.g. ml).
        volume_ref: Reference volume in the same unit.

    Returns:
        The difference in that unit (NaN when either volume is NaN).
    """
    return float(volume_pred) - float(volume_ref)


def percent_volume_difference(volume_pred: float, volume_ref: float) -> float:
    """``100 * (V_pred - V_ref) / ((V_pred + V_ref) / 2)``, in ``[-200, 200]``.

    Args:
        volume_pred: Predicted volume (>= 0).
        volume_ref: Reference volume in the same unit (>= 0).

    Returns:
        The percentage difference; NaN when both are empty (0/0) or either is NaN; ``-200``
        for an empty prediction, ``+200`` for an empty reference.
    """
    p, r = float(volume_pred), float(volume_ref)
    mean = (p + r) / 2.0
    if not math.isfinite(mean) or mean == 0.0:
        return math.nan
    return 100.0 * (p - r) / mean


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman summary of paired differences (same unit as the differences).

    Attributes:
        bias: Mean difference.
        sd: Sample standard deviation of the differences (``ddof=1``).
        loa_low: Lower 95% limit of agreement ``bias - 1.96 sd``.
        loa_high: Upper 95% limit of agreement ``bias + 1.96 sd``.
        bias_ci_low: Lower end of the 95% confidence interval of the bias (Student t).
        bias_ci_high: Upper end of that interval.
        n: Number of differences used.
        n_nan: Number of NaN differences skipped.
    """

    bias: float
    sd: float
    loa_low: float
    loa_high: float
    bias_ci_low: float
    bias_ci_high: float
    n: int
    n_nan: int

    def to_dict(self, suffix: str = "") -> dict[str, float | int]:
        """The fields as a dict, each key followed by ``suffix`` (e.g. ``"_pct"``)."""
        return {f"{k}{suffix}": v for k, v in asdict(self).items()}


def bland_altman(differences: Sequence[float] | np.ndarray, z: float = Z_95) -> BlandAltman:
    """Bland-Altman statistics of paired differences.

    Args:
        differences: ``(N,)`` differences ``measured - reference`` (NaN skipped).
        z: Multiplier of the SD for the limits of agreement (1.96: 95%).

    Returns:
        :class:`BlandAltman`; with no value every statistic is NaN, with one the bias is that
        value and the SD, limits and interval are NaN.
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    nan = np.isnan(d)
    v = d[~nan]
    n = int(v.size)
    bias = float(v.mean()) if n else math.nan
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    else:
        sd = half = math.nan
    return BlandAltman(bias=bias, sd=sd, loa_low=bias - z * sd, loa_high=bias + z * sd,
                       bias_ci_low=bias - half, bias_ci_high=bias + half, n=n,
                       n_nan=int(nan.sum()))


def bland_altman_pairs(measured: Sequence[float] | np.ndarray,
                       reference: Sequence[float] | np.ndarray,
                       percent: bool = False, z: float = Z_95) -> BlandAltman:
    """Bland-Altman statistics of paired measurements (e.g. predicted and reference volumes).

    Args:
        measured: ``(N,)`` measurements to judge (predicted volumes).
        reference: ``(N,)`` reference measurements.
        percent: Use the percentage differences of :func:`percent_volume_difference` (pairs
            with both values 0 are left out, counted in ``n_nan``).
        z: Multiplier of the SD for the limits of agreement.

    Returns:
        :class:`BlandAltman` of the (percentage) differences.

    Raises:
        ValueError: the two sequences differ in length.
    """
    m = np.asarray(measured, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if m.shape != r.shape:
        raise ValueError(f"measured ({m.size}) and reference ({r.size}) differ in length")
    if percent:
        d = np.array([percent_volume_difference(a, b) for a, b in zip(m, r, strict=True)])
    else:
        d = m - r
    return bland_altman(d, z)


def volume_agreement(case_results: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per class, the Bland-Altman summary of predicted against reference volumes.

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case` (each class holds
            ``volume_pred``, ``volume_ref`` and ``volume_unit``).

    Returns:
        ``{class_id: {"unit", "bias", "sd", "loa_low", "loa_high", "bias_ci_low",
        "bias_ci_high", "n", "n_nan", the same keys with "_pct" (percentage form, pairs with
        both volumes 0 left out), "n_both_empty", "policy"}}``; ``unit`` is the volumes' unit
        (``"ml"`` for 3D, ``"mm^2"`` for 2D).

    Raises:
        ValueError: one class measured in different units across cases (2D and 3D mixed).
    """
    pairs: dict[int, tuple[list[float], list[float], set[str]]] = {}
    for case in case_results:
        for cid, res in case["classes"].items():
            pred, ref, units = pairs.setdefault(int(cid), ([], [], set()))
            pred.append(float(res.get("volume_pred", math.nan)))
            ref.append(float(res.get("volume_ref", math.nan)))
            units.add(str(res.get("volume_unit", "")))
    out: dict[int, dict[str, Any]] = {}
    for cid in sorted(pairs):
        pred, ref, units = pairs[cid]
        if len(units) > 1:
            raise ValueError(f"class {cid} has volumes in several units {sorted(units)}; "
                             "evaluate 2D and 3D cases separately")
        p, r = np.asarray(pred), np.asarray(ref)
        out[cid] = {"unit": units.pop() if units else "",
                    **bland_altman_pairs(p, r).to_dict(),
                    **bland_altman_pairs(p, r, percent=True).to_dict("_pct"),
                    "n_both_empty": int(np.count_nonzero((p == 0) & (r == 0))),
                    "policy": VOLUME_EMPTY_POLICY}
    return out


def bland_altman_points(case_results: Sequence[Mapping[str, Any]], class_id: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The points of a Bland-Altman plot of one class: pair means and differences.

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case`.
        class_id: The class.

    Returns:
        ``(means (N,), differences (N,))`` with ``mean = (V_pred + V_ref) / 2`` and
        ``difference = V_pred - V_ref``, over the cases that hold the class (NaN pairs
        dropped).
    """
    pts = [(float(c["classes"][k]["volume_pred"]), float(c["classes"][k]["volume_ref"]))
           for c in case_results for k in c["classes"] if int(k) == int(class_id)]
    a = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    a = a[~np.isnan(a).any(axis=1)]
    return (a[:, 0] + a[:, 1]) / 2.0, a[:, 0] - a[:, 1]
