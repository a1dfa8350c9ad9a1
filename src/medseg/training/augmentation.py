"""The augmenter of a segmentation run, with the noise model the modality calls for (P4).

``augment.noise_model`` picks the noise step of :class:`~medseg.transforms.augment.Augmenter`:

* ``"physics"`` — the physically correct model per channel (:class:`RawDomainNoise` around
  :class:`~medseg.transforms.physics_noise.PhysicsNoise`): Poisson transmission noise at a
  reduced dose for CT, complex Gaussian noise then the modulus (Rician) for MR, mean-preserving
  Gamma speckle for ultrasound; its probabilities and levels are the ``physics_noise`` section.
* ``"gaussian"`` — additive Gaussian noise on the normalised intensities (``augment.p_noise``,
  ``augment.noise_std_range``): the naive model, kept for other modalities and for comparison.
* ``"auto"`` (default) — ``"physics"`` when a channel is CT, MR or US, else ``"gaussian"``.

The physical models act on raw intensities (HU, magnitude, echo intensity), while training
patches are normalised; :class:`RawDomainNoise` maps each sample back with its own case's
normalisation (:func:`medseg.data.preprocess.to_raw`, per-case ``scale``/``offset`` from
:func:`~medseg.data.preprocess.channel_affine`), applies the noise and re-normalises with the same
numbers (:func:`~medseg.data.preprocess.from_raw`). It runs after the spatial transforms (noise
belongs to the grid the image is seen on) and before blur, brightness, contrast and gamma.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.data.preprocess import ChannelNorm, from_raw, to_raw
from medseg.errors import ConfigError
from medseg.transforms.augment import AugmentConfig, Augmenter
from medseg.transforms.physics_noise import PhysicsNoise, PhysicsNoiseConfig

NOISE_MODELS = ("auto", "physics", "gaussian")
PHYSICS_MODALITIES = ("CT", "MR", "US")


def resolve_noise_model(noise_model: str, modalities: Sequence[str | None]) -> str:
    """``"physics"`` or ``"gaussian"`` for a configured ``noise_model`` and the channels.

    Raises:
        ConfigError: unknown model name.
    """
    if noise_model not in NOISE_MODELS:
        raise ConfigError(f"augment.noise_model must be one of {NOISE_MODELS}, got "
                          f"{noise_model!r}")
    if noise_model != "auto":
        return noise_model
    return "physics" if any((m or "").upper() in PHYSICS_MODALITIES for m in modalities) \
        else "gaussian"


class RawDomainNoise:
    """Physics noise for normalised training patches: raw domain, noise, normalised again.

    Args:
        cfg: Probabilities and levels per modality. Ultrasound channels normalised with
            ``"log_zscore"`` are linear intensity (``us_domain="intensity"`` is set for them);
            other ultrasound channels are taken as log-compressed B-mode grey values.
        norms: The plan's normalisation per channel (with its modality).
        affines: Per case, ``(C, 2)`` ``(scale, offset)`` of each channel's normalisation.
        cases: Returns the case index of each sample of the batch being augmented (e.g. the
            patch sampler's ``last_cases``).

    Shapes:
        ``__call__(image (B, C, *spatial), generator) -> (B, C, *spatial)``; a (sample, channel)
        pair the noise did not draw is returned bit for bit.
    """

    def __init__(self, cfg: PhysicsNoiseConfig, norms: Sequence[ChannelNorm],
                 affines: Sequence[np.ndarray], cases: Callable[[], Sequence[int]]):
        self.norms = list(norms)
        self.modalities = [(n.modality or "other") for n in self.norms]
        self.affines = [np.asarray(a, dtype=np.float64) for a in affines]
        self.cases = cases
        log_us = [n.scheme == "log_zscore" and m.upper() == "US"
                  for n, m in zip(self.norms, self.modalities, strict=True)]
        if any(log_us) and not all(log_us[c] for c, m in enumerate(self.modalities)
                                   if m.upper() == "US"):
            raise ConfigError("ultrasound channels mix B-mode and log_zscore (linear) data; "
                              "physics noise needs one ultrasound domain",
                              hint="normalise every US channel the same way")
        self.noise = PhysicsNoise(dataclasses.replace(cfg, us_domain="intensity")
                                  if any(log_us) else cfg)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cases = list(self.cases())
        B, C = image.shape[:2]
        if len(cases) != B or C != len(self.norms):
            raise ValueError(f"batch {tuple(image.shape)} does not match {len(cases)} case "
                             f"indices and {len(self.norms)} channel(s)")
        aff = torch.from_numpy(np.stack([self.affines[c] for c in cases]))  # (B, C, 2)
        x = image.double()
        raw = torch.stack([to_raw(x[:, c], n, aff[:, c, 0], aff[:, c, 1])
                           for c, n in enumerate(self.norms)], 1)
        noisy = self.noise(raw, generator, 1.0, 0.0, self.modalities)
        changed = (noisy != raw).flatten(2).any(-1)  # (B, C)
        if not bool(changed.any()):
            return image
        back = torch.stack([from_raw(noisy[:, c], n, aff[:, c, 0], aff[:, c, 1])
                            for c, n in enumerate(self.norms)], 1).to(image.dtype)
        sel = changed.reshape(B, C, *([1] * (image.ndim - 2)))
        return torch.where(sel, back, image)


def make_augmenter(
    cfg: AugmentConfig,
    noise_cfg: PhysicsNoiseConfig,
    spatial_dims: int,
    seed: int,
    norms: Sequence[ChannelNorm],
    affines: Sequence[np.ndarray],
    cases: Callable[[], Sequence[int]],
) -> Augmenter | None:
    """The epoch's augmenter, with the resolved noise model (``None`` when disabled).

    Args:
        cfg: Spatial and intensity augmentation (``cfg.noise_model`` picks the noise step).
        noise_cfg: The physical noise models' probabilities and levels.
        spatial_dims: 2 or 3.
        seed: Seed of the augmenter's generator (the physical noise draws from it too, so
            resume stays exact).
        norms: The plan's per-channel normalisation.
        affines: Per training case ``(C, 2)`` normalisation ``(scale, offset)``.
        cases: Case index of each sample of the batch being augmented.
    """
    if not cfg.enabled:
        return None
    model = resolve_noise_model(cfg.noise_model, [n.modality for n in norms])
    if model == "gaussian" or not noise_cfg.enabled:
        return Augmenter(cfg, spatial_dims, seed=seed)
    return Augmenter(cfg, spatial_dims, seed=seed,
                     noise=RawDomainNoise(noise_cfg, norms, affines, cases))


class PerImageSpeckle:
    """Ultrasound speckle for images normalised per image (classification, issue 13).

    Classification images are min-max scaled then z-scored per image
    (:func:`medseg.tasks.classification.preprocess_cls_images`), so each sample's B-mode grey
    values are recovered exactly up to their range: ``g = max_grey (x - min x) / (max x - min
    x)``. :class:`~medseg.transforms.physics_noise.PhysicsNoise` then applies Gamma speckle
    through the log compression (``physics_noise.p_us``, ``us_looks_range``,
    ``us_dynamic_range_db``), and the sample is min-max scaled and z-scored again, as the
    preprocessing does.

    Args:
        cfg: The physical noise models' probabilities and levels (the ultrasound ones are used).

    Shapes:
        ``__call__(image (B, C, *spatial), generator) -> (B, C, *spatial)``; a sample the noise
        did not draw is returned bit for bit.
    """

    def __init__(self, cfg: PhysicsNoiseConfig):
        self.noise = PhysicsNoise(dataclasses.replace(cfg, us_domain="bmode"))
        self.max_grey = float(cfg.us_max_grey)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        B, C = image.shape[:2]
        x = image.double()
        flat = x.reshape(B, -1)
        shape = (B, *([1] * (image.ndim - 1)))
        lo, hi = flat.min(1).values.reshape(shape), flat.max(1).values.reshape(shape)
        raw = (x - lo) / (hi - lo).clamp_min(1e-8) * self.max_grey
        noisy = self.noise(raw, generator, 1.0, 0.0, ["US"] * C)
        changed = (noisy != raw).reshape(B, -1).any(1)
        if not bool(changed.any()):
            return image
        f = noisy.reshape(B, -1)
        a = (f - f.min(1, keepdim=True).values) / (
            f.max(1, keepdim=True).values - f.min(1, keepdim=True).values).clamp_min(1e-8)
        z = (a - a.mean(1, keepdim=True)) / a.std(1, correction=0, keepdim=True).clamp_min(1e-8)
        return torch.where(changed.reshape(shape), z.reshape(image.shape).to(image.dtype), image)


def make_image_augmenter(cfg: AugmentConfig, noise_cfg: PhysicsNoiseConfig, spatial_dims: int,
                         seed: int, modality: str | None) -> Augmenter | None:
    """The augmenter of a classification run (images normalised per image; ``None`` when
    disabled).

    ``augment.noise_model`` ``"auto"`` gives ultrasound images speckle
    (:class:`PerImageSpeckle`) and the others additive Gaussian noise; ``"physics"`` is
    refused for CT and MR classification images (per-image normalisation loses the HU /
    magnitude scale their noise models need).

    Raises:
        ConfigError: ``"physics"`` for a modality other than ultrasound.
    """
    if not cfg.enabled:
        return None
    us = (modality or "").upper() == "US"
    model = resolve_noise_model(cfg.noise_model, [modality])
    if model == "physics" and not us:
        if cfg.noise_model == "physics":
            raise ConfigError(f"augment.noise_model physics needs ultrasound images for "
                              f"classification (images are normalised per image), the data is "
                              f"{modality or 'of no stated modality'}",
                              hint="use augment.noise_model: gaussian, or set data.modality: US")
        model = "gaussian"
    if model == "gaussian" or not noise_cfg.enabled:
        return Augmenter(cfg, spatial_dims, seed=seed)
    return Augmenter(cfg, spatial_dims, seed=seed, noise=PerImageSpeckle(noise_cfg))
