"""Resource limits and sanity checks every reader applies before it reads pixels (E1).

A file's header says how large its array is; a hostile or damaged header can ask for terabytes
(a 389 KB ``.nii.gz`` that expands to 2 GB, a NIfTI-2 header of 60000^3 voxels), point at a
device (a symbolic link to ``/dev/zero`` named ``.nrrd``) or carry a voxel size of zero, NaN or
five metres. Each reader calls these checks on what the header declares, *before* it allocates or
reads the data, so such a file ends in one :class:`~medseg.errors.InputError` naming the file, the
problem and the fix.

The size limit is ``4 GiB`` per image (the array as stored: voxels x bytes per voxel x channels)
and is set with one environment variable, :data:`ENV_MAX_IMAGE_BYTES`
(``MEDSEG_MAX_IMAGE_BYTES``), as a number of bytes with an optional ``K``/``M``/``G``/``T``
suffix (powers of 1024), e.g. ``MEDSEG_MAX_IMAGE_BYTES=16G``.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, InputError

#: The environment variable holding the per-image size limit in bytes.
ENV_MAX_IMAGE_BYTES = "MEDSEG_MAX_IMAGE_BYTES"
#: The limit when the environment variable is not set: 4 GiB.
DEFAULT_MAX_IMAGE_BYTES = 4 * 2**30
#: Largest voxel size (mm) accepted from a header; larger ones are taken as corrupt.
MAX_SPACING_MM = 1000.0
#: Smallest voxel size (mm) accepted from a header (1 nm).
MIN_SPACING_MM = 1e-6

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def max_image_bytes() -> int:
    """The per-image size limit in bytes: ``$MEDSEG_MAX_IMAGE_BYTES`` or 4 GiB.

    Raises:
        ConfigError: the variable is set to something other than a positive size.
    """
    raw = os.environ.get(ENV_MAX_IMAGE_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_BYTES
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", raw, flags=re.IGNORECASE)
    value = float(m[1]) * _UNITS[m[2].upper()] if m else 0.0
    if not 1 <= value < 2**63:
        raise ConfigError(
            f"environment variable {ENV_MAX_IMAGE_BYTES}={raw!r} is not a size in bytes",
            None,
            f"set it to a positive number of bytes, optionally with K, M, G or T "
            f"(e.g. {ENV_MAX_IMAGE_BYTES}=16G), or unset it for the default 4 GiB",
        )
    return int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``"4 GiB"``, ``"1.5 MiB"``, ``"312 B"``."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                       ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) or v >= 100 else f"{v:.3g} {unit}"
    return f"{int(n)} B"


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (after following symbolic links) before opening it.

    A FIFO blocks the reader forever, a device such as ``/dev/zero`` never ends.

    Raises:
        InputError: the path is missing, or a FIFO, socket, device or folder.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot open the file ({type(exc).__name__}: {exc})",
            p,
            "check the path (and that every symbolic link on it points to an existing file)",
        ) from None
    if stat.S_ISREG(st.st_mode):
        return
    kind = (
        "a folder" if stat.S_ISDIR(st.st_mode)
        else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
        else "a socket" if stat.S_ISSOCK(st.st_mode)
        else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "not a regular file"
    )
    link = f" (a symbolic link to {os.path.realpath(p)})" if p.is_symlink() else ""
    raise InputError(
        f"is {kind}{link}, not a regular file, so it is not read",
        p,
        "pass an image file; medseg never reads pipes or devices",
    )


def check_declared_size(
    path: str | os.PathLike | None,
    shape: Sequence[int],
    bytes_per_voxel: int,
    what: str = "image",
) -> int:
    """Refuse an array whose declared size is empty or over :func:`max_image_bytes`.

    Call it with the shape and element size a header declares, before reading the data.

    Args:
        path: The file, named in the message.
        shape: The declared array shape (every axis, channels included).
        bytes_per_voxel: Bytes per element as stored.
        what: What the array is, for the message (``"image"``, ``"array 'train_images'"`` ...).

    Returns:
        The declared size in bytes.

    Raises:
        InputError: a negative or zero dimension, or a size over the limit.
    """
    dims = [int(d) for d in shape]
    shown = "x".join(str(d) for d in dims) or "()"
    if any(d < 0 for d in dims):
        raise InputError(
            f"the header declares a negative dimension (shape {shown}) for the {what}",
            path,
            "the header is corrupt: re-export the file",
        )
    if any(d == 0 for d in dims):
        raise InputError(
            f"the header declares an empty {what} (shape {shown}, no voxels)",
            path,
            "re-export the file with its data",
        )
    size = math.prod(dims) * max(int(bytes_per_voxel), 1)
    limit = max_image_bytes()
    if size > limit:
        if size <= 2**40:
            hint = (f"if the file is genuine raise the limit (e.g. {ENV_MAX_IMAGE_BYTES}="
                    f"{math.ceil(size / 2**30)}G) or crop/downsample it; otherwise the header is "
                    "corrupt")
        else:
            hint = (f"the header is corrupt or crafted: re-export the file (a genuine image this "
                    f"large needs {ENV_MAX_IMAGE_BYTES} raised)")
        raise InputError(
            f"the header declares a {shown} {what} of {format_bytes(size)}, over medseg's "
            f"limit of {format_bytes(limit)} per image",
            path,
            hint,
        )
    return size


def check_spacing(path: str | os.PathLike | None, spacing: Sequence[float], where: str) -> None:
    """Refuse voxel sizes that are not finite, not positive, or absurd.

    Args:
        path: The file, named in the message.
        spacing: Voxel size per spatial axis in mm, as the header states it (signed).
        where: Which header field holds it (``"pixdim"``, ``"PixelSpacing"`` ...).

    Raises:
        InputError: a value is NaN/inf, <= 0, below :data:`MIN_SPACING_MM` or above
            :data:`MAX_SPACING_MM`.
    """
    values = [float(s) for s in spacing]
    bad = [v for v in values if not (math.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM)]
    if not bad:
        return
    v = bad[0]
    why = (
        "not a number" if math.isnan(v)
        else "infinite" if math.isinf(v)
        else "zero" if v == 0
        else "negative" if v < 0
        else f"implausibly large (over {MAX_SPACING_MM:g} mm)" if v > MAX_SPACING_MM
        else f"implausibly small (under {MIN_SPACING_MM:g} mm)"
    )
    shown = ", ".join(f"{s:.6g}" for s in values)
    raise InputError(
        f"voxel spacing ({where}) is {why}: ({shown}) mm",
        path,
        f"fix the voxel size in the header (positive, finite, at most {MAX_SPACING_MM:g} mm), "
        "e.g. by re-exporting the image",
    )


def check_affine(path: str | os.PathLike | None, affine: np.ndarray, spatial_ndim: int) -> None:
    """Refuse a voxel-to-world affine that is not finite, has unusable spacing, or collapses axes.

    Args:
        path: The file, named in the message.
        affine: ``(4, 4)`` voxel-to-world matrix in mm.
        spatial_ndim: How many of its columns are spatial axes of the array (2 or 3).

    Raises:
        InputError: NaN/inf entries, a spacing refused by :func:`check_spacing`, or parallel axes.
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError(
            "the voxel-to-world matrix (affine) holds NaN or infinite values",
            path,
            "fix the orientation/spacing fields of the header (e.g. re-export the file)",
        )
    cols = a[:3, :spatial_ndim]
    check_spacing(path, np.linalg.norm(cols, axis=0), "from the affine")
    sv = np.linalg.svd(cols / np.linalg.norm(cols, axis=0, keepdims=True), compute_uv=False)
    if sv[-1] < 1e-6:
        raise InputError(
            "the voxel axes in the header are parallel (the affine is degenerate), so voxels "
            "have no position in space",
            path,
            "fix the orientation fields of the header (e.g. re-export the file)",
        )


def reader_failure(exc: BaseException, path: str | os.PathLike, what: str, hint: str) -> InputError:
    """The :class:`InputError` for an exception a third-party reader raised on ``path``.

    A ``MemoryError`` is reported as such, not as a corrupt file.
    """
    if isinstance(exc, MemoryError):
        return InputError(
            f"ran out of memory reading the {what}",
            path,
            f"free memory, or lower {ENV_MAX_IMAGE_BYTES} so oversized files are refused up front",
        )
    text = str(exc).splitlines()[0] if str(exc) else ""
    if len(text) > 300:
        text = text[:300] + "..."
    return InputError(
        f"cannot read {what} ({type(exc).__name__}: {text}); it may be corrupt or truncated",
        path,
        hint,
    )
