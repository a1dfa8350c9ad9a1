"""Overlap metrics on binary arrays: Dice and IoU (E5), restricted to observed voxels (T5).

``dice = 2 |P & R| / (|P| + |R|)``, ``iou = |P & R| / |P | R|``, counted over voxels where the
observation mask is 1. Empty cases follow :class:`medseg.metrics.EmptyPolicy` (default: both
empty -> 1.0, only one empty -> 0.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.metrics.policy import DEFAULT_POLICY, EmptyPolicy


def as_binary(x: Any, name: str) -> np.ndarray:
    """A boolean numpy array from a bool or 0/1 array (torch tensors included).

    Raises:
        ValueError: If ``x`` holds values other than 0 and 1 (e.g. a multi-class label map:
            compare with a label first, ``labels == c``).
    """
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a
    if a.size and not np.all((a == 0) | (a == 1)):
        raise ValueError(
            f"{name} must be binary (bool or 0/1); for a label map pass (labels == class_id)"
        )
    return a.astype(bool)


def _inputs(
    pred: Any, ref: Any, mask: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = as_binary(pred, "pred")
    r = as_binary(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred shape {p.shape} differs from ref shape {r.shape}")
    m = None
    if mask is not None:
        m = as_binary(mask, "mask")
        if m.shape != p.shape:
            raise ValueError(f"mask shape {m.shape} differs from pred/ref shape {p.shape}")
    return p, r, m


def confusion_counts(pred: Any, ref: Any, mask: Any | None = None) -> tuple[int, int, int]:
    """True positives, false positives and false negatives over observed voxels.

    Args:
        pred: Binary prediction ``(*spatial)``.
        ref: Binary reference ``(*spatial)``.
        mask: Optional binary observation mask ``(*spatial)``; voxels where it is 0 are ignored.

    Returns:
        ``(tp, fp, fn)`` voxel counts.
    """
    p, r, m = _inputs(pred, ref, mask)
    if m is not None:
        p = p & m
        r = r & m
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice(pred: Any, ref: Any, mask: Any | None = None, policy: EmptyPolicy | None = None) -> float:
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` over observed voxels.

    Args:
        pred: Binary prediction ``(*spatial)``.
        ref: Binary reference ``(*spatial)``.
        mask: Optional binary observation mask.
        policy: Empty-case policy (default :data:`DEFAULT_POLICY`: both empty -> 1.0).

    Returns:
        Dice in ``[0, 1]`` (or NaN where the policy says so).
    """
    tp, fp, fn = confusion_counts(pred, ref, mask)
    fixed = (policy or DEFAULT_POLICY).overlap_value(tp + fp == 0, tp + fn == 0)
    return fixed if fixed is not None else 2.0 * tp / (2.0 * tp + fp + fn)


def iou(pred: Any, ref: Any, mask: Any | None = None, policy: EmptyPolicy | None = None) -> float:
    """Intersection over union (Jaccard) ``TP / (TP + FP + FN)`` over observed voxels.

    Args:
        pred: Binary prediction ``(*spatial)``.
        ref: Binary reference ``(*spatial)``.
        mask: Optional binary observation mask.
        policy: Empty-case policy (default :data:`DEFAULT_POLICY`: both empty -> 1.0).

    Returns:
        IoU in ``[0, 1]`` (or NaN where the policy says so).
    """
    tp, fp, fn = confusion_counts(pred, ref, mask)
    fixed = (policy or DEFAULT_POLICY).overlap_value(tp + fp == 0, tp + fn == 0)
    return fixed if fixed is not None else tp / float(tp + fp + fn)
