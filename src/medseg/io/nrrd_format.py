"""NRRD files (``.nrrd``, ``.nhdr`` + data file) through pynrrd, converted to RAS+ on read."""

from __future__ import annotations

import bz2
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import nrrd
import numpy as np

from medseg.errors import InputError
from medseg.io.limits import (
    check_affine,
    check_declared_size,
    check_regular_file,
    check_spacing,
    max_image_bytes,
    reader_failure,
)
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


#: NRRD type names -> NumPy type codes (the NRRD0005 specification; ``block`` is not read).
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16",
                     "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
                    "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long",
                     "signed long long int", "int64", "int64_t"), "i8"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t"), "u8"),
    "float": "f4",
    "double": "f8",
}
_TEXT_ENCODINGS = ("ascii", "text", "txt")
_MAX_HEADER_BYTES = 2**20
_CHUNK = 2**20
_REEXPORT = "re-export the file (e.g. from 3D Slicer) or check its data file (.nhdr)"


def _bad(path: Path, problem: str, hint: str = _REEXPORT) -> InputError:
    return InputError(f"cannot read NRRD file: {problem}", path, hint)


def _read_header_lines(path: Path) -> tuple[list[str], int]:
    """The header lines (magic first, blank line excluded) and the byte offset of the data.

    At most :data:`_MAX_HEADER_BYTES` are read, so a file without a blank line (or a huge one) is
    never read whole just to find the header.
    """
    lines: list[str] = []
    total = 0
    with open(path, "rb") as fh:
        while True:
            line = fh.readline(_MAX_HEADER_BYTES - total + 1)
            total += len(line)
            if total > _MAX_HEADER_BYTES:
                raise _bad(path, f"NRRD header is longer than {_MAX_HEADER_BYTES // 2**20} MiB "
                           "(no blank line ends it)")
            if not lines and not line.startswith(b"NRRD000"):
                raise _bad(path, "not an NRRD file (it does not start with 'NRRD000x')",
                           "check the file type; " + _REEXPORT)
            text = line.decode("latin-1").rstrip("\r\n")
            if not line or (lines and text.strip() == ""):
                break
            lines.append(text)
        return lines, fh.tell()


def _dtype(hdr: dict[str, Any], path: Path) -> np.dtype:
    name = str(hdr["type"]).strip().lower()
    code = _NRRD_TYPES.get(name)
    if code is None:
        raise _bad(path, f"unsupported NRRD data type {hdr['type']!r}",
                   "store the data as an integer or floating-point type")
    dt = np.dtype(code)
    if dt.itemsize > 1 and str(hdr["encoding"]).lower() not in _TEXT_ENCODINGS:
        endian = str(hdr.get("endian", "")).strip().lower()
        if endian not in ("little", "big"):
            raise _bad(path, f"NRRD header needs 'endian: little' or 'big', got {endian!r}")
        dt = dt.newbyteorder("<" if endian == "little" else ">")
    return dt


def _int_field(hdr: dict[str, Any], names: tuple[str, ...], default: int) -> int:
    for n in names:
        if n in hdr:
            return int(hdr[n])
    return default


def _data_handle(path: Path, hdr: dict[str, Any], offset: int) -> tuple[BinaryIO, Path]:
    """Open the data: the same file at ``offset`` or a detached data file (regular files only)."""
    data_file = hdr.get("data file", hdr.get("datafile"))
    if data_file is None:
        if path.name.lower().endswith(".nhdr"):
            raise _bad(path, "detached NRRD header (.nhdr) without a 'data file' field")
        fh = open(path, "rb")
        fh.seek(offset)
        return fh, path
    name = str(data_file).strip()
    if name.upper().startswith("LIST") or "%" in name or " " in name:
        raise _bad(path, f"NRRD data split over several files ({name!r}) is not supported",
                   "save the volume as one .nrrd file")
    target = Path(name) if os.path.isabs(name) else path.parent / name
    check_regular_file(target)
    return open(target, "rb"), target


def _inflate(fh: BinaryIO, decomp: Any, needed: int) -> bytes:
    """Decompress from ``fh`` until ``needed`` bytes are out, never more (bounded memory)."""
    out = bytearray()
    is_zlib = not isinstance(decomp, bz2.BZ2Decompressor)
    while len(out) < needed and not decomp.eof:
        if is_zlib:
            data = decomp.unconsumed_tail or fh.read(_CHUNK)
        else:
            data = fh.read(_CHUNK) if decomp.needs_input else b""
        if not data and (is_zlib or decomp.needs_input):
            break
        out += decomp.decompress(data, needed - len(out))
    return bytes(out)


def _read_data(path: Path, hdr: dict[str, Any], offset: int) -> np.ndarray:
    """The array the header describes, reading no more than it declares."""
    sizes = [int(s) for s in np.atleast_1d(hdr["sizes"])]
    if int(hdr["dimension"]) != len(sizes):
        raise _bad(path, f"NRRD 'dimension' {hdr['dimension']} does not match 'sizes' {sizes}")
    dt = _dtype(hdr, path)
    nbytes = check_declared_size(path, sizes, dt.itemsize)
    n = math.prod(sizes)
    encoding = str(hdr["encoding"]).strip().lower()
    line_skip = _int_field(hdr, ("line skip", "lineskip"), 0)
    byte_skip = _int_field(hdr, ("byte skip", "byteskip"), 0)
    if line_skip < 0 or byte_skip < -1:
        raise _bad(path, f"invalid NRRD line skip {line_skip} / byte skip {byte_skip}")
    limit = max_image_bytes()
    fh, source = _data_handle(path, hdr, offset)
    with fh:
        for _ in range(line_skip):
            if len(fh.readline(limit)) >= limit:
                raise _bad(path, "a skipped NRRD line is longer than the size limit")
        if encoding == "raw":
            if byte_skip == -1:
                end = fh.seek(0, os.SEEK_END)
                if end - nbytes < 0:
                    raise _bad(source, f"NRRD data is truncated ({end} of {nbytes} bytes)")
                fh.seek(end - nbytes)
            else:
                fh.seek(byte_skip, os.SEEK_CUR)
            left = os.fstat(fh.fileno()).st_size - fh.tell()
            if left < nbytes:  # checked first: read(n) would allocate n bytes before reading
                raise _bad(source, f"NRRD data is truncated ({max(left, 0)} of {nbytes} bytes)")
            raw = fh.read(nbytes)
        elif encoding in ("gzip", "gz", "bzip2", "bz2"):
            decomp: Any = (zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding.startswith("g")
                           else bz2.BZ2Decompressor())
            if byte_skip == -1:  # data at the end of the decompressed stream
                stream = _inflate(fh, decomp, limit + 1)
                if len(stream) > limit:
                    raise _bad(source, "compressed NRRD data expands beyond the size limit")
                raw = stream[max(len(stream) - nbytes, 0):]
            else:
                raw = _inflate(fh, decomp, byte_skip + nbytes)
                raw = raw[byte_skip:]
        elif encoding in _TEXT_ENCODINGS:
            left = max(os.fstat(fh.fileno()).st_size - fh.tell(), 0)
            text = fh.read(min(limit // 4, 64 * n + _CHUNK, left))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    values = np.fromstring(text, dtype=np.float64, sep=" ")
                except (ValueError, DeprecationWarning):
                    raise _bad(source, "NRRD text data holds non-numbers") from None
            if values.size < n:
                raise _bad(source, f"NRRD text data holds {values.size} of {n} values")
            values = values[:n]
            return values.astype(dt).reshape(sizes[::-1]).T.copy()
        else:
            raise _bad(path, f"unsupported NRRD encoding {hdr['encoding']!r}",
                       "save it as raw or gzip NRRD")
    if len(raw) != nbytes:
        raise _bad(source, f"NRRD data is truncated ({len(raw)} of {nbytes} bytes)")
    return np.frombuffer(raw, dtype=dt).reshape(sizes[::-1]).T.copy()


def read_nrrd(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Read an NRRD file in its stored dtype.

    Axes whose ``space directions`` entry is ``none`` (or whose ``kind`` is not ``domain``/
    ``space``, e.g. ``vector``, ``RGB-color``, ``list``) hold channels and are moved to the front.
    The affine's columns are the space directions and its translation the ``space origin``,
    converted from the file's ``space`` (LPS, LAS or RAS) to RAS+. Files without directions use
    ``spacings`` (or 1.0) on the diagonal and a zero origin.

    The header is parsed first (at most 1 MiB of it) and checked: declared size within
    :func:`medseg.io.limits.max_image_bytes`, spacing positive, finite and at most 1000 mm; the
    data (raw, gzip, bzip2 or text; attached or in a detached regular data file) is then read
    without ever decompressing more than the header declares.

    Returns:
        ``(array (C, *spatial), meta)``.

    Raises:
        InputError: unreadable, not regular, too large or truncated file, unusable spacing, not 2
            or 3 spatial axes, or several channel axes.
    """
    check_regular_file(path)
    lines, offset = _read_header_lines(path)
    try:
        hdr = nrrd.read_header(lines)
        for key in ("type", "dimension", "sizes", "encoding"):
            if key not in hdr:
                raise _bad(path, f"NRRD header has no '{key}' field")
        nd = int(hdr["dimension"])
        kinds = [str(k).lower() for k in hdr.get("kinds", ["domain"] * nd)]
        if len(kinds) != nd:
            raise _bad(path, f"NRRD 'kinds' has {len(kinds)} entries for {nd} axes")
        dirs = hdr.get("space directions")
        if dirs is not None:
            rows = [None if r is None else np.asarray(r, dtype=np.float64).ravel() for r in dirs]
            if len(rows) != nd or any(r is not None and r.size not in (2, 3) for r in rows):
                raise _bad(path, f"NRRD 'space directions' do not match {nd} axes in 2D/3D space")
            spatial = [i for i, r in enumerate(rows) if r is not None and np.all(np.isfinite(r))]
        else:
            rows = [None] * nd
            spatial = [i for i, k in enumerate(kinds) if k in _SPATIAL_KINDS]
        channel_axes = [i for i in range(nd) if i not in spatial]
        if len(spatial) not in (2, 3) or len(channel_axes) > 1:
            raise InputError(
                f"NRRD with {len(spatial)} spatial and {len(channel_axes)} non-spatial axes "
                f"(sizes {[int(s) for s in np.atleast_1d(hdr['sizes'])]}, kinds {kinds}) is not "
                "supported",
                path,
                "store 2D or 3D images with at most one channel (vector/list) axis",
            )
        lps = np.eye(4)
        if dirs is not None:
            for col, ax in enumerate(spatial):
                r = rows[ax]
                lps[:3, col] = 0.0
                lps[: r.shape[0], col] = r  # a 2D space leaves the third world coordinate at 0
        else:
            spacings = hdr.get("spacings")
            if spacings is not None:
                spacings = np.atleast_1d(np.asarray(spacings, dtype=np.float64))
                if spacings.size != nd:
                    raise _bad(path, f"NRRD 'spacings' has {spacings.size} entries for {nd} axes")
                given = [float(spacings[ax]) for ax in spatial if not np.isnan(spacings[ax])]
                check_spacing(path, given, "NRRD spacings")
            for col, ax in enumerate(spatial):
                s = 1.0 if spacings is None else float(spacings[ax])
                lps[col, col] = s if np.isfinite(s) else 1.0
        origin = hdr.get("space origin")
        if origin is not None:
            o = np.atleast_1d(np.asarray(origin, dtype=np.float64)).ravel()[:3]
            lps[: o.shape[0], 3] = np.where(np.isfinite(o), o, 0.0)
        flip = np.diag(np.append(_ras_flip(str(hdr.get("space") or "")), 1.0))
        affine = flip @ lps
        if len(spatial) == 2:
            affine[:3, 2] = (0.0, 0.0, 1.0)
    except InputError:
        raise
    except Exception as exc:  # pynrrd's NRRDError, ValueError, TypeError on malformed fields
        raise reader_failure(exc, path, "NRRD header", _REEXPORT) from exc
    check_affine(path, affine, len(spatial))
    try:
        data = _read_data(path, hdr, offset)
    except InputError:
        raise
    except Exception as exc:  # zlib/bz2/OSError on damaged data
        raise reader_failure(exc, path, "NRRD data", _REEXPORT) from exc
    arr = np.moveaxis(data, channel_axes[0], 0) if channel_axes else data[None]
    meta = ImageMeta(
        affine=affine,
        spatial_shape=arr.shape[1:],
        source=(path,),
        dtype=data.dtype.newbyteorder("=").name,
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
