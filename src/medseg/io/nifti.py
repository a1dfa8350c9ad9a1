"""NIfTI-1/2 files (``.nii``, ``.nii.gz``) through nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import InputError
from medseg.io.meta import ImageMeta

# factor taking the file's spatial unit to millimetres
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


def read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI file in its stored dtype (scaling by ``scl_slope``/``scl_inter`` applied).

    Layout: 2D ``(X, Y)`` -> ``(1, X, Y)``; 3D ``(X, Y, Z)`` -> ``(1, X, Y, Z)``; 4D
    ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)`` (the 4th axis is taken as channels, the MSD / nnU-Net
    convention); 5D vector images ``(X, Y, Z, 1, C)`` -> ``(C, X, Y, Z)``.

    The affine is nibabel's ``img.affine`` (sform if set, else qform), converted to mm when the
    header declares metres or microns.

    Returns:
        ``(array (C, *spatial), meta)``.

    Raises:
        InputError: the file is corrupt, truncated, or has an unsupported layout.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib raise many types for damaged files
        raise InputError(
            f"cannot read NIfTI file ({type(exc).__name__}: {exc}); it may be corrupt or truncated",
            path,
            "re-export or re-download the file",
        ) from exc
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
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    hdr = img.header
    factor = _UNIT_TO_MM.get(hdr.get_xyzt_units()[0], 1.0)
    affine[:3, :] *= factor
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


def write_nifti(tmp: Path, data: np.ndarray, meta: ImageMeta) -> None:
    """Write ``data`` ``(C, *spatial)`` (already in its on-disk dtype) to ``tmp``.

    Single-channel data is stored as ``(*spatial)``; several channels as ``(*spatial, C)`` (4D for
    3D images, ``(X, Y, 1, C)`` for 2D ones, which read back as 3D with one slice). The meta's
    affine is stored as both sform and qform with code 1 (scanner-aligned), units mm. A sheared
    affine (e.g. a gantry-tilted CT) is exact only in the sform, which readers use first; the
    quaternion qform can hold rotations and zooms only and keeps the nearest of those.
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
    img.set_sform(meta.affine, code=1)
    img.set_qform(meta.affine, code=1)
    hdr.set_xyzt_units(xyz="mm")
    nib.save(img, str(tmp))
