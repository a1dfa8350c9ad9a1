"""Using the uncertainty (U5): rank predicted cases for review, pick cases to label next.

* :func:`rank_cases` reads a prediction folder written with ``--uncertainty`` (``uncertainty.csv``
  for segmentation / instances, the uncertainty columns of ``predictions.csv`` for
  classification) and orders the cases by a score, most uncertain first;
* ``medseg review`` writes that order as ``review.csv``;
* ``medseg select`` predicts a pool of unlabelled cases with uncertainty and writes the ``N``
  cases to label next (``selection.csv``) by an acquisition score — by default the mean mutual
  information over the image (BALD: what the model would learn most from).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text

REVIEW_DEFAULT = "predictive_entropy_structure"
SELECT_DEFAULT = "mutual_information_image"


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


def write_ranking(rows: list[dict[str, Any]], path: Path) -> Path:
    """``rank,case,score,column`` (atomically)."""
    lines = ["rank,case,score,column"] + [
        f"{r['rank']},{r['case']},{'' if math.isnan(r['score']) else repr(r['score'])},"
        f"{r['column']}" for r in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def review(pred: str | Path, by: str = REVIEW_DEFAULT, top: int = 10,
           log: Callable[[str], None] = print) -> Path:
    """``review.csv`` in the prediction folder: every case, most uncertain first."""
    rows = rank_cases(pred, by)
    path = write_ranking(rows, Path(pred) / "review.csv")
    log(f"most uncertain first (by {by}):")
    for r in rows[:top]:
        log(f"  {r['rank']:4d}  {r['case']}  {r['score']:.4g}")
    return path
