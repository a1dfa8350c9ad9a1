"""Restoration (denoising) datasets from the phantoms, and the noise record they carry (P4).

A restoration dataset is an MSD-like folder::

    dataset.json      {"task": "restoration", "modality": "CT"|"MR"|"US", "target": "noisy"|"clean",
                       "noise": {...}, "data_range": ..., ...}
    imagesTr/case_000_0000.nii.gz   noisy input (realisation 1)
    targetsTr/case_000.nii.gz       training target: a second, independent noisy realisation of
                                    the same clean image (Noise2Noise) or the clean image itself
    cleanTr/case_000.nii.gz         clean truth (evaluation only; never used for training)
    imagesTs/, targetsTs/, cleanTs/ held-out cases (``targetsTs`` always holds an independent
                                    noisy realisation: the proper score is its NLL)

The ``"noise"`` record (:class:`NoiseParams`, defined in :mod:`medseg.physics.noise_params` and
re-exported here) holds everything the likelihood needs, so nothing
is hard-coded in the loss:

* CT: ``photons`` (``I0``, incident photons per ray), ``path_mm`` (``L``), ``mu_water`` (per mm).
  HU -> expected counts ``lambda = I0 exp(-mu_water (1 + HU / 1000) L)``
  (:func:`medseg.physics.noise.ct_transmission_noise`).
* MR: ``sigma``, the std of the Gaussian noise on each of the real and imaginary parts.
* US: ``looks`` (``L >= 1``), ``dynamic_range_db`` and ``reference`` (the intensity shown as grey
  255): grey ``g`` -> intensity ``reference * 10^((g / 255 - 1) DR / 10)``.

``data_range`` (max - min of the clean training images) is the PSNR range and the network's
input scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.io.meta import ImageMeta
from medseg.io.paths import read_json_object
from medseg.physics.noise import (
    MU_WATER_PER_MM,
    ct_photons_for_sigma,
    ct_transmission_noise,
    log_compress,
    mr_rician_noise,
    us_speckle,
)
from medseg.physics.noise_params import NoiseParams, grey_to_intensity, hu_to_counts_rate
from medseg.physics.phantom import MODALITIES, PhantomSpec, make_phantom

__all__ = [
    "NoiseParams",
    "grey_to_intensity",
    "hu_to_counts_rate",
    "noise_params_for_level",
    "read_restoration_json",
    "write_restoration_dataset",
]

_MARKER = "medseg_restoration"
_SUBDIRS = ("imagesTr", "targetsTr", "cleanTr", "imagesTs", "targetsTs", "cleanTs")


def noise_params_for_level(modality: str, level: float, data_range: float = 1.0,
                           path_mm: float = 200.0, dynamic_range_db: float = 60.0) -> NoiseParams:
    """Noise parameters of a level (the conventions of :func:`add_modality_noise`).

    CT: noise std ``10 level`` HU at water (``I0`` from :func:`ct_photons_for_sigma`); MR:
    ``sigma = 0.05 level``; US: ``looks = 4 / level^2`` (must stay ``>= 1``: ``level <= 2``).

    Raises:
        ValueError: unknown modality, ``level <= 0`` or US ``level > 2``.
    """
    mod = MODALITIES.get(modality.lower())
    if mod is None:
        raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
    if level <= 0:
        raise ValueError(f"level must be > 0, got {level}")
    if mod == "CT":
        return NoiseParams("CT", data_range, photons=ct_photons_for_sigma(10.0 * level, path_mm),
                           path_mm=path_mm, mu_water=MU_WATER_PER_MM)
    if mod == "MR":
        return NoiseParams("MR", data_range, sigma=0.05 * level)
    if level > 2.0:
        raise ValueError(f"US level must be <= 2 (looks = 4 / level^2 >= 1), got {level}")
    return NoiseParams("US", data_range, looks=4.0 / level**2,
                       dynamic_range_db=dynamic_range_db, reference=1.0)


def _realisation(clean: np.ndarray, noise: NoiseParams, rng: np.random.Generator) -> np.ndarray:
    """One noisy image from the clean one (HU / magnitude / grey)."""
    if noise.modality == "CT":
        return ct_transmission_noise(clean, rng, photons=noise.photons, path_mm=noise.path_mm,
                                     mu_water=noise.mu_water)
    if noise.modality == "MR":
        return mr_rician_noise(clean, float(noise.sigma), rng)
    speck = us_speckle(grey_to_intensity(clean, noise), float(noise.looks), rng)
    return log_compress(speck, float(noise.dynamic_range_db), reference=noise.reference)


def read_restoration_json(folder: str | Path) -> tuple[dict[str, Any], NoiseParams]:
    """``(dataset.json as a dict, checked noise parameters)`` of a restoration dataset folder.

    Raises:
        InputError: no ``dataset.json``, not JSON, not ``"task": "restoration"`` or a bad
            ``"noise"`` record (naming the file).
    """
    js = Path(folder) / "dataset.json"
    if not js.is_file():
        raise InputError("no dataset.json in the restoration dataset folder", js.parent,
                         "write one with `medseg restoration-data --output DIR`")
    d = read_json_object(js, "use a dataset written by `medseg restoration-data`")
    if not isinstance(d, dict) or d.get("task") != "restoration":
        raise InputError("dataset.json does not say \"task\": \"restoration\"", js,
                         "use a dataset written by `medseg restoration-data`")
    rec = d.get("noise")
    if isinstance(rec, dict) and "modality" not in rec and "modality" in d:
        rec = {**rec, "modality": d["modality"]}
    if isinstance(rec, dict) and "data_range" not in rec and "data_range" in d:
        rec = {**rec, "data_range": d["data_range"]}
    return d, NoiseParams.from_dict(rec, js)


def write_restoration_dataset(
    out_dir: str | Path,
    modality: str,
    n_train: int,
    n_test: int,
    size: int = 64,
    target: str = "noisy",
    level: float = 1.0,
    seed: int = 0,
    spatial_dims: int = 2,
) -> Path:
    """Write a restoration dataset (layout in the module docstring), deterministic by ``seed``.

    Each case: ``make_phantom(PhantomSpec(..., noise_level=0))`` gives the clean image (HU /
    magnitude / grey); two independent realisations of the modality's noise
    (:func:`_realisation`) give the input and the noisy target. Files go through
    :func:`medseg.io.write_image` (atomic); ``dataset.json`` is written last, atomically.

    Args:
        out_dir: A new or empty folder.
        modality: ``"ct"``, ``"mr"`` or ``"us"``.
        n_train: Training cases (``>= 1``).
        n_test: Held-out cases.
        size: Edge length in voxels.
        target: ``"noisy"`` (second realisation) or ``"clean"``.
        level: Noise level (:func:`noise_params_for_level`).
        seed: Dataset seed.
        spatial_dims: 2 or 3.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InputError: ``out_dir`` is a file or a non-empty folder.
        ValueError: bad arguments.
    """
    from medseg.io import write_image

    out = Path(out_dir)
    if target not in ("noisy", "clean"):
        raise ValueError(f"target must be 'noisy' or 'clean', got {target!r}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("output folder exists and is not empty", out,
                         "choose a new folder; medseg never overwrites existing data")
    noise = noise_params_for_level(modality, level)
    shape = (int(size),) * spatial_dims
    spec = PhantomSpec(shape=shape, modality=modality, noise_level=0.0)
    seeds = np.random.SeedSequence(seed).spawn(n_train + n_test)
    cases = []
    for i in range(n_train + n_test):
        case_seed = int(seeds[i].generate_state(1)[0])
        clean, _, _ = make_phantom(spec, seed=case_seed)
        rng = np.random.default_rng([case_seed, 1])
        cases.append((clean, _realisation(clean, noise, rng), _realisation(clean, noise, rng)))
    train_clean = np.stack([c[0] for c in cases[:n_train]])
    noise.data_range = float(train_clean.max() - train_clean.min()) or 1.0
    meta = ImageMeta.from_spacing((1.0,) * spatial_dims, shape, modality=noise.modality)
    ending = ".nii.gz"
    for i, (clean, n1, n2) in enumerate(cases):
        cid = f"case_{i:03d}"
        sfx = "Tr" if i < n_train else "Ts"
        tgt = n2 if (target == "noisy" or sfx == "Ts") else clean
        write_image(out / f"images{sfx}" / f"{cid}_0000{ending}", n1[None], meta)
        write_image(out / f"targets{sfx}" / f"{cid}{ending}", tgt[None], meta)
        write_image(out / f"clean{sfx}" / f"{cid}{ending}", clean[None], meta)
    dataset = {
        "name": f"medseg_restoration_{noise.modality.lower()}_{spatial_dims}d",
        "description": "Phantom denoising pairs written by medseg (clean truth in clean*/)",
        "task": "restoration",
        "modality": noise.modality,
        "channel_names": {"0": noise.modality},
        "target": target,
        "numTraining": int(n_train),
        "numTest": int(n_test),
        "file_ending": ending,
        "tensorImageSize": f"{spatial_dims}D",
        "intensity_unit": {"CT": "HU", "MR": "a.u.", "US": "grey 0-255"}[noise.modality],
        "noise": noise.to_dict(),
        _MARKER: {"level": float(level), "seed": int(seed), "size": int(size)},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2))
    return out
