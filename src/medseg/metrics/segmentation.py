"""Per-case evaluation of a label map against a reference (E5, T5).

:func:`evaluate_case` computes, for each foreground label, Dice, IoU, HD95 and ASSD (mm), the
confusion counts, the volumes (ml in 3D, mm^2 in 2D) and flags for empty structures, all over
observed voxels only, and records the empty-case policy it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.metrics.agreement import percent_volume_difference, volume_difference
from medseg.metrics.policy import DEFAULT_POLICY, EmptyPolicy
from medseg.metrics.surface import (
    CONNECTIVITIES,
    assd_from_distances,
    check_spacing,
    hausdorff_from_distances,
    nsd_from_distances,
    surface_distances,
)

#: Per-class result keys, in the order of ``metrics.csv`` columns.
CLASS_RESULT_KEYS = (
    "dice", "iou", "hd95", "assd", "nsd", "tp", "fp", "fn", "n_pred", "n_ref",
    "volume_pred", "volume_ref", "volume_diff", "volume_diff_pct", "volume_unit", "pred_empty",
    "ref_empty",
)


def evaluate_case(
    pred_labels: Any,
    ref_labels: Any,
    spacing: Sequence[float] | None,
    class_ids: Sequence[int],
    mask: Any | None = None,
    policy: EmptyPolicy | None = None,
    case_id: str | None = None,
    nsd_tolerance: float = 1.0,
    connectivity: str = "full",
) -> dict[str, Any]:
    """Overlap, surface and volume metrics of every foreground class of one case.

    Args:
        pred_labels: Predicted label map ``(*spatial)`` (integer values).
        ref_labels: Reference label map ``(*spatial)``; values at unobserved voxels are ignored
            (an ignore label such as 255 is fine there).
        spacing: Voxel size in mm per array axis (``ImageMeta.spacing``); ``None`` means 1.0.
        class_ids: Foreground labels to evaluate, e.g. ``[1, 2]``.
        mask: Optional binary observation mask ``(*spatial)``; only voxels where it is 1 count.
        policy: Empty-case policy (default :data:`DEFAULT_POLICY`).
        case_id: Name of the case, kept in the result for tables and files.
        nsd_tolerance: Tolerance in mm of the normalised surface Dice.
        connectivity: Surface definition of HD95 / ASSD / NSD, ``"full"`` or ``"face"``
            (:mod:`medseg.metrics.surface`).

    Returns:
        ``{"case", "shape", "spacing", "n_observed", "policy", "classes"}`` where ``classes``
        maps each class id to a dict with the keys of :data:`CLASS_RESULT_KEYS`: ``dice``,
        ``iou``, ``hd95`` and ``assd`` (mm) as floats (NaN where the policy says undefined),
        ``tp``/``fp``/``fn``/``n_pred``/``n_ref`` voxel counts, ``volume_pred``/``volume_ref``
        in ``volume_unit`` (``"ml"`` for 3D, ``"mm^2"`` for 2D, ``"mm^n"`` otherwise), their
        difference ``volume_diff`` (predicted - reference, same unit) and ``volume_diff_pct``
        (percent of the pair's mean; NaN when both are empty, see
        :mod:`medseg.metrics.agreement`) and the booleans ``pred_empty``/``ref_empty``.
    """
    pred = np.asarray(pred_labels)
    ref = np.asarray(ref_labels)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    sp = check_spacing(spacing, pred.ndim)
    pol = policy or DEFAULT_POLICY
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    if not nsd_tolerance >= 0:
        raise ValueError(f"nsd_tolerance must be >= 0 mm, got {nsd_tolerance}")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != pred.shape:
            raise ValueError(f"mask shape {m.shape} differs from label map shape {pred.shape}")
        m = m.astype(bool)
    else:
        m = None
    voxel_mm = math.prod(sp)
    if pred.ndim == 3:
        unit, scale = "ml", voxel_mm / 1000.0
    elif pred.ndim == 2:
        unit, scale = "mm^2", voxel_mm
    else:
        unit, scale = f"mm^{pred.ndim}", voxel_mm

    classes: dict[int, dict[str, Any]] = {}
    for c in class_ids:
        p = pred == c
        r = ref == c
        if m is not None:
            p &= m
            r &= m
        tp = int(np.count_nonzero(p & r))
        n_p = int(np.count_nonzero(p))
        n_r = int(np.count_nonzero(r))
        fp, fn = n_p - tp, n_r - tp
        pe, re = n_p == 0, n_r == 0
        ov = pol.overlap_value(pe, re)
        dice_v = ov if ov is not None else 2.0 * tp / (n_p + n_r)
        iou_v = ov if ov is not None else tp / float(tp + fp + fn)
        dist = pol.distance_value(pe, re, pred.shape, sp)
        if dist is None:
            d_pr, d_rp = surface_distances(p, r, sp, connectivity=connectivity)
            hd_v = hausdorff_from_distances(d_pr, d_rp, 95.0)
            assd_v = assd_from_distances(d_pr, d_rp)
        else:
            hd_v = assd_v = dist
        nsd_v = ov if ov is not None else (
            nsd_from_distances(d_pr, d_rp, nsd_tolerance) if dist is None else math.nan)
        classes[int(c)] = {
            "dice": float(dice_v), "iou": float(iou_v), "hd95": float(hd_v),
            "assd": float(assd_v), "nsd": float(nsd_v), "tp": tp, "fp": fp, "fn": fn,
            "n_pred": n_p, "n_ref": n_r,
            "volume_pred": n_p * scale, "volume_ref": n_r * scale,
            "volume_diff": volume_difference(n_p * scale, n_r * scale),
            "volume_diff_pct": percent_volume_difference(n_p * scale, n_r * scale),
            "volume_unit": unit,
            "pred_empty": pe, "ref_empty": re,
        }
    return {
        "case": case_id,
        "shape": [int(s) for s in pred.shape],
        "spacing": list(sp),
        "n_observed": int(pred.size if m is None else np.count_nonzero(m)),
        "policy": pol.to_dict(),
        "surface": {"connectivity": connectivity, "nsd_tolerance_mm": float(nsd_tolerance)},
        "classes": classes,
    }
