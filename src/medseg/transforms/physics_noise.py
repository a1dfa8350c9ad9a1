"""Physics-correct noise augmentation on normalised patches (P1-P3), and a naive Gaussian twin.

:class:`PhysicsNoise` takes a batch of *normalised* intensities ``x`` ``(B, C, *spatial)`` and,
per sample and channel, ``scale`` and ``offset`` ``(B, C)`` such that the raw intensities are
``raw = x * scale + offset`` (the inverse of the normalisation). It maps the drawn
``(sample, channel)`` pairs to the raw domain, applies the modality's noise model and maps back
with the same ``scale`` / ``offset``. Pairs not drawn — and channels whose modality has no
physics model (``XR``, ``PNG``, ``other``) — are left untouched bit for bit.

Noise per modality:

* **MR** (P2): complex Gaussian noise on the magnitude, then the modulus
  (:func:`medseg.physics.mri.complex_noise`), with ``sigma = level * robust_max`` where
  ``level`` is drawn from ``mr_sigma_range`` and ``robust_max`` is the 99th percentile of the
  pair's raw magnitudes (robust on patches, where background for a sigma estimate may be
  absent). Raw magnitudes below 0 (round-off) are treated as 0; a pair whose robust max is 0 is
  left untouched. Given the input magnitudes ``m``, the output is ``Rice(nu=m, sigma)``.
* **US** (P3): the raw values are taken to be 8-bit B-mode grey values ``g`` in
  ``[0, us_max_grey]`` produced by log compression over ``us_dynamic_range_db`` dB
  (**assumption**: the dataset's display dynamic range; 60 dB by default). The compression is
  undone (``I = 10^(DR (g / g_max - 1) / 10)``), the intensity is multiplied by Gamma speckle with
  ``looks`` drawn from ``us_looks_range`` (mean preserving) and compressed again with the same
  reference. Grey 0 (outside the scan sector, or below the displayed range) is left unchanged.
  With ``us_domain="intensity"`` the raw values are instead linear echo intensity (envelope
  power, e.g. channels normalised with ``"log_zscore"``) and the speckle multiplies them
  directly (values below 0, from round-off, are left unchanged).
* **CT** (P1): per-voxel Poisson transmission noise (the model of
  :func:`medseg.physics.noise.ct_transmission_noise`, in torch) simulating a scan at dose
  fraction ``d`` drawn from ``ct_dose_range``. The input is assumed to be a full-dose scan with
  noise std ``ct_sigma_hu_water`` at water; the *added* noise uses the reduced photon count
  ``I0_add = I0_ref d / (1 - d)`` (``I0_ref`` from
  :func:`medseg.physics.noise.ct_photons_for_sigma`), so that the variances add up to the
  noise of the requested dose, ``sigma_ref^2 / d`` at water. ``d = 1`` adds nothing. The
  result is not re-clipped to the normalisation's clip range (clip it afterwards to mimic
  :func:`medseg.data.preprocess.normalize_channel` exactly).

What ``scale`` and ``offset`` must be, per scheme of :mod:`medseg.data.preprocess` (computed on
the raw image *before* resampling, exactly as :func:`~medseg.data.preprocess.normalize_channel`
does; ``eps = 1e-8``):

* ``"ct"`` (CT): ``scale = max(ChannelNorm.std, eps)``, ``offset = ChannelNorm.mean`` (the same
  for every case); the raw domain is the *clipped* HU image.
* ``"zscore"`` (MR): ``scale = max(x.std(), eps)``, ``offset = x.mean()`` of the case's channel.
* ``"minmax_zscore"`` (US / PNG / XR): with ``r = max(x.max() - x.min(), eps)`` and
  ``y = (x - x.min()) / r``: ``scale = r * max(y.std(), eps)``,
  ``offset = x.min() + r * y.mean()`` (the same as ``x.std()``, ``x.mean()`` up to the eps), so
  the raw domain is the original grey values (0..255 for 8-bit B-mode).
* ``"none"``: ``scale = 1``, ``offset = 0``.

These four are :func:`medseg.data.preprocess.channel_affine` of the case's raw channel. The
physics-aware schemes ``"ct_vst"`` and ``"log_zscore"`` are ``u = (phi(x) - offset) / scale``
with a *nonlinear* ``phi``: for them, map the batch to the raw domain with
:func:`medseg.data.preprocess.to_raw`, call :class:`PhysicsNoise` with ``scale = 1``,
``offset = 0`` and map back with :func:`medseg.data.preprocess.from_raw` (US channels under
``"log_zscore"`` are linear intensity: use ``us_domain="intensity"``).

Spatial augmentation (rotation, zoom) and resampling are linear in the intensities, so they
commute with this affine map; intensity augmentations (brightness, contrast, gamma) do not, and
:class:`PhysicsNoise` should run before them.

:class:`GaussianNoise` has the same call signature and adds ``N(0, std^2)`` to the normalised
intensities (what :class:`~medseg.transforms.augment.Augmenter` does), so a study can compare
the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import torch

from medseg.errors import ConfigError
from medseg.physics.mri import complex_noise
from medseg.physics.noise import MU_WATER_PER_MM, ct_photons_for_sigma
from medseg.physics.ultrasound import bmode_to_intensity, envelope_to_bmode, speckle

__all__ = ["GaussianNoise", "GaussianNoiseConfig", "PhysicsNoise", "PhysicsNoiseConfig"]

#: Modalities with a physics noise model.
PHYSICS_MODALITIES = ("MR", "US", "CT")
#: Modalities accepted and left untouched (no physics model).
PASSTHROUGH_MODALITIES = ("XR", "PNG", "OTHER")

_C = TypeVar("_C")


def _validate_fields(cfg: Any) -> None:
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name.startswith("p_") and not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"noise augmentation {f.name} must lie in [0, 1], got {v}")
        if f.name.endswith("_range"):
            if len(v) != 2 or float(v[0]) > float(v[1]):
                raise ConfigError(f"noise augmentation {f.name} must be (low, high), got {v}")
            setattr(cfg, f.name, (float(v[0]), float(v[1])))


def _from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown noise augmentation keys {unknown}", None,
                          f"known keys: {sorted(known)}")
    return cls(**d)


@dataclass
class PhysicsNoiseConfig:
    """Probabilities (per sample and channel) and levels of the physics noise per modality.

    Attributes:
        enabled: Master switch; ``False`` makes :class:`PhysicsNoise` the identity.
        p_mr: Probability of MR complex noise.
        mr_sigma_range: Noise std ``sigma`` relative to the pair's robust max (99th percentile
            of the raw magnitudes), ``>= 0``.
        p_us: Probability of US speckle.
        us_looks_range: Number of looks ``L >= 1`` (fewer looks, stronger speckle).
        us_domain: ``"bmode"`` (raw values are log-compressed grey values, the default) or
            ``"intensity"`` (raw values are linear echo intensity).
        us_dynamic_range_db: Dynamic range (dB) of the dataset's B-mode log compression.
        us_max_grey: Grey value of the top of the displayed range (255 for 8-bit).
        p_ct: Probability of CT low-dose noise.
        ct_dose_range: Dose fraction ``d`` in ``(0, 1]`` of the simulated scan.
        ct_sigma_hu_water: Noise std (HU) at water of the full-dose input scans.
        ct_path_mm: Ray length of the per-voxel transmission model (mm).
    """

    enabled: bool = True
    p_mr: float = 0.15
    mr_sigma_range: tuple[float, float] = (0.01, 0.05)
    p_us: float = 0.15
    us_looks_range: tuple[float, float] = (2.0, 10.0)
    us_domain: str = "bmode"
    us_dynamic_range_db: float = 60.0
    us_max_grey: float = 255.0
    p_ct: float = 0.15
    ct_dose_range: tuple[float, float] = (0.25, 1.0)
    ct_sigma_hu_water: float = 10.0
    ct_path_mm: float = 200.0

    def __post_init__(self) -> None:
        _validate_fields(self)
        if self.mr_sigma_range[0] < 0:
            raise ConfigError(f"mr_sigma_range must be >= 0, got {self.mr_sigma_range}")
        if self.us_looks_range[0] < 1:
            raise ConfigError(
                f"us_looks_range must be >= 1 (L = 1 is fully developed speckle), got "
                f"{self.us_looks_range}"
            )
        if self.us_domain not in ("bmode", "intensity"):
            raise ConfigError(f"us_domain must be 'bmode' or 'intensity', got {self.us_domain!r}")
        if not (0 < self.ct_dose_range[0] and self.ct_dose_range[1] <= 1):
            raise ConfigError(f"ct_dose_range must lie in (0, 1], got {self.ct_dose_range}")
        for name in ("us_dynamic_range_db", "us_max_grey", "ct_sigma_hu_water", "ct_path_mm"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def identity(cls) -> PhysicsNoiseConfig:
        """A config that changes nothing (every probability 0)."""
        return cls(p_mr=0.0, p_us=0.0, p_ct=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhysicsNoiseConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~medseg.errors.ConfigError`."""
        return _from_dict(cls, d)


@dataclass
class GaussianNoiseConfig:
    """Naive additive Gaussian noise on normalised intensities (the baseline to compare with).

    Attributes:
        enabled: Master switch.
        p_noise: Probability per sample.
        std_range: Noise std range, in normalised units.
    """

    enabled: bool = True
    p_noise: float = 0.15
    std_range: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        _validate_fields(self)
        if self.std_range[0] < 0:
            raise ConfigError(f"std_range must be >= 0, got {self.std_range}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GaussianNoiseConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~medseg.errors.ConfigError`."""
        return _from_dict(cls, d)


def _check_batch(
    image: torch.Tensor, scale: torch.Tensor | float, offset: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim not in (4, 5):
        raise ValueError(
            f"expected a (B, C, *spatial) batch with 2 or 3 spatial axes, got "
            f"{tuple(image.shape)}"
        )
    B, C = image.shape[:2]
    out = []
    for name, v in (("scale", scale), ("offset", offset)):
        t = torch.as_tensor(v, dtype=torch.float64, device=image.device)
        try:
            t = torch.broadcast_to(t, (B, C))
        except RuntimeError as e:
            raise ValueError(
                f"{name} must be (B, C) = ({B}, {C}) (one value per sample and channel), got "
                f"{tuple(t.shape)}"
            ) from e
        out.append(t)
    if bool((out[0] <= 0).any()):
        raise ValueError(
            f"scale must be > 0 (raw = x * scale + offset), got a minimum of {float(out[0].min())}"
        )
    return out[0], out[1]


def _modalities(modality: str | Sequence[str], C: int) -> list[str]:
    mods = [modality] * C if isinstance(modality, str) else list(modality)
    if len(mods) != C:
        raise ValueError(f"give one modality for all channels or one per channel ({C}), "
                         f"got {mods}")
    out = []
    for m in mods:
        u = m.upper()
        if u not in PHYSICS_MODALITIES + PASSTHROUGH_MODALITIES:
            raise ValueError(
                f"unknown modality {m!r}; use one of {PHYSICS_MODALITIES} (physics noise) or "
                f"{PASSTHROUGH_MODALITIES} (left untouched)"
            )
        out.append(u)
    return out


def _spatial_view(v: torch.Tensor, nd: int) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * nd)


class PhysicsNoise:
    """Per-modality physics noise on normalised batches (see the module docstring).

    Args:
        cfg: The configuration.

    Example:
        >>> aug = PhysicsNoise(PhysicsNoiseConfig(p_mr=1.0))
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 1, 32, 32)
        >>> y = aug(x, g, scale=torch.full((2, 1), 100.0), offset=torch.full((2, 1), 400.0),
        ...         modality="MR")
    """

    def __init__(self, cfg: PhysicsNoiseConfig):
        self.cfg = cfg

    def __call__(
        self,
        image: torch.Tensor,
        generator: torch.Generator,
        scale: torch.Tensor | float,
        offset: torch.Tensor | float,
        modality: str | Sequence[str],
    ) -> torch.Tensor:
        """Augment a batch.

        Args:
            image: ``(B, C, *spatial)`` normalised intensities (2 or 3 spatial axes), float.
            generator: Source of every random draw (the output is a function of its state).
            scale: ``(B, C)`` (or broadcastable), ``> 0``: ``raw = image * scale + offset``.
            offset: ``(B, C)`` (or broadcastable).
            modality: One modality for every channel or one per channel (``"MR"``, ``"US"``,
                ``"CT"``; ``"XR"``, ``"PNG"``, ``"other"`` are left untouched).

        Returns:
            ``(B, C, *spatial)``, same dtype; pairs not drawn are bit-for-bit the input.

        Raises:
            ValueError: wrong shapes, ``scale <= 0``, unknown modality, US grey values above
                ``us_max_grey`` (set it to the data's range).
        """
        scale_t, offset_t = _check_batch(image, scale, offset)
        B, C = image.shape[:2]
        mods = _modalities(modality, C)
        cfg = self.cfg
        if not cfg.enabled:
            return image
        # every draw is made for all (B, C) pairs, so the stream does not depend on the content
        u_do = torch.rand(B, C, generator=generator, dtype=torch.float64)
        u_level = torch.rand(B, C, generator=generator, dtype=torch.float64)
        p = {"MR": cfg.p_mr, "US": cfg.p_us, "CT": cfg.p_ct}
        ranges = {"MR": cfg.mr_sigma_range, "US": cfg.us_looks_range, "CT": cfg.ct_dose_range}
        out = image
        for mod in PHYSICS_MODALITIES:
            chan = torch.tensor([m == mod for m in mods])
            drawn = (u_do < p[mod]) & chan[None, :]
            if not bool(drawn.any()):
                continue
            lo, hi = ranges[mod]
            level = lo + (hi - lo) * u_level[drawn]
            raw = image[drawn].to(torch.float64) * _spatial_view(scale_t[drawn], image.ndim - 2) \
                + _spatial_view(offset_t[drawn], image.ndim - 2)
            if mod == "MR":
                new_raw, keep = self._mr(raw, level, generator)
            elif mod == "US":
                new_raw, keep = self._us(raw, level, generator)
            else:
                new_raw, keep = self._ct(raw, level, generator)
            new = (new_raw - _spatial_view(offset_t[drawn], image.ndim - 2)) \
                / _spatial_view(scale_t[drawn], image.ndim - 2)
            sub = torch.where(keep, image[drawn], new.to(image.dtype))
            if out is image:
                out = image.clone()
            out[drawn] = sub
        return out

    def _mr(self, raw: torch.Tensor, level: torch.Tensor, g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        nd = raw.ndim - 1
        mag = raw.clamp_min(0.0)
        flat = mag.flatten(1)
        k = max(1, math.ceil(0.99 * flat.shape[1]))
        robust_max = flat.kthvalue(k, dim=1).values
        sigma = level * robust_max
        active = sigma > 0
        keep = _spatial_view(~active, nd).expand_as(raw)
        safe_sigma = torch.where(active, sigma, torch.ones_like(sigma))
        noisy = complex_noise(mag, _spatial_view(safe_sigma, nd), g)
        return noisy, keep

    def _us(self, raw: torch.Tensor, looks: torch.Tensor, g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        looks_v = _spatial_view(looks, raw.ndim - 1)
        if cfg.us_domain == "intensity":
            inten = raw.clamp_min(0.0)
            return speckle(inten, looks_v, g), raw < 0
        gmax, dr = float(cfg.us_max_grey), float(cfg.us_dynamic_range_db)
        top = float(raw.max())
        if top > gmax * (1 + 1e-4) + 1e-4:
            raise ValueError(
                f"US speckle expects raw B-mode grey values in [0, {gmax}], got up to {top:.4g}; "
                "check scale/offset, or set us_max_grey to the data's grey range"
            )
        grey = raw.clamp(0.0, gmax)
        inten = bmode_to_intensity(grey, dr, 1.0, gmax)
        sp = speckle(inten, looks_v, g)
        new = envelope_to_bmode(sp, dr, 1.0, gmax)
        return new, grey <= 0

    def _ct(self, raw: torch.Tensor, dose: torch.Tensor, g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        nd = raw.ndim - 1
        i0_ref = ct_photons_for_sigma(cfg.ct_sigma_hu_water, cfg.ct_path_mm, MU_WATER_PER_MM)
        active = dose < 1.0
        d = torch.where(active, dose, torch.full_like(dose, 0.5))
        i0 = _spatial_view(i0_ref * d / (1.0 - d), nd)
        hu = raw.clamp_min(-1000.0)
        mu = MU_WATER_PER_MM * (1.0 + hu / 1000.0)
        lam = i0 * torch.exp(-mu * cfg.ct_path_mm)
        y = torch.poisson(lam, generator=g)
        mu_hat = -torch.log(y.clamp_min(0.5) / i0) / cfg.ct_path_mm
        hu_hat = 1000.0 * (mu_hat / MU_WATER_PER_MM - 1.0)
        keep = _spatial_view(~active, nd).expand_as(raw)
        return raw + (hu_hat - hu), keep


class GaussianNoise:
    """Additive Gaussian noise on normalised intensities, with :class:`PhysicsNoise`'s interface.

    Args:
        cfg: The configuration.
    """

    def __init__(self, cfg: GaussianNoiseConfig):
        self.cfg = cfg

    def __call__(
        self,
        image: torch.Tensor,
        generator: torch.Generator,
        scale: torch.Tensor | float = 1.0,
        offset: torch.Tensor | float = 0.0,
        modality: str | Sequence[str] = "other",
    ) -> torch.Tensor:
        """Add ``N(0, std^2)`` to each drawn sample (all channels), ``std`` from ``std_range``.

        Args:
            image: ``(B, C, *spatial)`` normalised intensities.
            generator: Source of every random draw.
            scale: Checked like :class:`PhysicsNoise` but unused (the noise is in normalised
                units whatever the raw scale: that is the naive model).
            offset: Checked, unused.
            modality: Checked, unused.

        Returns:
            ``(B, C, *spatial)``, same dtype; samples not drawn are bit-for-bit the input.
        """
        _check_batch(image, scale, offset)
        _modalities(modality, image.shape[1])
        cfg = self.cfg
        if not cfg.enabled:
            return image
        B = image.shape[0]
        drawn = torch.rand(B, generator=generator, dtype=torch.float64) < cfg.p_noise
        lo, hi = cfg.std_range
        std = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
        if not bool(drawn.any()):
            return image
        sub = image[drawn]
        n = torch.randn(sub.shape, generator=generator, dtype=sub.dtype, device=sub.device)
        out = image.clone()
        out[drawn] = sub + _spatial_view(std[drawn].to(sub.dtype), image.ndim - 1) * n
        return out
