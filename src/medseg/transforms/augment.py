"""Random batch augmentation (2D and 3D) composed from :mod:`medseg.transforms.functional`.

:class:`AugmentConfig` holds every probability and range (configuration is data: it round-trips
through a dict). :class:`Augmenter` draws the per-sample parameters from its own
``torch.Generator`` (deterministic by seed, state saved with :meth:`Augmenter.state_dict`) and
applies, in order:

1. one affine resampling for the samples drawn for rotation and/or scaling (bilinear image,
   nearest label; padding with each sample's channel minimum for images, with ``label_pad`` for
   labels);
2. mirroring per axis;
3. noise, Gaussian blur, multiplicative brightness, contrast, low-resolution simulation and gamma
   (nnU-Net's order). The noise step is additive Gaussian noise on the normalised intensities,
   or a replacement given as ``noise`` (the physically correct per-modality models, see
   :mod:`medseg.training.augmentation`).

A sample not drawn for an operation is left bit-for-bit untouched (operations run on the drawn
subset only), so a config with every probability 0 — or ``enabled=False`` — is the identity.
Rotations act in voxel space; with strongly anisotropic voxels restrict them with
``rotation_deg`` per axis (3D) or resample first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from medseg.errors import ConfigError
from medseg.transforms import functional as TF


@dataclass
class AugmentConfig:
    """Probabilities (per sample) and ranges of every augmentation.

    Attributes:
        enabled: Master switch; ``False`` makes the augmenter the identity.
        p_rotate: Probability of a rotation.
        rotation_deg: Maximum absolute angle in degrees; a float (every axis) or one value per
            rotation axis in 3D (about array axes 0, 1, 2), e.g. ``(0, 0, 30)`` for in-plane only.
        p_scale: Probability of a zoom.
        scale_range: Zoom factor range (> 1 enlarges structures).
        p_flip: Probability of mirroring, per axis.
        flip_axes: Spatial axes that may be mirrored (``None`` = all).
        p_translate: Probability of a translation (off by default: segmentation patches are
            already drawn at random positions; for whole-image classification a shift of a
            few pixels is the classic augmentation of small images).
        translate_fraction: Largest shift per axis as a fraction of that axis' size (each
            axis drawn uniformly in ``[-f, f]``); a float, or one value per spatial axis.
        p_noise: Probability of additive Gaussian noise.
        noise_model: ``"auto"``, ``"physics"`` or ``"gaussian"``: which noise the training run
            uses (resolved by :func:`medseg.training.augmentation.resolve_noise_model`; the
            augmenter itself adds Gaussian noise unless it is given a ``noise`` step).
        noise_std_range: Noise standard deviation range (intensities are normalised).
        p_blur: Probability of a Gaussian blur.
        blur_sigma_range: Blur sigma range in voxels.
        p_brightness: Probability of multiplicative brightness.
        brightness_range: Factor range.
        p_contrast: Probability of a contrast change.
        contrast_range: Factor range.
        p_lowres: Probability of low-resolution simulation.
        lowres_zoom_range: Down-sampling factor range.
        p_gamma: Probability of a gamma change.
        gamma_range: Exponent range.
        p_gamma_invert: Probability that a drawn gamma acts on the inverted image.
        p_invert: Probability of a polarity inversion about the channel mean (``2 m - x``;
            off by default: for tasks whose objects appear both bright on dark and dark on
            bright, e.g. nuclei in fluorescence and bright-field images).
        label_pad: Label value for voxels rotated in from outside (0, or the ignore label so
            they do not count in the loss).
    """

    enabled: bool = True
    p_rotate: float = 0.2
    rotation_deg: float | tuple[float, ...] = 30.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_flip: float = 0.5
    flip_axes: tuple[int, ...] | None = None
    p_translate: float = 0.0
    translate_fraction: float | tuple[float, ...] = 0.1
    p_noise: float = 0.1
    noise_model: str = "auto"
    noise_std_range: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.15
    lowres_zoom_range: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_gamma_invert: float = 0.1
    p_invert: float = 0.0
    label_pad: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"augmentation {f.name} must lie in [0, 1], got {v}")
            if f.name.endswith("_range"):
                if len(v) != 2 or float(v[0]) > float(v[1]):
                    raise ConfigError(f"augmentation {f.name} must be (low, high), got {v}")
                setattr(self, f.name, (float(v[0]), float(v[1])))
        if isinstance(self.rotation_deg, (list, tuple)):
            self.rotation_deg = tuple(float(a) for a in self.rotation_deg)
        if self.flip_axes is not None:
            self.flip_axes = tuple(int(a) for a in self.flip_axes)
        fr = self.translate_fraction
        frs = tuple(float(a) for a in fr) if isinstance(fr, (list, tuple)) else (float(fr),)
        if not frs or not all(0.0 <= a <= 1.0 for a in frs):
            raise ConfigError(f"augmentation translate_fraction must lie in [0, 1] per axis, "
                              f"got {fr}")
        self.translate_fraction = frs if isinstance(fr, (list, tuple)) else frs[0]
        if self.noise_model not in ("auto", "physics", "gaussian"):
            raise ConfigError(f"augment.noise_model must be auto, physics or gaussian, got "
                              f"{self.noise_model!r}")

    @classmethod
    def identity(cls) -> AugmentConfig:
        """A config that changes nothing (every probability 0)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~medseg.errors.ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown augmentation keys {unknown}", None,
                              f"known keys: {sorted(known)}")
        return cls(**d)


def _apply_subset(mask: torch.Tensor, image: torch.Tensor,
                  fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``fn(image[idx], idx)`` on the drawn samples only; the others stay untouched."""
    idx = torch.nonzero(mask).flatten()
    if idx.numel() == 0:
        return image
    out = image.clone()
    out[idx] = fn(image[idx], idx)
    return out


class Augmenter:
    """Random batch augmentation, callable on ``(image, label)``.

    Args:
        cfg: The configuration.
        spatial_dims: 2 or 3.
        seed: Seed of the augmenter's own ``torch.Generator``.
        noise: Replaces the Gaussian noise step: ``noise(image, generator) -> image`` on the
            whole batch ``(B, C, *spatial)`` after the spatial transforms, drawing from the
            augmenter's generator (so its state, saved for resume, covers it).

    Example:
        >>> aug = Augmenter(AugmentConfig(), spatial_dims=2, seed=0)
        >>> img, lab = aug(torch.randn(2, 1, 64, 64), torch.zeros(2, 1, 64, 64, dtype=torch.long))
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        spatial_dims: int,
        seed: int = 0,
        noise: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.cfg = cfg
        self.noise = noise
        self.spatial_dims = spatial_dims
        self.generator = torch.Generator().manual_seed(int(seed))
        rot = cfg.rotation_deg
        n_axes = 1 if spatial_dims == 2 else 3
        if isinstance(rot, tuple):
            if len(rot) != n_axes:
                raise ConfigError(
                    f"rotation_deg has {len(rot)} entries, {spatial_dims}D needs {n_axes}"
                )
            self._rot = torch.tensor(rot, dtype=torch.float64)
        else:
            self._rot = torch.full((n_axes,), float(rot), dtype=torch.float64)
        axes = cfg.flip_axes if cfg.flip_axes is not None else tuple(range(spatial_dims))
        if any(a < 0 or a >= spatial_dims for a in axes):
            raise ConfigError(f"flip_axes {axes} out of range for {spatial_dims}D")
        self._flip_axes = axes
        fr = cfg.translate_fraction
        if isinstance(fr, tuple) and len(fr) != spatial_dims:
            raise ConfigError(f"translate_fraction has {len(fr)} entries, {spatial_dims}D "
                              f"needs {spatial_dims}")
        self._shift = torch.tensor(fr if isinstance(fr, tuple) else (fr,) * spatial_dims,
                                   dtype=torch.float64)

    # random helpers -------------------------------------------------------------------------
    def _bern(self, p: float, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < p

    def _uniform(self, rng: tuple[float, float], *shape: int) -> torch.Tensor:
        u = torch.rand(*shape, generator=self.generator, dtype=torch.float64)
        return rng[0] + (rng[1] - rng[0]) * u

    def state_dict(self) -> dict[str, Any]:
        """The generator state (for exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            image: ``(B, C, *spatial)`` float.
            label: ``(B, 1, *spatial)`` or ``(B, *spatial)`` integer, or ``None``.

        Returns:
            ``(image, label)`` with the input shapes and dtypes; label values are a subset of the
            input's values plus ``cfg.label_pad`` (only where voxels come from outside the patch).
        """
        d = self.spatial_dims
        if image.ndim != d + 2:
            raise ValueError(
                f"expected a (B, C, *spatial) batch with {d} spatial axes, got {tuple(image.shape)}"
            )
        squeeze_label = label is not None and label.ndim == d + 1
        if squeeze_label:
            assert label is not None
            label = label[:, None]
        if label is not None and (label.shape[0] != image.shape[0]
                                  or label.shape[2:] != image.shape[2:]):
            raise ValueError(f"label {tuple(label.shape)} does not match image "
                             f"{tuple(image.shape)}")
        cfg = self.cfg
        if cfg.enabled:
            image, label = self._spatial(image, label)
            image = self._intensity(image)
        if squeeze_label and label is not None:
            label = label[:, 0]
        return image, label

    def _spatial(self, image: torch.Tensor, label: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, d, B = self.cfg, self.spatial_dims, image.shape[0]
        do_rot = self._bern(cfg.p_rotate, B)
        do_scale = self._bern(cfg.p_scale, B)
        n_axes = self._rot.numel()
        angles = (2 * torch.rand(B, n_axes, generator=self.generator, dtype=torch.float64) - 1)
        angles = angles * self._rot[None] * math.pi / 180.0
        scales = self._uniform(cfg.scale_range, B)
        flips = torch.rand(B, d, generator=self.generator, dtype=torch.float64) < cfg.p_flip
        allowed = torch.zeros(d, dtype=torch.bool)
        allowed[list(self._flip_axes)] = True
        flips &= allowed[None]
        # drawn last and only when enabled, so configurations without it keep their streams
        do_shift = torch.zeros(B, dtype=torch.bool)
        shifts = torch.zeros(B, d, dtype=torch.float64)
        if cfg.p_translate > 0:
            do_shift = self._bern(cfg.p_translate, B)
            size = torch.tensor(image.shape[2:], dtype=torch.float64)
            shifts = (2 * torch.rand(B, d, generator=self.generator, dtype=torch.float64) - 1
                      ) * self._shift[None] * size[None]

        moved = do_rot | do_scale | do_shift
        idx = torch.nonzero(moved).flatten()
        if idx.numel():
            ang = angles[idx] * do_rot[idx, None]
            rot = TF.rotation_matrices(ang[:, 0] if d == 2 else ang, d)
            s = torch.where(do_scale[idx], scales[idx], torch.ones_like(scales[idx]))
            mats = rot / s[:, None, None]
            sub = image[idx]
            pad = sub.flatten(2).amin(dim=2)  # (b, C): channel minimum = background
            new_img, new_lab = TF.spatial_transform(
                sub, None if label is None else label[idx], mats, image_pad=pad,
                label_pad=cfg.label_pad, offsets=shifts[idx] * do_shift[idx, None],
            )
            image = image.clone()
            image[idx] = new_img
            if label is not None:
                assert new_lab is not None
                label = label.clone()
                label[idx] = new_lab
        if bool(flips.any()):
            image, label = TF.flip(image, label, flips)
        return image, label

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        cfg, B = self.cfg, image.shape[0]
        g = self.generator
        if self.noise is not None:
            image = self.noise(image, g)
        else:
            image = self._gaussian_noise(image)
        # blur
        m = self._bern(cfg.p_blur, B)
        sig = self._uniform(cfg.blur_sigma_range, B)
        image = _apply_subset(m, image, lambda x, idx: TF.gaussian_blur(x, sig[idx]))
        # brightness
        m = self._bern(cfg.p_brightness, B)
        f = self._uniform(cfg.brightness_range, B)
        image = _apply_subset(m, image, lambda x, idx: TF.brightness(x, f[idx]))
        # contrast
        m = self._bern(cfg.p_contrast, B)
        c = self._uniform(cfg.contrast_range, B)
        image = _apply_subset(m, image, lambda x, idx: TF.contrast(x, c[idx]))
        # low resolution (zoom differs per sample: one call each)
        m = self._bern(cfg.p_lowres, B)
        z = self._uniform(cfg.lowres_zoom_range, B)
        image = _apply_subset(
            m, image,
            lambda x, idx: torch.cat([
                TF.simulate_low_resolution(x[i:i + 1], float(z[j])) for i, j in enumerate(idx)
            ]),
        )
        # gamma (optionally on the inverted image)
        m = self._bern(cfg.p_gamma, B)
        gm = self._uniform(cfg.gamma_range, B)
        inv = self._bern(cfg.p_gamma_invert, B)
        for flag in (False, True):
            sel = m & (inv == flag)
            image = _apply_subset(sel, image,
                                  lambda x, idx, fl=flag: TF.gamma(x, gm[idx], invert=fl))
        # polarity inversion: drawn last and only when enabled (earlier streams unchanged)
        if cfg.p_invert > 0:
            m = self._bern(cfg.p_invert, B)
            image = _apply_subset(m, image, lambda x, idx: TF.invert(x))
        return image

    def _gaussian_noise(self, image: torch.Tensor) -> torch.Tensor:
        cfg, B, g = self.cfg, image.shape[0], self.generator
        m = self._bern(cfg.p_noise, B)
        std = self._uniform(cfg.noise_std_range, B)
        if bool(m.any()):
            def _noise(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
                n = torch.randn(x.shape, generator=g, dtype=x.dtype)
                return TF.gaussian_noise(x, std[idx], n)
            image = _apply_subset(m, image, _noise)
        return image
