"""The noise law of a restoration dataset: the ``"noise"`` record of its ``dataset.json`` (P4).

Kept apart from the dataset writer (:mod:`medseg.physics.restoration_data`) so that the losses
(:mod:`medseg.losses.restoration`) and the trainer read the record without importing a writer.

* CT: ``photons`` (``I0``, incident photons per ray), ``path_mm`` (``L``), ``mu_water`` (per mm);
  HU -> expected counts ``lambda = I0 exp(-mu_water (1 + HU / 1000) L)``
  (:func:`hu_to_counts_rate`).
* MR: ``sigma``, the std of the Gaussian noise on each of the real and imaginary parts.
* US: ``looks`` (``L >= 1``), ``dynamic_range_db`` and ``reference`` (the intensity shown as grey
  255): grey ``g`` -> intensity ``reference * 10^((g / 255 - 1) DR / 10)``
  (:func:`grey_to_intensity`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

__all__ = ["NoiseParams", "grey_to_intensity", "hu_to_counts_rate"]


@dataclass
class NoiseParams:
    """The noise law of a restoration dataset (the ``"noise"`` object of ``dataset.json``).

    Attributes:
        modality: ``"CT"``, ``"MR"`` or ``"US"``.
        data_range: Intensity range of the clean images (PSNR range, network input scale).
        photons: CT incident photons per ray ``I0``.
        path_mm: CT ray length ``L`` (mm).
        mu_water: CT attenuation of water per mm.
        sigma: MR noise std of the real / imaginary parts (image units).
        looks: US number of looks ``L >= 1`` of the Gamma speckle.
        dynamic_range_db: US displayed dynamic range (dB) of the log compression.
        reference: US intensity displayed as grey 255.
    """

    modality: str
    data_range: float
    photons: float | None = None
    path_mm: float | None = None
    mu_water: float | None = None
    sigma: float | None = None
    looks: float | None = None
    dynamic_range_db: float | None = None
    reference: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (unused fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> NoiseParams:
        """Read and check a ``"noise"`` record.

        Raises:
            InputError: unknown modality, a missing parameter or one out of range (naming
                ``path``).
        """
        hint = "regenerate it with `medseg restoration-data` or fix the \"noise\" object"
        if not isinstance(d, dict):
            raise InputError("dataset.json has no \"noise\" object", path, hint)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown noise parameter(s) {unknown}; valid: {sorted(known)}",
                             path, hint)
        mod = str(d.get("modality", "")).upper()
        need = {"CT": ("photons", "path_mm", "mu_water"), "MR": ("sigma",),
                "US": ("looks", "dynamic_range_db", "reference")}
        if mod not in need:
            raise InputError(f"noise modality must be CT, MR or US, got {d.get('modality')!r}",
                             path, hint)
        vals: dict[str, Any] = {"modality": mod}
        for k in ("data_range", *need[mod]):
            v = d.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(f"noise parameter {k!r} is missing or not a number ({v!r})",
                                 path, hint)
            if v <= 0:
                raise InputError(f"noise parameter {k!r} must be > 0, got {v}", path, hint)
            vals[k] = float(v)
        if mod == "US" and vals["looks"] < 1:
            raise InputError(f"noise parameter 'looks' must be >= 1, got {vals['looks']}", path,
                             "the Gamma speckle likelihood needs L >= 1 (fully developed = 1)")
        return cls(**vals)


def hu_to_counts_rate(hu: np.ndarray, noise: NoiseParams) -> np.ndarray:
    """Expected detector counts ``I0 exp(-mu_water (1 + HU / 1000) L)`` (CT transmission model)."""
    assert noise.photons and noise.path_mm and noise.mu_water
    mu = noise.mu_water * (1.0 + np.asarray(hu, np.float64) / 1000.0)
    return noise.photons * np.exp(-mu * noise.path_mm)


def grey_to_intensity(grey: np.ndarray, noise: NoiseParams) -> np.ndarray:
    """Undo the log compression: grey ``g`` -> ``reference * 10^((g / 255 - 1) DR / 10)``.

    Exact for grey values strictly inside (0, 255); clipped voxels (below ``-DR`` dB or above the
    reference) map to the clip level.
    """
    assert noise.dynamic_range_db and noise.reference
    g = np.asarray(grey, np.float64)
    return noise.reference * 10.0 ** ((g / 255.0 - 1.0) * noise.dynamic_range_db / 10.0)
