"""DICOM SEG out (issue 12): ``medseg.io.dicom_seg`` and ``medseg predict --format dcmseg``.

References are independent of medseg's reader: highdicom's own frame lookup by source SOP
instance UID (``get_pixels_by_source_instance``), pydicom for the attributes, and on real data a
SEG written by dcmqi beside its NRRD label volume.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.io import read_image, read_label, reorient_like, write_dicom_series, write_label
from medseg.io.dicom_seg import read_dicom_seg, referenced_instance_uids, write_dicom_seg
from medseg.io.meta import ImageMeta

hd = pytest.importorskip("highdicom", reason="highdicom (the dicom extra) is not installed")

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1" / "segmentation"
SOP_CLASS = {"BINARY": "1.2.840.10008.5.1.4.1.1.66.4", "LABELMAP": "1.2.840.10008.5.1.4.1.1.66.7"}
NAMES = ["background", "liver", "lesion"]


def _source_uids(meta: ImageMeta) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in meta.source]


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory) -> tuple[np.ndarray, ImageMeta, np.ndarray]:
    """A 5-slice CT series on an oblique, anisotropic (and slightly sheared) grid, files named
    against the slice order, and a 3-class label volume on it."""
    root = tmp_path_factory.mktemp("seg")
    aff = np.array([[0.0, -0.9, 0.1, 12.0], [0.8, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0],
                    [0.0, 0.0, 0.0, 1.0]])
    shape = (12, 10, 5)
    rng = np.random.default_rng(0)
    files = write_dicom_series(root / "written", rng.integers(-200, 200, shape).astype(float),
                               ImageMeta(affine=aff, spatial_shape=shape), modality="CT")
    series = root / "ct"
    series.mkdir()
    for k, f in enumerate(files):  # names in reverse slice order: medseg sorts by position
        shutil.copy(f, series / f"z{len(files) - k:02d}.dcm")
    image, meta = read_image(series)
    assert np.allclose(meta.affine, aff, atol=1e-4)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:9, 1:8, 1:4] = 1
    labels[4:6, 3:5, 2] = 2
    labels[0, 0, 4] = 2  # a corner voxel on the last slice
    return image, meta, labels


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_round_trip_voxel_by_voxel(oblique_series, tmp_path, seg_type):
    _, meta, labels = oblique_series
    dest = write_dicom_seg(tmp_path / "case.seg.dcm", labels, meta, NAMES,
                           segmentation_type=seg_type, model_name="unet")
    # pydicom reads it; it is a SEG of the requested SOP class in the source's study
    ds = pydicom.dcmread(dest)
    src0 = pydicom.dcmread(meta.source[0], stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SOPClassUID == SOP_CLASS[seg_type]
    assert ds.SegmentationType == seg_type
    assert ds.StudyInstanceUID == src0.StudyInstanceUID
    assert ds.FrameOfReferenceUID == src0.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src0.SeriesInstanceUID
    labels_by_number = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    assert {k: v for k, v in labels_by_number.items() if k > 0} == {1: "liver", 2: "lesion"}
    # the referenced instances are exactly the source series'
    uids = _source_uids(meta)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src0.SeriesInstanceUID
    assert sorted(referenced_instance_uids(dest)) == sorted(uids)
    # highdicom parses it, and its lookup by source instance gives the labels slice by slice
    seg = hd.seg.segread(dest)
    pix = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert pix.shape == (5, 10, 12)
    np.testing.assert_array_equal(np.transpose(pix, (2, 1, 0)), labels)
    # empty frames are left out: class 1 on slices 1-3, class 2 on slices 2 and 4 (BINARY: one
    # frame per segment and slice), any label on slices 1-4 (LABELMAP: one frame per slice)
    assert int(ds.NumberOfFrames) == (5 if seg_type == "BINARY" else 4)
    frame_uids = [str(f.DerivationImageSequence[0].SourceImageSequence[0]
                      .ReferencedSOPInstanceUID) for f in ds.PerFrameFunctionalGroupsSequence]
    assert set(frame_uids) == set(uids[1:])  # slice 0 holds nothing
    # medseg's reader: on the source grid, and from the frames' own positions
    for back, bmeta in (read_dicom_seg(dest, source=meta), read_dicom_seg(dest)):
        np.testing.assert_array_equal(back, labels)
        np.testing.assert_allclose(bmeta.affine, meta.affine, atol=1e-4)
        assert bmeta.extra["source_sop_instance_uids"] == uids
    # the NIfTI output of the same label map holds the same voxels on the same grid
    nii, nmeta = read_label(write_label(tmp_path / "case.nii.gz", labels, meta))
    back, bmeta = read_dicom_seg(dest)
    np.testing.assert_array_equal(back, nii)
    np.testing.assert_allclose(bmeta.affine, nmeta.affine, atol=1e-4)


def test_seg_refusals(oblique_series, tmp_path):
    _, meta, labels = oblique_series
    dest = write_dicom_seg(tmp_path / "a.seg.dcm", labels, meta, NAMES)
    before = dest.read_bytes()
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        write_dicom_seg(dest, labels, meta, NAMES)
    assert dest.read_bytes() == before
    write_dicom_seg(dest, np.zeros_like(labels), meta, NAMES, overwrite=True)
    assert read_dicom_seg(dest)[0].max() == 0
    with pytest.raises(InputError, match="class indices 0..2"):
        write_dicom_seg(tmp_path / "b.seg.dcm", labels * 2, meta, NAMES)
    with pytest.raises(InputError, match="does not match the DICOM series"):
        write_dicom_seg(tmp_path / "c.seg.dcm", labels[:, :, :3], meta, NAMES)
    nifti_meta = ImageMeta(affine=meta.affine, spatial_shape=meta.spatial_shape,
                           source=(tmp_path / "x.nii.gz",))
    with pytest.raises(InputError, match="not read from DICOM"):
        write_dicom_seg(tmp_path / "d.seg.dcm", labels, nifti_meta, NAMES)
    flat = ImageMeta(affine=np.eye(4), spatial_shape=(12, 10), source=meta.source[:1],
                     extra={"series_uid": "1", "geometry": "none (no patient position)"})
    with pytest.raises(InputError, match="no patient geometry"):
        write_dicom_seg(tmp_path / "e.seg.dcm", labels[:, :, 0], flat, NAMES)
    with pytest.raises(InputError, match="input file"):
        write_dicom_seg(meta.source[0], labels, meta, NAMES, overwrite=True)
    with pytest.raises(InputError, match="not a DICOM SEG"):
        read_dicom_seg(meta.source[0])
    assert not list(tmp_path.glob("[bcde]*")) and not list(tmp_path.glob(".*partial*"))


def test_missing_highdicom_says_how_to_install(oblique_series, tmp_path, monkeypatch):
    _, meta, labels = oblique_series
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(InputError, match=r"highdicom.*pip install 'medseg\[dicom\]'"):
        write_dicom_seg(tmp_path / "a.seg.dcm", labels, meta, NAMES)
    assert not list(tmp_path.iterdir())


def _mr_series(folder: Path) -> Path:
    """The legacy fixture's 32x32 MR image as a one-slice DICOM series (values to 1e-4)."""
    img, _ = read_image(LEGACY / "input" / "case_004_0000.nii.gz")
    meta = ImageMeta.from_spacing((0.9, 0.9, 3.0), (32, 32, 1), modality="MR")
    write_dicom_series(folder, img[0][:, :, None], meta, modality="MR",
                       rescale_slope=1e-4, rescale_intercept=0.0)
    return folder


def test_predict_dcmseg_matches_nifti(tmp_path, capsys):
    series = _mr_series(tmp_path / "in" / "mr")
    model = LEGACY / "model"
    out_nii, out_seg = tmp_path / "nii", tmp_path / "seg"
    for out, fmt in ((out_nii, "nii.gz"), (out_seg, "dcmseg")):
        assert main(["predict", "--model", str(model), "--input", str(series), "--output",
                     str(out), "--device", "cpu", "--format", fmt]) == 0
    nii, nmeta = read_label(out_nii / "mr.nii.gz")
    assert set(np.unique(nii)) == {0, 1, 2}  # both classes predicted: a real comparison
    seg_file = out_seg / "mr.seg.dcm"
    assert [p.name for p in out_seg.iterdir()] == ["mr.seg.dcm"]
    _, smeta = read_image(series)
    uids = _source_uids(smeta)
    pix = hd.seg.segread(seg_file).get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(np.transpose(pix, (2, 1, 0)), nii)
    back, bmeta = read_dicom_seg(seg_file)
    np.testing.assert_array_equal(back, nii)
    np.testing.assert_allclose(bmeta.affine, nmeta.affine, atol=1e-4)
    ds = pydicom.dcmread(seg_file)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["organ", "lesion"]
    assert referenced_instance_uids(seg_file) == uids
    # a second run into the same folder is refused without --overwrite (before predicting)
    capsys.readouterr()
    before = seg_file.read_bytes()
    assert main(["predict", "--model", str(model), "--input", str(series), "--output",
                 str(out_seg), "--device", "cpu", "--format", "dcmseg"]) == 2
    assert "--overwrite" in capsys.readouterr().err and seg_file.read_bytes() == before


def test_predict_dcmseg_refuses_non_dicom(tmp_path, capsys):
    src = LEGACY / "input" / "case_004_0000.nii.gz"
    assert main(["predict", "--model", str(LEGACY / "model"), "--input", str(src), "--output",
                 str(tmp_path / "o"), "--device", "cpu", "--format", "dcmseg"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not DICOM" in err and str(src) in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.shared_data
def test_real_dcmqi_seg_and_round_trip(shared_data, tmp_path):
    d = shared_data / "ct_dcmqi"
    files = sorted(d.glob("ct-3slice_0*.dcm"))
    if len(files) != 3 or not (d / "liver.dcm").is_file():
        pytest.skip("ct_dcmqi series not present")
    _, meta = read_image(files)
    # a SEG written by dcmqi reads back equal to dcmqi's NRRD of the same segmentation
    ref, rmeta = read_label(d / "liver_seg.nrrd")
    ref, _ = reorient_like(ref, rmeta, meta)
    for back, bmeta in (read_dicom_seg(d / "liver.dcm", source=meta),
                        read_dicom_seg(d / "liver.dcm")):
        np.testing.assert_array_equal(back, ref)
        np.testing.assert_allclose(bmeta.affine, meta.affine, atol=1e-3)
    assert int(ref.sum()) == 107098
    # the manual liver + spine labels written as SEG on the real series and read back
    both, bm = read_label(d / "liver_spine_seg.nrrd")
    both, _ = reorient_like(both, bm, meta)
    dest = write_dicom_seg(tmp_path / "ls.seg.dcm", both, meta, ["background", "liver", "spine"])
    pix = hd.seg.segread(dest).get_pixels_by_source_instance(_source_uids(meta),
                                                              combine_segments=True)
    np.testing.assert_array_equal(np.transpose(pix, (2, 1, 0)), both)
    np.testing.assert_array_equal(read_dicom_seg(dest)[0], both)


def _highdicom_seg(path: Path, sources: list, frames: np.ndarray) -> Path:
    """A BINARY SEG written by highdicom directly from ``sources`` in the given order."""
    from pydicom.sr.codedict import codes

    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="liver",
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Liver,
        algorithm_type="MANUAL")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type="BINARY",
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")
def test_read_seg_grid_from_references_or_positions(oblique_series, tmp_path):
    _, meta, _ = oblique_series
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in meta.source]
    # one non-empty slice of five: the grid comes from the references and the slice spacing
    # along the normal (one frame cannot show this series' shear: the slice itself is exact)
    one = np.zeros((12, 10, 5), np.uint8)
    one[3:6, 2:4, 3] = 1
    dest = write_dicom_seg(tmp_path / "one.seg.dcm", one, meta, NAMES)
    assert int(pydicom.dcmread(dest).NumberOfFrames) == 1
    back, bmeta = read_dicom_seg(dest)
    np.testing.assert_array_equal(back, one)
    np.testing.assert_allclose(bmeta.affine[:, :2], meta.affine[:, :2], atol=1e-4)
    np.testing.assert_allclose(bmeta.affine @ [0, 0, 3, 1], meta.affine @ [0, 0, 3, 1],
                               atol=1e-3)
    normal = np.cross(meta.affine[:3, 0], meta.affine[:3, 1])
    normal /= np.linalg.norm(normal)
    assert bmeta.affine[:3, 2] @ normal == pytest.approx(meta.affine[:3, 2] @ normal, abs=1e-3)
    # another producer listing the sources out of slice order, every slice labelled: the
    # frames' positions give medseg's order back
    order = [3, 0, 4, 1, 2]
    full = np.ones((12, 10, 5), np.uint8)
    full[0, 0, :] = 0
    full[1, 1, 2] = 0
    frames = np.transpose(full, (2, 1, 0))[order]
    shuffled = _highdicom_seg(tmp_path / "shuffled.dcm", [sources[k] for k in order], frames)
    back, bmeta = read_dicom_seg(shuffled)
    np.testing.assert_array_equal(back, full)
    np.testing.assert_allclose(bmeta.affine, meta.affine, atol=1e-3)
    # out of order with an empty slice left out: only the source series places it
    gap = full.copy()
    gap[:, :, 2] = 0
    frames = np.transpose(gap, (2, 1, 0))[order]
    gapped = _highdicom_seg(tmp_path / "gapped.dcm", [sources[k] for k in order], frames)
    with pytest.raises(InputError, match="pass the source series"):
        read_dicom_seg(gapped)
    np.testing.assert_array_equal(read_dicom_seg(gapped, source=meta)[0], gap)


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_totalseg_series_round_trip(shared_data, tmp_path):
    """A real anonymised CT series (JPEG 2000, SOP UIDs only in the file meta) with the 31
    TotalSegmentator classes present in its 20 slices, written as SEG and read back."""
    d = shared_data / "ct_totalseg"
    if not (d / "example_ct_dicom").is_dir() or not (d / "example_seg_dicom.nii.gz").is_file():
        pytest.skip("ct_totalseg DICOM example not present")
    _, meta = read_image(d / "example_ct_dicom")
    lab, lmeta = read_label(d / "example_seg_dicom.nii.gz")
    lab, _ = reorient_like(lab, lmeta, meta)
    present = sorted(int(v) for v in np.unique(lab) if v)
    lut = np.zeros(lab.max() + 1, np.int64)
    lut[present] = np.arange(1, len(present) + 1)  # class indices 1..K
    lab = lut[lab]
    names = ["background", *[f"totalseg_{c}" for c in present]]
    dest = write_dicom_seg(tmp_path / "ts.seg.dcm", lab, meta, names)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
            for f in meta.source]
    assert referenced_instance_uids(dest) == uids
    pix = hd.seg.segread(dest).get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(np.transpose(pix, (2, 1, 0)), lab)
    back, bmeta = read_dicom_seg(dest)
    np.testing.assert_array_equal(back, lab)
    np.testing.assert_allclose(bmeta.affine, meta.affine, atol=1e-4)
