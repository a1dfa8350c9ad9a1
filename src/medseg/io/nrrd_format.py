"""NRRD files (``.nrrd``, ``.nhdr`` + data file) through pynrrd, converted to RAS+ on read."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np

from medseg.errors import InputError
from medseg.io.meta import ImageMeta

# sign flips taking each NRRD anatomical space to RAS+
_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_SPATIAL_KINDS = {"domain", "space"}


def _ras_flip(space: str | None) -> np.ndarray:
    """Diagonal sign flips to RAS+ for an NRRD ``space`` (time variants included).

    Non-anatomical spaces (``scanner-xyz``, ``3D-right-handed`` ...) and a missing ``space`` are
    taken as already RAS-like: no flip.
    """
    if not space:
        return np.ones(3)
    key = space.strip().lower()
    for suffix in ("-time", "t"):  # e.g. "left-posterior-superior-time", "LPST"
        stem = key[: -len(suffix)]
        if key not in _SPACE_TO_RAS and key.endswith(suffix) and stem in _SPACE_TO_RAS:
            key = stem
    return np.asarray(_SPACE_TO_RAS.get(key, (1.0, 1.0, 1.0)))


def read_nrrd(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Read an NRRD file in its stored dtype.

    Axes whose ``space directions`` entry is ``none`` (or whose ``kind`` is not ``domain``/
    ``space``, e.g. ``vector``, ``RGB-color``, ``list``) hold channels and are moved to the front.
    The affine's columns are the space directions and its translation the ``space origin``,
    converted from the file's ``space`` (LPS, LAS or RAS) to RAS+. Files without directions use
    ``spacings`` (or 1.0) on the diagonal and a zero origin.

    Returns:
        ``(array (C, *spatial), meta)``.

    Raises:
        InputError: unreadable file, or not 2 or 3 spatial axes, or several channel axes.
    """
    try:
        data, hdr = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, OSError, zlib errors ...
        raise InputError(
            f"cannot read NRRD file ({type(exc).__name__}: {exc}); it may be corrupt or truncated",
            path,
            "re-export the file (e.g. from 3D Slicer) or check its data file (.nhdr)",
        ) from exc
    nd = data.ndim
    kinds = [str(k).lower() for k in hdr.get("kinds", ["domain"] * nd)]
    dirs = hdr.get("space directions")
    if dirs is not None:
        rows = [None if r is None else np.asarray(r, dtype=np.float64) for r in dirs]
        spatial = [i for i, r in enumerate(rows) if r is not None and np.all(np.isfinite(r))]
    else:
        rows = [None] * nd
        spatial = [i for i, k in enumerate(kinds) if k in _SPATIAL_KINDS]
    channel_axes = [i for i in range(nd) if i not in spatial]
    if len(spatial) not in (2, 3) or len(channel_axes) > 1:
        raise InputError(
            f"NRRD with {len(spatial)} spatial and {len(channel_axes)} non-spatial axes "
            f"(sizes {list(data.shape)}, kinds {kinds}) is not supported",
            path,
            "store 2D or 3D images with at most one channel (vector/list) axis",
        )
    if channel_axes:
        arr = np.moveaxis(data, channel_axes[0], 0)
    else:
        arr = data[None]
    lps = np.eye(4)
    if dirs is not None:
        for col, ax in enumerate(spatial):
            r = rows[ax]
            lps[:3, col] = 0.0
            lps[: r.shape[0], col] = r  # a 2D space leaves the third world coordinate at zero
    else:
        spacings = hdr.get("spacings")
        for col, ax in enumerate(spatial):
            s = 1.0 if spacings is None else float(spacings[ax])
            lps[col, col] = s if np.isfinite(s) else 1.0
    origin = hdr.get("space origin")
    if origin is not None:
        o = np.asarray(origin, dtype=np.float64)
        lps[: o.shape[0], 3] = np.where(np.isfinite(o), o, 0.0)
    flip = np.diag(np.append(_ras_flip(hdr.get("space")), 1.0))
    affine = flip @ lps
    if len(spatial) == 2:
        affine[:3, 2] = (0.0, 0.0, 1.0)
    meta = ImageMeta(
        affine=affine,
        spatial_shape=arr.shape[1:],
        source=(path,),
        dtype=data.dtype.name,
        extra={"nrrd_space": hdr.get("space")},
    )
    return np.ascontiguousarray(arr), meta


def write_nrrd(tmp: Path, data: np.ndarray, meta: ImageMeta) -> None:
    """Write ``data`` ``(C, *spatial)`` (already in its on-disk dtype) as gzip NRRD in LPS space.

    Several channels are stored as a leading ``vector`` axis (the 3D Slicer convention).
    """
    d = meta.ndim
    to_lps = np.diag([-1.0, -1.0, 1.0])
    dirs = (to_lps @ meta.affine[:3, :d]).T
    origin = to_lps @ meta.affine[:3, 3]
    kinds = ["domain"] * d
    out = data[0] if data.shape[0] == 1 else data
    if data.shape[0] > 1:
        dirs = np.vstack([np.full((1, 3), np.nan), dirs])
        kinds = ["vector"] + kinds
    header = {
        "space": "left-posterior-superior",
        "space directions": dirs,
        "space origin": origin,
        "kinds": kinds,
        "encoding": "gzip",
    }
    nrrd.write(str(tmp), np.ascontiguousarray(out), header)
