"""The format-independent entry points: read/write images and label maps (E1)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, refuse_source_overwrite
from medseg.io.dicom import read_dicom_series
from medseg.io.dtypes import cast_checked, default_write_dtype, is_integral, smallest_int_dtype
from medseg.io.files import SUFFIX_FORMATS, SUPPORTED_HINT, detect_format, file_suffix
from medseg.io.meta import ImageMeta
from medseg.io.nifti import read_nifti, write_nifti
from medseg.io.nrrd_format import read_nrrd, write_nrrd
from medseg.io.raster import read_raster, write_raster

PathLike = str | os.PathLike


def _read_one(path: Path, labels: bool) -> tuple[np.ndarray, ImageMeta]:
    """Read one file (or DICOM folder) in its stored dtype as ``(C, *spatial)``."""
    fmt = detect_format(path)
    if fmt == "nifti":
        return read_nifti(path)
    if fmt == "nrrd":
        return read_nrrd(path)
    if fmt in ("png", "jpeg", "tiff"):
        return read_raster(path, fmt, labels=labels)
    if labels:
        raise InputError(
            "DICOM label maps are not read by medseg",
            path,
            "convert DICOM SEG with dcmqi (segimage2itkimage) or highdicom to NIfTI/NRRD first",
        )
    return read_dicom_series(path)


def read_image(path_or_paths: PathLike | Sequence[PathLike]) -> tuple[np.ndarray, ImageMeta]:
    """Read an image as a float32 channel-first array and its geometry.

    Accepted inputs:

    * a NIfTI file (2D, 3D, or 4D whose 4th axis holds channels), NRRD (``.nrrd``/``.nhdr``),
      PNG, JPEG or TIFF file;
    * a DICOM file, a folder holding one DICOM series, or a list of DICOM files (see
      :func:`medseg.io.read_dicom_series` to pick one of several series);
    * a list of single-channel files of one case (nnU-Net ``case_0000.nii.gz``,
      ``case_0001.nii.gz`` ...), stacked as channels in the given order after checking that they
      share the same voxel grid.

    Args:
        path_or_paths: One path, or a list/tuple of paths.

    Returns:
        ``(array (C, *spatial) float32, meta)``; spatial axes in the file's own index order, see
        :class:`medseg.io.ImageMeta`. NaN/inf values are returned as they are (see
        :func:`check_finite`).

    Raises:
        InputError: missing, unsupported, corrupt files, or channel files on different grids.
    """
    if isinstance(path_or_paths, str | os.PathLike):
        arr, meta = _read_one(Path(path_or_paths), labels=False)
        return arr.astype(np.float32, copy=False), meta
    paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise InputError("empty list of image files", None, "pass at least one file")
    fmts = [detect_format(p) for p in paths]
    if all(f == "dicom" for f in fmts):
        if any(p.is_dir() for p in paths):
            raise InputError(
                "a list of DICOM folders cannot be read as one image",
                paths[0],
                "pass one folder, or a list of the DICOM files of one series",
            )
        return read_dicom_series(paths)
    if "dicom" in fmts:
        i = fmts.index("dicom")
        raise InputError(
            "DICOM mixed with other formats in one list of channel files",
            paths[i],
            "pass either the DICOM files of one series or single-channel files of another format",
        )
    parts = [_read_one(p, labels=False) for p in paths]
    meta0 = parts[0][1]
    for p, (_, meta) in zip(paths[1:], parts[1:], strict=True):
        if not meta0.same_geometry(meta):
            if meta.spatial_shape != meta0.spatial_shape:
                what = f"shape {meta.spatial_shape} vs {meta0.spatial_shape}"
            else:
                diff = float(np.abs(meta.affine - meta0.affine).max())
                what = f"affines differ by up to {diff:.4g} mm"
            raise InputError(
                f"channel files are on different voxel grids: {p.name} and {paths[0].name} "
                f"({what}); {paths[0]} vs {p}",
                p,
                "resample the channels onto one grid (same shape and affine) before stacking",
            )
    stacked = np.concatenate([a.astype(np.float32, copy=False) for a, _ in parts], axis=0)
    meta = replace(meta0, source=tuple(paths), extra=dict(meta0.extra))
    return stacked, meta


def read_label(path: PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read a label map as an int64 array without a channel axis.

    Accepted: NIfTI, NRRD, PNG (palette PNGs give their indices), TIFF. A colour file whose
    channels are all equal (grey saved as RGB) is accepted as one channel.

    Returns:
        ``(labels (*spatial) int64, meta)``; ``meta.dtype`` is the stored dtype.

    Raises:
        InputError: unreadable file, several distinct channels, or non-integer values (the
            message counts them).
    """
    p = Path(path)
    arr, meta = _read_one(p, labels=True)
    if arr.shape[0] > 1:
        if not np.all(arr == arr[:1]):
            raise InputError(
                f"label file has {arr.shape[0]} different channels (a colour-coded mask?)",
                p,
                "store one integer label per voxel (greyscale or palette PNG, single-volume NIfTI)",
            )
        arr = arr[:1]
    if not is_integral(arr):
        finite = np.isfinite(arr)
        wrong = ~finite | (arr != np.round(np.where(finite, arr, 0)))
        bad = int(np.count_nonzero(wrong))
        example = arr[wrong].flat[0]
        raise InputError(
            f"{bad} of {arr.size} voxels are not whole numbers (e.g. {example!r}), so this is "
            "not a label map",
            p,
            "pass the segmentation file, or round/threshold the map and save it as integers",
        )
    return arr[0].astype(np.int64), meta


def check_finite(array: Any, path: PathLike | None = None) -> None:
    """Raise when ``array`` holds NaN or infinite values.

    Args:
        array: Any array-like (NumPy array or CPU tensor).
        path: The file the array came from, named in the message.

    Raises:
        InputError: counting the NaN and infinite voxels.
    """
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return
    nan = int(np.count_nonzero(np.isnan(a)))
    inf = int(np.count_nonzero(np.isinf(a)))
    if nan or inf:
        raise InputError(
            f"{nan + inf} of {a.size} voxels are not finite ({nan} NaN, {inf} infinite)",
            path,
            "fix the export, or replace them (e.g. numpy.nan_to_num) before use",
        )


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _channel_first(arr: np.ndarray, meta: ImageMeta, dest: Path) -> np.ndarray:
    if arr.ndim == meta.ndim:
        arr = arr[None]
    if arr.ndim != meta.ndim + 1 or tuple(arr.shape[1:]) != meta.spatial_shape:
        raise InputError(
            f"array shape {arr.shape} does not match meta.spatial_shape {meta.spatial_shape}; "
            "expected (*spatial) or (C, *spatial)",
            dest,
            "pass the meta that belongs to this array (after resampling use "
            "meta.with_spacing(...))",
        )
    return arr


def write_image(
    path: PathLike, array: Any, meta: ImageMeta, dtype: str | np.dtype | None = None
) -> Path:
    """Write an array with the geometry of ``meta``, atomically.

    Formats by file name: ``.nii``/``.nii.gz`` (affine stored as sform and qform, code 1),
    ``.nrrd`` (LPS space), ``.png`` (2D, 8/16-bit), ``.tif``/``.tiff`` (2D, or 3D single channel).
    PNG and TIFF keep no geometry. The file is written to a temporary name in the destination
    folder and renamed over ``path`` only when complete; parent folders are created.

    Args:
        path: Destination.
        array: ``(*spatial)`` or ``(C, *spatial)`` NumPy array (or CPU tensor).
        meta: Geometry; ``meta.spatial_shape`` must equal the array's spatial shape.
        dtype: On-disk dtype. None picks: ``meta.dtype`` when it is an integer type holding the
            (whole-numbered) values, else the smallest integer type for integer arrays, else
            ``float32`` (for PNG: ``uint8``/``uint16`` when the values are whole numbers that
            fit). Floats cast to integer types are rounded to nearest; values out of the
            type's range raise.

    Returns:
        The written path.

    Raises:
        InputError: ``path`` is a file ``meta`` was read from, unsupported extension, shape
            mismatch, values the format/dtype cannot hold, or the write failed (the previous file
            at ``path``, if any, is then untouched).
    """
    dest = Path(path)
    suffix = file_suffix(dest)
    fmt = SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        raise InputError(
            f"cannot write files of type {dest.suffix or '(none)'!r}",
            dest,
            SUPPORTED_HINT.replace("use", "name the output", 1),
        )
    if fmt == "dicom":
        raise InputError(
            "write_image does not write DICOM",
            dest,
            "use medseg.io.dicom.write_dicom_series(folder, array, meta)",
        )
    if suffix == ".nhdr":
        raise InputError("detached NRRD headers are not written", dest, "write .nrrd instead")
    refuse_source_overwrite(dest, meta.source)
    arr = _channel_first(_as_numpy(array), meta, dest)
    target = np.dtype(dtype) if dtype is not None else default_write_dtype(arr, meta.dtype)
    if dtype is None and fmt == "png" and target.kind == "f" and is_integral(arr):
        # PNG holds 8/16-bit integers only: whole-numbered floats go to the smallest that fits
        target = smallest_int_dtype(arr, unsigned_only=True) or target
    data = cast_checked(arr, target, dest)
    try:
        with atomic_path(dest, suffix) as tmp:
            if fmt == "nifti":
                write_nifti(tmp, data, meta)
            elif fmt == "nrrd":
                write_nrrd(tmp, data, meta)
            else:
                write_raster(tmp, data, fmt, dest)
    except InputError:
        raise
    except Exception as exc:  # OSError (disk full, permissions) or a library refusing the data
        raise InputError(
            f"could not write ({type(exc).__name__}: {exc}); nothing was written",
            dest,
            "check free disk space, permissions and the array's dtype",
        ) from exc
    return dest


def write_label(path: PathLike, labels: Any, meta: ImageMeta) -> Path:
    """Write a label map in the smallest integer dtype that holds it (unsigned when >= 0).

    Args:
        path: Destination (``.nii.gz``, ``.nii``, ``.nrrd``, ``.png``, ``.tif``).
        labels: ``(*spatial)`` or ``(1, *spatial)`` whole-numbered array.
        meta: Geometry.

    Returns:
        The written path.

    Raises:
        InputError: non-integer values, several channels, or any :func:`write_image` error.
    """
    dest = Path(path)
    arr = _as_numpy(labels)
    if arr.ndim == meta.ndim + 1 and arr.shape[0] != 1:
        raise InputError(
            f"a label map has one channel, got shape {arr.shape}",
            dest,
            "take the argmax over classes first",
        )
    if not is_integral(arr):
        raise InputError(
            "label values must be whole numbers",
            dest,
            "round or argmax the prediction before writing it as labels",
        )
    dt = smallest_int_dtype(arr)
    if dt is None:
        raise InputError("label values do not fit a 64-bit integer", dest)
    return write_image(dest, arr, meta, dtype=dt)
