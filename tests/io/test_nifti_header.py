"""NIfTI outputs keep what a viewer needs (issue 12): the affine, the qform/sform codes of the
input, pixdim, units, and integer label / float32 probability types, checked on the header that
nibabel reads back (the fields 3D Slicer and ITK-SNAP use to place a volume)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.io import read_image, read_label, write_image, write_label
from medseg.io.meta import ImageMeta

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1" / "segmentation"


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    a, b, c = np.deg2rad([a, b, c])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing=(0.7, 0.9, 3.0), angles=(10, -20, 30), origin=(-12.5, 30.25, 101.0)):
    aff = np.eye(4)
    aff[:3, :3] = _rotation(*angles) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _save(path: Path, data: np.ndarray, aff: np.ndarray, scode: int, qcode: int,
          units: tuple[str, str] = ("mm", "sec")) -> Path:
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, code=scode)
    img.set_qform(aff, code=qcode)
    img.header.set_xyzt_units(*units)
    nib.save(img, path)
    return path


def _hdr(path: Path) -> nib.Nifti1Header:
    return nib.load(path).header


@pytest.mark.parametrize(("scode", "qcode"), [(2, 1), (1, 1), (4, 0), (0, 1), (3, 2)])
def test_label_keeps_codes_affine_pixdim(tmp_path, scode, qcode):
    aff = _affine()
    src = _save(tmp_path / "img.nii.gz", np.zeros((6, 5, 4), np.float32), aff, scode, qcode)
    _, meta = read_image(src)
    labels = (np.arange(120).reshape(6, 5, 4) % 3).astype(np.int64)
    out = write_label(tmp_path / "lab.nii.gz", labels, meta)
    hdr = _hdr(out)
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (scode, qcode)
    np.testing.assert_allclose(nib.load(out).affine, aff, atol=1e-5)
    if scode:
        np.testing.assert_allclose(hdr.get_sform(), aff, atol=1e-6)
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)  # a rotation: exact in a qform
    np.testing.assert_allclose(hdr["pixdim"][1:4], (0.7, 0.9, 3.0), atol=1e-6)
    np.testing.assert_allclose(hdr["pixdim"][1:4], _hdr(src)["pixdim"][1:4], atol=1e-6)
    assert hdr.get_xyzt_units()[0] == "mm"
    assert hdr.get_data_dtype() == np.uint8 and hdr.get_data_shape() == (6, 5, 4)
    back, bmeta = read_label(out)
    np.testing.assert_array_equal(back, labels)
    assert bmeta.extra["sform_code"] == scode and bmeta.extra["qform_code"] == qcode


def test_sheared_affine_stays_exact_when_only_the_qform_was_set(tmp_path):
    """A qform cannot hold a shear: the exact affine then goes into the sform (code of the
    qform), instead of nibabel's silent 'aligned' fallback or a rounded grid."""
    aff = _affine()
    aff[:3, 2] += aff[:3, 0] * 0.1  # gantry-tilt-like shear of the slice axis
    meta = ImageMeta(affine=aff, spatial_shape=(6, 5, 4),
                     extra={"sform_code": 0, "qform_code": 1})
    out = write_label(tmp_path / "lab.nii.gz", np.ones((6, 5, 4), np.int64), meta)
    hdr = _hdr(out)
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (1, 1)
    np.testing.assert_allclose(nib.load(out).affine, aff, atol=1e-6)


def test_codes_zero_kept_on_the_same_grid_and_replaced_on_a_new_one(tmp_path):
    """Both codes 0: the grid is pixdim alone (nibabel centres it). A label map on that grid
    keeps 0/0 (a viewer places image and labels alike); a resampled grid needs an sform."""
    base = nib.Nifti1Header()
    base.set_data_shape((6, 5, 4))
    base.set_zooms((0.7, 0.9, 3.0))
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), None, header=base)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    src = tmp_path / "img.nii"
    nib.save(img, src)
    assert int(_hdr(src)["sform_code"]) == int(_hdr(src)["qform_code"]) == 0
    _, meta = read_image(src)
    out = write_label(tmp_path / "lab.nii", np.zeros((6, 5, 4), np.int64), meta)
    assert int(_hdr(out)["sform_code"]) == int(_hdr(out)["qform_code"]) == 0
    np.testing.assert_allclose(nib.load(out).affine, nib.load(src).affine, atol=1e-6)
    coarse = meta.with_spacing((1.4, 1.8, 3.0), (3, 3, 4))  # shape and spacing change
    out2 = write_label(tmp_path / "coarse.nii", np.zeros((3, 3, 4), np.int64), coarse)
    assert int(_hdr(out2)["sform_code"]) == 1
    np.testing.assert_allclose(nib.load(out2).affine, coarse.affine, atol=1e-6)


def test_non_nifti_input_gets_scanner_codes_and_dtypes(tmp_path):
    meta = ImageMeta.from_spacing((0.5, 0.5, 2.0), (4, 4, 3))
    big = np.zeros((4, 4, 3), np.int64)
    big[0, 0, 0] = 300  # more than 255 classes: 16 bits
    for name, arr, dtype in (("small", big.clip(0, 2), np.uint8), ("big", big, np.uint16)):
        hdr = _hdr(write_label(tmp_path / f"{name}.nii.gz", arr, meta))
        assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (1, 1)
        assert hdr.get_data_dtype() == dtype
    probs = np.full((3, 4, 4, 3), 1 / 3, np.float64)
    hdr = _hdr(write_image(tmp_path / "p.nii.gz", probs, meta, dtype=np.float32))
    assert hdr.get_data_dtype() == np.float32 and hdr.get_data_shape() == (4, 4, 3, 3)


def test_predict_keeps_the_input_header(tmp_path):
    """Through ``medseg predict``: label map and probabilities of an input with sform 2
    (aligned) / qform 1 (scanner), an oblique affine and anisotropic pixdim."""
    img, _ = read_image(LEGACY / "input" / "case_004_0000.nii.gz")
    aff = _affine(spacing=(0.8, 0.6, 2.5))
    (tmp_path / "in").mkdir()
    src = _save(tmp_path / "in" / "case.nii.gz", img[0][:, :, None].astype(np.float32), aff, 2, 1)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(LEGACY / "model"), "--input", str(src), "--output",
                 str(out), "--device", "cpu", "--save-probabilities"]) == 0
    in_hdr = _hdr(src)
    lab, prob = out / "case.nii.gz", out / "case_probabilities.nii.gz"
    for path, dtype, shape in ((lab, np.uint8, (32, 32, 1)), (prob, np.float32, (32, 32, 1, 3))):
        hdr = _hdr(path)
        assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (2, 1)
        np.testing.assert_allclose(hdr.get_sform(), aff, atol=1e-6)
        np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)
        np.testing.assert_allclose(hdr["pixdim"][1:4], in_hdr["pixdim"][1:4], atol=1e-6)
        assert hdr.get_xyzt_units()[0] == "mm"
        assert hdr.get_data_dtype() == dtype and hdr.get_data_shape() == shape
    assert set(np.unique(np.asanyarray(nib.load(lab).dataobj))) <= {0, 1, 2}
    p = np.asanyarray(nib.load(prob).dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
