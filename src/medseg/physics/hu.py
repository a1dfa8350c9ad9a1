"""Hounsfield units: rescale, attenuation conversion and display windows (P1, HU-aware handling).

* :func:`raw_to_hu` applies the DICOM rescale ``HU = slope * stored + intercept`` (tags
  RescaleSlope (0028,1053) / RescaleIntercept (0028,1052)). :func:`medseg.io.read_dicom_series`
  already applies these tags when it reads a series, so call this only on raw stored values
  obtained some other way (e.g. a pixel array read with pydicom directly).
* :func:`hu_to_mu` / :func:`mu_to_hu`: ``mu = mu_water (1 + HU / 1000)`` (the definition of the
  Hounsfield scale: water 0 HU, air -1000 HU), clipped at -1000 HU so attenuation is never
  negative.
* :func:`apply_window`: the radiologist's window ``(width, level)``: values below
  ``level - width / 2`` map to the bottom of ``out_range``, above ``level + width / 2`` to the top,
  linearly in between (the plain linear form; DICOM PS3.3 C.11.2.1.2 differs by a half-unit
  offset that is immaterial for float images).

Window presets (width, level in HU) are the usual radiology values as listed by Radiopaedia's
"Windowing (CT)" article: brain 80/40, subdural 200/75, stroke 40/40, lung 1500/-600,
mediastinum 350/50, soft tissue 400/50, liver 150/30, bone 1800/400.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "WINDOW_PRESETS",
    "apply_window",
    "clip_hu",
    "hu_to_mu",
    "mu_to_hu",
    "raw_to_hu",
    "window_bounds",
]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Window presets ``name -> (width, level)`` in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "subdural": (200.0, 75.0),
    "stroke": (40.0, 40.0),
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "soft_tissue": (400.0, 50.0),
    "liver": (150.0, 30.0),
    "bone": (1800.0, 400.0),
}

#: Lowest meaningful HU (air, zero attenuation).
HU_AIR = -1000.0


def window_bounds(window: str | tuple[float, float]) -> tuple[float, float]:
    """``(lower, upper)`` HU of a preset name or a ``(width, level)`` pair.

    Raises:
        ValueError: unknown preset name or width <= 0.
    """
    if isinstance(window, str):
        key = window.lower().replace(" ", "_").replace("-", "_")
        if key not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; use one of "
                             f"{sorted(WINDOW_PRESETS)} or a (width, level) pair")
        width, level = WINDOW_PRESETS[key]
    else:
        if len(window) != 2:
            raise ValueError(f"window must be a preset name or (width, level), got {window!r}")
        width, level = float(window[0]), float(window[1])
    if not width > 0:
        raise ValueError(f"window width must be > 0 HU, got {width}")
    return level - width / 2.0, level + width / 2.0


def apply_window(
    hu: ArrayT,
    window: str | tuple[float, float],
    out_range: tuple[float, float] = (0.0, 1.0),
) -> ArrayT:
    """Map HU through a display window onto ``out_range`` (clipped outside the window).

    Args:
        hu: HU values, any shape (numpy array or torch tensor; the type is kept, floats out).
        window: A preset name from :data:`WINDOW_PRESETS` or ``(width, level)`` in HU.
        out_range: Output values at the window's lower and upper bounds.

    Returns:
        ``lo + (hi - lo) * clip((hu - lower) / width, 0, 1)``, same shape.
    """
    lower, upper = window_bounds(window)
    lo, hi = float(out_range[0]), float(out_range[1])
    if isinstance(hu, torch.Tensor):
        x = hu if hu.is_floating_point() else hu.to(torch.float32)
        t = ((x - lower) / (upper - lower)).clamp(0.0, 1.0)
    else:
        x = np.asarray(hu)
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        t = np.clip((x - lower) / (upper - lower), 0.0, 1.0)
    return lo + (hi - lo) * t


def clip_hu(hu: ArrayT, lower: float = HU_AIR, upper: float = 3071.0) -> ArrayT:
    """Clip HU to ``[lower, upper]`` (default: air to the 12-bit scanner maximum 3071 HU)."""
    if lower > upper:
        raise ValueError(f"clip_hu: lower {lower} is above upper {upper}")
    if isinstance(hu, torch.Tensor):
        return hu.clamp(lower, upper)
    return np.clip(hu, lower, upper)


def raw_to_hu(stored: ArrayT, slope: float = 1.0, intercept: float = -1024.0) -> ArrayT:
    """DICOM rescale of stored pixel values: ``HU = slope * stored + intercept``.

    Args:
        stored: Stored values (integers as read from PixelData), any shape.
        slope: RescaleSlope (0028,1053).
        intercept: RescaleIntercept (0028,1052); -1024 is the most common CT value.

    Returns:
        HU as float32 (numpy) or the tensor's float dtype (float32 for integer tensors).

    Raises:
        ValueError: ``slope`` is zero or not finite.
    """
    if not np.isfinite(slope) or slope == 0:
        raise ValueError(f"raw_to_hu: RescaleSlope must be finite and non-zero, got {slope}")
    if isinstance(stored, torch.Tensor):
        x = stored if stored.is_floating_point() else stored.to(torch.float32)
        return x * slope + intercept
    return (np.asarray(stored, dtype=np.float64) * slope + intercept).astype(np.float32)


def hu_to_mu(hu: ArrayT, mu_water: float) -> ArrayT:
    """Linear attenuation ``mu = mu_water (1 + max(HU, -1000) / 1000)`` (units of ``mu_water``)."""
    if isinstance(hu, torch.Tensor):
        return mu_water * (1.0 + hu.clamp_min(HU_AIR) / 1000.0)
    return mu_water * (1.0 + np.maximum(hu, HU_AIR) / 1000.0)


def mu_to_hu(mu: ArrayT, mu_water: float) -> ArrayT:
    """Inverse of :func:`hu_to_mu` (without the clip): ``HU = 1000 (mu / mu_water - 1)``."""
    return 1000.0 * (mu / mu_water - 1.0)
