"""Using the uncertainty (U5): rank predicted cases for review, pick cases to label next.

* :func:`~medseg.uncertainty.ranking.rank_cases` reads a prediction folder written with
  ``--uncertainty`` (``uncertainty.csv`` for segmentation / instances, the uncertainty columns
  of ``predictions.csv`` for classification) and orders the cases by a score, most uncertain
  first;
* ``medseg review`` writes that order as ``review.csv``;
* ``medseg select`` predicts a pool of unlabelled cases with uncertainty and writes the ``N``
  cases to label next (``selection.csv``) by an acquisition score — by default the mean mutual
  information over the image (BALD: what the model would learn most from).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.uncertainty.ranking import REVIEW_DEFAULT, rank_cases

__all__ = ["REVIEW_DEFAULT", "SELECT_DEFAULT", "rank_cases", "review", "write_ranking"]

SELECT_DEFAULT = "mutual_information_image"


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
