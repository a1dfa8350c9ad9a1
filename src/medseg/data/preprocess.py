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
  - ``"none"``: unchanged (nnU-Net's ``noNorm`` channels).

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
    _dims_error,
    effective_spatial_dims,
    singleton_axis,
    squeeze_to_2d,
)
from medseg.errors import ConfigError, InputError
from medseg.io.meta import ImageMeta
from medseg.transforms.resample import (
    resample_labels,
    resample_to_shape,
    shape_for_spacing,
    spacing_after_resample,
)

SCHEMES = ("ct", "zscore", "minmax_zscore", "none")
_EPS = 1e-8

#: Modality -> normalisation chosen by ``normalization="auto"``.
AUTO_SCHEME = {
    "CT": "ct",
    "MR": "zscore",
    "US": "minmax_zscore",
    "XR": "minmax_zscore",
    "PNG": "minmax_zscore",
    "other": "zscore",
}


@dataclass
class ChannelNorm:
    """Normalisation of one input channel.

    Attributes:
        scheme: ``"ct"``, ``"zscore"``, ``"minmax_zscore"`` or ``"none"``.
        clip_low: Lower clip value (``"ct"`` only): dataset foreground 0.5th percentile.
        clip_high: Upper clip value (``"ct"`` only): dataset foreground 99.5th percentile.
        mean: Dataset foreground mean (``"ct"`` only).
        std: Dataset foreground standard deviation (``"ct"`` only).
    """

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"unknown normalisation scheme {self.scheme!r}", None, f"use one of {SCHEMES}"
            )
        if self.scheme == "ct" and None in (self.clip_low, self.clip_high, self.mean, self.std):
            raise ConfigError(
                "the 'ct' normalisation needs clip_low, clip_high, mean and std",
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
        norm_keys = {"scheme", "clip_low", "clip_high", "mean", "std"}
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
        if scheme == "ct":
            st = summary.intensity[c]
            norms.append(ChannelNorm("ct", st.percentile_00_5, st.percentile_99_5, st.mean,
                                     st.std))
        else:
            norms.append(ChannelNorm(scheme))
    return PreprocessPlan(
        spatial_dims=summary.spatial_dims,
        target_spacing=spacing,
        normalization=norms,
        label_interpolation=label_interpolation,
        ignore_label=ds.ignore_label,
    )


def normalize_channel(x: np.ndarray, norm: ChannelNorm) -> np.ndarray:
    """Apply one channel's normalisation.

    Args:
        x: ``(*spatial)`` intensities.
        norm: The channel's scheme and statistics.

    Returns:
        ``(*spatial)`` float32. Constant images map to 0 under the z-score schemes.
    """
    x = x.astype(np.float64, copy=False)
    if norm.scheme == "none":
        out = x
    elif norm.scheme == "ct":
        assert norm.clip_low is not None and norm.clip_high is not None
        assert norm.mean is not None and norm.std is not None
        out = (np.clip(x, norm.clip_low, norm.clip_high) - norm.mean) / max(norm.std, _EPS)
    else:
        if norm.scheme == "minmax_zscore":
            lo, hi = float(x.min()), float(x.max())
            x = (x - lo) / max(hi - lo, _EPS)
        out = (x - x.mean()) / max(float(x.std()), _EPS)
    return out.astype(np.float32)


def _to_plan_grid(
    array: np.ndarray, meta: ImageMeta, plan: PreprocessPlan, channel_first: bool
) -> tuple[np.ndarray, ImageMeta]:
    src = meta.source[0] if meta.source else None
    if effective_spatial_dims(meta.spatial_shape) != plan.spatial_dims:
        raise _dims_error(plan.spatial_dims, meta.spatial_shape, src)
    if plan.spatial_dims == 2 and meta.ndim == 3:
        return squeeze_to_2d(array, meta, channel_first=channel_first)
    return array, meta


def _target_shape(meta: ImageMeta, plan: PreprocessPlan) -> tuple[int, ...]:
    if plan.target_spacing is None:
        return tuple(meta.spatial_shape)
    return shape_for_spacing(meta.spatial_shape, meta.spacing, plan.target_spacing)


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
