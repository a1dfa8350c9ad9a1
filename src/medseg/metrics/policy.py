"""What a segmentation metric returns when a structure is empty (E5).

A metric that silently returns Dice 1 or HD95 0 for an empty prediction hides failures, so the
policy is explicit, configurable, written into every result and printed in every report.
"Empty" means empty *within the observed region* when an observation mask is given (T5).

Defaults (:data:`DEFAULT_POLICY`):

=====================  =====================  ===========================================
case                   Dice / IoU             HD95 / ASSD
=====================  =====================  ===========================================
both empty             1.0 (``"nan"``: NaN)   0.0 mm (``"nan"``: NaN)
only one empty         0.0 (always)           NaN (or ``"diagonal"``: the image diagonal in
                                              mm, or a fixed number of mm)
neither empty          computed               computed
=====================  =====================  ===========================================

NaN values are skipped (and counted) by :func:`medseg.metrics.summarize`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EmptyPolicy:
    """Values of overlap and distance metrics when prediction and/or reference are empty.

    Attributes:
        overlap_both_empty: ``"one"`` (Dice = IoU = 1, a correct "nothing there") or ``"nan"``
            (undefined, left out of averages). With only one side empty Dice/IoU are always 0.
        distance_both_empty: ``"zero"`` (HD95 = ASSD = 0 mm) or ``"nan"``.
        distance_one_empty: ``"nan"`` (undefined, the default), ``"diagonal"`` (the length of
            the image diagonal in mm, a finite worst case), or a number of millimetres.
    """

    overlap_both_empty: str = "one"
    distance_both_empty: str = "zero"
    distance_one_empty: str | float = "nan"

    def __post_init__(self) -> None:
        if self.overlap_both_empty not in ("one", "nan"):
            raise ValueError(
                f"overlap_both_empty must be 'one' or 'nan', got {self.overlap_both_empty!r}"
            )
        if self.distance_both_empty not in ("zero", "nan"):
            raise ValueError(
                f"distance_both_empty must be 'zero' or 'nan', got {self.distance_both_empty!r}"
            )
        v = self.distance_one_empty
        if isinstance(v, str):
            if v not in ("nan", "diagonal"):
                raise ValueError(
                    f"distance_one_empty must be 'nan', 'diagonal' or a number of mm, got {v!r}"
                )
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"distance_one_empty as a number must be >= 0 mm, got {v!r}")

    def overlap_value(self, pred_empty: bool, ref_empty: bool) -> float | None:
        """Dice/IoU fixed by the policy, or ``None`` when both sides are non-empty."""
        if pred_empty and ref_empty:
            return 1.0 if self.overlap_both_empty == "one" else math.nan
        if pred_empty or ref_empty:
            return 0.0
        return None

    def distance_value(
        self,
        pred_empty: bool,
        ref_empty: bool,
        shape: Sequence[int],
        spacing: Sequence[float],
    ) -> float | None:
        """HD95/ASSD fixed by the policy (mm), or ``None`` when both sides are non-empty.

        Args:
            pred_empty: Whether the prediction is empty.
            ref_empty: Whether the reference is empty.
            shape: Spatial shape of the whole image (for ``"diagonal"``).
            spacing: Voxel size in mm per axis.
        """
        if pred_empty and ref_empty:
            return 0.0 if self.distance_both_empty == "zero" else math.nan
        if pred_empty or ref_empty:
            v = self.distance_one_empty
            if v == "nan":
                return math.nan
            if v == "diagonal":
                return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))
            return float(v)
        return None

    def to_dict(self) -> dict[str, str | float]:
        """Plain dictionary (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, str | float]) -> EmptyPolicy:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**dict(d))

    def describe(self) -> str:
        """One line for reports."""
        both = "1" if self.overlap_both_empty == "one" else "NaN"
        dboth = "0 mm" if self.distance_both_empty == "zero" else "NaN"
        one = self.distance_one_empty
        if one == "nan":
            one_s = "NaN"
        elif one == "diagonal":
            one_s = "image diagonal in mm"
        else:
            one_s = f"{float(one):g} mm"
        return (
            f"empty-case policy: Dice/IoU both empty -> {both}, one empty -> 0; "
            f"HD95/ASSD both empty -> {dboth}, one empty -> {one_s}"
        )


DEFAULT_POLICY = EmptyPolicy()
