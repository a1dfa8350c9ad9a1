"""Synthetic CT, MR and ultrasound phantoms with small lesions at a chosen imbalance (E6).

A phantom is a body (air or fluid outside), one smooth organ-like shape (an ellipse / ellipsoid
whose radius is deformed by a low-frequency random field) and ``n_lesions`` small round lesions
strictly inside the organ that together fill ``lesion_fraction`` of the image (T6: the imbalance is
set on purpose). Labels: 0 background, 1 organ, 2 lesion.

Intensities are set per modality, blurred slightly (partial volume), modulated by a mild smooth
field, and then corrupted with the modality's noise from :mod:`medseg.physics.noise`:

=========  =============================================  ==========================================
modality   clean intensities                              noise at ``noise_level=1``
=========  =============================================  ==========================================
CT         air -1000 HU, body soft tissue ~ -40 HU,       low-dose scan: Radon transform, Poisson
           organ 60 HU, lesion 120 HU (enhancing)         counts, ramp FBP (``ct.py``); I0 set for
                                                          10 HU std near the centre (streaky,
                                                          correlated, heteroscedastic)
MR         air 0, body 0.35, organ 0.6, lesion 1.0        complex Gaussian sigma 0.05 -> Rician;
           (T2-bright), x bias field exp(0.15 f)          optional Cartesian k-space undersampling
US         echo intensity in dB re reference: outside     Gamma(L, 1/L) speckle with L = 4, then
           -35, body -22, organ -15, lesion -27           60 dB log compression to 0..255
           (hypoechoic), x depth attenuation
=========  =============================================  ==========================================

Everything that describes a phantom is one :class:`PhantomSpec` (shape, spacing, modality, lesion
fraction and count, anatomy, noise level; per modality ``dose`` (CT photons per ray), ``mr_sigma``
(MR), ``looks`` (US), ``acceleration`` / ``center_fraction`` (MR k-space)); the functions add only
what is their own: ``simulate_phantom(spec, seed)`` (which also returns the noise-free image, the
restoration target), ``make_phantom(spec, seed)`` and ``write_phantom_dataset(out_dir, spec,
n_train, n_test, seed=...)``. The old per-voxel CT model stays available as
``ct_model="per_voxel"``.

The per-pixel lesion-to-organ contrast-to-noise ratio is about 4 to 6 for every modality at
``noise_level=1`` (organ texture and bias field included), so a small U-Net learns organ and lesion
in minutes on a CPU (a 4-level 2D U-Net reached Dice > 0.95 on both after 90 s on two cores,
20 training phantoms of 128^2). Everything is deterministic by ``seed``.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medseg.errors import InputError
from medseg.io.meta import ImageMeta
from medseg.physics.noise import (
    MU_WATER_PER_MM,
    ct_transmission_noise,
    log_compress,
    mr_rician_noise,
    us_speckle,
)

MODALITIES = {"ct": "CT", "mr": "MR", "us": "US"}
#: Clean intensities per modality (CT in HU, MR in arbitrary units, US in dB re the reference).
INTENSITIES: dict[str, dict[str, float]] = {
    "CT": {"outside": -1000.0, "body": -40.0, "organ": 60.0, "lesion": 120.0},
    "MR": {"outside": 0.0, "body": 0.35, "organ": 0.6, "lesion": 1.0},
    "US": {"outside": -35.0, "body": -22.0, "organ": -15.0, "lesion": -27.0},
}
_MARKER = "medseg_phantom"


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A low-frequency random field on ``shape``, zero mean, max |value| 1."""
    coarse = rng.standard_normal((cells,) * len(shape))
    zoom = [s / cells for s in shape]
    f = ndi.zoom(coarse, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    f = f - f.mean()
    return f / max(float(np.abs(f).max()), 1e-12)


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    if d == 2:
        a = rng.uniform(0, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _deformed_ellipsoid(
    coords: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray, rot: np.ndarray,
    field: np.ndarray, amplitude: float,
) -> np.ndarray:
    """``|R^T (x - c) / a| + amplitude * field < 1``; coords ``(d, *shape)`` in [-1, 1]."""
    d = coords.shape[0]
    x = coords.reshape(d, -1) - centre[:, None]
    u = (rot.T @ x) / semi_axes[:, None]
    r = np.sqrt((u**2).sum(axis=0)).reshape(coords.shape[1:])
    return (r + amplitude * field) < 1.0


def _place_lesions(
    organ: np.ndarray, sizes: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, list[int]]:
    """Carve lesions of exactly ``sizes`` voxels (balls of nearest voxels) inside ``organ``.

    A centre is drawn where the organ is at least ``radius + 1.5`` deep and the lesion keeps 2
    voxels from the previous ones; when the organ has no such room the margins are relaxed (the
    lesion may touch its neighbours or the organ's edge, and becomes less round), but a lesion
    voxel is always an organ voxel.
    """
    d = organ.ndim
    lesion = np.zeros(organ.shape, dtype=bool)
    dist = ndi.distance_transform_edt(organ)
    placed: list[int] = []
    centres: list[tuple[np.ndarray, float]] = []
    for k in sizes:
        r = (k / np.pi) ** 0.5 if d == 2 else (3 * k / (4 * np.pi)) ** (1 / 3)
        cand = np.empty((0, d), dtype=np.int64)
        for depth, gap in ((r + 1.5, 2.0), (r + 0.5, 0.0), (1.0, None)):
            cand = np.argwhere((dist >= depth) & ~lesion)
            if gap is not None and centres and cand.size:
                keep = np.ones(len(cand), dtype=bool)
                for c, rc in centres:
                    keep &= np.linalg.norm(cand - c[None], axis=1) >= r + rc + gap
                cand = cand[keep]
            if cand.size:
                break
        if cand.size == 0 or int(np.count_nonzero(organ & ~lesion)) < k:
            raise ValueError(
                f"the organ has no room for a lesion of {k} voxels (radius {r:.1f}); lower "
                "lesion_fraction or n_lesions, or enlarge the image"
            )
        c = cand[int(rng.integers(len(cand)))].astype(np.float64)
        R = int(np.ceil(r)) + 2
        while True:
            lo = [max(0, int(ci) - R) for ci in c]
            hi = [min(n, int(ci) + R + 1) for ci, n in zip(c, organ.shape, strict=True)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            free = organ[box] & ~lesion[box]
            if np.count_nonzero(free) >= k:
                break
            R *= 2
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                    indexing="ij"))
        dd = np.sqrt(((grid - c.reshape(d, *([1] * d))) ** 2).sum(axis=0))
        dd = dd + rng.uniform(0, 1e-3, dd.shape)  # random tie-breaking
        dd[~free] = np.inf
        order = np.argsort(dd, axis=None)[:k]
        sub = np.zeros(dd.size, dtype=bool)
        sub[order] = True
        lesion[box] |= sub.reshape(dd.shape)
        placed.append(k)
        centres.append((c, r))
    return lesion, placed


CT_MODELS = ("sinogram", "per_voxel")


def cartesian_line_mask(n: int, acceleration: float, center_fraction: float,
                        rng: np.random.Generator) -> np.ndarray:
    """Cartesian k-space undersampling mask over ``n`` phase-encode lines (FFT order).

    The ``round(n * center_fraction)`` lines around ``k = 0`` are always kept; every other line
    is kept with the probability that makes the expected kept total ``n / acceleration``
    (random-line masks as in fastMRI's ``RandomMaskFunc``).

    Args:
        n: Lines along the undersampled axis.
        acceleration: ``R >= 1``; 1 keeps everything.
        center_fraction: Fully sampled share of the centre, in (0, 1].
        rng: Random generator (deterministic by seed).

    Returns:
        Boolean mask ``(n,)`` in ``numpy.fft`` order (index 0 is ``k = 0``).

    Raises:
        ValueError: ``acceleration < 1`` or ``center_fraction`` outside (0, 1].
    """
    if not acceleration >= 1.0:
        raise ValueError(f"acceleration must be >= 1 (1 = fully sampled), got {acceleration}")
    if not 0.0 < center_fraction <= 1.0:
        raise ValueError(f"center_fraction must lie in (0, 1], got {center_fraction}")
    n_centre = max(1, int(round(n * center_fraction)))
    centred = np.zeros(n, dtype=bool)
    lo = (n - n_centre + 1) // 2
    centred[lo:lo + n_centre] = True
    prob = float(np.clip((n / acceleration - n_centre) / max(n - n_centre, 1), 0.0, 1.0))
    centred |= rng.uniform(size=n) < prob
    return np.fft.ifftshift(centred)


def _ct_sinogram_noise(clean_hu: np.ndarray, rng: np.random.Generator, noise_level: float,
                       dose: float | None, pixel_mm: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Low-dose CT through the sinogram, per axial slice (in-plane axes 0 and 1)."""
    from medseg.physics.ct import (
        default_angles,
        fbp_noise_std_hu,
        fbp_photons_for_sigma,
        simulate_low_dose_ct,
        sinogram_side,
    )
    from medseg.physics.hu import hu_to_mu

    slices = clean_hu[..., None] if clean_hu.ndim == 2 else clean_hu
    slices = np.ascontiguousarray(np.moveaxis(slices, 2, 0))  # (Z, X, Y)
    h, w = slices.shape[1:]
    # the object must lie in the inscribed circle for the circle geometry; otherwise pad
    side = max(h, w)
    rows = np.arange(h)[:, None] + (side - h) // 2 - side // 2
    cols = np.arange(w)[None, :] + (side - w) // 2 - side // 2
    outside = rows**2 + cols**2 > (side // 2 - 1) ** 2
    circle = bool(np.all(slices[:, outside] <= -999.0))
    n = sinogram_side(h, w, circle)
    angles = default_angles(n)
    mu = hu_to_mu(slices.astype(np.float64), MU_WATER_PER_MM)
    centre_ray = float(np.median(np.concatenate([mu[:, h // 2, :].sum(axis=1),
                                                 mu[:, :, w // 2].sum(axis=1)]))) * pixel_mm
    photons = float(dose) if dose is not None else fbp_photons_for_sigma(
        10.0 * noise_level, len(angles), n, centre_ray, pixel_mm, location="mean")
    sim = simulate_low_dose_ct(slices, photons, angles, pixel_mm=pixel_mm, rng=rng,
                               circle=circle)
    noisy = np.moveaxis(sim.hu.numpy(), 0, 2)
    noisy = noisy[..., 0] if clean_hu.ndim == 2 else noisy
    info = {"model": "sinogram_poisson_fbp", "photons_per_ray": photons,
            "n_angles": len(angles), "n_detectors": n, "filter": "ramp", "circle": circle,
            "pixel_mm": pixel_mm,
            "sigma_hu_mean": fbp_noise_std_hu(photons, len(angles), n, centre_ray, pixel_mm,
                                              location="mean")}
    return noisy, info


@dataclass
class PhantomCase:
    """One simulated case.

    Attributes:
        image: Noisy image ``(*shape)`` float32 (HU for CT, a.u. for MR, 0..255 for US).
        clean: The same image without noise (and, for MR, fully sampled) ``(*shape)`` float32:
            the target of a restoration model.
        label: ``(*shape)`` int64, 0 background, 1 organ, 2 lesion.
        info: Description (modality, seed, fractions, lesion sizes, intensities, noise).
    """

    image: np.ndarray
    clean: np.ndarray
    label: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True)
class PhantomSpec:
    """What one phantom looks like: its grid, its anatomy and its modality's noise physics.

    One spec describes every case of a dataset; the cases differ only by their seed. Everything
    that is not about one phantom's appearance (the seed, the number of cases, the output folder,
    whether clean images are written) is an argument of the function that takes the spec.

    Attributes:
        shape: Spatial shape in voxels, 2 or 3 entries, each ``>= 8``; its length is the spatial
            dimension (:attr:`spatial_dims`). Array axes follow :class:`ImageMeta` (axis 0 = x,
            1 = y, 2 = z), so a 3D CT phantom is simulated per axial slice ``image[:, :, k]``.
        spacing: Voxel size in mm, one entry per axis, each ``> 0``; ``None`` (default) means
            1 mm per axis and is stored as that tuple. The CT sinogram simulator takes
            ``spacing[0]`` as its pixel size (the line integrals scale with it) and needs square
            in-plane pixels (``spacing[0] == spacing[1]``).
        modality: ``"ct"``, ``"mr"`` or ``"us"`` (any case; stored lower-case). Default ``"mr"``.
        lesion_fraction: Fraction of all voxels that are lesion, in ``[0, 0.2)`` (met to within
            one voxel). Default 0.01.
        n_lesions: Number of lesions, ``>= 0`` (0 for none); the lesion volume is split among
            them with random weights in [0.6, 1.4]. Default 3.
        noise_level: Noise strength, ``>= 0``, dimensionless (1 = defaults in the module table;
            0 = noise-free unless ``dose`` / ``mr_sigma`` / ``looks`` is given). Default 1.
        organ_scale: ``(low, high)`` range of the organ's semi-axes as a fraction of the half
            field of view, ``0 < low <= high < 1``. Default ``(0.45, 0.65)``.
        deformation: Amplitude of the radial deformation of the organ (fraction of its radius),
            ``>= 0``. Default 0.15.
        bias_strength: Amplitude of the smooth intensity field, ``>= 0`` (MR: multiplicative
            ``exp``; CT: ``10 HU * bias_strength / 0.15`` additive; US: depth attenuation of
            ``40 * bias_strength`` dB at the far end). Default 0.15.
        blur_sigma: Partial-volume Gaussian blur of the clean image in voxels, ``>= 0``.
            Default 0.6.
        dose: CT photons per ray ``I0`` (``> 0``); ``None`` (default): the dose that gives
            ``10 * noise_level`` HU noise std in a typical pixel near the centre of the
            reconstruction (:func:`medseg.physics.ct.fbp_photons_for_sigma`).
        ct_model: ``"sinogram"`` (forward project, Poisson counts, FBP; default) or
            ``"per_voxel"`` (:func:`medseg.physics.noise.ct_transmission_noise`, no tomography).
        mr_sigma: MR noise std per real / imaginary part in image units (``>= 0``); ``None``
            (default): ``0.05 * noise_level``. The organ signal is 0.6, so SNR =
            ``0.6 / mr_sigma``.
        acceleration: MR Cartesian undersampling factor ``R >= 1`` along axis 0 (1 = fully
            sampled, default); zero-filled reconstruction, see :func:`cartesian_line_mask`.
        center_fraction: Fully sampled share of the MR k-space centre when
            ``acceleration > 1``, in ``(0, 1]``. Default 0.08.
        looks: US speckle looks ``L >= 1``; ``None`` (default): ``4 / noise_level^2`` (at least
            1).

    Raises:
        ValueError: a value out of range (the message names the field).
    """

    shape: tuple[int, ...] = (128, 128)
    spacing: tuple[float, ...] | None = None
    modality: str = "mr"
    lesion_fraction: float = 0.01
    n_lesions: int = 3
    noise_level: float = 1.0
    organ_scale: tuple[float, float] = (0.45, 0.65)
    deformation: float = 0.15
    bias_strength: float = 0.15
    blur_sigma: float = 0.6
    dose: float | None = None
    ct_model: str = "sinogram"
    mr_sigma: float | None = None
    acceleration: float = 1.0
    center_fraction: float = 0.08
    looks: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.modality, str) or self.modality.lower() not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, "
                             f"got {self.modality!r}")
        put("modality", self.modality.lower())
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) < 8:
            raise ValueError(f"shape must have 2 or 3 entries, each >= 8, got {shape}")
        put("shape", shape)
        spacing = tuple(float(s) for s in (self.spacing if self.spacing is not None
                                           else [1.0] * len(shape)))
        if len(spacing) != len(shape) or not all(s > 0 for s in spacing):
            raise ValueError(f"spacing must have {len(shape)} entries (one per axis of shape "
                             f"{shape}), each > 0 mm, got {spacing}")
        put("spacing", spacing)
        organ_scale = tuple(float(s) for s in self.organ_scale)
        if len(organ_scale) != 2 or not 0.0 < organ_scale[0] <= organ_scale[1] < 1.0:
            raise ValueError(f"organ_scale must be (low, high) with 0 < low <= high < 1, "
                             f"got {self.organ_scale}")
        put("organ_scale", organ_scale)
        if not 0.0 <= self.lesion_fraction < 0.2:
            raise ValueError(f"lesion_fraction must lie in [0, 0.2), got {self.lesion_fraction}")
        if not self.n_lesions >= 0:
            raise ValueError(f"n_lesions must be >= 0, got {self.n_lesions}")
        for name in ("noise_level", "deformation", "bias_strength", "blur_sigma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ct_model not in CT_MODELS:
            raise ValueError(f"ct_model must be one of {CT_MODELS}, got {self.ct_model!r}")
        if self.dose is not None and not self.dose > 0:
            raise ValueError(f"dose (photons per ray I0) must be > 0, got {self.dose}")
        if self.mr_sigma is not None and not self.mr_sigma >= 0:
            raise ValueError(f"mr_sigma must be >= 0, got {self.mr_sigma}")
        if self.looks is not None and not self.looks >= 1:
            raise ValueError(f"looks must be >= 1 (L = 1 is fully developed speckle), "
                             f"got {self.looks}")
        if not self.acceleration >= 1.0:
            raise ValueError(f"acceleration must be >= 1 (1 = fully sampled), "
                             f"got {self.acceleration}")
        if not 0.0 < self.center_fraction <= 1.0:
            raise ValueError(f"center_fraction must lie in (0, 1], got {self.center_fraction}")
        if self.modality == "ct" and self.ct_model == "sinogram" and spacing[0] != spacing[1]:
            raise ValueError(f"spacing: the CT sinogram simulator needs square in-plane pixels "
                             f"(spacing of axes 0 and 1 equal), got {spacing}")

    @property
    def spatial_dims(self) -> int:
        """2 or 3 (the length of :attr:`shape`)."""
        return len(self.shape)

    @property
    def modality_tag(self) -> str:
        """The DICOM ``Modality`` value: ``"CT"``, ``"MR"`` or ``"US"``."""
        return MODALITIES[self.modality]


def simulate_phantom(spec: PhantomSpec, seed: int = 0) -> PhantomCase:
    """One phantom with its noise-free version and label map.

    The US transducer sits at the low end of axis 0; MR undersamples along axis 0 (the
    phase-encode direction).

    Args:
        spec: What the phantom looks like (grid, anatomy, modality and noise physics).
        seed: Random seed (everything is deterministic by it).

    Returns:
        The noisy image, the noise-free image and the label map (see :class:`PhantomCase`).

    Raises:
        ValueError: lesions that do not fit inside the organ.
    """
    mod = spec.modality_tag
    shape, d = spec.shape, spec.spatial_dims
    noise_level, bias_strength = spec.noise_level, spec.bias_strength
    rng = np.random.default_rng(seed)
    n_vox = int(np.prod(shape))
    coords = np.stack(np.meshgrid(*[(2 * np.arange(n) + 1) / n - 1 for n in shape],
                                  indexing="ij"))
    # body: a wide, slightly deformed ellipse
    body_axes = rng.uniform(0.82, 0.95, d)
    body = _deformed_ellipsoid(coords, np.zeros(d), body_axes, np.eye(d),
                               _smooth_field(shape, rng, 3), 0.05)
    # organ
    organ_axes = rng.uniform(*spec.organ_scale, d)
    centre = rng.uniform(-0.08, 0.08, d)
    organ = _deformed_ellipsoid(coords, centre, organ_axes, _random_rotation(d, rng),
                                _smooth_field(shape, rng, 4), spec.deformation)
    organ &= ndi.binary_erosion(body, iterations=2)
    # lesions
    total = int(round(spec.lesion_fraction * n_vox))
    sizes: list[int] = []
    if spec.n_lesions > 0 and total > 0:
        n = min(spec.n_lesions, total)
        w = rng.uniform(0.6, 1.4, n)
        sizes = list(np.maximum(1, np.floor(total * w / w.sum())).astype(int))
        sizes[int(np.argmax(sizes))] += total - sum(sizes)
    lesion, placed = _place_lesions(organ, sizes, rng)
    label = np.zeros(shape, dtype=np.int64)
    label[organ] = 1
    label[lesion] = 2

    inten = INTENSITIES[mod]
    texture = _smooth_field(shape, rng, 6)
    clean = np.full(shape, inten["outside"], dtype=np.float64)
    clean[body] = inten["body"] + (20.0 if mod == "CT" else 0.03 if mod == "MR" else 1.5) * \
        texture[body]
    clean[organ] = inten["organ"] + (5.0 if mod == "CT" else 0.02 if mod == "MR" else 0.5) * \
        texture[organ]
    clean[lesion] = inten["lesion"]
    if spec.blur_sigma > 0:
        clean = ndi.gaussian_filter(clean, spec.blur_sigma, mode="nearest")
    bias = _smooth_field(shape, rng, 2)
    noise_info: dict[str, Any] = {"level": noise_level}
    if mod == "CT":
        dose = spec.dose
        clean = clean + (10.0 * bias_strength / 0.15) * bias * body
        noisy = noise_level > 0 or dose is not None
        if noisy and spec.ct_model == "sinogram":
            image, ct_info = _ct_sinogram_noise(clean, rng, noise_level, dose, spec.spacing[0])
            noise_info.update(ct_info)
        elif noisy:
            sigma = 10.0 * noise_level
            image = ct_transmission_noise(clean, rng, photons=dose,
                                          sigma_hu_water=sigma if sigma > 0 else 10.0)
            noise_info.update(model="poisson_transmission", sigma_hu_water=sigma,
                              photons_per_ray=dose)
        else:
            image = clean
            noise_info.update(model="none")
        clean_out = clean
    elif mod == "MR":
        clean = clean * np.exp(bias_strength * bias)
        sigma = 0.05 * noise_level if spec.mr_sigma is None else float(spec.mr_sigma)
        if spec.acceleration == 1.0:
            image = mr_rician_noise(clean, sigma, rng) if sigma > 0 else clean
        else:
            z = clean + 0j
            if sigma > 0:
                re = sigma * rng.standard_normal(clean.shape)
                z = z + re + 1j * sigma * rng.standard_normal(clean.shape)
            mask = cartesian_line_mask(shape[0], spec.acceleration, spec.center_fraction, rng)
            k = np.fft.fftn(z, norm="ortho") * mask.reshape((-1,) + (1,) * (d - 1))
            image = np.abs(np.fft.ifftn(k, norm="ortho"))
            noise_info.update(acceleration=float(spec.acceleration),
                              center_fraction=float(spec.center_fraction),
                              sampled_fraction=float(mask.mean()), undersampled_axis=0)
        noise_info.update(model="rician", sigma=sigma)
        clean_out = clean
    else:
        looks = spec.looks
        depth = coords[0] * 0.5 + 0.5  # 0 at the transducer (first axis), 1 at the far end
        db = clean - bias_strength * 40.0 * (depth - 0.5) ** 2  # residual TGC error, mild
        intensity = 10.0 ** (db / 10.0)
        n_looks = looks if looks is not None else max(4.0 / max(noise_level, 1e-9) ** 2, 1.0)
        if looks is not None or noise_level > 0:
            image = log_compress(us_speckle(intensity, n_looks, rng), reference=1.0)
        else:
            image = log_compress(intensity, reference=1.0)
        noise_info.update(model="gamma_speckle_log", looks=n_looks, dynamic_range_db=60.0)
        clean_out = log_compress(intensity, reference=1.0)
    info = {
        "modality": mod,
        "seed": int(seed),
        "shape": list(shape),
        "lesion_fraction": float(lesion.sum() / n_vox),
        "organ_fraction": float(organ.sum() / n_vox),
        "lesion_sizes": [int(s) for s in placed],
        "intensities": dict(inten),
        "intensity_unit": {"CT": "HU", "MR": "a.u.", "US": "grey 0-255"}[mod],
        "noise": noise_info,
    }
    return PhantomCase(np.asarray(image, dtype=np.float32), np.asarray(clean_out, np.float32),
                       label, info)


def make_phantom(spec: PhantomSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                             dict[str, Any]]:
    """One phantom image with its label map.

    Args:
        spec: What the phantom looks like (grid, anatomy, modality and noise physics).
        seed: Random seed (everything is deterministic by it).

    Returns:
        ``image`` float32 ``(*shape)`` (HU for CT, a.u. for MR, 0..255 for US), ``label`` int64
        ``(*shape)`` with values {0, 1, 2}, and a dict describing the phantom (modality, seed,
        actual fractions, lesion sizes, intensities, noise). :func:`simulate_phantom` also
        returns the noise-free image.

    Raises:
        ValueError: lesions that do not fit inside the organ.
    """
    case = simulate_phantom(spec, seed)
    return case.image, case.label, case.info


def _is_phantom_folder(out: Path) -> dict[str, Any] | None:
    js = out / "dataset.json"
    if not js.is_file():
        return None
    try:
        data = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get(_MARKER), dict) else None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial"
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_SUBDIRS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "cleanTr", "cleanTs")
#: PhantomSpec fields left out of the dataset record at their defaults (see write_phantom_dataset)
_APPEARANCE_FIELDS = ("organ_scale", "deformation", "bias_strength", "blur_sigma")


def _clear_previous_phantom(out: Path) -> None:
    """Remove a previous phantom's files, refusing if anything else is in the folder."""
    foreign = []
    for p in out.iterdir():
        if p.name == "dataset.json":
            continue
        if p.is_dir() and p.name in _SUBDIRS:
            foreign += [q for q in p.iterdir()
                        if not (q.is_file() and q.name.startswith(("case_", ".case_")))]
        else:
            foreign.append(p)
    if foreign:
        raise InputError(
            f"the folder holds a previous phantom dataset but also other files "
            f"({', '.join(str(f.name) for f in foreign[:3])})",
            out,
            "choose an empty or new output folder; medseg never deletes files it did not write",
        )
    for sub in _SUBDIRS:
        if (out / sub).is_dir():
            for q in (out / sub).iterdir():
                q.unlink()


def write_phantom_dataset(
    out_dir: str | Path,
    spec: PhantomSpec,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    write_clean: bool = False,
) -> Path:
    """Write an nnU-Net v2 style phantom dataset.

    Layout: ``dataset.json`` (``channel_names {"0": modality}``, labels ``background 0, organ 1,
    lesion 2``, ``numTraining``, ``file_ending ".nii.gz"`` and a ``"medseg_phantom"`` record of the
    parameters), ``imagesTr/case_000_0000.nii.gz``, ``labelsTr/case_000.nii.gz``, and the held-out
    cases (numbered after the training ones) in ``imagesTs/`` + ``labelsTs/``. Files are written
    atomically through :mod:`medseg.io`.

    If ``out_dir`` already holds a complete phantom dataset written with the same parameters it is
    reused as is; a phantom dataset with other parameters is replaced. Any other non-empty folder
    is refused — user data is never overwritten.

    Args:
        out_dir: Output folder.
        spec: What every case looks like (grid, spacing, anatomy, modality, noise physics).
        n_train: Training cases.
        n_test: Held-out cases.
        seed: Dataset seed (each case gets its own derived seed).
        write_clean: Also write the noise-free images to ``cleanTr/`` (and ``cleanTs/``), named
            like the images: the targets of a restoration model.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        InputError: ``out_dir`` is a file or a non-empty folder that is not a phantom dataset.
    """
    from medseg.io import write_image, write_label

    out = Path(out_dir)
    mod, spatial_dims = spec.modality_tag, spec.spatial_dims
    # the same record, key by key, as before PhantomSpec, so folders written then are still
    # recognised and reused; the appearance fields that could not be set then are recorded
    # only when they differ from their defaults
    params = {
        "n_train": int(n_train), "n_test": int(n_test), "spatial_dims": spatial_dims,
        "shape": list(spec.shape), "modality": mod,
        "lesion_fraction": float(spec.lesion_fraction), "seed": int(seed),
        "spacing": list(spec.spacing), "noise_level": float(spec.noise_level),
        "n_lesions": int(spec.n_lesions), "dose": spec.dose, "ct_model": spec.ct_model,
        "mr_sigma": spec.mr_sigma, "acceleration": float(spec.acceleration),
        "center_fraction": float(spec.center_fraction), "looks": spec.looks,
        "write_clean": bool(write_clean),
    }
    for name in _APPEARANCE_FIELDS:
        value = getattr(spec, name)
        if value != PhantomSpec.__dataclass_fields__[name].default:
            params[name] = list(value) if isinstance(value, tuple) else value
    ending = ".nii.gz"
    train_ids = [f"case_{i:03d}" for i in range(n_train)]
    test_ids = [f"case_{n_train + i:03d}" for i in range(n_test)]
    files = ([out / "imagesTr" / f"{c}_0000{ending}" for c in train_ids]
             + [out / "labelsTr" / f"{c}{ending}" for c in train_ids]
             + [out / "imagesTs" / f"{c}_0000{ending}" for c in test_ids]
             + [out / "labelsTs" / f"{c}{ending}" for c in test_ids])
    if write_clean:
        files += ([out / "cleanTr" / f"{c}_0000{ending}" for c in train_ids]
                  + [out / "cleanTs" / f"{c}_0000{ending}" for c in test_ids])

    if out.exists() and not out.is_dir():
        raise InputError("output path is a file", out, "choose a folder for the phantom dataset")
    if out.is_dir() and any(out.iterdir()):
        prev = _is_phantom_folder(out)
        if prev is None:
            raise InputError(
                "output folder is not empty and is not a medseg phantom dataset",
                out,
                "choose an empty or new folder; medseg never overwrites existing data",
            )
        rec = prev[_MARKER]
        if rec.get("params") == params and rec.get("complete") and all(p.is_file()
                                                                        for p in files):
            return out
        _clear_previous_phantom(out)
    out.mkdir(parents=True, exist_ok=True)

    dataset = {
        "name": f"medseg_phantom_{mod.lower()}_{spatial_dims}d",
        "description": "Synthetic phantoms (organ + small lesions) written by medseg",
        "channel_names": {"0": mod},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": int(n_train),
        "numTest": int(n_test),
        "file_ending": ending,
        "tensorImageSize": f"{spatial_dims}D",
        _MARKER: {"params": params, "complete": False},
    }
    if write_clean:
        dataset["clean_images"] = {"training": "cleanTr", "test": "cleanTs",
                                   "description": "noise-free images named like imagesTr/Ts"}
    _write_json_atomic(out / "dataset.json", dataset)  # marks the folder as ours first

    seeds = np.random.SeedSequence(seed).spawn(n_train + n_test)
    meta = ImageMeta.from_spacing(spec.spacing, spec.shape, modality=mod)
    case_info = {}
    for i, cid in enumerate(train_ids + test_ids):
        case_seed = int(seeds[i].generate_state(1)[0])
        case = simulate_phantom(spec, case_seed)
        info = case.info
        split = ("imagesTr", "labelsTr", "cleanTr") if i < n_train else ("imagesTs", "labelsTs",
                                                                          "cleanTs")
        write_image(out / split[0] / f"{cid}_0000{ending}", case.image[None], meta)
        write_label(out / split[1] / f"{cid}{ending}", case.label, replace(meta, dtype="uint8"))
        if write_clean:
            write_image(out / split[2] / f"{cid}_0000{ending}", case.clean[None], meta)
        case_info[cid] = {"seed": case_seed, "lesion_fraction": info["lesion_fraction"],
                          "organ_fraction": info["organ_fraction"], "noise": info["noise"]}
    dataset[_MARKER] = {"params": params, "complete": True, "cases": case_info}
    _write_json_atomic(out / "dataset.json", dataset)
    return out
