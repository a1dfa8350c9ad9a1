"""Post-processing parameters chosen on out-of-fold predictions (issue 13).

The seeded watershed (:mod:`medseg.instance.postprocess`) has thresholds whose best values
depend on the data and on how sharp the network's probabilities are. :func:`choose_postprocess`
searches a grid of :class:`PostprocessParams` for the one that maximises the mean F1@0.5 over
cases whose probabilities come from a model that never saw them (the folds' out-of-fold
predictions), so the choice transfers to new images; :func:`write_postprocess` stores it in the
model folder (``postprocess.json``) and :func:`read_postprocess` gives it back to prediction.

Ties keep the first best combination in grid order, with the configured parameters tried
first, so a flat objective never moves away from them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.instance.postprocess import (
    PostprocessParams,
    as_probs,
    flood_seeds,
    relabel_by_size,
    smooth_probs,
)
from medseg.io.atomic import atomic_write_text
from medseg.io.paths import read_json_object
from medseg.metrics.instance import iou_matrix, scores_at

POSTPROCESS_NAME = "postprocess.json"
POSTPROCESS_FORMAT = "medseg-postprocess/1"

#: The default search grid (6 x 3 x 3 x 3 x 3 x 3 = 1458 combinations; one watershed per
#: combination of all but ``min_size``, so 486 per case).
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "fg_threshold": (0.3, 0.5, 0.7),
    "boundary_weight": (0.0, 0.5, 1.0),
    "min_seed_size": (1, 4, 16),
    "min_size": (0, 10, 30),
    "smooth_sigma": (0.0, 1.0, 2.0),
}


def f1_at_05(reference: np.ndarray, prediction: np.ndarray) -> float:
    """F1 of the instances matched at IoU >= 0.5 (both empty: 1, one empty: 0)."""
    iou, _, _ = iou_matrix(reference, prediction)
    return float(scores_at(iou, 0.5)["f1"])


def grid_params(grid: Mapping[str, Sequence[Any]], base: PostprocessParams
                ) -> list[PostprocessParams]:
    """``base`` first, then every combination of ``grid`` (fields not in it from ``base``)."""
    fields = {f.name for f in dataclasses.fields(PostprocessParams)}
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise ValueError(f"unknown post-processing parameters {unknown}; valid: {sorted(fields)}")
    keys = list(grid)
    out = [base]
    for values in itertools.product(*(grid[k] for k in keys)):
        prm = dataclasses.replace(base, **dict(zip(keys, values, strict=True)))
        if prm != base:
            out.append(prm)
    return out


def mean_f1(cases: Sequence[tuple[np.ndarray, np.ndarray]],
            candidates: Sequence[PostprocessParams]) -> np.ndarray:
    """``(len(candidates),)`` mean F1@0.5 over ``cases`` of each candidate's instances.

    The same as averaging ``f1_at_05(ref, probs_to_instance_map(probs, prm))``, computed with
    one smoothing per case and sigma and one watershed per case and combination of all fields
    but ``min_size`` (which only drops small instances afterwards).
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, prm in enumerate(candidates):
        groups.setdefault(dataclasses.astuple(dataclasses.replace(prm, min_size=0)),
                          []).append(i)
    f1 = np.zeros((len(candidates), len(cases)))
    for j, (probs, ref) in enumerate(cases):
        raw = as_probs(probs)
        smoothed: dict[float, np.ndarray] = {}
        for idx in groups.values():
            key = candidates[idx[0]]
            if key.smooth_sigma not in smoothed:
                smoothed[key.smooth_sigma] = smooth_probs(raw, key.smooth_sigma)
            flooded = flood_seeds(smoothed[key.smooth_sigma], key)
            for i in idx:
                f1[i, j] = f1_at_05(ref, relabel_by_size(flooded, candidates[i].min_size))
    return f1.mean(axis=1)


def choose_postprocess(cases: Sequence[tuple[np.ndarray, np.ndarray]],
                       grid: Mapping[str, Sequence[Any]] | None = None,
                       base: PostprocessParams | None = None) -> tuple[PostprocessParams,
                                                                       dict[str, Any]]:
    """The grid point with the highest mean F1@0.5 over ``cases``.

    Args:
        cases: ``(probs (3, *spatial), reference instance map (*spatial))`` per case, the
            probabilities out-of-fold (from a model that did not train on the case).
        grid: Values to try per :class:`PostprocessParams` field (default
            :data:`DEFAULT_GRID`).
        base: The configured parameters: tried first and the source of the fields the grid
            does not vary.

    Returns:
        ``(best parameters, report)``; the report holds the criterion, the number of cases,
        the mean F1 of the best and of ``base``, and the ten best combinations.

    Raises:
        ValueError: no case, or an unknown field in ``grid``.
    """
    if not cases:
        raise ValueError("no case to choose the post-processing on")
    base = base or PostprocessParams()
    candidates = grid_params(DEFAULT_GRID if grid is None else grid, base)
    scores = mean_f1(cases, candidates)
    best = int(np.argmax(scores))  # the first maximum: base wins ties
    order = np.argsort(-scores, kind="stable")[:10]
    report = {
        "format": POSTPROCESS_FORMAT,
        "criterion": "mean F1@0.5 over the out-of-fold cases",
        "n_cases": len(cases),
        "n_candidates": len(candidates),
        "params": candidates[best].to_dict(),
        "f1": float(scores[best]),
        "configured": {"params": base.to_dict(), "f1": float(scores[0])},
        "top": [{"params": candidates[i].to_dict(), "f1": float(scores[i])} for i in order],
    }
    return candidates[best], report


def write_postprocess(folder: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``postprocess.json`` (the report of :func:`choose_postprocess`) atomically."""
    path = Path(folder) / POSTPROCESS_NAME
    atomic_write_text(path, json.dumps(dict(report), indent=2))
    return path


def load_postprocess(folder: str | Path) -> tuple[PostprocessParams, bool | None] | None:
    """``folder/postprocess.json`` read once: its parameters, and whether the out-of-fold
    predictions they were chosen on used test-time flips (``None`` for a file written before
    that was recorded); ``None`` when there is no file.

    Raises:
        InputError: the file is not a valid post-processing record.
    """
    path = Path(folder) / POSTPROCESS_NAME
    if not path.is_file():
        return None
    doc = read_json_object(path, "delete it (prediction then uses plan.json's "
                                 "instance.postprocess)")
    try:
        prm = PostprocessParams(**doc["params"])
        if not all(math.isfinite(float(v)) for v in (prm.seed_threshold, prm.fg_threshold,
                                                      prm.boundary_weight)):
            raise ValueError("not finite")
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"postprocess.json is invalid ({type(e).__name__}: {e})", path,
                         "delete it (prediction then uses plan.json's instance.postprocess)"
                         ) from None
    tta = doc.get("tta")
    return prm, tta if isinstance(tta, bool) else None


def read_postprocess(folder: str | Path) -> PostprocessParams | None:
    """The parameters stored in ``folder/postprocess.json`` (``None`` when there is none).

    Raises:
        InputError: the file is not a valid post-processing record.
    """
    record = load_postprocess(folder)
    return None if record is None else record[0]
