"""medseg.io DICOM series: sorting, rescale, oblique/tilted geometry, series selection, gaps."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.errors import InputError
from medseg.io import (
    ImageMeta,
    list_image_files,
    read_dicom_series,
    read_image,
    write_dicom_series,
    write_image,
)

SHAPE = (6, 5, 4)  # columns, rows, slices: all different so a transposition cannot pass
SPACING = (0.7, 0.8, 2.5)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_meta(step_sign: float = 1.0, tilt: float = 0.0) -> ImageMeta:
    """RAS affine: rotated axes, spacing SPACING; ``tilt`` mm of shear along the rows per slice."""
    r = rotation(25, -10, 40)
    aff = np.eye(4)
    aff[:3, :3] = r @ np.diag(SPACING)
    aff[:3, 2] = step_sign * aff[:3, 2] + tilt * r[:, 1]
    aff[:3, 3] = (-40.25, 12.5, 87.0)
    return ImageMeta(affine=aff, spatial_shape=SHAPE)


def hu_volume(seed: int = 0) -> np.ndarray:
    """Values representable at slope 2 / intercept -1024: HU = 2 * stored - 1024."""
    stored = np.random.default_rng(seed).integers(0, 1600, size=SHAPE)
    return (2 * stored - 1024).astype(np.float32)


def shuffle_names(files, dest):
    """Move the files to ``dest`` under names whose lexical order is not the slice order, and
    overwrite InstanceNumber with a permutation that is not the slice order either."""
    dest.mkdir()
    n = len(files)
    perm = np.roll(np.arange(n), 1)[::-1]  # n=4: [2, 1, 0, 3], neither sorted nor reversed
    out = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(perm[(k + 1) % n]) + 1
        name = dest / f"img_{perm[k]}_{chr(ord('z') - k)}.dcm"
        ds.save_as(name)
        out.append(name)
    return out


def test_series_shuffled_oblique_rescaled(tmp_path):
    hu = hu_volume()
    meta = oblique_meta()
    files = write_dicom_series(
        tmp_path / "ser", hu, meta, rescale_slope=2.0, rescale_intercept=-1024.0
    )
    assert [f.name for f in files] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm"]
    ds0 = pydicom.dcmread(files[0])
    assert ds0.SOPClassUID == pydicom.uid.CTImageStorage
    assert (ds0.Rows, ds0.Columns) == (5, 6)
    assert float(ds0.RescaleSlope) == 2.0 and float(ds0.RescaleIntercept) == -1024.0
    # stored values are (HU + 1024) / 2, in (row, column) order
    np.testing.assert_array_equal(ds0.pixel_array, ((hu[:, :, 0] + 1024) / 2).T)
    shuffled = shuffle_names(files, tmp_path / "shuffled")
    arr, m = read_image(tmp_path / "shuffled")
    assert arr.shape == (1, *SHAPE) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[0], hu)
    np.testing.assert_allclose(m.affine, meta.affine, atol=1e-6)
    np.testing.assert_allclose(m.spacing, SPACING, atol=1e-9)
    assert m.modality == "CT" and m.dtype == "int16"
    # meta.source lists the files in slice order: slice k is the k-th written file
    assert [p.name for p in m.source] == [p.name for p in shuffled]
    assert m.extra["rescale_slope"] == 2.0 and m.extra["rescale_intercept"] == -1024.0
    # a list of the files gives the same result
    arr2, m2 = read_image(list(reversed(shuffled)))
    np.testing.assert_array_equal(arr2, arr)
    np.testing.assert_allclose(m2.affine, m.affine)


def test_series_agrees_with_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    hu = hu_volume(1)
    meta = oblique_meta()
    write_dicom_series(tmp_path / "s", hu, meta, rescale_slope=2.0, rescale_intercept=-1024.0)
    shuffle_names(sorted((tmp_path / "s").iterdir()), tmp_path / "x")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "x")))
    img = reader.Execute()
    ref = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))  # ITK (z, y, x) -> (x, y, z)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    arr, m = read_image(tmp_path / "x")
    np.testing.assert_array_equal(arr[0], ref)
    np.testing.assert_allclose(m.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-5)


def test_slices_written_against_the_normal_are_reordered(tmp_path):
    hu = hu_volume(2)
    meta = oblique_meta(step_sign=-1.0)  # slice k+1 lies 2.5 mm *against* row x column
    write_dicom_series(tmp_path / "s", hu, meta, rescale_slope=2.0, rescale_intercept=-1024.0)
    arr, m = read_image(tmp_path / "s")
    np.testing.assert_array_equal(arr[0], hu[:, :, ::-1])
    expected = meta.affine.copy()
    expected[:3, 3] = meta.affine[:3, 3] + (SHAPE[2] - 1) * meta.affine[:3, 2]
    expected[:3, 2] = -meta.affine[:3, 2]
    np.testing.assert_allclose(m.affine, expected, atol=1e-6)
    # the same world point holds the same value either way: voxel (1, 2, 0) read == (1, 2, 3)
    w_read = m.affine @ [1, 2, 0, 1]
    w_orig = meta.affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(w_read, w_orig, atol=1e-6)
    assert arr[0, 1, 2, 0] == hu[1, 2, 3]


def test_gantry_tilt_is_kept_exactly(tmp_path):
    hu = hu_volume(3)
    meta = oblique_meta(tilt=0.6)  # each slice shifted 0.6 mm along the columns
    write_dicom_series(tmp_path / "t", hu, meta, rescale_slope=2.0, rescale_intercept=-1024.0)
    ds = pydicom.dcmread(tmp_path / "t" / "IM0001.dcm")
    assert float(ds.SliceThickness) == pytest.approx(2.5)  # along the normal, not the tilted step
    arr, m = read_image(tmp_path / "t")
    np.testing.assert_array_equal(arr[0], hu)
    np.testing.assert_allclose(m.affine, meta.affine, atol=1e-6)


def test_mr_modality_single_file_and_nifti_export(tmp_path):
    vol = hu_volume(4) + 1024  # non-negative MR-like values
    files = write_dicom_series(
        tmp_path / "mr", vol, oblique_meta(), modality="MR", rescale_intercept=0.0
    )
    arr, m = read_image(tmp_path / "mr")
    assert m.modality == "MR"
    np.testing.assert_array_equal(arr[0], vol)
    one, m1 = read_image(files[2])  # a single file: one slice, thickness as slice step
    assert one.shape == (1, 6, 5, 1)
    np.testing.assert_array_equal(one[0, :, :, 0], vol[:, :, 2])
    np.testing.assert_allclose(m1.spacing, SPACING, atol=1e-9)
    np.testing.assert_allclose(m1.origin, m.affine[:3, 3] + 2 * m.affine[:3, 2], atol=1e-6)
    out = write_image(tmp_path / "mr.nii.gz", arr, m)
    back, mb = read_image(out)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(mb.affine, m.affine, atol=1e-5)


def test_two_series_in_one_folder(tmp_path):
    a = write_dicom_series(tmp_path / "a", hu_volume(5), oblique_meta(), series_description="A")
    b = write_dicom_series(tmp_path / "b", hu_volume(6), oblique_meta(), series_description="B")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in a:
        shutil.copy(f, mixed / f"a_{f.name}")
    for f in b:
        shutil.copy(f, mixed / f"b_{f.name}")
    (mixed / "README.txt").write_text("not DICOM")  # ignored
    uid_a = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    uid_b = str(pydicom.dcmread(b[0]).SeriesInstanceUID)
    with pytest.raises(InputError) as err:
        read_image(mixed)
    msg = str(err.value)
    assert "2 DICOM series found" in msg and uid_a in msg and uid_b in msg
    assert "series_uid=" in msg and "mixed" in msg and "'B'" in msg
    arr, m = read_dicom_series(mixed, series_uid=uid_b)
    np.testing.assert_array_equal(arr[0], hu_volume(6))
    assert m.extra["series_uid"] == uid_b and len(m.extra["skipped_files"]) == 4
    with pytest.raises(InputError, match="is not here"):
        read_dicom_series(mixed, series_uid="1.2.3")
    entries = list_image_files(mixed)
    assert [len(e) for e in entries] == [4, 4]
    np.testing.assert_array_equal(read_image(entries[0])[0][0], hu_volume(5))


def test_missing_slice_and_uneven_spacing(tmp_path):
    hu = np.concatenate([hu_volume(7), hu_volume(8)], axis=2)  # 8 slices
    meta = ImageMeta(oblique_meta().affine, (6, 5, 8))
    files = write_dicom_series(tmp_path / "s", hu, meta, rescale_slope=2.0)
    files[3].unlink()
    with pytest.raises(InputError, match=r"missing slices.*1 between") as err:
        read_image(tmp_path / "s")
    assert "step 2.5 mm" in str(err.value)
    with pytest.warns(UserWarning, match="missing slices"):
        arr, m = read_dicom_series(tmp_path / "s", strict=False)
    assert arr.shape == (1, 6, 5, 7)
    np.testing.assert_array_equal(arr[0, :, :, 3], hu[:, :, 4])

    files = write_dicom_series(tmp_path / "u", hu, meta, rescale_slope=2.0)
    ds = pydicom.dcmread(files[5])
    normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + 0.8 * normal)
    ds.save_as(files[5])
    with pytest.raises(InputError, match=r"u: uneven slice spacing.*1\.7.*3\.3"):
        read_image(tmp_path / "u")

    files = write_dicom_series(tmp_path / "l", hu, meta, rescale_slope=2.0)
    ds = pydicom.dcmread(files[2])  # shifted 1 mm along the rows: even along the normal
    row = np.asarray(ds.ImageOrientationPatient, float)[:3]
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + row)
    ds.save_as(files[2])
    with pytest.raises(InputError, match="not lie on a straight line"):
        read_image(tmp_path / "l")


def test_duplicate_positions_and_mixed_orientations(tmp_path):
    files = write_dicom_series(tmp_path / "d", hu_volume(9), oblique_meta())
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "d" / "echo2.dcm")
    with pytest.raises(InputError, match="share a position.*several volumes"):
        read_image(tmp_path / "d")
    files = write_dicom_series(tmp_path / "o", hu_volume(9), oblique_meta())
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(files[2])
    with pytest.raises(InputError, match="different orientations"):
        read_image(tmp_path / "o")


def test_non_image_objects_are_skipped(tmp_path):
    files = write_dicom_series(tmp_path / "s", hu_volume(10), oblique_meta())
    seg = pydicom.dcmread(files[0])
    seg.Modality = "SEG"
    seg.SeriesInstanceUID = generate_uid()
    seg.SOPInstanceUID = generate_uid()
    seg.save_as(tmp_path / "s" / "seg.dcm")
    arr, m = read_image(tmp_path / "s")
    assert arr.shape == (1, *SHAPE)
    assert [p.rsplit("/", 1)[-1] for p in m.extra["skipped_files"]] == ["seg.dcm"]
    with pytest.raises(InputError, match=r"seg\.dcm: no DICOM image found.*SEG"):
        read_image(tmp_path / "s" / "seg.dcm")


def test_projection_image_without_patient_geometry(tmp_path):
    files = write_dicom_series(tmp_path / "s", hu_volume(11), oblique_meta())
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient
    del ds.ImageOrientationPatient
    ds.Modality = "DX"
    ds.PixelSpacing = [0.2, 0.1]
    ds.save_as(tmp_path / "dx.dcm")
    arr, m = read_image(tmp_path / "dx.dcm")
    assert arr.shape == (1, 6, 5) and m.modality == "DX"
    assert m.spacing == (0.1, 0.2)  # (column spacing, row spacing)
    np.testing.assert_array_equal(arr[0], hu_volume(11)[:, :, 0])


def test_writer_refuses_bad_input(tmp_path):
    meta = oblique_meta()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(InputError, match=r"full: output folder already exists"):
        write_dicom_series(tmp_path / "full", hu_volume(), meta)
    bad = hu_volume()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="1 NaN/inf"):
        write_dicom_series(tmp_path / "nan", bad, meta)
    with pytest.raises(InputError, match="beyond 16 bits"):
        write_dicom_series(tmp_path / "big", hu_volume() * 100, meta)
    with pytest.raises(ValueError, match="modality"):
        write_dicom_series(tmp_path / "us", hu_volume(), meta, modality="US")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written
