"""Noise with the right statistical form per modality (P1-P3, used by the phantoms of E6).

* **CT** (P1) — :func:`ct_transmission_noise`: a per-voxel transmission model. Each voxel's HU
  value is turned into a linear attenuation ``mu = mu_water (1 + HU / 1000)``; a ray of
  ``path_mm`` through that material leaves ``lambda = I0 exp(-mu L)`` expected photons; the
  detector counts ``y ~ Poisson(lambda)`` (variance = mean); the attenuation is re-estimated as
  ``mu_hat = -ln(y / I0) / L`` and mapped back to HU. The noise is therefore Poisson-born and
  heteroscedastic — larger where attenuation is high (bone, dense tissue) and small in air — which
  is the right *form*. It is not a tomographic simulation (no projection / filtered
  back-projection, so no noise correlation or streaks); the sinogram-domain simulator
  :func:`medseg.physics.ct.simulate_low_dose_ct` (forward project, Poisson counts, filtered
  back-projection) is the exact version, used by the phantoms.
* **MR** (P2) — :func:`mr_rician_noise`: i.i.d. Gaussian noise of std ``sigma`` is added to the
  real and imaginary parts of the complex signal and the magnitude is taken, so magnitude images
  are Rician (Rayleigh in the background, mean ``sigma sqrt(pi / 2)``). Gaussian noise is never
  added to the magnitude.
* **US** (P3) — :func:`us_speckle` multiplies the echo intensity by ``Gamma(L, 1/L)`` (mean 1,
  variance ``1/L`` for ``L`` looks: fully developed speckle is ``L = 1``, exponential), then
  :func:`log_compress` maps it to 0..255 over a dynamic range in dB (B-mode display). In the log
  domain the speckle is additive (homomorphic principle).

Every function takes a ``numpy.random.Generator`` so results are reproducible.
"""

from __future__ import annotations

import numpy as np

#: Linear attenuation of water at ~70 keV, per mm.
MU_WATER_PER_MM = 0.0192


def ct_photons_for_sigma(sigma_hu: float, path_mm: float = 200.0,
                         mu_water: float = MU_WATER_PER_MM) -> float:
    """Incident photons ``I0`` that give noise std ``sigma_hu`` at water (0 HU).

    With ``lambda = I0 exp(-mu_w L)`` and ``Var(mu_hat) ~= 1 / (L^2 lambda)`` (delta method),
    ``sigma_HU = 1000 / (mu_w L sqrt(lambda))``, so
    ``I0 = (1000 / (mu_w L sigma_HU))^2 exp(mu_w L)``.
    """
    if sigma_hu <= 0:
        raise ValueError(f"sigma_hu must be positive, got {sigma_hu}")
    return float((1000.0 / (mu_water * path_mm * sigma_hu)) ** 2 * np.exp(mu_water * path_mm))


def ct_transmission_noise(
    hu: np.ndarray,
    rng: np.random.Generator,
    photons: float | None = None,
    sigma_hu_water: float = 10.0,
    path_mm: float = 200.0,
    mu_water: float = MU_WATER_PER_MM,
) -> np.ndarray:
    """Poisson transmission noise on a HU image (per-voxel model, see the module docstring).

    Args:
        hu: Noise-free image in Hounsfield units (any shape).
        rng: Random generator.
        photons: Incident photons per ray ``I0``; by default :func:`ct_photons_for_sigma` of
            ``sigma_hu_water``.
        sigma_hu_water: Noise std at 0 HU when ``photons`` is not given.
        path_mm: Ray length through the voxel's material.
        mu_water: Attenuation of water per mm.

    Returns:
        Noisy HU, float32, same shape. Values below -1000 HU (negative attenuation) are clipped
        before projection; zero counts are floored at 0.5 photon.
    """
    i0 = photons if photons is not None else ct_photons_for_sigma(sigma_hu_water, path_mm,
                                                                   mu_water)
    mu = mu_water * (1.0 + np.maximum(hu.astype(np.float64), -1000.0) / 1000.0)
    lam = i0 * np.exp(-mu * path_mm)
    y = rng.poisson(lam).astype(np.float64)
    mu_hat = -np.log(np.maximum(y, 0.5) / i0) / path_mm
    return (1000.0 * (mu_hat / mu_water - 1.0)).astype(np.float32)


def mr_rician_noise(
    magnitude: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    phase: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Complex Gaussian noise on the MR signal, then the modulus (Rician magnitude).

    Args:
        magnitude: Noise-free magnitude ``A >= 0`` (any shape).
        sigma: Standard deviation of the noise on each of the real and imaginary parts.
        rng: Random generator.
        phase: Signal phase (radians), scalar or per voxel; the magnitude statistics do not depend
            on it.

    Returns:
        ``|A e^{i phase} + n_re + i n_im|``, float32, same shape.
    """
    a = magnitude.astype(np.float64)
    re = a * np.cos(phase) + sigma * rng.standard_normal(a.shape)
    im = a * np.sin(phase) + sigma * rng.standard_normal(a.shape)
    return np.hypot(re, im).astype(np.float32)


def us_speckle(intensity: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gamma speckle on echo intensity (mean preserving).

    Args:
        intensity: Noise-free echo intensity (power) ``>= 0``.
        looks: Number of looks ``L`` (shape of the Gamma law); speckle variance is ``1 / L``.
        rng: Random generator.

    Returns:
        ``intensity * G`` with ``G ~ Gamma(shape=L, scale=1/L)`` (``E[G] = 1``), float64.
    """
    if not looks >= 1:
        raise ValueError(f"looks must be >= 1 (L = 1 is fully developed speckle; averaging "
                         f"more looks only raises L), got {looks}")
    return intensity.astype(np.float64) * rng.gamma(looks, 1.0 / looks, size=intensity.shape)


def log_compress(intensity: np.ndarray, dynamic_range_db: float = 60.0,
                 reference: float | None = None) -> np.ndarray:
    """B-mode display: ``255 * clip(1 + 10 log10(I / I_ref) / DR, 0, 1)``.

    Args:
        intensity: Echo intensity (power) ``>= 0``.
        dynamic_range_db: Displayed dynamic range in dB.
        reference: Intensity shown as 255 (default: the maximum).

    Returns:
        Grey values in [0, 255], float32.
    """
    x = intensity.astype(np.float64)
    ref = float(x.max()) if reference is None else float(reference)
    db = 10.0 * np.log10(np.maximum(x, 1e-12) / max(ref, 1e-12))
    return (255.0 * np.clip(1.0 + db / dynamic_range_db, 0.0, 1.0)).astype(np.float32)


def add_modality_noise(
    clean: np.ndarray, modality: str, rng: np.random.Generator, level: float = 1.0,
    **kw: float,
) -> np.ndarray:
    """Dispatch to the noise model of a modality (P4).

    Args:
        clean: Noise-free image: HU for ``"CT"``, magnitude for ``"MR"``, echo intensity for
            ``"US"``.
        modality: ``"CT"``, ``"MR"`` or ``"US"`` (case-insensitive).
        rng: Random generator.
        level: Noise strength: CT std ``10 * level`` HU at water; MR ``sigma = 0.05 * level``
            (relative to a unit-scale magnitude); US ``looks = max(4 / level^2, 1)`` (speckle
            std in the log domain grows with ``level`` up to fully developed speckle, ``L = 1``),
            then log compression.
        **kw: Passed to the modality's function (e.g. ``path_mm``, ``dynamic_range_db``).

    Returns:
        The noisy image, float32.
    """
    m = modality.upper()
    if level <= 0:
        return clean.astype(np.float32)
    if m == "CT":
        return ct_transmission_noise(clean, rng, sigma_hu_water=10.0 * level, **kw)
    if m == "MR":
        return mr_rician_noise(clean, 0.05 * level, rng, **kw)
    if m == "US":
        speck = us_speckle(clean, max(4.0 / level**2, 1.0), rng)
        return log_compress(speck, **kw)
    raise ValueError(f"no noise model for modality {modality!r}; use CT, MR or US")
