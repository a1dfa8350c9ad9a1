"""Hostile and damaged image files (issue 10): bounded size, regular files only, sane spacing.

Each bad input is written in the test, read through the public entry points, and must end in one
:class:`~medseg.errors.InputError` whose full one-line text is checked; the input folder is
hashed before and after to show nothing was changed.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from folder_state import folder_state
from medseg.errors import ConfigError, InputError
from medseg.io import ImageMeta, read_dicom_series, read_image, read_label, write_dicom_series
from medseg.io.limits import ENV_MAX_IMAGE_BYTES, max_image_bytes

SPACING_HINT = ("fix the voxel size in the header (positive, finite, at most 1000 mm), e.g. by "
                "re-exporting the image")


def refused(path, reader=read_image) -> str:
    """The message of the InputError ``reader(path)`` raises; the folder must be unchanged."""
    folder = Path(path if not isinstance(path, list | tuple) else path[0])
    folder = folder if folder.is_dir() else folder.parent
    before = folder_state(folder)
    with pytest.raises(InputError) as info:
        reader(path)
    assert folder_state(folder) == before
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def nifti_bytes(shape, dtype=np.float32, data: bytes | None = None, version: int = 1,
                **fields) -> bytes:
    """A NIfTI file written field by field (so any header value can be set)."""
    hdr = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    for k, v in fields.items():
        hdr[k] = v
    off = 352 if version == 1 else 544
    hdr["vox_offset"] = off
    payload = data if data is not None else b"\0" * (int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return hdr.binaryblock + b"\0" * (off - len(hdr.binaryblock)) + payload


# ----------------------------------------------------------------------- declared size limit


def test_gzip_bomb_nifti_refused_before_inflating(tmp_path):
    # 8 GiB declared, 1 MiB of zeros compressed to about 1 KB: refused from the header alone
    raw = nifti_bytes((2048, 2048, 2048), np.uint8, data=b"\0" * 2**20)
    p = tmp_path / "bomb.nii.gz"
    p.write_bytes(gzip.compress(raw))
    assert p.stat().st_size < 10_000
    assert refused(p) == (
        f"{p}: the header declares a 2048x2048x2048 image of 8 GiB, over medseg's limit of "
        "4 GiB per image -> if the file is genuine raise the limit (e.g. "
        "MEDSEG_MAX_IMAGE_BYTES=8G) or crop/downsample it; otherwise the header is corrupt"
    )


def test_nifti2_huge_dimensions_refused_not_allocated(tmp_path):
    p = tmp_path / "huge.nii"
    p.write_bytes(nifti_bytes((60000, 60000, 60000), np.float32, data=b"", version=2))
    assert refused(p) == (
        f"{p}: the header declares a 60000x60000x60000 image of 786 TiB, over medseg's limit "
        "of 4 GiB per image -> the header is corrupt or crafted: re-export the file (a genuine "
        "image this large needs MEDSEG_MAX_IMAGE_BYTES raised)"
    )


def test_nifti_extension_area_counts_against_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "1M")
    raw = bytearray(nifti_bytes((4, 4, 4), np.uint8))
    hdr = nib.Nifti1Header(binaryblock=bytes(raw[:348]))
    hdr["vox_offset"] = 2**31  # nibabel would read 2 GiB of "extensions" from the gzip stream
    p = tmp_path / "ext.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + bytes(raw[348:])))
    assert refused(p).startswith(
        f"{p}: the header declares a 2147483712 file (header extensions and data) of 2 GiB, "
        "over medseg's limit of 1 MiB per image")


def test_limit_is_set_by_one_environment_variable(tmp_path, monkeypatch):
    p = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)), p)  # 1 MiB
    assert read_image(p)[0].shape == (1, 64, 64, 64)
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "512K")
    assert max_image_bytes() == 512 * 1024
    assert refused(p) == (
        f"{p}: the header declares a 64x64x64 image of 1 MiB, over medseg's limit of 512 KiB per "
        "image -> if the file is genuine raise the limit (e.g. MEDSEG_MAX_IMAGE_BYTES=1G) or "
        "crop/downsample it; otherwise the header is corrupt"
    )
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "2M")
    assert read_image(p)[0].shape == (1, 64, 64, 64)
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "lots")
    with pytest.raises(ConfigError) as info:
        read_image(p)
    assert str(info.value) == (
        "environment variable MEDSEG_MAX_IMAGE_BYTES='lots' is not a size in bytes -> set it to "
        "a positive number of bytes, optionally with K, M, G or T (e.g. "
        "MEDSEG_MAX_IMAGE_BYTES=16G), or unset it for the default 4 GiB"
    )


def _nrrd(path: Path, header: str, data: bytes = b"") -> Path:
    path.write_bytes(header.encode() + b"\n" + data)
    return path


def test_nrrd_gzip_bomb_is_never_inflated_past_the_declared_size(tmp_path):
    # declares 16x16 uint8 (256 bytes) but the gzip stream holds 200 MB of zeros
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    payload = b"".join(comp.compress(b"\0" * 2**20) for _ in range(200)) + comp.flush()
    p = _nrrd(tmp_path / "bomb.nrrd", "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\n"
              "encoding: gzip\n", payload)
    arr, meta = read_image(p)  # reads the 256 declared bytes, ignores the rest
    assert arr.shape == (1, 16, 16) and meta.spatial_shape == (16, 16)
    big = _nrrd(tmp_path / "big.nrrd", "NRRD0004\ntype: double\ndimension: 3\n"
                "sizes: 100000 100000 100000\nendian: little\nencoding: gzip\n", payload[:100])
    assert refused(big) == (
        f"{big}: the header declares a 100000x100000x100000 image of 7.11 PiB, over medseg's "
        "limit of 4 GiB per image -> the header is corrupt or crafted: re-export the file (a "
        "genuine image this large needs MEDSEG_MAX_IMAGE_BYTES raised)"
    )


def test_nrrd_header_without_end_is_not_read_whole(tmp_path):
    p = tmp_path / "endless.nrrd"
    p.write_bytes(b"NRRD0004\n" + b"x" * (3 * 2**20))
    assert refused(p) == (
        f"{p}: cannot read NRRD file: NRRD header is longer than 1 MiB (no blank line ends it) "
        "-> re-export the file (e.g. from 3D Slicer) or check its data file (.nhdr)"
    )


def test_png_over_pillows_decompression_bomb_limit(tmp_path):
    # a real PNG header declaring 100000 x 100000 pixels with a tiny IDAT
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                  + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's limit stays on
    assert refused(p) == (
        f"{p}: refused by Pillow's decompression-bomb check (Image size (10000000000 pixels) "
        f"exceeds limit of {2 * Image.MAX_IMAGE_PIXELS} pixels, could be decompression bomb DOS "
        "attack.) -> if the image is genuine, split or downsample it, or store it as TIFF/NIfTI"
    )


def test_png_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    p = tmp_path / "img.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 px: between 1x and 2x the limit
    msg = refused(p, read_label)
    assert msg.startswith(f"{p}: refused by Pillow's decompression-bomb check (Image size "
                          "(4096 pixels) exceeds limit of 3000 pixels")


def test_png_and_tiff_use_the_same_size_limit(tmp_path, monkeypatch):
    png, tif = tmp_path / "a.png", tmp_path / "a.tif"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(png)
    tifffile.imwrite(tif, np.zeros((40, 50), np.uint32))
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "4K")
    assert refused(png).startswith(f"{png}: the header declares a 40x50 image of 5.86 KiB, over "
                                   "medseg's limit of 4 KiB per image")
    assert refused(tif).startswith(f"{tif}: the header declares a 40x50 image of 7.81 KiB, over "
                                   "medseg's limit of 4 KiB per image")


def test_tiff_header_declaring_huge_pages_refused(tmp_path):
    p = tmp_path / "huge.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint8))
    raw = bytearray(p.read_bytes())
    assert raw[:4] == b"II*\0"
    ifd = struct.unpack("<I", raw[4:8])[0]
    n = struct.unpack("<H", raw[ifd:ifd + 2])[0]
    for k in range(n):
        e = ifd + 2 + 12 * k
        tag = struct.unpack("<H", raw[e:e + 2])[0]
        if tag in (256, 257):  # ImageWidth, ImageLength -> LONG 200000
            raw[e + 2:e + 12] = struct.pack("<HII", 4, 1, 200000)
    p.write_bytes(bytes(raw))
    assert refused(p) == (
        f"{p}: the header declares a 200000x200000 image of 37.3 GiB, over medseg's limit of "
        "4 GiB per image -> if the file is genuine raise the limit (e.g. "
        "MEDSEG_MAX_IMAGE_BYTES=38G) or crop/downsample it; otherwise the header is corrupt"
    )


# a 556-byte TIFF (found by the fuzz campaign) whose damaged IFD chain made tifffile's series
# detection loop forever; zlib-compressed, base64-encoded
CIRCULAR_TIFF = (
    "eNrz9NRi4GBgYOBnYGBkYWAEsgSAmBGJzcTIDGaDVDHUO+xtWhjIOjvaK+XEE69Hx5jcT53ROqcg4GkfywxVB8JsSGw+"
    "RiYGESB9CIhFkcSlGFnB9DMgloay3wGxBpIaQ6BeHiD9DYidkNzkjMR2gbGBhCuUDSEYGKqViu33nYlSslKINjTTUTA0"
    "i61lQAeMaLgkMy0tLTMnVa+gEk0l0+NXa21Ncw+m6tWdqJ8x6V7MIR6DufdVe6/tTjujs2NJ1JWZP/WTj++rvL/gvnDE"
    "gwDzNWrvb5rNfLHSXqjmdi8P1zXD3cn3uzbV+XkJnSvv1eCby8ih7qprGP9K6ch5hv74qVfff/VZEi1x297yl9f27kO7"
    "MizvPLsifbH7n4GKhruAWHD5mg5xs0PxnhuWm69aNGut8fVLguJnb+0T+5mouOlrSLL4k2mn2lXz+c9yprgUVq0vCAx3"
    "k+B+crKF6fRNbbNsS/mwSTmzXkyNnsv/OJHFhfVmc2zN3ztpqw10fhV5JXu8etAR+knl0spLsRqPS08Ub3jYuuGg4C1u"
    "nhWypgudc5pu28aWflwDAEGMmx4="
)


def test_tiff_with_a_looping_page_chain_ends(tmp_path):
    import base64

    p = tmp_path / "loop.tif"
    p.write_bytes(zlib.decompress(base64.b64decode(CIRCULAR_TIFF)))
    msgs = []
    _finishes(lambda: msgs.append(refused(p)))
    assert msgs[0] == (f"{p}: cannot read TIFF (TiffFileError: missing data offset); it may be "
                       "corrupt or truncated -> re-export the image")


# ----------------------------------------------------------------------- non-regular files


def _finishes(fn, seconds: float = 20.0) -> None:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    out: list[BaseException | None] = []

    def run():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still running after {seconds} s (a hang)"
    if out[0] is not None:
        raise out[0]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_symlink_to_dev_zero_and_fifo_refused_before_reading(tmp_path):
    z = tmp_path / "zero.nrrd"
    z.symlink_to("/dev/zero")
    msgs = []
    _finishes(lambda: msgs.append(refused(z)))
    assert msgs[0] == (
        f"{z}: is a device (a symbolic link to /dev/zero), not a regular file, so it is not read "
        "-> pass an image file; medseg never reads pipes or devices"
    )
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    _finishes(lambda: msgs.append(refused(fifo)))
    assert msgs[1] == (
        f"{fifo}: is a FIFO (named pipe), not a regular file, so it is not read -> pass an image "
        "file; medseg never reads pipes or devices"
    )
    dcm = tmp_path / "x.dcm"
    dcm.symlink_to("/dev/zero")
    _finishes(lambda: msgs.append(refused([dcm], read_dicom_series)))
    assert msgs[2].startswith(f"{dcm}: ")
    nhdr = _nrrd(tmp_path / "d.nhdr", "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\n"
                 "encoding: raw\ndata file: zero.nrrd\n")
    _finishes(lambda: msgs.append(refused(nhdr)))
    assert msgs[3].startswith(f"{z}: is a device (a symbolic link to /dev/zero)")


# ----------------------------------------------------------------------- spacing in headers


@pytest.mark.parametrize("value, why", [
    (0.0, "zero: (1, 0, 1)"),
    (-1.0, "negative: (1, -1, 1)"),
    (float("nan"), "not a number: (1, nan, 1)"),
    (5000.0, "implausibly large (over 1000 mm): (1, 5000, 1)"),
])
def test_nifti_bad_spacing(tmp_path, value, why):
    p = tmp_path / "sp.nii.gz"
    p.write_bytes(gzip.compress(nifti_bytes((4, 4, 4), pixdim=[1, 1, value, 1, 1, 1, 1, 1],
                                            qform_code=1, sform_code=0)))
    assert refused(p) == f"{p}: voxel spacing (pixdim) is {why} mm -> {SPACING_HINT}"


def test_nifti_sform_with_absurd_or_degenerate_axes(tmp_path):
    p = tmp_path / "s.nii"
    eye = dict(srow_y=[0, 1, 0, 0], srow_z=[0, 0, 1, 0], sform_code=1)
    p.write_bytes(nifti_bytes((4, 4, 4), srow_x=[5000, 0, 0, 0], **eye))
    assert refused(p) == (f"{p}: voxel spacing (from the affine) is implausibly large (over "
                          f"1000 mm): (5000, 1, 1) mm -> {SPACING_HINT}")
    p.write_bytes(nifti_bytes((4, 4, 4), srow_x=[0, 1, 0, 0], **eye))
    assert refused(p) == f"{p}: voxel spacing (from the affine) is zero: (0, 1.41421, 1) mm -> " \
                         f"{SPACING_HINT}"
    p.write_bytes(nifti_bytes((4, 4, 4), srow_x=[1, 1, 0, 0], srow_y=[0, 0, 0, 0],
                              srow_z=[0, 0, 1, 0], sform_code=1))
    assert refused(p) == (
        f"{p}: the voxel axes in the header are parallel (the affine is degenerate), so voxels "
        "have no position in space -> fix the orientation fields of the header (e.g. re-export "
        "the file)"
    )


def test_nrrd_bad_spacing(tmp_path):
    base = "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: raw\n"
    p = _nrrd(tmp_path / "a.nrrd", base + "spacings: -0.5 1\n", b"\0" * 4)
    assert refused(p) == (f"{p}: voxel spacing (NRRD spacings) is negative: (-0.5, 1) mm -> "
                          f"{SPACING_HINT}")
    p = _nrrd(tmp_path / "b.nrrd", base + "space: left-posterior-superior\n"
              "space directions: (5000,0,0) (0,1,0)\n", b"\0" * 4)
    assert refused(p) == (f"{p}: voxel spacing (from the affine) is implausibly large (over "
                          f"1000 mm): (5000, 1) mm -> {SPACING_HINT}")


# ----------------------------------------------------------------------- DICOM attributes


def _series(tmp_path: Path, name: str, change) -> Path:
    folder = tmp_path / name
    meta = ImageMeta.from_spacing((0.5, 0.5, 2.0), (6, 5, 3))
    files = write_dicom_series(folder, np.arange(90, dtype=np.float32).reshape(6, 5, 3), meta)
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)
    return folder


def test_dicom_two_valued_rescale_slope(tmp_path):
    d = _series(tmp_path, "slope", lambda ds: setattr(ds, "RescaleSlope", ["1", "2"]))
    assert refused(d) == (
        f"{d}/IM0001.dcm: DICOM attribute RescaleSlope has 2 value(s) [1, 2], expected 1 -> fix "
        "RescaleSlope (it must hold one number) or re-export the series"
    )


def test_dicom_single_valued_pixel_spacing(tmp_path):
    d = _series(tmp_path, "ps", lambda ds: setattr(ds, "PixelSpacing", ["0.5"]))
    assert refused(d) == (
        f"{d}/IM0001.dcm: DICOM attribute PixelSpacing has 1 value(s) '0.5', expected 2 -> fix "
        "PixelSpacing (it must hold two numbers) or re-export the series"
    )


def test_dicom_2d_image_with_single_valued_pixel_spacing(tmp_path):
    def flat(ds):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
        ds.PixelSpacing = ["0.5"]

    d = _series(tmp_path, "flat", flat)
    f = d / "IM0001.dcm"
    assert refused(f) == (
        f"{f}: DICOM attribute PixelSpacing has 1 value(s) '0.5', expected 2 -> fix PixelSpacing "
        "(it must hold two numbers) or re-export the series"
    )


@pytest.mark.parametrize("spacing, why", [
    (["0", "0.5"], "zero: (0, 0.5)"), (["-0.5", "0.5"], "negative: (-0.5, 0.5)"),
    (["NaN", "0.5"], "not a number: (nan, 0.5)"),
    (["5000", "0.5"], "implausibly large (over 1000 mm): (5000, 0.5)"),
])
def test_dicom_bad_pixel_spacing(tmp_path, spacing, why):
    d = _series(tmp_path, "bad", lambda ds: setattr(ds, "PixelSpacing", spacing))
    assert refused(d) == f"{d}/IM0001.dcm: voxel spacing (PixelSpacing) is {why} mm -> " \
                         f"{SPACING_HINT}"


def test_dicom_slices_5000_mm_apart(tmp_path):
    d = _series(tmp_path, "far", lambda ds: setattr(
        ds, "ImagePositionPatient", [0, 0, 5000.0 * ds.InstanceNumber]))
    assert refused(d) == (f"{d}: voxel spacing (from the affine) is implausibly large (over "
                          f"1000 mm): (0.5, 0.5, 5000) mm -> {SPACING_HINT}")


def test_dicom_declared_rows_columns_over_the_limit(tmp_path):
    def big(ds):
        ds.Rows = ds.Columns = 65535
        ds.SamplesPerPixel = 3

    d = _series(tmp_path, "big", big)
    assert refused(d) == (
        f"{d}: the header declares a 3x65535x65535x3 DICOM series (as float32) of 144 GiB, over "
        "medseg's limit of 4 GiB per image -> if the file is genuine raise the limit (e.g. "
        "MEDSEG_MAX_IMAGE_BYTES=144G) or crop/downsample it; otherwise the header is corrupt"
    )


def test_deflated_dicom_bomb_refused(tmp_path, monkeypatch):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    d = _series(tmp_path, "defl", lambda ds: None)
    f = d / "IM0001.dcm"
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new((0x0009, 0x1001), "OB", b"\0" * 3 * 2**20)  # 3 MiB of zeros deflate to ~3 KB
    ds.save_as(f, enforce_file_format=True)
    assert f.stat().st_size < 100_000
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "1M")
    assert refused(f) == (
        f"{f}: deflated DICOM data set expands to more than 1 MiB, over medseg's limit per image "
        "-> if the file is genuine raise MEDSEG_MAX_IMAGE_BYTES; otherwise remove it from the "
        "folder or re-export the series"
    )
