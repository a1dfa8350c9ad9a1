"""medseg.io on the real files under ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import list_image_files, read_image, read_label, reorient_like

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def totalseg_ct(shared_data):
    """The 20-slice JPEG-2000 CT series (files without a .dcm extension), read once."""
    folder = shared_data / "ct_totalseg" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip("ct_totalseg example DICOM not present")
    return folder, *read_image(folder)


def test_totalseg_dicom_series_matches_its_nifti_segmentation(shared_data, totalseg_ct):
    _, ct, m = totalseg_ct
    seg_path = shared_data / "ct_totalseg" / "example_seg_dicom.nii.gz"
    if not seg_path.is_file():
        pytest.skip("example_seg_dicom.nii.gz not present")
    seg, ms = read_label(seg_path)
    assert ct.shape == (1, 512, 512, 20) and seg.shape == (512, 512, 20)
    assert m.modality == "CT"
    assert ct.min() == -1024.0  # stored 0 + RescaleIntercept -1024
    np.testing.assert_allclose(m.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    # positions run from z = -766.5 down to -804.5 in 2 mm steps (SliceThickness says 3 mm):
    # sorted along the normal (0, 0, 1), slice 0 is the lowest one
    expected = np.array(
        [
            [-0.9765625, 0, 0, 249.51171875],
            [0, -0.9765625, 0, 437.51171875],
            [0, 0, 2.0, -804.5],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(m.affine, expected, atol=1e-6)
    # dcm2niix (which made the NIfTI) stores the rows flipped: same grid, row axis reversed
    flip_rows = np.eye(4)
    flip_rows[1, 1], flip_rows[1, 3] = -1.0, 511.0
    np.testing.assert_allclose(m.affine, ms.affine @ flip_rows, atol=1e-3)
    aligned, ma = reorient_like(ct, m, ms)
    np.testing.assert_allclose(ma.affine, ms.affine, atol=1e-3)
    np.testing.assert_array_equal(aligned[0], ct[0, :, ::-1, :])
    # the organs land on tissue, not air: < 5 % of labelled voxels below -500 HU once aligned,
    # against > 20 % when the row flip is ignored
    body = seg > 0
    assert (aligned[0][body] < -500).mean() < 0.05
    assert (ct[0][body] < -500).mean() > 0.20


def test_totalseg_dicom_agrees_with_simpleitk(totalseg_ct):
    sitk = pytest.importorskip("SimpleITK")
    folder, ct, m = totalseg_ct
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    np.testing.assert_array_equal(ct[0], np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)))
    np.testing.assert_allclose(m.origin, np.array(img.GetOrigin()) * (-1, -1, 1), atol=1e-4)


def test_dcmqi_slices_match_nrrd_labels(shared_data):
    d = shared_data / "ct_dcmqi"
    if not d.is_dir():
        pytest.skip("ct_dcmqi not present")
    ct, m = read_image(d)  # three CT slices; the DICOM SEG liver.dcm in the folder is skipped
    assert ct.shape == (1, 512, 512, 3)
    assert [p.name for p in m.source] == [
        "ct-3slice_03.dcm",
        "ct-3slice_02.dcm",
        "ct-3slice_01.dcm",
    ]
    assert [p.rsplit("/", 1)[-1] for p in m.extra["skipped_files"]] == ["liver.dcm"]
    liver, ml = read_label(d / "liver_seg.nrrd")
    assert liver.shape == (512, 512, 3) and set(np.unique(liver)) == {0, 1}
    assert m.same_geometry(ml, atol=1e-3)
    np.testing.assert_allclose(ml.affine[:3, 3], (235.2, 226.8, -128.69), atol=1e-6)
    assert 20.0 < np.median(ct[0][liver == 1]) < 120.0  # liver parenchyma, HU
    both, _ = read_label(d / "liver_spine_seg.nrrd")
    assert set(np.unique(both)) == {0, 1, 2}
    one, m1 = read_image(d / "ct-3slice_02.dcm")
    assert one.shape == (1, 512, 512, 1)
    np.testing.assert_array_equal(one[0, :, :, 0], ct[0, :, :, 1])
    np.testing.assert_allclose(m1.origin[2], -127.69, atol=1e-4)
    entries = list_image_files(d)
    assert entries[0] == tuple(d / f"ct-3slice_0{i}.dcm" for i in (1, 2, 3))
    assert len(entries) == 5  # the series + four NRRD label files


def test_pyradiomics_nrrd(shared_data):
    d = shared_data / "mr_pyradiomics"
    if not d.is_dir():
        pytest.skip("mr_pyradiomics not present")
    img, mi = read_image(d / "brain1_image.nrrd")
    lab, ml = read_label(d / "brain1_label.nrrd")
    assert img.shape == (1, 256, 256, 25) and lab.shape == (256, 256, 25)
    assert set(np.unique(lab)) == {0, 1} and mi.same_geometry(ml)
    # LPS directions diag(0.78125, -0.78125, 6.5), origin (-99.609375, 99.609375, -78) -> RAS
    expected = np.array(
        [
            [-0.78125, 0, 0, 99.609375],
            [0, 0.78125, 0, -99.609375],
            [0, 0, 6.5, -78.0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(mi.affine, expected, atol=1e-9)
    assert mi.dtype == "int16" and ml.dtype == "int32"
    pro, mp = read_label(d / "prostate_phantom_subvolume-label.nrrd")
    assert pro.shape == (82, 67, 13) and set(np.unique(pro)) == {0, 1, 7, 8, 9}
    np.testing.assert_allclose(mp.spacing, (0.5, 0.5, 3.0))


def test_hc18_png(shared_data):
    d = shared_data / "us_hc18"
    if not (d / "images" / "000_HC.png").is_file():
        pytest.skip("us_hc18 not present")
    img, m = read_image(d / "images" / "000_HC.png")
    assert img.shape == (1, 540, 800) and img.dtype == np.float32
    assert m.spacing == (1.0, 1.0) and m.dtype == "uint8"
    np.testing.assert_array_equal(m.affine, np.eye(4))
    assert 0.0 <= img.min() and img.max() <= 255.0 and img.std() > 10.0
    ann, _ = read_label(d / "annotations" / "000_HC_Annotation.png")
    assert ann.shape == (540, 800) and set(np.unique(ann)) == {0, 255}
