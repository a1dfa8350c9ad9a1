"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) through nibabel."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from medseg.errors import InputError
from medseg.io.limits import (
    check_affine,
    check_declared_size,
    check_regular_file,
    check_spacing,
    reader_failure,
)
from medseg.io.meta import ImageMeta

# factor taking the file's spatial unit to millimetres
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
_REEXPORT = "re-export or re-download the file"


def _spatial_ndim(shape: tuple[int, ...]) -> int:
    """Spatial axes of a NIfTI shape as :func:`read_nifti` lays it out (2 or 3)."""
    return 2 if len(shape) == 2 else 3


def _check_extensions(path: Path, start: int, vox_offset: int, endian: str) -> None:
    """Walk the header extensions (their 8-byte heads only) before nibabel reads them.

    nibabel reads each extension's declared size in one call (Python allocates it first) and,
    when ``vox_offset`` lies inside the header, keeps reading extensions to the end of the
    (decompressed) file: both unbounded for a crafted ``.nii.gz`` (found by the fuzz campaign).

    Raises:
        InputError: extensions flagged but ``vox_offset`` leaves no room for them, or an
            extension whose size does not fit before the data.
    """
    try:
        with ImageOpener(str(path), "rb") as fh:
            fh.seek(start)
            flag = fh.read(4)
            if len(flag) < 4 or flag[0] == 0:
                return
            pos = start + 4
            if vox_offset < pos:
                raise InputError(
                    f"NIfTI header flags extensions but its data offset (vox_offset {vox_offset}) "
                    f"lies inside the {start}-byte header",
                    path, _REEXPORT,
                )
            while vox_offset - pos >= 16:
                head = fh.read(8)
                if len(head) < 8:
                    return  # truncated: nibabel reports it
                esize = struct.unpack(f"{endian}i", head[:4])[0]
                if not 8 <= esize <= vox_offset - pos:
                    raise InputError(
                        f"NIfTI header extension at byte {pos} declares {esize} bytes, which do "
                        f"not fit before the data (vox_offset {vox_offset})",
                        path, _REEXPORT,
                    )
                pos += esize
                fh.seek(pos)
    except InputError:
        raise
    except Exception as exc:  # gzip/zlib/OSError on damaged files
        raise reader_failure(exc, path, "NIfTI file", _REEXPORT) from exc


def _check_header(path: Path) -> None:
    """Check what the header declares before nibabel reads extensions or data.

    Raises:
        InputError: not a NIfTI-1/2 header, a declared size over the limit (extension area
            included, which nibabel would read into memory), or a voxel size refused by
            :func:`medseg.io.limits.check_spacing`.
    """
    try:
        with ImageOpener(str(path), "rb") as fh:
            raw = fh.read(540)
    except Exception as exc:  # gzip/zlib/OSError on damaged files
        raise reader_failure(exc, path, "NIfTI file", _REEXPORT) from exc
    kind = None
    for endian in "<>":
        if len(raw) >= 4:
            sizeof_hdr = struct.unpack(f"{endian}i", raw[:4])[0]
            if sizeof_hdr == 348 and len(raw) >= 348:
                kind = nib.Nifti1Header
            elif sizeof_hdr == 540 and len(raw) >= 540:
                kind = nib.Nifti2Header
            if kind is not None:
                break
    if kind is None:
        raise InputError(
            f"not a NIfTI file (its first {min(len(raw), 4)} bytes are no NIfTI-1/2 header size"
            f"{'; the file is shorter than a header' if len(raw) < 348 else ''})",
            path,
            "check that the file is NIfTI (.nii/.nii.gz) and not truncated; " + _REEXPORT,
        )
    size = 348 if kind is nib.Nifti1Header else 540
    try:
        hdr = kind(binaryblock=raw[:size], check=False)
        shape = tuple(int(d) for d in hdr.get_data_shape())
        itemsize = hdr.get_data_dtype().itemsize
        vox_offset = float(hdr["vox_offset"])
        sform_code = int(hdr["sform_code"])
        pixdim = [float(v) for v in hdr["pixdim"]]
        unit = hdr.get_xyzt_units()[0]
    except Exception as exc:  # nibabel HeaderDataError, unknown datatype codes ...
        raise reader_failure(exc, path, "NIfTI header", _REEXPORT) from exc
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(f"NIfTI header has an invalid data offset (vox_offset {vox_offset})",
                         path, _REEXPORT)
    _check_extensions(path, size, int(vox_offset), hdr.endianness)
    check_declared_size(path, shape, itemsize)
    # the extensions before vox_offset are read into memory too: count them against the limit
    check_declared_size(path, (int(vox_offset) + math.prod(shape) * itemsize,), 1,
                        "file (header extensions and data)")
    if sform_code <= 0:  # the affine comes from pixdim (qform or the header's zooms)
        factor = _UNIT_TO_MM.get(unit, 1.0)
        n = min(_spatial_ndim(shape), len(shape))
        check_spacing(path, [p * factor for p in pixdim[1 : 1 + n]], "pixdim")


def read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI file in its stored dtype (scaling by ``scl_slope``/``scl_inter`` applied).

    Layout: 2D ``(X, Y)`` -> ``(1, X, Y)``; 3D ``(X, Y, Z)`` -> ``(1, X, Y, Z)``; 4D
    ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)`` (the 4th axis is taken as channels, the MSD / nnU-Net
    convention); 5D vector images ``(X, Y, Z, 1, C)`` -> ``(C, X, Y, Z)``.

    The affine is nibabel's ``img.affine`` (sform if set, else qform), converted to mm when the
    header declares metres or microns. Before any data is read the header is checked: the file
    must be a regular file, its declared size within :func:`medseg.io.limits.max_image_bytes`
    and its voxel spacing positive, finite and at most 1000 mm.

    Returns:
        ``(array (C, *spatial), meta)``.

    Raises:
        InputError: the file is not regular, corrupt, truncated, too large, has unusable
            spacing, or an unsupported layout.
    """
    check_regular_file(path)
    _check_header(path)
    try:
        img = nib.load(str(path))
        hdr = img.header
        factor = _UNIT_TO_MM.get(hdr.get_xyzt_units()[0], 1.0)
        affine = np.asarray(img.affine, dtype=np.float64).copy()
        shape = tuple(int(d) for d in img.shape)
    except Exception as exc:  # nibabel, gzip and zlib raise many types for damaged files
        raise reader_failure(exc, path, "NIfTI file", _REEXPORT) from exc
    affine[:3, :] *= factor
    check_affine(path, affine, _spatial_ndim(shape))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise reader_failure(exc, path, "NIfTI file", _REEXPORT) from exc
    shape = data.shape
    if data.dtype.names is not None:  # RGB24 / RGBA32 NIfTI: a structured dtype per voxel
        if data.ndim not in (2, 3):
            raise InputError(
                f"RGB NIfTI with shape {shape} is not supported",
                path,
                "store one RGB image (2D or 3D) per file",
            )
        arr = np.stack([data[n] for n in data.dtype.names if n in ("R", "G", "B")], axis=0)
    else:
        if data.ndim == 5:
            if shape[3] != 1:
                raise InputError(
                    f"5D NIfTI with shape {shape} (time and vector axes both used) is not "
                    "supported",
                    path,
                    "split the time points into separate files",
                )
            data = data[:, :, :, 0, :]
        if data.ndim in (2, 3):
            arr = data[None]
        elif data.ndim == 4:
            arr = np.moveaxis(data, -1, 0)
        else:
            raise InputError(
                f"NIfTI with {data.ndim} dimensions (shape {shape}) is not supported",
                path,
                "store 2D, 3D, or 4D images whose 4th axis holds channels",
            )
    spatial_ndim = arr.ndim - 1
    extra = {
        "qform_code": int(hdr["qform_code"]) if "qform_code" in hdr else None,
        "sform_code": int(hdr["sform_code"]) if "sform_code" in hdr else None,
    }
    meta = ImageMeta(
        affine=affine,
        spatial_shape=arr.shape[1 : 1 + spatial_ndim],
        modality=None,
        source=(path,),
        dtype="uint8" if data.dtype.names is not None else img.get_data_dtype().name,
        extra=extra,
    )
    return np.ascontiguousarray(arr), meta


def _xform_codes(meta: ImageMeta) -> tuple[int, int]:
    """``(sform_code, qform_code)`` to write: the input NIfTI's codes, else 1 (scanner).

    Codes read from a NIfTI input (``meta.extra``) are kept, so a label map of an image whose
    sform is "aligned" (2) or "template" (4) is labelled the same way and viewers (3D Slicer,
    ITK-SNAP) put both in the same space; 0 ("unknown") is kept too.
    """
    codes = []
    for key in ("sform_code", "qform_code"):
        v = meta.extra.get(key)
        codes.append(int(v) if isinstance(v, int | np.integer) and 0 <= int(v) <= 4 else None)
    if None in codes:
        return 1, 1
    return codes[0], codes[1]


def write_nifti(tmp: Path, data: np.ndarray, meta: ImageMeta) -> None:
    """Write ``data`` ``(C, *spatial)`` (already in its on-disk dtype) to ``tmp``.

    Single-channel data is stored as ``(*spatial)``; several channels as ``(*spatial, C)`` (4D for
    3D images, ``(X, Y, 1, C)`` for 2D ones, which read back as 3D with one slice). The meta's
    affine is stored as both sform and qform, units mm (``xyzt_units`` 2; ``pixdim`` holds the
    voxel sizes of the affine), with the codes of the NIfTI the image was read from (e.g. sform
    2 "aligned", qform 1 "scanner"; 0 kept while the kept header still gives this affine),
    else code 1 (scanner-aligned). A sheared affine (e.g. a gantry-tilted CT) is exact only in
    the sform, which readers use first; the quaternion qform can hold rotations and zooms only
    and keeps the nearest of those.
    """
    if data.shape[0] == 1:
        out = data[0]
    elif meta.ndim == 2:
        out = np.moveaxis(data, 0, -1)[:, :, None, :]
    else:
        out = np.moveaxis(data, 0, -1)
    img = nib.Nifti1Image(np.ascontiguousarray(out), meta.affine)
    hdr = img.header
    hdr.set_data_dtype(out.dtype)
    scode, qcode = _xform_codes(meta)
    img.set_sform(meta.affine, code=scode)
    img.set_qform(meta.affine, code=qcode)
    if not np.allclose(hdr.get_best_affine(), meta.affine, atol=1e-5):
        # the kept codes leave the grid to a qform that cannot hold this affine (shear) or to
        # pixdim alone (codes 0/0 on a changed grid): the sform carries it exactly
        img.set_sform(meta.affine, code=scode or qcode or 1)
    hdr.set_xyzt_units(xyz="mm")
    nib.save(img, str(tmp))
