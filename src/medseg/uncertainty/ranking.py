"""Cases of a prediction folder ordered by their uncertainty, most uncertain first (U5).

Read by ``medseg review`` / ``medseg select`` (:mod:`medseg.workflows.review`) and by the
evaluation report, which lists the most uncertain cases first.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from medseg.errors import InputError

REVIEW_DEFAULT = "predictive_entropy_structure"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def rank_cases(pred: str | Path, by: str = REVIEW_DEFAULT) -> list[dict[str, Any]]:
    """Cases of a prediction folder, most uncertain first.

    Args:
        pred: The ``--output`` folder of ``medseg predict --uncertainty ...``.
        by: A column of ``uncertainty.csv`` (averaged over a case's structures; ``_structure``
            columns of a structure that was not predicted count as missing) or of
            ``predictions.csv`` (classification: ``predictive_entropy``, ``mutual_information``
            ... ; the ``_structure`` / ``_image`` suffix is dropped there).

    Returns:
        ``[{"rank", "case", "score", "column"}]``; cases whose score is missing come last.

    Raises:
        InputError: no uncertainty table in the folder, or an unknown column (listing them).
    """
    pred = Path(pred)
    table, key = pred / "uncertainty.csv", "case"
    if not table.is_file():
        table, key = pred / "predictions.csv", "id"
        if not table.is_file():
            raise InputError("no uncertainty.csv or predictions.csv in the folder", pred,
                             "predict with --uncertainty mc|ensemble|tta first")
        by = by.removesuffix("_structure").removesuffix("_image")
    rows = _read(table)
    if not rows or by not in rows[0]:
        cols = [c for c in (rows[0] if rows else {}) if c not in (key, "class", "method")]
        raise InputError(f"no column {by!r} in {table.name}", table,
                         f"use --by with one of {', '.join(cols[:12])}"
                         if cols else "predict with --uncertainty first")
    scores: dict[str, list[float]] = {}
    for r in rows:
        scores.setdefault(r[key], []).append(_float(r[by]))
    out = []
    for case, vals in scores.items():
        good = [v for v in vals if not math.isnan(v)]
        out.append({"case": case, "score": sum(good) / len(good) if good else math.nan,
                    "column": by})
    out.sort(key=lambda r: (math.isnan(r["score"]), -r["score"] if not math.isnan(r["score"])
                            else 0.0))
    for i, r in enumerate(out, start=1):
        r["rank"] = i
    return out
