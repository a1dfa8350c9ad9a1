"""Fuzzing the image readers: NIfTI-1/2, NRRD, PNG, TIFF, DICOM series (issue 10).

Each test starts from valid files written by medseg or the format's library and mutates them:
header fields set to interesting values (huge, negative, zero, NaN dimensions and spacings),
bit flips, overwritten integers/floats, truncation, insertion, repetition, wrong magic, or plain
random bytes. The property (see :func:`fuzz_harness.check`): the reader returns or raises a
``MedsegError``, within the per-case time limit and the worker's memory bound.

The default run uses a small, derandomised budget per reader; the ``slow`` variants run the long
campaign (together with the table and model fuzzers over 10,000 cases).
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import struct
import warnings
import zlib
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
from fuzz_harness import (
    INTERESTING_FLOATS,
    INTERESTING_INTS,
    fuzz_pair,
    mutated_bytes,
    random_bytes,
    workdir,
)
from hypothesis import strategies as st
from PIL import Image

from medseg.io import ImageMeta, write_dicom_series

# --------------------------------------------------------------------------------- NIfTI

# (offset, struct format) of NIfTI-1 / NIfTI-2 header fields worth mutating
NIFTI1_FIELDS = ([(0, "i"), (39, "B"), (68, "h"), (70, "h"), (72, "h"), (108, "f"), (112, "f"),
                  (116, "f"), (123, "B"), (252, "h"), (254, "h")]
                 + [(40 + 2 * i, "h") for i in range(8)] + [(76 + 4 * i, "f") for i in range(8)]
                 + [(256 + 4 * i, "f") for i in range(6)] + [(280 + 4 * i, "f") for i in range(12)])
NIFTI2_FIELDS = ([(0, "i"), (12, "h"), (14, "h"), (168, "q"), (176, "d"), (184, "d"), (344, "i"),
                  (348, "i"), (500, "i"), (504, "i")]
                 + [(16 + 8 * i, "q") for i in range(8)] + [(104 + 8 * i, "d") for i in range(8)]
                 + [(352 + 8 * i, "d") for i in range(6)] + [(400 + 8 * i, "d") for i in range(12)])


@cache
def nifti_seeds() -> dict[int, list[bytes]]:
    aff = np.diag([0.8, 0.9, 2.5, 1.0])
    arrays = [np.arange(60, dtype=np.int16).reshape(4, 5, 3),
              np.linspace(0, 1, 2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2),
              np.arange(12, dtype=np.uint8).reshape(3, 4)]
    out = {}
    for version, cls in ((1, nib.Nifti1Image), (2, nib.Nifti2Image)):
        seeds = []
        for a in arrays:
            img = cls(a, aff)
            img.header.set_xyzt_units("mm")
            seeds.append(img.to_bytes())
        out[version] = seeds
    return out


def _value(draw, fmt: str):
    if fmt in "fd":
        return draw(st.sampled_from(INTERESTING_FLOATS) | st.floats(width=32 if fmt == "f" else 64))
    bits = struct.calcsize(fmt) * 8
    v = draw(st.sampled_from(INTERESTING_INTS) | st.integers(-(2 ** (bits - 1)),
                                                             2 ** (bits - 1) - 1))
    lo, hi = (0, 2**bits - 1) if fmt.isupper() else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return min(max(v, lo), hi)


@st.composite
def nifti_case(draw, version: int):
    seed = bytearray(draw(st.sampled_from(nifti_seeds()[version])))
    fields = NIFTI1_FIELDS if version == 1 else NIFTI2_FIELDS
    for _ in range(draw(st.integers(0, 4))):
        off, fmt = draw(st.sampled_from(fields))
        endian = "<" if draw(st.integers(0, 5)) else ">"
        try:
            seed[off:off + struct.calcsize(fmt)] = struct.pack(endian + fmt, _value(draw, fmt))
        except (OverflowError, struct.error):
            pass
    kind = draw(st.sampled_from(["fields", "bytes", "random", "gz_inner", "gz_outer"]))
    raw = bytes(seed)
    if kind == "bytes":
        raw = draw(mutated_bytes(raw, hot=560))
    elif kind == "random":
        raw = draw(random_bytes())
    elif kind == "gz_inner":
        return gzip.compress(draw(mutated_bytes(raw, hot=560))), ".nii.gz"
    elif kind == "gz_outer":
        return draw(mutated_bytes(gzip.compress(raw), hot=64)), ".nii.gz"
    return raw, draw(st.sampled_from([".nii", ".nii.gz"])) if kind == "fields" else ".nii"


def write_nifti_case(d: Path, case) -> Path:
    raw, suffix = case
    p = d / f"case{suffix}"
    p.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" and raw[:2] != b"\x1f\x8b" else raw)
    return p


test_nifti1, test_nifti1_long = fuzz_pair(nifti_case(1), "nifti", write_nifti_case)
test_nifti2, test_nifti2_long = fuzz_pair(nifti_case(2), "nifti", write_nifti_case)


# ---------------------------------------------------------------------------------- NRRD

NRRD_TOKENS = ["0", "1", "-1", "2", "3", "4", "1000000", "4294967296", "99999999999999999999",
               "nan", "inf", "-0.5", "5000", "abc", "none", "raw", "gzip", "bzip2", "ascii",
               "hex", "little", "big", "uchar", "short", "double", "block", "float", "int64",
               "(1,0,0)", "(nan,nan,nan)", "(0,0,0)", "(1,0,0) (0,1,0)", "(5000,0,0)", "domain",
               "vector", "space", "RGB-color", "/dev/zero", "../../etc/passwd", "LIST",
               "img%03d.raw 1 3 1", "left-posterior-superior", "RAS", "scanner-xyz",
               "4 5 3", "4 5", "4 5 3 2", "0 5 3", "-4 5 3", "60000 60000 60000"]
NRRD_KEYS = ["type", "dimension", "sizes", "encoding", "endian", "space", "space dimension",
             "space directions", "space origin", "spacings", "kinds", "byte skip", "line skip",
             "data file", "thicknesses", "axis mins", "content"]


def _encode(data: np.ndarray, encoding: str) -> bytes:
    raw = np.ascontiguousarray(data.T).astype("<i2").tobytes()
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "bzip2":
        return bz2.compress(raw)
    if encoding == "ascii":
        return " ".join(str(int(v)) for v in data.T.ravel()).encode() + b"\n"
    return raw


@st.composite
def nrrd_case(draw):
    encoding = draw(st.sampled_from(["raw", "gzip", "bzip2", "ascii"]))
    fields = [["type", "short"], ["dimension", "3"], ["space", "left-posterior-superior"],
              ["sizes", "4 5 3"], ["space directions", "(0.8,0,0) (0,0.9,0) (0,0,2.5)"],
              ["kinds", "domain domain domain"], ["endian", "little"], ["encoding", encoding],
              ["space origin", "(1,2,3)"]]
    data = _encode(np.arange(60, dtype=np.int16).reshape(4, 5, 3), encoding)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if op == "set" and fields:
            i = draw(st.integers(0, len(fields) - 1))
            fields[i][1] = draw(st.sampled_from(NRRD_TOKENS) | st.text(max_size=30))
        elif op == "delete" and fields:
            del fields[draw(st.integers(0, len(fields) - 1))]
        else:
            fields.append([draw(st.sampled_from(NRRD_KEYS)),
                           draw(st.sampled_from(NRRD_TOKENS) | st.text(max_size=30))])
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields) + "\n"
    raw = header.encode("utf-8", "replace") + data
    kind = draw(st.sampled_from(["fields", "fields", "bytes", "random", "detached"]))
    if kind == "bytes":
        raw = draw(mutated_bytes(raw, hot=len(header)))
    elif kind == "random":
        raw = draw(random_bytes())
    elif kind == "detached":
        return header.replace("\n\n", "\ndata file: case.raw\n\n").encode(), data
    return raw, None


def write_nrrd_case(d: Path, case) -> Path:
    raw, detached = case
    if detached is not None:
        (d / "case.raw").write_bytes(detached)
        p = d / "case.nhdr"
    else:
        p = d / "case.nrrd"
    p.write_bytes(raw)
    return p


test_nrrd, test_nrrd_long = fuzz_pair(nrrd_case(), "nrrd", write_nrrd_case)


# ----------------------------------------------------------------------------------- PNG


@cache
def png_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (6, 7), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 65535, (5, 4), dtype=np.uint16)),
              Image.fromarray(rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (4, 6, 4), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 3, (5, 5), dtype=np.uint8)).convert("P")]
    out = []
    for im in images:
        b = io.BytesIO()
        im.save(b, format="PNG")
        out.append(b.getvalue())
    return out


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC so mutations reach the decoder instead of the CRC check."""
    out = bytearray(data[:8])
    pos = 8
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 8 + n
        if end + 4 > len(data):
            out += data[pos:]
            return bytes(out)
        body = data[pos + 4:end]
        out += data[pos:end] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end + 4
    out += data[pos:]
    return bytes(out)


@st.composite
def png_case(draw):
    raw = bytearray(draw(st.sampled_from(png_seeds())))
    for _ in range(draw(st.integers(0, 3))):  # IHDR: width, height, depth, colour, interlace
        off, fmt = draw(st.sampled_from([(16, ">I"), (20, ">I"), (24, ">B"), (25, ">B"),
                                         (26, ">B"), (27, ">B"), (28, ">B")]))
        v = draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 255, 2**31 - 1, 100000, 65536])
                 | st.integers(0, 2**32 - 1))
        raw[off:off + struct.calcsize(fmt)] = struct.pack(fmt, v % (256 if fmt == ">B" else 2**32))
    kind = draw(st.sampled_from(["ihdr", "bytes", "bytes_crc", "random"]))
    if kind == "bytes":
        return draw(mutated_bytes(bytes(raw), hot=64))
    if kind == "bytes_crc":
        return fix_png_crcs(draw(mutated_bytes(bytes(raw), hot=len(raw))))
    if kind == "random":
        return draw(random_bytes())
    return fix_png_crcs(bytes(raw))


def write_png_case(d: Path, raw: bytes) -> Path:
    p = d / "case.png"
    p.write_bytes(raw)
    return p


test_png, test_png_long = fuzz_pair(png_case(), "png", write_png_case)


# ---------------------------------------------------------------------------------- TIFF


@cache
def tiff_seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    arrays = [(rng.integers(0, 255, (8, 8), dtype=np.uint8), {}),
              (rng.integers(0, 4000, (3, 6, 5), dtype=np.uint16), {}),
              (rng.integers(0, 255, (6, 5, 3), dtype=np.uint8), {"photometric": "rgb"}),
              (rng.random((4, 4), dtype=np.float32), {"compression": "zlib"}),
              (rng.integers(0, 255, (16, 16), dtype=np.uint8), {"tile": (16, 16)})]
    out = []
    for a, kw in arrays:
        b = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tifffile.imwrite(b, a, **kw)
        out.append(b.getvalue())
    return out


@st.composite
def tiff_case(draw):
    raw = bytearray(draw(st.sampled_from(tiff_seeds())))
    ifd = struct.unpack("<I", raw[4:8])[0]
    n = struct.unpack("<H", raw[ifd:ifd + 2])[0]
    for _ in range(draw(st.integers(0, 4))):  # IFD entries: type, count, value
        e = ifd + 2 + 12 * draw(st.integers(0, n - 1))
        what = draw(st.sampled_from([(2, "<H"), (4, "<I"), (8, "<I"), (8, "<H")]))
        v = draw(st.sampled_from(INTERESTING_INTS) | st.integers(0, 2**32 - 1))
        size = struct.calcsize(what[1])
        raw[e + what[0]:e + what[0] + size] = struct.pack(what[1], v % (1 << (8 * size)))
    kind = draw(st.sampled_from(["ifd", "bytes", "random"]))
    if kind == "bytes":
        return draw(mutated_bytes(bytes(raw), hot=len(raw)))
    if kind == "random":
        return draw(random_bytes())
    return bytes(raw)


def write_tiff_case(d: Path, raw: bytes) -> Path:
    p = d / "case.tif"
    p.write_bytes(raw)
    return p


test_tiff, test_tiff_long = fuzz_pair(tiff_case(), "tiff", write_tiff_case)


# --------------------------------------------------------------------------------- DICOM

DICOM_VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "nan", "inf", "1e400", "5000", "abc", "65535", "2",
                     "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "CT", "SEG"]),
    st.lists(st.sampled_from(["0", "1", "-1", "0.5", "nan", "inf", "5000", "1e30", "x"]),
             min_size=1, max_size=7),
    st.integers(-(2**31), 2**32),
    st.floats(allow_nan=True),
)
DICOM_KEYS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
              "PixelSpacing", "ImagerPixelSpacing", "ImagePositionPatient",
              "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
              "SliceThickness", "SpacingBetweenSlices", "Modality", "SeriesInstanceUID",
              "SOPClassUID"]


@cache
def dicom_seed() -> list[bytes]:
    with workdir() as d:
        meta = ImageMeta.from_spacing((0.7, 0.7, 2.0), (6, 5, 3))
        files = write_dicom_series(Path(d) / "s", np.arange(90, dtype=np.float32).reshape(6, 5, 3)
                                   - 40, meta)
        return [f.read_bytes() for f in files]


def _set(ds: pydicom.Dataset, key: str, value) -> None:
    if value is None:
        if key in ds:
            delattr(ds, key)
        return
    try:
        setattr(ds, key, value)
    except Exception:  # noqa: BLE001 - pydicom refuses some values for some VRs: skip them
        pass


@st.composite
def dicom_case(draw):
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _dicom_case(draw)
    finally:
        log.setLevel(level)


def _dicom_case(draw):
    files = list(dicom_seed())
    kind = draw(st.sampled_from(["attrs", "attrs", "attrs_bytes", "bytes", "random", "syntax"]))
    if kind.startswith("attrs") or kind == "syntax":
        for _ in range(draw(st.integers(1, 4))):
            which = draw(st.sampled_from(["all", "one"]))
            idx = range(len(files)) if which == "all" else [draw(st.integers(0, len(files) - 1))]
            key = draw(st.sampled_from(DICOM_KEYS))
            value = draw(st.none() | DICOM_VALUES)
            for i in idx:
                ds = pydicom.dcmread(io.BytesIO(files[i]))
                if kind == "syntax":
                    ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(
                        ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                         "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.3"]))
                _set(ds, key, value)
                pixels = ds.get("PixelData")
                if pixels and draw(st.integers(0, 9)) == 0:
                    ds.PixelData = pixels[: draw(st.integers(0, len(pixels)))]
                b = io.BytesIO()
                try:
                    ds.save_as(b, enforce_file_format=False)
                    files[i] = b.getvalue()
                except Exception:  # noqa: BLE001 - unwritable combination: keep the file
                    pass
    if kind in ("attrs_bytes", "bytes"):
        i = draw(st.integers(0, len(files) - 1))
        files[i] = draw(mutated_bytes(files[i], hot=900))
    if kind == "random":
        files[draw(st.integers(0, len(files) - 1))] = draw(random_bytes())
    return files


def write_dicom_case(d: Path, files: list[bytes]) -> Path:
    folder = d / "series"
    folder.mkdir()
    for i, b in enumerate(files):
        (folder / f"IM{i + 1:04d}.dcm").write_bytes(b)
    return folder


test_dicom, test_dicom_long = fuzz_pair(dicom_case(), "dicom", write_dicom_case)
