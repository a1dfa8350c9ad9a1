"""Check a whole dataset before training, and measure what planning needs (E2, T5, T6).

:func:`validate_dataset` reads every training case once and stops at the first problem with an
:class:`~medseg.errors.InputError` naming the file, the problem and the fix:

* image and label of different shape, or of different geometry (affine beyond a tolerance);
* label values that ``dataset.json`` does not declare (the offending values are listed);
* NaN / infinite intensities;
* a 2D configuration on 3D data or the reverse (a 3D volume with exactly one axis of size 1 is 2D:
  e.g. a NIfTI slice stored as ``(H, W, 1)``);
* a channel count that differs from ``channel_names``.

It returns a :class:`DatasetSummary` with what preprocessing planning needs (spacings, shapes,
median spacing, class voxel fractions, per-channel foreground intensity statistics for CT
normalisation). With ``keep_arrays=True`` the arrays it read are kept in ``summary.loaded`` so the
caller does not read every file twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.layouts import SegCase, SegDataset
from medseg.errors import InputError
from medseg.io.meta import ImageMeta

#: Foreground voxels sampled per case and channel for the intensity percentiles (nnU-Net: 10^4).
SAMPLES_PER_CASE = 10_000


def singleton_axis(spatial_shape: tuple[int, ...]) -> int | None:
    """The axis to drop when a 3D grid is really 2D: the only axis of size 1, else ``None``."""
    if len(spatial_shape) != 3:
        return None
    ones = [i for i, s in enumerate(spatial_shape) if s == 1]
    return ones[0] if len(ones) == 1 else None


def effective_spatial_dims(spatial_shape: tuple[int, ...]) -> int:
    """2 for 2D grids and for 3D grids with exactly one singleton axis, else the number of axes."""
    return 2 if singleton_axis(spatial_shape) is not None else len(spatial_shape)


def meta_to_2d(meta: ImageMeta, axis: int) -> ImageMeta:
    """The meta of a 3D grid with the singleton ``axis`` dropped.

    The affine's columns are reordered (kept axes first, the dropped one third) so that voxel
    ``(i, j)`` of the 2D array still maps to the same world point; ``extra["squeezed_axis"]``
    records the axis so it can be restored.
    """
    keep = [a for a in range(3) if a != axis]
    aff = meta.affine.copy()
    aff[:3, :3] = meta.affine[:3, [*keep, axis]]
    extra = dict(meta.extra)
    extra["squeezed_axis"] = axis
    shape = tuple(meta.spatial_shape[a] for a in keep)
    return replace(meta, affine=aff, spatial_shape=shape, extra=extra)


def squeeze_to_2d(
    array: np.ndarray, meta: ImageMeta, channel_first: bool = True
) -> tuple[np.ndarray, ImageMeta]:
    """Drop the singleton axis of a 3D grid holding a 2D image.

    Args:
        array: ``(C, *spatial)`` when ``channel_first`` else ``(*spatial)``.
        meta: Its meta (3 spatial axes, one of size 1).

    Returns:
        ``(C, H, W)`` (or ``(H, W)``) and the 2D meta (see :func:`meta_to_2d`); the input unchanged
        when it has no singleton axis.
    """
    axis = singleton_axis(meta.spatial_shape)
    if axis is None:
        return array, meta
    return np.squeeze(array, axis=axis + int(channel_first)), meta_to_2d(meta, axis)


@dataclass
class ChannelStats:
    """Foreground intensity statistics of one input channel (for CT normalisation).

    Attributes:
        percentile_00_5: 0.5th percentile of the sampled foreground intensities.
        percentile_99_5: 99.5th percentile.
        mean: Mean over all foreground voxels (exact, not sampled).
        std: Standard deviation over all foreground voxels.
        min: Smallest intensity anywhere.
        max: Largest intensity anywhere.
        n_voxels: Number of foreground voxels the mean and std are over.
        source: ``"foreground"``, or ``"all"`` when no case has foreground.
    """

    percentile_00_5: float
    percentile_99_5: float
    mean: float
    std: float
    min: float
    max: float
    n_voxels: int
    source: str = "foreground"


@dataclass
class LoadedCase:
    """A case as read during validation (arrays in file order, before any squeezing).

    Attributes:
        image: ``(C, *spatial)`` float32.
        label: ``(*spatial)`` int64, or ``None``.
        image_meta: Geometry of the image.
        label_meta: Geometry of the label, or ``None``.
    """

    image: np.ndarray
    label: np.ndarray | None
    image_meta: ImageMeta
    label_meta: ImageMeta | None


@dataclass
class DatasetSummary:
    """What :func:`validate_dataset` measured.

    Attributes:
        spatial_dims: 2 or 3 (after the singleton rule).
        case_ids: Training cases, in dataset order.
        shapes: Spatial shape per case (2D shapes for squeezed grids).
        spacings: Voxel spacing (mm) per case, per axis.
        median_spacing: Per-axis median of ``spacings``.
        median_shape: Per-axis median of ``shapes``.
        class_fractions: Label value -> fraction of all training voxels (ignore label included).
        class_case_counts: Label value -> number of cases in which it occurs.
        intensity: Per-channel foreground statistics.
        channel_names: From the dataset.
        modalities: From the dataset.
        loaded: ``case_id -> LoadedCase`` when validation was asked to keep the arrays.
    """

    spatial_dims: int
    case_ids: list[str]
    shapes: list[tuple[int, ...]]
    spacings: list[tuple[float, ...]]
    median_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    class_fractions: dict[int, float]
    class_case_counts: dict[int, int]
    intensity: list[ChannelStats]
    channel_names: list[str]
    modalities: list[str]
    loaded: dict[str, LoadedCase] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (without the loaded arrays)."""
        return {
            "spatial_dims": self.spatial_dims,
            "case_ids": list(self.case_ids),
            "shapes": [list(s) for s in self.shapes],
            "spacings": [list(s) for s in self.spacings],
            "median_spacing": list(self.median_spacing),
            "median_shape": list(self.median_shape),
            "class_fractions": {int(k): float(v) for k, v in self.class_fractions.items()},
            "class_case_counts": {int(k): int(v) for k, v in self.class_case_counts.items()},
            "intensity": [vars(s).copy() for s in self.intensity],
            "channel_names": list(self.channel_names),
            "modalities": list(self.modalities),
        }


class _RunningMoments:
    """Mean and variance merged across chunks (Chan et al.), in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = x.astype(np.float64, copy=False)
        n_b = x.size
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


def _label_counts(label: np.ndarray) -> dict[int, int]:
    if label.size == 0:
        return {}
    lo = int(label.min())
    hi = int(label.max())
    if lo >= 0 and hi < 1_000_000:
        counts = np.bincount(label.ravel(), minlength=hi + 1)
        return {int(v): int(c) for v, c in enumerate(counts) if c}
    vals, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts, strict=True)}


def dims_error(config_dims: int, shape: tuple[int, ...], path: Path | None) -> InputError:
    """The error for an image whose spatial dimension differs from the configured one, with the
    config change that fixes it."""
    data_dims = effective_spatial_dims(shape)
    if config_dims == 2 and data_dims == 3:
        return InputError(
            f"the configuration is 2D (spatial_dims: 2) but this image is a 3D volume of shape "
            f"{shape}",
            path,
            "set data.spatial_dims: 3 in the config (--set data.spatial_dims=3) for volumes",
        )
    if config_dims == 3 and data_dims == 2:
        return InputError(
            f"the configuration is 3D (spatial_dims: 3) but this image is 2D (shape {shape})",
            path,
            "set data.spatial_dims: 2 in the config (--set data.spatial_dims=2) for 2D images",
        )
    return InputError(
        f"images must have 2 or 3 spatial axes, this one has shape {shape}",
        path,
        "convert it to a 2D image or a 3D volume",
    )


def _channel_path(case: SegCase, c: int) -> Path:
    return case.images[c] if len(case.images) > c else case.images[0]


def _read_case(case: SegCase, ds: SegDataset) -> tuple[np.ndarray, ImageMeta]:
    from medseg.io import check_finite, read_image

    src = case.images if len(case.images) > 1 else case.images[0]
    image, meta = read_image(src)
    n_ch = image.shape[0]
    if n_ch != len(ds.channel_names):
        raise InputError(
            f"case {case.case_id!r} has {n_ch} channel(s) but channel_names declares "
            f"{len(ds.channel_names)} ({ds.channel_names})",
            case.images[0],
            "fix channel_names / modality in dataset.json, or provide one file per channel "
            "(a colour PNG has 3 channels: save it as greyscale for a 1-channel dataset)",
        )
    for c in range(n_ch):
        check_finite(image[c], _channel_path(case, c))
    return image, meta


def _check_label(
    case: SegCase,
    image_meta: ImageMeta,
    ds: SegDataset,
    check_values: bool,
    geometry_atol: float,
) -> tuple[np.ndarray, ImageMeta, dict[int, int]]:
    from medseg.io import read_label

    assert case.label is not None
    label, lmeta = read_label(case.label)
    if tuple(label.shape) != tuple(image_meta.spatial_shape):
        raise InputError(
            f"label shape {tuple(label.shape)} differs from image shape "
            f"{tuple(image_meta.spatial_shape)} ({case.images[0]})",
            case.label,
            "the label must be drawn on the image's own voxel grid; re-export it from the image",
        )
    if not np.allclose(lmeta.affine, image_meta.affine, atol=geometry_atol):
        raise InputError(
            f"label geometry differs from its image {case.images[0]} by up to "
            f"{float(np.abs(lmeta.affine - image_meta.affine).max()):.4g} mm "
            f"(tolerance {geometry_atol} mm); label spacing {lmeta.spacing} origin {lmeta.origin}, "
            f"image spacing {image_meta.spacing} origin {image_meta.origin}",
            case.label,
            "re-export the label on the image grid, or copy the image header into the label if "
            "only the header is wrong",
        )
    counts = _label_counts(label)
    if check_values:
        undeclared = sorted(set(counts) - ds.allowed_label_values)
        if undeclared:
            hint = (
                "declare these values in the 'labels' table of dataset.json, or fix the label file"
            )
            if 255 in undeclared and 1 not in counts:
                hint += (
                    " (0/255 masks: rescale them to 0/1; outline masks: `medseg convert-outlines`)"
                )
            raise InputError(
                f"label values {undeclared} are not declared (declared: "
                f"{sorted(ds.allowed_label_values)}); voxel counts "
                f"{ {v: counts[v] for v in undeclared} }",
                case.label,
                hint,
            )
    return label, lmeta, counts


def validate_dataset(
    ds: SegDataset,
    spatial_dims: int,
    check_values: bool = True,
    keep_arrays: bool = False,
    include_test: bool = False,
    geometry_atol: float = 1e-3,
    seed: int = 0,
) -> DatasetSummary:
    """Read every training case once, check it, and summarise the dataset.

    Args:
        ds: The dataset (from :func:`medseg.data.layouts.open_dataset`).
        spatial_dims: The configuration's dimensionality (2 or 3).
        check_values: Check that every label value is declared in the label table.
        keep_arrays: Keep the arrays read in ``summary.loaded`` (saves a second read).
        include_test: Also check the test cases (channels, finiteness, dimensionality and their
            labels when present); they do not enter the statistics.
        geometry_atol: Largest allowed difference (mm) between image and label affines.
        seed: Seed for the deterministic subsampling of foreground intensities.

    Returns:
        The :class:`DatasetSummary`.

    Raises:
        InputError: the first problem found (see the module docstring), naming the file.
    """
    if spatial_dims not in (2, 3):
        raise InputError(
            f"spatial_dims must be 2 or 3, got {spatial_dims}", None, "set spatial_dims: 2 or 3"
        )
    if not ds.cases:
        raise InputError("the dataset has no training cases", ds.root, "check the dataset folder")
    rng = np.random.default_rng(seed)
    n_ch = len(ds.channel_names)
    moments = [_RunningMoments() for _ in range(n_ch)]
    all_moments = [_RunningMoments() for _ in range(n_ch)]
    samples: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
    all_samples: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
    vmin = [np.inf] * n_ch
    vmax = [-np.inf] * n_ch
    total_counts: dict[int, int] = {}
    case_counts: dict[int, int] = {}
    shapes: list[tuple[int, ...]] = []
    spacings: list[tuple[float, ...]] = []
    loaded: dict[str, LoadedCase] = {}
    bg_like = {0} if ds.ignore_label is None else {0, ds.ignore_label}

    for case in ds.cases:
        image, imeta = _read_case(case, ds)
        if effective_spatial_dims(imeta.spatial_shape) != spatial_dims:
            raise dims_error(spatial_dims, imeta.spatial_shape, case.images[0])
        if case.label is None:
            raise InputError(
                f"training case {case.case_id!r} has no label", case.images[0], "add its label"
            )
        label, lmeta, counts = _check_label(case, imeta, ds, check_values, geometry_atol)
        if keep_arrays:
            loaded[case.case_id] = LoadedCase(image, label, imeta, lmeta)
        axis = singleton_axis(imeta.spatial_shape)
        sq_meta = meta_to_2d(imeta, axis) if axis is not None else imeta
        shapes.append(tuple(sq_meta.spatial_shape))
        spacings.append(tuple(sq_meta.spacing))
        for v, c in counts.items():
            total_counts[v] = total_counts.get(v, 0) + c
            case_counts[v] = case_counts.get(v, 0) + 1
        fg = ~np.isin(label, list(bg_like))
        for c in range(n_ch):
            ch = image[c]
            vmin[c] = min(vmin[c], float(ch.min()))
            vmax[c] = max(vmax[c], float(ch.max()))
            vals = ch[fg]
            moments[c].add(vals)
            if vals.size:
                k = min(SAMPLES_PER_CASE, vals.size)
                samples[c].append(
                    rng.choice(vals, size=k, replace=False) if k < vals.size else vals
                )
            if not any(m.n for m in moments):  # only needed if no foreground at all
                flat = ch.ravel()
                all_moments[c].add(flat)
                k = min(SAMPLES_PER_CASE, flat.size)
                all_samples[c].append(rng.choice(flat, size=k, replace=False))

    if include_test:
        for case in ds.test_cases:
            image, imeta = _read_case(case, ds)
            if effective_spatial_dims(imeta.spatial_shape) != spatial_dims:
                raise dims_error(spatial_dims, imeta.spatial_shape, case.images[0])
            if case.label is not None:
                _check_label(case, imeta, ds, check_values, geometry_atol)

    intensity: list[ChannelStats] = []
    for c in range(n_ch):
        use_fg = moments[c].n > 0
        mom = moments[c] if use_fg else all_moments[c]
        smp = np.concatenate(samples[c] if use_fg else all_samples[c]).astype(np.float64)
        p_lo, p_hi = np.percentile(smp, [0.5, 99.5])
        intensity.append(
            ChannelStats(
                percentile_00_5=float(p_lo),
                percentile_99_5=float(p_hi),
                mean=float(mom.mean),
                std=mom.std,
                min=float(vmin[c]),
                max=float(vmax[c]),
                n_voxels=int(mom.n),
                source="foreground" if use_fg else "all",
            )
        )
    total = sum(total_counts.values())
    sp = np.asarray(spacings, dtype=np.float64)
    sh = np.asarray(shapes, dtype=np.float64)
    return DatasetSummary(
        spatial_dims=spatial_dims,
        case_ids=[c.case_id for c in ds.cases],
        shapes=shapes,
        spacings=spacings,
        median_spacing=tuple(float(v) for v in np.median(sp, axis=0)),
        median_shape=tuple(int(round(v)) for v in np.median(sh, axis=0)),
        class_fractions={v: total_counts[v] / total for v in sorted(total_counts)},
        class_case_counts={v: case_counts[v] for v in sorted(case_counts)},
        intensity=intensity,
        channel_names=list(ds.channel_names),
        modalities=list(ds.modalities),
        loaded=loaded,
    )
