"""DICOM through pydicom: series folders, lists of files, single files, and a minimal writer.

Reading follows what dcm2niix and ITK do for single-frame series:

* files are grouped by ``SeriesInstanceUID``; objects without pixels (SEG, RTSTRUCT, SR ...) are
  skipped when a folder is scanned;
* slices are sorted by their ``ImagePositionPatient`` projected on the slice normal
  ``n = row_cosine x column_cosine`` (never by file name or ``InstanceNumber``);
* each slice's stored values are mapped with its own ``RescaleSlope`` / ``RescaleIntercept``;
* the array is ``(C, column, row, slice)`` -- the transpose of pydicom's ``pixel_array`` -- and the
  affine's columns are ``row_cosine * PixelSpacing[1]``, ``column_cosine * PixelSpacing[0]`` and the
  step between consecutive slice positions (not ``SliceThickness``), with the first slice's
  position as origin. DICOM's LPS is turned into RAS+ by negating the first two rows. This is the
  ITK / 3D Slicer voxel order; dcm2niix additionally flips the row axis, which gives the same
  world grid (see :func:`medseg.io.reorient_like` to match its voxel order).

Uneven slice spacing and missing slices cannot be described by one affine: they raise
:class:`~medseg.errors.InputError` (or warn with ``strict=False``).
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medseg.errors import InputError
from medseg.io.atomic import atomic_folder, refuse_source_overwrite
from medseg.io.dicom_files import dicom_files_in
from medseg.io.limits import (
    check_affine,
    check_declared_size,
    check_regular_file,
    check_spacing,
    format_bytes,
    max_image_bytes,
    reader_failure,
)
from medseg.io.meta import ImageMeta

PathLike = str | os.PathLike

#: Modalities of DICOM objects that hold no image volume; skipped when a folder is scanned.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "RWV"}
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class _Header:
    path: Path
    ds: Dataset


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_REEXPORT = "remove it from the folder or re-export the series"


def _dataset_offset(fh: BinaryIO) -> int | None:
    """Byte offset of the data set after the file meta group (explicit VR little endian)."""
    fh.seek(0)
    head = fh.read(132)
    pos = 132 if head[128:132] == b"DICM" else 0
    fh.seek(pos)
    while True:
        el = fh.read(8)
        if len(el) < 8:
            return None
        group = struct.unpack("<H", el[:2])[0]
        if group != 2:
            return pos
        vr = el[4:6]
        if vr in _LONG_VRS:
            more = fh.read(4)
            if len(more) < 4:
                return None
            length, header = struct.unpack("<I", more)[0], 12
        else:
            length, header = struct.unpack("<H", el[6:8])[0], 8
        pos += header + length
        fh.seek(pos)


def _check_deflated(path: Path) -> None:
    """Refuse a deflated data set that expands beyond the size limit (pydicom inflates it whole).

    Raises:
        InputError: the inflated data set is larger than
            :func:`medseg.io.limits.max_image_bytes`.
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
        if DeflatedExplicitVRLittleEndian.encode() not in head:
            return
        start = _dataset_offset(fh)
        if start is None:
            return
        fh.seek(start)
        limit = max_image_bytes()
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflate.eof:
            data = inflate.unconsumed_tail or fh.read(2**20)
            if not data:
                break
            try:
                total += len(inflate.decompress(data, 2**22))
            except zlib.error:
                return  # damaged: pydicom reports it
            if total > limit:
                raise InputError(
                    f"deflated DICOM data set expands to more than {format_bytes(limit)}, over "
                    "medseg's limit per image",
                    path,
                    "if the file is genuine raise MEDSEG_MAX_IMAGE_BYTES; otherwise "
                    + _REEXPORT,
                )


class _BoundedFile(io.FileIO):
    """A file whose reads never ask for more bytes than are left in it.

    pydicom reads an element's declared length in one call; Python allocates that many bytes
    before reading, so a damaged length of 4 GB in a 1 KB file would allocate 4 GB. Deferred
    elements (pixel data) are re-opened through this class too (pydicom keeps its type).
    """

    def __init__(self, name: str | os.PathLike, mode: str = "rb") -> None:
        super().__init__(name, mode.replace("b", "") or "r")
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self._size - self.tell(), 0))
            if size == 0:
                return b""
        return super().read(size)


def _read_header(path: Path) -> Dataset:
    """Read a file's attributes; pixel data stays on disk until decoded."""
    check_regular_file(path)
    try:
        _check_deflated(path)
        with _BoundedFile(str(path)) as fh:
            ds = pydicom.dcmread(fh, defer_size=4096, force=path.name.lower().endswith(".dcm"))
        # a forced read of a file without the preamble parses anything: demand DICOM content
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            raise ValueError("no SOPClassUID and no PixelData")
        # convert the attributes used to group files now, so a damaged value (an unknown VR,
        # bytes that are no text) fails here, naming this file
        for keyword in ("Modality", "SeriesInstanceUID", "SeriesDescription", "SOPClassUID"):
            str(ds.get(keyword, "") or "")
        return ds
    except InputError:
        raise
    except MemoryError as exc:
        raise reader_failure(exc, path, "DICOM file", _REEXPORT) from exc
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors on damaged files
        raise InputError(
            f"cannot read DICOM file ({type(exc).__name__}: {_first_line(exc)}); it may be "
            "corrupt or not DICOM",
            path,
            _REEXPORT,
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300] + "..." if len(text) > 300 else text


def _is_image(ds: Dataset) -> bool:
    has_pixels = any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return has_pixels and str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES


def _series_uid(ds: Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


def _gather_files(source: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            files = dicom_files_in(p)
            if not files:
                raise InputError("folder holds no DICOM files", p, "pass the series' folder")
            return files
        if not p.exists():
            raise InputError("file or folder not found", p, "check the path")
        return [p]
    files = [Path(f) for f in source]
    if not files:
        raise InputError("empty list of DICOM files", None, "pass at least one .dcm file")
    for f in files:
        if not f.is_file():
            raise InputError("DICOM file not found", f, "check the list of files")
    return files


def group_dicom_series(files: Sequence[PathLike]) -> dict[str, list[Path]]:
    """Group DICOM files by ``SeriesInstanceUID``, leaving out objects without an image.

    Args:
        files: DICOM file paths.

    Returns:
        ``{series_uid: [files sorted by name]}``, ordered by each series' first file name.

    Raises:
        InputError: a file cannot be read as DICOM.
    """
    groups: dict[str, list[Path]] = {}
    for f in files:
        p = Path(f)
        ds = _read_header(p)
        if _is_image(ds):
            groups.setdefault(_series_uid(ds), []).append(p)
    for v in groups.values():
        v.sort(key=lambda q: q.name)
    return dict(sorted(groups.items(), key=lambda kv: kv[1][0].name))


def _describe_series(uid: str, hs: list[_Header]) -> str:
    ds = hs[0].ds
    desc = str(ds.get("SeriesDescription", "") or "")
    return (
        f"  series_uid={uid!r}: {ds.get('Modality', '?')}, {len(hs)} file(s), "
        f"description {desc!r}, e.g. {hs[0].path.name}"
    )


_COUNT_WORDS = {1: "one number", 2: "two numbers", 3: "three numbers", 6: "six numbers"}


def _floats(ds: Dataset, keyword: str, n: int, path: Path, finite: bool = True) -> np.ndarray:
    value = ds.get(keyword)
    need = _COUNT_WORDS.get(n, f"{n} numbers")
    try:
        values = [value] if isinstance(value, str | bytes) or not isinstance(
            value, Iterable) else list(value)
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"DICOM attribute {keyword} is unreadable: {_short(value)}",
            path,
            f"fix {keyword} (it must hold {need}) or re-export the series",
        ) from exc
    if out.shape != (n,):
        raise InputError(
            f"DICOM attribute {keyword} has {out.size} value(s) {_short(value)}, expected {n}",
            path,
            f"fix {keyword} (it must hold {need}) or re-export the series",
        )
    if finite and not np.all(np.isfinite(out)):
        raise InputError(f"DICOM attribute {keyword} is not finite: {_short(value)}", path,
                         f"fix {keyword} or re-export the series")
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pixel_spacing(ds: Dataset, keyword: str, path: Path) -> np.ndarray:
    """``PixelSpacing`` (row spacing, column spacing) in mm, checked to be usable."""
    ps = _floats(ds, keyword, 2, path, finite=False)
    check_spacing(path, ps, keyword)
    return ps


def _rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    out = []
    for key, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = ds.get(key, None)
        if value is None or value == "":
            out.append(default)
            continue
        vals = _floats(ds, key, 1, path)
        out.append(float(vals[0]))
    if out[0] == 0:
        raise InputError("DICOM RescaleSlope is 0, which maps every pixel to one value", path,
                         "fix RescaleSlope (usually 1) or re-export the series")
    return out[0], out[1]


def _pixels(h: _Header) -> np.ndarray:
    try:
        return h.ds.pixel_array
    except Exception as exc:  # missing decoder, truncated pixel data, bad transfer syntax
        ts = getattr(getattr(h.ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise InputError(
            f"cannot decode DICOM pixel data (transfer syntax {name}; {type(exc).__name__}: {exc})",
            h.path,
            "for compressed DICOM install a decoder (pip install pylibjpeg pylibjpeg-openjpeg "
            "pylibjpeg-libjpeg, or python-gdcm), or decompress with `gdcmconv --raw`",
        ) from exc


def _stack_axes(vol: np.ndarray) -> np.ndarray:
    """``(slice, row, column[, sample])`` -> ``(C, column, row, slice)``."""
    if vol.ndim == 3:
        return np.transpose(vol, (2, 1, 0))[None]
    return np.transpose(vol, (3, 2, 1, 0))


def _check_spacing(proj: np.ndarray, files: list[Path], strict: bool) -> bool:
    """Raise (or warn and return True) when sorted slice positions ``proj`` are uneven."""
    d = np.diff(proj)
    step = float(np.median(d))
    tol = 0.01 * step + 1e-3
    bad = np.nonzero(np.abs(d - step) > tol)[0]
    if bad.size == 0:
        return False
    ratio = d[bad] / step
    whole = np.round(ratio)
    if np.all((whole >= 2) & (np.abs(ratio - whole) < 0.1)):
        gaps = ", ".join(
            f"{int(w) - 1} between {proj[i]:.3f} and {proj[i + 1]:.3f} mm"
            for i, w in zip(bad, whole, strict=True)
        )
        msg = f"missing slices in the series (step {step:.4g} mm): {gaps}"
        hint = "re-export the complete series"
    else:
        msg = (
            f"uneven slice spacing: steps between sorted slices range from {d.min():.4g} to "
            f"{d.max():.4g} mm (median {step:.4g} mm) at {len(bad)} place(s), e.g. between "
            f"{files[bad[0]].name} and {files[bad[0] + 1].name}"
        )
        hint = "resample the series to even spacing (e.g. dcm2niix) or pass strict=False"
    if strict:
        raise InputError(msg, files[0].parent, hint + " (strict=False reads it with the mean step)")
    warnings.warn(f"{files[0].parent}: {msg}; using the mean step", stacklevel=4)
    return True


def _check_pixel_size(headers: list[_Header]) -> None:
    """Refuse a series whose declared pixels (as float32) exceed the size limit, before decoding.

    Raises:
        InputError: over :func:`medseg.io.limits.max_image_bytes`.
    """
    ds0 = headers[0].ds
    shape = (int(ds0.get("SamplesPerPixel", 1) or 1), int(ds0.get("Columns", 0) or 0),
             int(ds0.get("Rows", 0) or 0), len(headers))
    where = headers[0].path.parent if len(headers) > 1 else headers[0].path
    check_declared_size(where, shape, 4, "DICOM series (as float32)")


def _check_pixel_shape(h: _Header, pix: np.ndarray) -> None:
    samples = int(h.ds.get("SamplesPerPixel", 1) or 1)
    want = (int(h.ds.get("Rows", 0) or 0), int(h.ds.get("Columns", 0) or 0))
    want = (*want, samples) if samples > 1 else want
    if tuple(pix.shape) != want:
        raise InputError(
            f"decoded pixel data has shape {tuple(pix.shape)}, but Rows/Columns/SamplesPerPixel "
            f"declare {want}",
            h.path,
            _REEXPORT,
        )


def _assemble(headers: list[_Header], strict: bool) -> tuple[np.ndarray, ImageMeta]:
    first = headers[0]
    ds0 = first.ds
    nframes = int(ds0.get("NumberOfFrames", 1) or 1)
    if nframes > 1 or "PerFrameFunctionalGroupsSequence" in ds0:
        raise InputError(
            f"multi-frame DICOM ({nframes} frames in one file) is not supported",
            first.path,
            "convert it with dcm2niix (dcm2niix -z y <folder>) and read the NIfTI",
        )
    for key in ("Rows", "Columns", "SamplesPerPixel"):
        values = {int(h.ds.get(key, 1)) for h in headers}
        if len(values) > 1:
            raise InputError(
                f"slices of one series differ in {key} ({sorted(values)})",
                first.path.parent,
                "pass the files of one image stack only",
            )
    modality = str(ds0.get("Modality", "") or "") or None
    has_geometry = all(
        "ImagePositionPatient" in h.ds and "ImageOrientationPatient" in h.ds for h in headers
    )
    extra = {
        "series_uid": _series_uid(ds0),
        "study_uid": str(ds0.get("StudyInstanceUID", "") or ""),
        "series_description": str(ds0.get("SeriesDescription", "") or ""),
        "sop_class_uid": str(ds0.get("SOPClassUID", "") or ""),
        "photometric": str(ds0.get("PhotometricInterpretation", "") or ""),
    }
    if not has_geometry:
        if len(headers) > 1:
            raise InputError(
                f"{len(headers)} DICOM images without ImagePositionPatient/ImageOrientationPatient "
                "cannot be stacked into a volume",
                first.path.parent,
                "read the files one at a time",
            )
        # a 2D projection image (radiograph, ultrasound frame, secondary capture)
        key = next((k for k in ("PixelSpacing", "ImagerPixelSpacing") if ds0.get(k)), None)
        row_sp, col_sp = _pixel_spacing(ds0, key, first.path) if key else (1.0, 1.0)
        slope, inter = _rescale(ds0, first.path)
        _check_pixel_size(headers)
        pix = _pixels(first)
        _check_pixel_shape(first, pix)
        arr = (pix.astype(np.float32) * np.float32(slope) + np.float32(inter))[None]
        arr = _stack_axes(arr)[..., 0]
        affine = np.diag([col_sp, row_sp, 1.0, 1.0])
        extra["geometry"] = "none (no patient position in the file)"
        return arr, _meta(arr, affine, modality, headers, extra)

    iop0 = _floats(ds0, "ImageOrientationPatient", 6, first.path)
    ps0 = _pixel_spacing(ds0, "PixelSpacing", first.path) if "PixelSpacing" in ds0 else np.ones(2)
    for h in headers[1:]:
        if not np.allclose(_floats(h.ds, "ImageOrientationPatient", 6, h.path), iop0, atol=1e-4):
            raise InputError(
                "slices of one series have different orientations (ImageOrientationPatient), "
                f"e.g. {first.path.name} and {h.path.name}",
                first.path.parent,
                "pass the files of one stack only (localizer series often mix three planes)",
            )
        ps = _pixel_spacing(h.ds, "PixelSpacing", h.path) if "PixelSpacing" in h.ds else np.ones(2)
        if not np.allclose(ps, ps0, atol=1e-4):
            raise InputError(
                f"slices have different PixelSpacing ({ps0} vs {ps} in {h.path.name})",
                first.path.parent,
                "pass the files of one stack only",
            )
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.stack([_floats(h.ds, "ImagePositionPatient", 3, h.path) for h in headers])
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    headers = [headers[i] for i in order]
    pos, proj = pos[order], proj[order]
    n = len(headers)
    if n > 1:
        dup = np.nonzero(np.diff(proj) < 1e-3)[0]
        if dup.size:
            a, b = headers[dup[0]].path.name, headers[dup[0] + 1].path.name
            raise InputError(
                f"{dup.size} pair(s) of slices share a position (e.g. {a} and {b} at "
                f"{proj[dup[0]]:.3f} mm): the series holds several volumes (echoes, phases or "
                "time points)",
                first.path.parent,
                "pass the files of one volume as a list (split by EchoNumbers, "
                "TemporalPositionIdentifier or AcquisitionNumber)",
            )
        uneven = _check_spacing(proj, [h.path for h in headers], strict)
        step_vec = (pos[-1] - pos[0]) / (n - 1)
        resid = np.abs(pos - (pos[0] + np.arange(n)[:, None] * step_vec[None])).max()
        if not uneven and resid > 0.01 * np.linalg.norm(step_vec) + 1e-3:
            msg = f"slice positions do not lie on a straight line (off by up to {resid:.3g} mm)"
            if strict:
                raise InputError(
                    msg, first.path.parent, "pass strict=False to read it with the mean step"
                )
            warnings.warn(f"{first.path.parent}: {msg}", stacklevel=3)
    else:
        thick = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0
        step_vec = normal * float(thick)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps0[1]
    lps[:3, 1] = col_cos * ps0[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = pos[0]
    affine = _LPS_TO_RAS @ lps
    check_affine(first.path.parent if n > 1 else first.path, affine, 3)
    rescale = [_rescale(h.ds, h.path) for h in headers]
    _check_pixel_size(headers)

    first_pix = _pixels(headers[0])
    _check_pixel_shape(headers[0], first_pix)
    vol = np.empty((n, *first_pix.shape), dtype=np.float32)
    slopes, inters = [], []
    for k, h in enumerate(headers):
        pix = first_pix if k == 0 else _pixels(h)
        _check_pixel_shape(h, pix)
        slope, inter = rescale[k]
        slopes.append(slope)
        inters.append(inter)
        vol[k] = pix.astype(np.float32) * np.float32(slope) + np.float32(inter)
    arr = _stack_axes(vol)
    extra["rescale_slope"] = slopes[0] if len(set(slopes)) == 1 else slopes
    extra["rescale_intercept"] = inters[0] if len(set(inters)) == 1 else inters
    if "SliceThickness" in ds0 and ds0.SliceThickness not in (None, ""):
        extra["slice_thickness"] = float(ds0.SliceThickness)
    return np.ascontiguousarray(arr), _meta(arr, affine, modality, headers, extra)


def _meta(
    arr: np.ndarray, affine: np.ndarray, modality: str | None, headers: list[_Header], extra: dict
) -> ImageMeta:
    finite = np.isfinite(arr).all()
    dtype = "float32"
    if finite and arr.size and np.all(arr == np.round(arr)):
        lo, hi = arr.min(), arr.max()
        dtype = "int16" if lo >= -32768 and hi <= 32767 else "int32"
    return ImageMeta(
        affine=affine,
        spatial_shape=arr.shape[1:],
        modality=modality,
        source=tuple(h.path for h in headers),
        dtype=dtype,
        extra=extra,
    )


def read_dicom_series(
    source: PathLike | Sequence[PathLike], series_uid: str | None = None, strict: bool = True
) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM series as a volume.

    Args:
        source: A folder (its DICOM files, not subfolders), a list of DICOM files, or one file.
        series_uid: Which ``SeriesInstanceUID`` to read when several are present.
        strict: Uneven slice spacing or missing slices raise when True; when False they warn and
            the mean step is used.

    Returns:
        ``(array (C, column, row, slice) float32 in rescaled units (HU for CT), meta)``; ``C`` is 1
        for greyscale and 3 for colour. A file without patient geometry (a radiograph) gives
        ``(C, column, row)`` with its pixel spacing and no orientation.

    Raises:
        InputError: no image, several series and no ``series_uid``, inconsistent or damaged
            files, uneven spacing (when ``strict``), multi-frame files.
    """
    files = _gather_files(source)
    headers = [_Header(p, _read_header(p)) for p in files]
    images = [h for h in headers if _is_image(h.ds)]
    where = Path(source) if isinstance(source, str | os.PathLike) else files[0]
    if not images:
        kinds = sorted({str(h.ds.get("Modality", "?")) for h in headers})
        raise InputError(
            f"no DICOM image found ({len(headers)} object(s) of modality {kinds} hold no image "
            "volume)",
            where,
            "DICOM SEG/RTSTRUCT objects must be converted first, e.g. with dcmqi "
            "(segimage2itkimage) or highdicom, then read the resulting NIfTI/NRRD",
        )
    groups: dict[str, list[_Header]] = {}
    for h in images:
        groups.setdefault(_series_uid(h.ds), []).append(h)
    if series_uid is not None:
        if series_uid not in groups:
            listing = "\n".join(_describe_series(u, g) for u, g in groups.items())
            raise InputError(
                f"series {series_uid!r} is not here; available:\n{listing}", where, "pick one above"
            )
        chosen = groups[series_uid]
    elif len(groups) > 1:
        listing = "\n".join(_describe_series(u, g) for u, g in groups.items())
        raise InputError(
            f"{len(groups)} DICOM series found; which one should be read?\n{listing}\n",
            where,
            'choose one with medseg.io.read_dicom_series(folder, series_uid="...") or move each '
            "series into its own folder (medseg.io.list_image_files(folder) lists them apart)",
        )
    else:
        chosen = next(iter(groups.values()))
    try:
        arr, meta = _assemble(chosen, strict)
    except InputError:
        raise
    except Exception as exc:  # attributes pydicom cannot convert, inconsistent values
        where_err = chosen[0].path.parent if len(chosen) > 1 else chosen[0].path
        raise reader_failure(exc, where_err, "DICOM series", _REEXPORT) from exc
    chosen_ids = {id(h) for h in chosen}
    skipped = [str(h.path) for h in headers if id(h) not in chosen_ids]
    if skipped:
        meta.extra["skipped_files"] = skipped
    return arr, meta


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def write_dicom_series(
    folder: PathLike,
    array: np.ndarray,
    meta: ImageMeta,
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    series_description: str = "medseg",
    patient_name: str = "Anonymous",
    patient_id: str = "medseg",
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a 3D greyscale volume as a single-frame DICOM series (CT or MR Image Storage).

    Stored values are ``round((value - rescale_intercept) / rescale_slope)`` in 16-bit integers
    (signed when any is negative); readers get ``value`` back with the slope and intercept written
    in every file. Geometry comes from ``meta.affine`` (RAS+ mm, converted to LPS): array axis 0
    runs along the row direction (``PixelSpacing[1]``), axis 1 down the columns
    (``PixelSpacing[0]``) and axis 2 from slice to slice (``ImagePositionPatient`` of slice ``k`` is
    the origin plus ``k`` times the third affine column, so tilted stacks are exact). Files are
    named ``IM0001.dcm`` ... in slice order; all UIDs are new unless given.

    Args:
        folder: Output folder; must not exist yet or be empty. Written atomically.
        array: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` values (HU for CT); 2D ``(X, Y)`` gives one slice.
        meta: Geometry; its in-plane axes (first two affine columns) must be orthogonal.
        modality: ``"CT"`` or ``"MR"``.
        rescale_slope: ``RescaleSlope`` written to every slice (must be > 0).
        rescale_intercept: ``RescaleIntercept`` written to every slice.
        series_description: ``SeriesDescription``.
        patient_name: ``PatientName``.
        patient_id: ``PatientID``.
        series_uid: ``SeriesInstanceUID`` (generated when None).
        study_uid: ``StudyInstanceUID`` (generated when None).

    Returns:
        The written files, in slice order.

    Raises:
        InputError: the folder is not empty, the array does not fit 16 bits at this slope, holds
            NaN/inf, or the geometry cannot be expressed in DICOM.
        ValueError: unsupported ``modality`` or a slope <= 0.
    """
    modality = modality.upper()
    sop_classes = {"CT": CTImageStorage, "MR": MRImageStorage}
    if modality not in sop_classes:
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if not rescale_slope > 0:
        raise ValueError(f"rescale_slope must be > 0, got {rescale_slope}")
    dest = Path(folder)
    a = np.asarray(array)
    if a.ndim == meta.ndim + 1 and a.shape[0] == 1:
        a = a[0]
    if a.shape != meta.spatial_shape or a.ndim not in (2, 3):
        raise InputError(
            f"array shape {np.shape(array)} does not match meta.spatial_shape "
            f"{meta.spatial_shape} (one channel, 2D or 3D)",
            dest,
            "pass a single-channel (X, Y, Z) array with its own meta",
        )
    if a.ndim == 2:
        a = a[:, :, None]
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise InputError(f"{bad} NaN/inf values cannot be stored in DICOM", dest)
    stored = np.rint((a.astype(np.float64) - rescale_intercept) / rescale_slope)
    lo, hi = (stored.min(), stored.max()) if stored.size else (0.0, 0.0)
    if lo >= -32768 and hi <= 32767:
        pix_dtype, pixel_repr = np.dtype("<i2"), 1
    elif lo >= 0 and hi <= 65535:
        pix_dtype, pixel_repr = np.dtype("<u2"), 0
    else:
        raise InputError(
            f"values need stored integers in [{lo:.0f}, {hi:.0f}], beyond 16 bits at slope "
            f"{rescale_slope} / intercept {rescale_intercept}",
            dest,
            "choose a larger rescale_slope or another intercept",
        )
    stored = stored.astype(pix_dtype)
    lps = np.diag([-1.0, -1.0, 1.0]) @ meta.affine[:3, :]
    col_x, col_y = lps[:, 0], lps[:, 1]
    sx, sy = np.linalg.norm(col_x), np.linalg.norm(col_y)
    row_cos, col_cos = col_x / sx, col_y / sy
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise InputError(
            "the image's in-plane axes are not orthogonal, which DICOM cannot store",
            dest,
            "resample to an orthogonal grid first",
        )
    normal = np.cross(row_cos, col_cos)
    step = lps[:, 2]
    if abs(float(step @ normal)) < 1e-6:
        raise InputError("the slice axis lies in the image plane", dest, "check meta.affine")
    origin = lps[:, 3]
    refuse_source_overwrite(dest, meta.source)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    nx, ny, nz = stored.shape
    written: list[Path] = []
    with atomic_folder(dest) as tmp:
        for k in range(nz):
            sop_uid = generate_uid()
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = sop_classes[modality]
            fm.MediaStorageSOPInstanceUID = sop_uid
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = fm
            ds.preamble = b"\0" * 128
            ds.SOPClassUID = sop_classes[modality]
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = modality
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            ds.SeriesDescription = series_description
            ds.Manufacturer = "medseg"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [_ds(v) for v in origin + k * step]
            ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
            ds.PixelSpacing = [_ds(sy), _ds(sx)]
            ds.SliceThickness = _ds(abs(float(step @ normal)))
            ds.SpacingBetweenSlices = _ds(abs(float(step @ normal)))
            ds.SliceLocation = _ds(float((origin + k * step) @ normal))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = pixel_repr
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleIntercept = _ds(rescale_intercept)
            if modality == "CT":
                ds.RescaleType = "HU"
                ds.KVP = ""
            else:
                ds.ScanningSequence = "RM"
                ds.SequenceVariant = "NONE"
                ds.ScanOptions = ""
                ds.MRAcquisitionType = "3D"
                ds.EchoTime = ""
                ds.RepetitionTime = ""
                ds.EchoTrainLength = ""
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            name = f"IM{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            written.append(dest / name)
    return written
