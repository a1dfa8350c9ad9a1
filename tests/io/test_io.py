"""medseg.io: NIfTI / NRRD / PNG / TIFF reading and writing, labels, atomic writes, errors (E1)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import tifffile
from PIL import Image

import medseg.io.image as io_image
from medseg.errors import InputError
from medseg.io import (
    ImageMeta,
    check_finite,
    is_dicom_folder,
    list_image_files,
    read_image,
    read_label,
    reorient_like,
    write_image,
    write_label,
)
from medseg.io.dicom import write_dicom_series


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Proper rotation R = Rz @ Ry @ Rx (angles in degrees)."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.7, 0.8, 2.5), origin=(-12.5, 30.25, 101.0), angles=(20, -15, 35)):
    aff = np.eye(4)
    aff[:3, :3] = rotation(*angles) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


# ----------------------------------------------------------------------------------- NIfTI


def test_nifti_3d_oblique_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(1, 6, 5, 4)).astype(np.float32)
    aff = oblique_affine()
    meta = ImageMeta(affine=aff, spatial_shape=(6, 5, 4), modality="MR")
    out = write_image(tmp_path / "a.nii.gz", arr, meta)
    back, m2 = read_image(out)
    assert back.dtype == np.float32 and back.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(m2.affine, aff, atol=1e-5)
    np.testing.assert_allclose(m2.spacing, (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(m2.origin, (-12.5, 30.25, 101.0), atol=1e-5)
    np.testing.assert_allclose(m2.direction, rotation(20, -15, 35), atol=1e-6)
    hdr = nib.load(out).header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    # the qform (quaternion) carries the same oblique geometry as the sform
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)
    assert m2.source == (out,)


def test_nifti_2d_round_trip(tmp_path):
    arr = np.arange(63, dtype=np.float32).reshape(7, 9) / 4.0
    meta = ImageMeta.from_spacing((0.5, 0.25), (7, 9))
    write_image(tmp_path / "a.nii", arr, meta)
    assert nib.load(tmp_path / "a.nii").shape == (7, 9)
    back, m2 = read_image(tmp_path / "a.nii")
    assert back.shape == (1, 7, 9) and m2.spatial_shape == (7, 9)
    np.testing.assert_array_equal(back[0], arr)
    assert m2.spacing == (0.5, 0.25)


def test_nifti_4d_channels_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(-1000, 1000, size=(3, 5, 6, 7)).astype(np.float32)
    meta = ImageMeta(affine=oblique_affine(), spatial_shape=(5, 6, 7))
    write_image(tmp_path / "mc.nii.gz", arr, meta)
    on_disk = nib.load(tmp_path / "mc.nii.gz")
    assert on_disk.shape == (5, 6, 7, 3)  # channels last on disk (MSD / nnU-Net layout)
    # meta.dtype is float32 here, so floats stay float32 (integers are kept only for integer metas)
    assert on_disk.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj)[2, 3, 4], arr[:, 2, 3, 4])
    back, m2 = read_image(tmp_path / "mc.nii.gz")
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(m2.affine, meta.affine, atol=1e-5)


def test_nifti_keeps_integer_dtype_and_units(tmp_path):
    ct = np.array([[[-1024, 0], [40, 3071]]], dtype=np.int16)
    nib.save(nib.Nifti1Image(ct, np.diag([0.9, 0.9, 3.0, 1.0])), tmp_path / "ct.nii.gz")
    arr, meta = read_image(tmp_path / "ct.nii.gz")
    assert meta.dtype == "int16" and arr.dtype == np.float32
    write_image(tmp_path / "ct2.nii.gz", arr, meta)
    assert nib.load(tmp_path / "ct2.nii.gz").get_data_dtype() == np.int16
    write_image(tmp_path / "ct3.nii.gz", arr + 0.5, meta)  # no longer whole numbers -> float32
    assert nib.load(tmp_path / "ct3.nii.gz").get_data_dtype() == np.float32
    # a header in metres is converted to millimetres
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([0.001, 0.002, 0.003, 1.0]))
    img.header.set_xyzt_units(xyz="meter")
    nib.save(img, tmp_path / "m.nii")
    np.testing.assert_allclose(read_image(tmp_path / "m.nii")[1].spacing, (1.0, 2.0, 3.0))


def test_nifti_rgb24_gives_three_channels(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = 10, 20, 30
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    arr, _ = read_image(tmp_path / "rgb.nii")
    assert arr.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(arr[:, 1, 2, 0], [10, 20, 30])


def test_channel_files_are_stacked_and_geometry_checked(tmp_path):
    aff = oblique_affine()
    meta = ImageMeta(affine=aff, spatial_shape=(4, 3, 2))
    t1 = np.full((4, 3, 2), 1.0, np.float32)
    t2 = np.full((4, 3, 2), 2.0, np.float32)
    write_image(tmp_path / "case_0000.nii.gz", t1, meta)
    write_image(tmp_path / "case_0001.nii.gz", t2, meta)
    arr, m = read_image([tmp_path / "case_0000.nii.gz", tmp_path / "case_0001.nii.gz"])
    assert arr.shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(arr[:, 0, 0, 0], [1.0, 2.0])
    assert len(m.source) == 2
    shifted = aff.copy()
    shifted[0, 3] += 0.5
    write_image(tmp_path / "case_0002.nii.gz", t2, ImageMeta(shifted, (4, 3, 2)))
    with pytest.raises(InputError, match=r"case_0002\.nii\.gz.*case_0000\.nii\.gz.*0\.5"):
        read_image([tmp_path / "case_0000.nii.gz", tmp_path / "case_0002.nii.gz"])
    write_image(tmp_path / "small.nii.gz", t1[:3], ImageMeta(aff, (3, 3, 2)))
    with pytest.raises(InputError, match=r"small\.nii\.gz.*\(3, 3, 2\) vs \(4, 3, 2\)"):
        read_image([tmp_path / "case_0000.nii.gz", tmp_path / "small.nii.gz"])


# ------------------------------------------------------------------------------------ NRRD


def test_nrrd_lps_to_ras_by_hand(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    hdr = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 0.7, 2.0]),
        "space origin": np.array([10.0, 20.0, 30.0]),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(tmp_path / "lps.nrrd"), data, hdr)
    arr, meta = read_image(tmp_path / "lps.nrrd")
    np.testing.assert_array_equal(arr[0], data)
    expected = np.array([[-0.5, 0, 0, -10.0], [0, -0.7, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(meta.affine, expected)
    assert meta.dtype == "int16"
    nrrd.write(str(tmp_path / "las.nrrd"), data, {**hdr, "space": "left-anterior-superior"})
    las = read_image(tmp_path / "las.nrrd")[1].affine
    np.testing.assert_allclose(las[:3, 3], (-10.0, 20.0, 30.0))
    np.testing.assert_allclose(np.diag(las)[:3], (-0.5, 0.7, 2.0))
    nrrd.write(str(tmp_path / "ras.nrrd"), data, {**hdr, "space": "right-anterior-superior"})
    np.testing.assert_allclose(read_image(tmp_path / "ras.nrrd")[1].affine[:3, 3], (10, 20, 30))


def test_nrrd_round_trip_oblique_and_vector(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    meta = ImageMeta(affine=oblique_affine(), spatial_shape=(5, 4, 3))
    write_image(tmp_path / "v.nrrd", arr, meta)
    hdr = nrrd.read_header(str(tmp_path / "v.nrrd"))
    assert hdr["kinds"][0] == "vector" and hdr["space"] == "left-posterior-superior"
    back, m2 = read_image(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(m2.affine, meta.affine, atol=1e-9)
    write_label(tmp_path / "l.nrrd", (arr[0] > 0).astype(np.int64) * 7, meta)
    lab, ml = read_label(tmp_path / "l.nrrd")
    np.testing.assert_array_equal(lab, (arr[0] > 0) * 7)
    assert ml.dtype == "uint8"


def test_nrrd_2d_detached_header_and_tensor_input(tmp_path):
    torch = pytest.importorskip("torch")
    aff = np.diag([0.3, 0.4, 1.0, 1.0])
    aff[:3, 3] = (5.0, -6.0, 0.0)
    meta = ImageMeta(aff, (3, 4))
    img = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    write_image(tmp_path / "p.nrrd", img, meta)  # a CPU tensor is accepted
    back, m2 = read_image(tmp_path / "p.nrrd")
    np.testing.assert_array_equal(back[0], img.numpy())
    np.testing.assert_allclose(m2.affine, aff)
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    hdr = {"space": "RAS", "space directions": np.diag([1.5, 2.0, 2.5]), "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "d.nhdr"), data, hdr, detached_header=True)
    arr, md = read_image(tmp_path / "d.nhdr")
    np.testing.assert_array_equal(arr[0], data)
    assert md.spacing == (1.5, 2.0, 2.5)
    with pytest.raises(InputError, match=r"o\.nhdr.*write \.nrrd instead"):
        write_image(tmp_path / "o.nhdr", data, md)


# ---------------------------------------------------------------------------- PNG / TIFF / JPEG


def test_png_grey_16bit_rgb_rgba(tmp_path):
    grey = np.array([[0, 17, 255], [3, 4, 5]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    arr, meta = read_image(tmp_path / "g.png")
    assert arr.shape == (1, 2, 3) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[0], grey)
    np.testing.assert_array_equal(meta.affine, np.eye(4))
    assert meta.spacing == (1.0, 1.0) and meta.dtype == "uint8"

    deep = np.array([[0, 300], [65535, 2]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    arr, meta = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(arr[0], [[0, 300], [65535, 2]])
    assert meta.dtype == "uint16"

    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    Image.fromarray(rgb).save(tmp_path / "c.png")
    arr, _ = read_image(tmp_path / "c.png")
    assert arr.shape == (3, 2, 3)
    np.testing.assert_array_equal(arr[:, 1, 2], [10, 20, 30])

    rgba = np.concatenate([rgb, np.full((2, 3, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    arr, _ = read_image(tmp_path / "a.png")
    assert arr.shape == (3, 2, 3)  # alpha dropped
    np.testing.assert_array_equal(arr[:, 0, 0], [10, 20, 30])


def test_png_round_trip_and_rejections(tmp_path):
    meta = ImageMeta.from_spacing((1.0, 1.0), (3, 4))
    img = np.arange(12, dtype=np.float32).reshape(3, 4) * 20.0
    write_image(tmp_path / "o.png", img, meta)
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(read_image(tmp_path / "o.png")[0][0], img)
    with pytest.raises(InputError, match=r"o2\.png.*float32"):
        write_image(tmp_path / "o2.png", img + 0.25, meta)  # not whole numbers -> float32
    write_image(tmp_path / "o3.png", img + 0.25, meta, dtype="uint8")  # explicit: rounded
    np.testing.assert_array_equal(read_image(tmp_path / "o3.png")[0][0], img)
    with pytest.raises(InputError, match=r"o4\.png.*\[-5.*uint8"):
        write_image(tmp_path / "o4.png", img - 5, meta, dtype="uint8")
    assert not (tmp_path / "o2.png").exists() and not (tmp_path / "o4.png").exists()
    with pytest.raises(InputError, match="JPEG is lossy"):
        write_image(tmp_path / "o.jpg", img, meta)


def test_png_labels_palette_and_grey_as_rgb(tmp_path):
    idx = np.array([[0, 3], [7, 3]], dtype=np.uint8)
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0] + [255, 0, 0] * 3 + [0, 255, 0] * 4 + [0] * (256 - 8) * 3)
    pal.save(tmp_path / "p.png")
    lab, _ = read_label(tmp_path / "p.png")
    assert lab.dtype == np.int64
    np.testing.assert_array_equal(lab, idx)  # palette indices, not colours
    img, _ = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(img[:, 1, 0], [0, 255, 0])  # index 7 is green
    grey_rgb = np.repeat(idx[..., None], 3, axis=-1)
    Image.fromarray(grey_rgb).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_label(tmp_path / "g.png")[0], idx)
    grey_rgb[0, 0, 1] = 9
    Image.fromarray(grey_rgb).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match=r"colour\.png.*3 different channels"):
        read_label(tmp_path / "colour.png")


def test_png_label_16bit_round_trip(tmp_path):
    lab = np.array([[0, 1], [300, 2]], dtype=np.int64)
    meta = ImageMeta.from_spacing((1.0, 1.0), (2, 2))
    write_label(tmp_path / "l.png", lab, meta)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "I;16"
    back, m2 = read_label(tmp_path / "l.png")
    np.testing.assert_array_equal(back, lab)
    assert m2.dtype == "uint16"


def test_tiff_float_rgb_and_stack(tmp_path):
    meta = ImageMeta.from_spacing((1.0, 1.0), (3, 4))
    f = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_image(tmp_path / "f.tif", f, meta)
    back, m = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(back[0], f)
    assert m.dtype == "float32"
    rgb = np.stack([np.full((3, 4), v, np.uint8) for v in (1, 2, 3)])
    write_image(tmp_path / "c.tiff", rgb, meta)
    with tifffile.TiffFile(tmp_path / "c.tiff") as tf:
        assert tf.series[0].axes == "YXS"
    np.testing.assert_array_equal(read_image(tmp_path / "c.tiff")[0][:, 2, 3], [1, 2, 3])
    planar = np.stack([f, 2 * f])  # two float channels: stored planar ("SYX")
    write_image(tmp_path / "p.tif", planar, meta)
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif")[0], planar)
    stack = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    write_image(tmp_path / "s.tif", stack, ImageMeta.from_spacing((1, 1, 1), (2, 3, 4)))
    back, m = read_image(tmp_path / "s.tif")
    assert m.spatial_shape == (2, 3, 4)
    np.testing.assert_array_equal(back[0], stack)


def test_jpeg_read_is_close(tmp_path):
    ramp = np.tile(np.linspace(0, 200, 32).astype(np.uint8), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "r.jpg", quality=95)
    arr, _ = read_image(tmp_path / "r.jpg")
    assert arr.shape == (1, 16, 32)
    assert np.abs(arr[0] - ramp).mean() < 2.0


# ---------------------------------------------------------------------------------- labels


def test_label_rejects_fractions_and_names_file(tmp_path):
    lab = np.zeros((3, 3, 2), np.float32)
    lab[0, 0, 0] = 0.5
    lab[1, 1, 1] = 2.0
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "prob.nii.gz")
    with pytest.raises(InputError, match=r"prob\.nii\.gz.*1 of 18 voxels are not whole numbers"):
        read_label(tmp_path / "prob.nii.gz")
    lab[0, 0, 0] = 1.0
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "ok.nii.gz")
    back, meta = read_label(tmp_path / "ok.nii.gz")
    assert back.dtype == np.int64 and back.shape == (3, 3, 2)
    assert back.sum() == 3 and meta.dtype == "float32"


@pytest.mark.parametrize(
    ("top", "dtype"), [(200, np.uint8), (300, np.uint16), (70000, np.uint32), (-1, np.int8)]
)
def test_write_label_smallest_dtype(tmp_path, top, dtype):
    lab = np.zeros((4, 3, 2), np.int64)
    lab[1, 2, 1] = top
    meta = ImageMeta(oblique_affine(), (4, 3, 2))
    write_label(tmp_path / "l.nii.gz", lab, meta)
    assert nib.load(tmp_path / "l.nii.gz").get_data_dtype() == dtype
    back, _ = read_label(tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(back, lab)


def test_write_label_rejects_fractions(tmp_path):
    meta = ImageMeta.from_spacing((1.0, 1.0), (2, 2))
    with pytest.raises(InputError, match=r"x\.nii\.gz.*whole numbers"):
        write_label(tmp_path / "x.nii.gz", np.full((2, 2), 0.5), meta)


# ------------------------------------------------------------------------- atomic, no overwrite


def _write_src(tmp_path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.int16), np.eye(4)), tmp_path / "src.nii.gz")
    return tmp_path / "src.nii.gz"


def test_never_overwrites_source(tmp_path):
    src = _write_src(tmp_path)
    before = src.read_bytes()
    arr, meta = read_image(src)
    with pytest.raises(InputError, match=r"src\.nii\.gz: refusing to overwrite the input"):
        write_image(src, arr * 2, meta)
    os.symlink(src, tmp_path / "link.nii.gz")
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_image(tmp_path / "link.nii.gz", arr * 2, meta)
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_label(src, arr[0].astype(int), meta)
    assert src.read_bytes() == before


def test_failed_write_leaves_old_file_and_no_partial(tmp_path, monkeypatch):
    src = _write_src(tmp_path)
    arr, meta = read_image(src)
    dest = tmp_path / "out" / "pred.nii.gz"
    write_image(dest, arr, meta)  # creates the parent folder
    good = dest.read_bytes()
    listing = sorted(os.listdir(dest.parent))

    def half_write(tmp, data, meta):
        Path(tmp).write_bytes(b"\x1f\x8b partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(io_image, "write_nifti", half_write)
    with pytest.raises(InputError, match=r"pred\.nii\.gz: could not write.*No space left"):
        write_image(dest, arr * 3, meta)
    assert dest.read_bytes() == good
    assert sorted(os.listdir(dest.parent)) == listing  # temp file removed
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"pred\.nii\.gz.*does not match"):
        write_image(dest, arr[:, :2], meta)  # wrong shape for this meta
    with pytest.raises(InputError, match="complex"):
        write_image(dest, arr.astype(np.complex64), meta, dtype="complex64")
    assert dest.read_bytes() == good
    assert sorted(os.listdir(dest.parent)) == listing


# ------------------------------------------------------------------------------------ errors


def _garbage(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_missing_unsupported_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: file or folder not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "scan.xyz").write_bytes(b"hello")
    with pytest.raises(InputError, match=r"scan\.xyz: unsupported file type '\.xyz'"):
        read_image(tmp_path / "scan.xyz")
    with pytest.raises(InputError, match=r"out\.xyz: cannot write"):
        write_image(tmp_path / "out.xyz", np.zeros((2, 2)), ImageMeta(np.eye(4), (2, 2)))
    (tmp_path / "garbage.nii.gz").write_bytes(_garbage(500))
    with pytest.raises(InputError, match=r"garbage\.nii\.gz: cannot read NIfTI"):
        read_image(tmp_path / "garbage.nii.gz")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 20, 20)), np.eye(4)), tmp_path / "full.nii.gz")
    raw = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read NIfTI.*truncated"):
        read_image(tmp_path / "cut.nii.gz")
    with pytest.raises(InputError, match=r"cut\.nii\.gz"):
        read_label(tmp_path / "cut.nii.gz")
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: banana\n\n")
    with pytest.raises(InputError, match=r"bad\.nrrd: cannot read NRRD"):
        read_image(tmp_path / "bad.nrrd")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _garbage(40))
    with pytest.raises(InputError, match=r"bad\.png: cannot read image"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + _garbage(40))
    with pytest.raises(InputError, match=r"bad\.tif: cannot read TIFF"):
        read_image(tmp_path / "bad.tif")
    (tmp_path / "bad.dcm").write_bytes(_garbage(300))
    with pytest.raises(InputError, match=r"bad\.dcm: cannot read DICOM"):
        read_image(tmp_path / "bad.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: folder holds no DICOM files"):
        read_image(empty)
    # gzip of a non-NIfTI payload
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(InputError, match=r"text\.nii\.gz"):
        read_image(tmp_path / "text.nii.gz")


def test_nan_not_rejected_on_read_but_check_finite_counts(tmp_path):
    a = np.zeros((4, 4, 2), np.float32)
    a[0, 0, 0] = np.nan
    a[1, 0, 0] = np.nan
    a[2, 2, 1] = -np.inf
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "nan.nii.gz")
    arr, meta = read_image(tmp_path / "nan.nii.gz")
    assert np.isnan(arr).sum() == 2
    with pytest.raises(InputError, match=r"nan\.nii\.gz: 3 of 32 voxels are not finite \(2 NaN, 1"):
        check_finite(arr, meta.source[0])
    check_finite(np.zeros(3))  # no error
    check_finite(np.arange(3))  # integers are always finite


# ----------------------------------------------------------------------------- folders, listing


def test_list_image_files_and_dicom_folder(tmp_path):
    meta = ImageMeta.from_spacing((1.0, 1.0, 2.0), (3, 2, 2))
    vol = np.zeros((3, 2, 2))
    write_image(tmp_path / "b.nii.gz", vol, meta)
    write_image(tmp_path / "a.png", vol[:, :, 0], ImageMeta.from_spacing((1, 1), (3, 2)))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    write_dicom_series(tmp_path / "series_dir", vol, meta)
    s1 = write_dicom_series(tmp_path / "tmp1", vol, meta)
    s2 = write_dicom_series(tmp_path / "tmp2", vol, meta)
    for i, f in enumerate(s1):
        f.rename(tmp_path / f"c{i}.dcm")
    for i, f in enumerate(s2):
        f.rename(tmp_path / f"d{i}.dcm")
    (tmp_path / "tmp1").rmdir()
    (tmp_path / "tmp2").rmdir()
    got = list_image_files(tmp_path)
    assert got == [
        tmp_path / "a.png",
        tmp_path / "b.nii.gz",
        (tmp_path / "c0.dcm", tmp_path / "c1.dcm"),
        (tmp_path / "d0.dcm", tmp_path / "d1.dcm"),
        tmp_path / "series_dir",
    ]
    assert list_image_files(tmp_path) == got  # stable
    assert is_dicom_folder(tmp_path / "series_dir") and is_dicom_folder(tmp_path)
    (tmp_path / "plain").mkdir()
    assert not is_dicom_folder(tmp_path / "plain") and not is_dicom_folder(tmp_path / "a.png")
    for entry in got:  # every entry is readable as one image
        assert read_image(entry)[0].ndim in (3, 4)


# ------------------------------------------------------------------------------- reorient_like


def test_reorient_like_permutation_and_flip():
    rng = np.random.default_rng(4)
    arr = rng.normal(size=(1, 4, 5, 6))
    aff = oblique_affine()
    meta = ImageMeta(aff, (4, 5, 6))
    # target index y = (x2, 4 - x1, x0): axes swapped 0<->2 and axis 1 flipped
    target_arr = np.transpose(arr[:, :, ::-1, :], (0, 3, 2, 1))
    # voxel x = P y + c with x0 = y2, x1 = 4 - y1, x2 = y0
    pc = np.array([[0, 0, 1, 0], [0, -1, 0, 4], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    target = ImageMeta(aff @ pc, (6, 5, 4))
    out, m2 = reorient_like(arr, meta, target)
    np.testing.assert_array_equal(out, target_arr)
    np.testing.assert_allclose(m2.affine, target.affine)
    back, m3 = reorient_like(out[0], m2, meta)  # works without a channel axis too
    np.testing.assert_array_equal(back, arr[0])
    np.testing.assert_allclose(m3.affine, aff)
    shifted = target.affine.copy()
    shifted[:3, 3] += aff[:3, 0] * 0.5  # half a voxel off
    with pytest.raises(InputError, match="not on the same voxel grid"):
        reorient_like(arr, meta, ImageMeta(shifted, (6, 5, 4)))
