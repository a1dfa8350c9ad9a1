"""Preprocessing plan and its application: normalisation per modality and resampling (E1, P4).

A :class:`PreprocessPlan` is data (a dataclass that round-trips through a dict, saved beside
each checkpoint), so a trained model can be applied anywhere without the training code:

* ``spatial_dims`` — 2 or 3; 3D grids with exactly one axis of size 1 are squeezed to 2D;
* ``target_spacing`` — resample every image to this voxel size (mm), or ``None`` to keep the grid;
* ``normalization`` — one :class:`ChannelNorm` per input channel:

  - ``"ct"``: clip to the dataset's foreground 0.5 / 99.5 percentiles, then z-score with the
    dataset's foreground mean and std (HU are absolute units, so one global mapping);
  - ``"zscore"``: per-image ``(x - mean) / std`` (MR: arbitrary units vary per scan);
  - ``"minmax_zscore"``: scale to [0, 1] by the image's min / max, then per-image z-score
    (US / PNG / XR). Since a z-score is invariant to positive affine maps this equals
    ``"zscore"`` up to rounding; the min-max step keeps the arithmetic well scaled for 8/16-bit
    inputs and documents the intent;
  - ``"none"``: unchanged (nnU-Net's ``noNorm`` channels);
  - ``"ct_vst"`` (P1, physics-aware, on request): clip as ``"ct"``, then the variance-stabilising
    map of the per-voxel transmission model. A voxel of ``h`` HU leaves
    ``lambda = I0 exp(-mu_w L (1 + h / 1000))`` photons and its HU noise has variance
    ``~ 1 / lambda``, so ``g(h) = 2 sqrt(lambda)`` (Anscombe on the expected counts) makes it
    constant. Normalised as ``u = (1 - exp(-a (h - mean))) / (a std)`` with
    ``a = mu_w L / 2000`` per HU — an affine image of ``-g``, equal to the ``"ct"`` z-score to
    first order around the dataset mean, compressing dense (photon-starved, noisy) values and
    stretching low-attenuation ones; ``I0`` cancels;
  - ``"log_zscore"`` (P3, physics-aware, on request): ``log(max(x, eps))`` then per-image
    z-score — the homomorphic map that makes multiplicative speckle additive and
    signal-independent. For linear echo intensity / envelope data only: B-mode images (8-bit
    PNG, DICOM US) are already log-compressed by the scanner and keep ``"minmax_zscore"``.

``PreprocessConfig.physics`` (``"auto"`` normalisation) picks ``"ct_vst"`` for CT channels and
``"log_zscore"`` for US channels named as linear data (``envelope``/``intensity`` in the channel
name). Every scheme is ``u = (phi(x) - offset) / scale`` with a fixed monotone ``phi`` and a
per-case affine pair (:func:`channel_affine`); :func:`to_raw` / :func:`from_raw` invert and
re-apply it on batches, which is how the physically correct noise augmentation
(:mod:`medseg.transforms.physics_noise`) works in the raw domain (HU, magnitude, intensity).

Order of operations follows nnU-Net: normalise on the original grid, then resample (linear for
images, nearest-neighbour for labels: no new label value appears and the ignore label is kept).
:func:`restore_probabilities` maps a probability field back onto the original grid with linear
interpolation; a convex combination of distributions is a distribution, so the output is still on
the simplex. When no resampling happened it returns its input unchanged (exact identity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.data.layouts import SegDataset
from medseg.data.validate import (
    DatasetSummary,
    dims_error,
    effective_spatial_dims,
    singleton_axis,
    squeeze_to_2d,
)
from medseg.errors import ConfigError, InputError
from medseg.io.meta import ImageMeta
from medseg.transforms.resample import (
    max_grid_voxels,
    resample_labels,
    resample_to_shape,
    shape_for_spacing,
    spacing_after_resample,
)

SCHEMES = ("ct", "ct_vst", "zscore", "minmax_zscore", "log_zscore", "none")
_EPS = 1e-8
#: Floor of linear intensities before the log of ``"log_zscore"``.
LOG_EPS = 1e-6
#: Linear attenuation of water per mm (the per-voxel transmission model's, see physics.noise).
_MU_WATER_PER_MM = 0.0192

#: Modality -> normalisation chosen by ``normalization="auto"``.
AUTO_SCHEME = {
    "CT": "ct",
    "MR": "zscore",
    "US": "minmax_zscore",
    "XR": "minmax_zscore",
    "PNG": "minmax_zscore",
    "other": "zscore",
}

#: Modality -> physics-aware scheme chosen when ``physics=True`` (see the module docstring).
PHYSICS_SCHEME = {"CT": "ct_vst", "US": "log_zscore"}


@dataclass
class ChannelNorm:
    """Normalisation of one input channel.

    Attributes:
        scheme: One of :data:`SCHEMES`.
        clip_low: Lower clip value (``"ct"``, ``"ct_vst"``): dataset foreground 0.5th percentile.
        clip_high: Upper clip value (``"ct"``, ``"ct_vst"``): foreground 99.5th percentile.
        mean: Dataset foreground mean (``"ct"``, ``"ct_vst"``), HU.
        std: Dataset foreground standard deviation (``"ct"``, ``"ct_vst"``), HU.
        modality: The channel's modality (``"CT"``, ``"MR"``, ``"US"`` ...), recorded so that
            prediction can refuse an input of another modality and augmentation can pick the
            channel's noise model.
        path_mm: Ray length ``L`` of the ``"ct_vst"`` transmission model (mm of water).
    """

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    modality: str | None = None
    path_mm: float = 200.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"unknown normalisation scheme {self.scheme!r}", None, f"use one of {SCHEMES}"
            )
        if self.scheme in ("ct", "ct_vst") and None in (self.clip_low, self.clip_high, self.mean,
                                                        self.std):
            raise ConfigError(
                f"the {self.scheme!r} normalisation needs clip_low, clip_high, mean and std",
                None,
                "build the plan with make_plan from a validated dataset",
            )


@dataclass
class PreprocessPlan:
    """How every image and label is brought onto the network's grid and intensity scale.

    Attributes:
        spatial_dims: 2 or 3.
        target_spacing: Voxel size (mm) per axis, or ``None`` to keep each image's grid.
        normalization: One :class:`ChannelNorm` per input channel.
        label_interpolation: ``"nearest"`` or ``"onehot_linear"`` (see
            :func:`medseg.transforms.resample.resample_labels`).
        ignore_label: The unlabelled value (T5), kept through resampling; ``None`` if unused.
    """

    spatial_dims: int
    target_spacing: list[float] | None = None
    normalization: list[ChannelNorm] = field(default_factory=lambda: [ChannelNorm("zscore")])
    label_interpolation: str = "nearest"
    ignore_label: int | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.target_spacing is not None:
            self.target_spacing = [float(s) for s in self.target_spacing]
            if len(self.target_spacing) != self.spatial_dims or min(self.target_spacing) <= 0:
                raise ConfigError(
                    f"target_spacing {self.target_spacing} must have {self.spatial_dims} "
                    "positive entries",
                    None,
                    "give one spacing (mm) per spatial axis, or null to keep the grid",
                )
        self.normalization = [
            n if isinstance(n, ChannelNorm) else ChannelNorm(**n) for n in self.normalization
        ]
        if self.label_interpolation not in ("nearest", "onehot_linear"):
            raise ConfigError(
                f"label_interpolation must be 'nearest' or 'onehot_linear', got "
                f"{self.label_interpolation!r}"
            )

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return len(self.normalization)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON) of the plan."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessPlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys (a misspelt option must not silently fall back to a default).
        """
        known = {"spatial_dims", "target_spacing", "normalization", "label_interpolation",
                 "ignore_label"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing plan keys {unknown}", None,
                              f"known keys: {sorted(known)}")
        norm_keys = {"scheme", "clip_low", "clip_high", "mean", "std", "modality", "path_mm"}
        for n in d.get("normalization", []):
            if isinstance(n, ChannelNorm):
                continue
            bad = sorted(set(n) - norm_keys)
            if bad:
                raise ConfigError(f"unknown channel normalisation keys {bad}", None,
                                  f"known keys: {sorted(norm_keys)}")
        return cls(**d)


def _spacings_vary(spacings: list[tuple[float, ...]], rtol: float) -> bool:
    sp = np.asarray(spacings, dtype=np.float64)
    med = np.median(sp, axis=0)
    return bool(np.any(np.abs(sp - med) > rtol * med))


def make_plan(
    summary: DatasetSummary,
    ds: SegDataset,
    target_spacing: str | list[float] | None = "auto",
    normalization: str | dict[Any, str] = "auto",
    spacing_rtol: float = 0.02,
    label_interpolation: str = "nearest",
    physics: bool = False,
) -> PreprocessPlan:
    """Plan the preprocessing from a validated dataset.

    Args:
        summary: From :func:`medseg.data.validate.validate_dataset`.
        ds: The dataset (channel names, modalities, ignore label).
        target_spacing: ``"auto"`` — the dataset's median spacing if the cases' spacings differ
            by more than ``spacing_rtol`` (relative, any axis), else ``None`` (keep the grids);
            ``None``; or an explicit list (mm per axis).
        normalization: a scheme name for every channel, or ``"auto"`` (by modality: CT ->
            ``"ct"``, MR -> ``"zscore"``, US/XR/PNG -> ``"minmax_zscore"``; nnU-Net channel
            names ``noNorm`` -> ``"none"``, ``rescale_to_0_1`` -> ``"minmax_zscore"``), or a dict
            mapping channel index or channel name to a scheme (channels not named use
            ``"auto"``).
        spacing_rtol: Tolerance for "spacings vary".
        label_interpolation: How labels are resampled.
        physics: With ``"auto"``, use the physics-aware schemes (:data:`PHYSICS_SCHEME`): CT ->
            ``"ct_vst"``; US -> ``"log_zscore"`` for channels named as linear data
            (``envelope`` / ``intensity``), B-mode US channels are already in the log domain.

    Returns:
        The plan.

    Raises:
        ConfigError: unknown scheme, unknown channel key, wrong target spacing length.
    """
    if isinstance(target_spacing, str):
        if target_spacing != "auto":
            raise ConfigError(
                f"target_spacing must be 'auto', null or a list, got {target_spacing!r}"
            )
        spacing = (
            list(summary.median_spacing) if _spacings_vary(summary.spacings, spacing_rtol) else None
        )
    elif target_spacing is None:
        spacing = None
    else:
        spacing = [float(s) for s in target_spacing]

    schemes: list[str] = []
    for name, mod in zip(ds.channel_names, ds.modalities, strict=True):
        low = name.strip().lower()
        if low == "nonorm":
            schemes.append("none")
        elif low == "rescale_to_0_1":
            schemes.append("minmax_zscore")
        elif physics and mod == "CT":
            schemes.append(PHYSICS_SCHEME["CT"])
        elif physics and mod == "US" and ("envelope" in low or "intensity" in low):
            schemes.append(PHYSICS_SCHEME["US"])
        else:
            schemes.append(AUTO_SCHEME.get(mod, "zscore"))
    if isinstance(normalization, dict):
        for key, scheme in normalization.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                idx = int(key)
            elif key in ds.channel_names:
                idx = ds.channel_names.index(key)
            else:
                raise ConfigError(
                    f"normalization names channel {key!r}, which the dataset does not have",
                    None,
                    f"use a channel index 0..{len(ds.channel_names) - 1} or one of "
                    f"{ds.channel_names}",
                )
            if not 0 <= idx < len(schemes):
                raise ConfigError(f"normalization channel index {idx} out of range")
            schemes[idx] = scheme
    elif normalization in SCHEMES:
        schemes = [normalization] * len(schemes)
    elif normalization != "auto":
        raise ConfigError(
            f"normalization must be 'auto', one of {SCHEMES} (every channel) or a dict "
            f"channel -> scheme, got {normalization!r}")

    norms: list[ChannelNorm] = []
    for c, scheme in enumerate(schemes):
        mod = ds.modalities[c]
        if scheme in ("ct", "ct_vst"):
            st = summary.intensity[c]
            norms.append(ChannelNorm(scheme, st.percentile_00_5, st.percentile_99_5, st.mean,
                                     st.std, modality=mod))
        else:
            norms.append(ChannelNorm(scheme, modality=mod))
    plan = PreprocessPlan(
        spatial_dims=summary.spatial_dims,
        target_spacing=spacing,
        normalization=norms,
        label_interpolation=label_interpolation,
        ignore_label=ds.ignore_label,
    )
    if spacing is not None:  # every training case's grid at the target spacing must fit
        files = {c.case_id: c.images[0] for c in ds.cases}
        for cid, shape, sp in zip(summary.case_ids, summary.shapes, summary.spacings,
                                  strict=False):
            if len(shape) == len(spacing):
                _capped_shape(tuple(shape), tuple(sp), spacing, plan.in_channels, files.get(cid))
    return plan


def _vst_rate(norm: ChannelNorm) -> float:
    """``a = mu_w L / 2000`` per HU of the ``"ct_vst"`` scheme."""
    return _MU_WATER_PER_MM * norm.path_mm / 2000.0


def _phi(x: np.ndarray, norm: ChannelNorm) -> np.ndarray:
    """The fixed monotone map of a scheme before its affine part (float64)."""
    if norm.scheme in ("ct", "ct_vst"):
        assert norm.clip_low is not None and norm.clip_high is not None
        x = np.clip(x, norm.clip_low, norm.clip_high)
        if norm.scheme == "ct_vst":
            assert norm.mean is not None
            a = _vst_rate(norm)
            x = -np.expm1(-a * (x - norm.mean)) / a
        return x
    if norm.scheme == "log_zscore":
        return np.log(np.maximum(x, LOG_EPS))
    return x


def channel_affine(x: np.ndarray, norm: ChannelNorm) -> tuple[float, float]:
    """The affine part of one channel's normalisation for this image.

    Every scheme is ``u = (phi(x) - offset) / scale`` with a fixed monotone ``phi`` (clip for
    ``"ct"``, the clip and stabilising map for ``"ct_vst"``, ``log`` for ``"log_zscore"``, the
    identity otherwise) and ``scale, offset`` from the dataset (``"ct"``, ``"ct_vst"``) or from
    this image (the per-image schemes).

    Args:
        x: ``(*spatial)`` raw intensities of one channel of one image.
        norm: The channel's scheme.

    Returns:
        ``(scale, offset)``; ``scale > 0``.
    """
    if norm.scheme == "none":
        return 1.0, 0.0
    if norm.scheme in ("ct", "ct_vst"):
        assert norm.mean is not None and norm.std is not None
        return max(float(norm.std), _EPS), float(norm.mean) if norm.scheme == "ct" else 0.0
    v = _phi(x.astype(np.float64, copy=False), norm)
    if norm.scheme == "minmax_zscore":
        lo, hi = float(v.min()), float(v.max())
        span = max(hi - lo, _EPS)
        m = (v - lo) / span
        return max(float(m.std()), _EPS) * span, float(m.mean()) * span + lo
    return max(float(v.std()), _EPS), float(v.mean())


def normalize_channel(x: np.ndarray, norm: ChannelNorm) -> np.ndarray:
    """Apply one channel's normalisation.

    Args:
        x: ``(*spatial)`` intensities.
        norm: The channel's scheme and statistics.

    Returns:
        ``(*spatial)`` float32. Constant images map to 0 under the per-image schemes.
    """
    x = x.astype(np.float64, copy=False)
    if norm.scheme == "none":
        return x.astype(np.float32)
    scale, offset = channel_affine(x, norm)
    return ((_phi(x, norm) - offset) / scale).astype(np.float32)


def to_raw(u: torch.Tensor, norm: ChannelNorm, scale: torch.Tensor,
           offset: torch.Tensor) -> torch.Tensor:
    """Invert a channel's normalisation on a batch (to HU, magnitude, intensity ...).

    Args:
        u: ``(B, *spatial)`` normalised values of one channel.
        norm: The channel's scheme.
        scale: ``(B,)`` per-sample scales from :func:`channel_affine`.
        offset: ``(B,)`` per-sample offsets.

    Returns:
        ``(B, *spatial)`` raw values. Clipped values (``"ct"``) come back at the clip bound;
        ``"ct_vst"`` values beyond the map's range are held just inside it.
    """
    shape = (-1,) + (1,) * (u.ndim - 1)
    v = u * scale.reshape(shape).to(u) + offset.reshape(shape).to(u)
    if norm.scheme == "ct_vst":
        assert norm.mean is not None
        a = _vst_rate(norm)
        return norm.mean - torch.log1p(-(a * v).clamp(max=1.0 - 1e-6)) / a
    if norm.scheme == "log_zscore":
        return torch.exp(v)
    return v


def from_raw(x: torch.Tensor, norm: ChannelNorm, scale: torch.Tensor,
             offset: torch.Tensor) -> torch.Tensor:
    """Re-apply a channel's normalisation with fixed per-sample ``scale``/``offset``.

    The inverse of :func:`to_raw` (the statistics are not recomputed, so noise added in the raw
    domain stays visible after re-normalisation).

    Args:
        x: ``(B, *spatial)`` raw values of one channel.
        norm: The channel's scheme.
        scale: ``(B,)`` per-sample scales.
        offset: ``(B,)`` per-sample offsets.

    Returns:
        ``(B, *spatial)`` normalised values.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    if norm.scheme in ("ct", "ct_vst"):
        assert norm.clip_low is not None and norm.clip_high is not None
        x = x.clamp(norm.clip_low, norm.clip_high)
        if norm.scheme == "ct_vst":
            assert norm.mean is not None
            a = _vst_rate(norm)
            x = -torch.expm1(-a * (x - norm.mean)) / a
    elif norm.scheme == "log_zscore":
        x = torch.log(x.clamp(min=LOG_EPS))
    return (x - offset.reshape(shape).to(x)) / scale.reshape(shape).to(x)


def _to_plan_grid(
    array: np.ndarray, meta: ImageMeta, plan: PreprocessPlan, channel_first: bool
) -> tuple[np.ndarray, ImageMeta]:
    src = meta.source[0] if meta.source else None
    if effective_spatial_dims(meta.spatial_shape) != plan.spatial_dims:
        raise dims_error(plan.spatial_dims, meta.spatial_shape, src)
    if plan.spatial_dims == 2 and meta.ndim == 3:
        return squeeze_to_2d(array, meta, channel_first=channel_first)
    return array, meta


def _target_shape(meta: ImageMeta, plan: PreprocessPlan) -> tuple[int, ...]:
    """The plan's grid for an image; capped at the size limit (InputError naming the file)."""
    if plan.target_spacing is None:
        return tuple(meta.spatial_shape)
    return _capped_shape(meta.spatial_shape, meta.spacing, plan.target_spacing, plan.in_channels,
                         meta.source[0] if meta.source else None)


def _capped_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: list[float],
                  channels: int, source: Any) -> tuple[int, ...]:
    try:
        return shape_for_spacing(shape, spacing, target, max_voxels=max_grid_voxels(channels))
    except InputError as e:
        raise InputError(e.problem, source, e.hint) from None


def preprocess_image(
    image: np.ndarray, meta: ImageMeta, plan: PreprocessPlan
) -> tuple[np.ndarray, ImageMeta]:
    """Normalise and resample an image onto the plan's grid.

    Args:
        image: ``(C, *spatial)`` as read by :func:`medseg.io.read_image`.
        meta: Its geometry.
        plan: The preprocessing plan.

    Returns:
        ``(C, *spatial')`` float32 and the meta of the new grid (same field of view; spacing
        ``old_spacing * old_shape / new_shape``, see :mod:`medseg.transforms.resample`).

    Raises:
        InputError: channel count or dimensionality does not match the plan.
    """
    src = meta.source[0] if meta.source else None
    if image.ndim != meta.ndim + 1:
        raise InputError(
            f"image array {image.shape} does not match its meta's spatial shape "
            f"{meta.spatial_shape} plus a channel axis",
            src,
            "pass a (C, *spatial) array",
        )
    if image.shape[0] != plan.in_channels:
        raise InputError(
            f"image has {image.shape[0]} channel(s), the model expects {plan.in_channels}",
            src,
            "give the same channels (same order) as in training",
        )
    image, meta = _to_plan_grid(image, meta, plan, channel_first=True)
    out = np.stack([normalize_channel(image[c], n) for c, n in enumerate(plan.normalization)])
    shape = _target_shape(meta, plan)
    if shape == tuple(meta.spatial_shape):
        return out, meta
    res = resample_to_shape(out, shape, order="linear")
    new_meta = meta.with_spacing(spacing_after_resample(meta.spatial_shape, meta.spacing, shape),
                                 shape)
    return np.ascontiguousarray(res, dtype=np.float32), new_meta


def preprocess_label(
    label: np.ndarray, meta: ImageMeta, plan: PreprocessPlan
) -> tuple[np.ndarray, ImageMeta]:
    """Bring a label map onto the plan's grid (the same grid :func:`preprocess_image` gives).

    Args:
        label: ``(*spatial)`` integer label map.
        meta: Its geometry (the image's).
        plan: The preprocessing plan.

    Returns:
        ``(*spatial')`` int64 (values a subset of the input's; ignore label kept) and its meta.
    """
    label, meta = _to_plan_grid(label, meta, plan, channel_first=False)
    label = label.astype(np.int64, copy=False)
    shape = _target_shape(meta, plan)
    if shape == tuple(meta.spatial_shape):
        return label, meta
    res = resample_labels(label, shape, method=plan.label_interpolation)
    new_meta = meta.with_spacing(spacing_after_resample(meta.spatial_shape, meta.spacing, shape),
                                 shape)
    return np.ascontiguousarray(res), new_meta


def restore_probabilities(
    probs: torch.Tensor, plan: PreprocessPlan, original_meta: ImageMeta
) -> torch.Tensor:
    """Map a probability field from the plan's grid back onto the original image grid.

    Args:
        probs: ``(C, *spatial')`` probabilities on the preprocessed grid.
        plan: The plan that produced the grid.
        original_meta: Meta of the image as read (before :func:`preprocess_image`).

    Returns:
        ``(C, *original_spatial)``; ``probs`` itself when the grids are the same (exact identity).
        A squeezed singleton axis is re-inserted.
    """
    shape = tuple(original_meta.spatial_shape)
    axis = singleton_axis(shape) if plan.spatial_dims == 2 else None
    target = tuple(s for i, s in enumerate(shape) if i != axis) if axis is not None else shape
    if probs.ndim != len(target) + 1:
        raise ValueError(
            f"probs {tuple(probs.shape)} must be (C, *spatial) with {len(target)} spatial axes"
        )
    out = probs
    if tuple(probs.shape[1:]) != target:
        out = resample_to_shape(probs, target, order="linear")
    if axis is not None:
        out = out.unsqueeze(axis + 1)
    return out
