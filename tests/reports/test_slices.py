"""Overlay panels of the report (``medseg.reports.slices``): hand values, sizes, alignment."""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from medseg.reports.overlay import pick_slice
from medseg.reports.slices import (
    GAP,
    LABEL_ALPHA,
    LABEL_RGB,
    case_images,
    panel_size,
    render_slice,
    slice_positions,
)


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_render_slice_hand_values():
    image = np.array([[0.0, 1.0], [2.0, 3.0]])
    labels = np.array([[0, 1], [0, 2]])
    heat = np.array([[0.0, 0.0], [0.0, 2.0]])
    rgb = render_slice(image, [labels, heat], (0.0, 3.0), (4, 4), heat_max=2.0)
    assert rgb.shape == (4, 3 * 4 + 2 * GAP, 3) and rgb.dtype == np.uint8
    grey = np.array([[0, 85], [170, 255]], dtype=float)
    # panel 0: the grey window 0..3 -> 0..255, every pixel shown 2 x 2
    assert np.array_equal(rgb[:, :4, 0], np.kron(grey, np.ones((2, 2))).round())
    assert (rgb[:, 4:4 + GAP] == 255).all()  # white gap
    lab = rgb[:, 4 + GAP:8 + GAP]
    # label 1 on grey 85: half grey, half (25, 204, 51); label 2 on 255: half (242, 51, 51)
    np.testing.assert_allclose(lab[0, 2], 0.5 * 85 + 0.5 * np.array([25, 204, 51]), atol=0.51)
    np.testing.assert_allclose(lab[3, 3], 0.5 * 255 + 0.5 * np.array([242, 51, 51]), atol=0.51)
    assert np.array_equal(lab[0, 0], [0, 0, 0]) and LABEL_ALPHA == 0.5
    np.testing.assert_array_equal(LABEL_RGB[0], [25, 204, 51])
    hot = rgb[:, 8 + 2 * GAP:]
    top = np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255
    np.testing.assert_allclose(hot[3, 3], 0.15 * 255 + 0.85 * top, atol=0.6)
    assert np.array_equal(hot[0, 0], [0, 0, 0])  # zero uncertainty: the grey image


def test_panel_size_keeps_millimetres_square():
    assert panel_size((10, 20), (2.0, 1.0)) == (192, 192)  # 20 mm x 20 mm
    assert panel_size((24, 16), (1.0, 1.0)) == (192, 128)
    assert panel_size((24, 16), (1.0, 3.0)) == (96, 192)   # 24 mm x 48 mm
    assert panel_size((220, 10), (1.0, 1.0)) == (220, 10)  # between 192 and 256: as is
    assert panel_size((512, 256), (1.0, 1.0)) == (256, 128)  # reduced to 256
    assert panel_size((256, 25), (0.78, 6.5)) == (256, 208)  # 199.7 mm x 162.5 mm


def test_slice_positions():
    assert slice_positions(10, 32) == list(range(10))
    pos = slice_positions(100, 32)
    assert len(pos) == 32 and pos[0] == 0 and pos[-1] == 99 and pos == sorted(set(pos))


def _volume():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 12, 40))
    ref = np.zeros((20, 12, 40), dtype=np.int64)
    ref[5:9, 3:7, 30:34] = 1
    ref[2:4, 1:3, 31] = 2  # an asymmetric second label: flips would show
    pred = np.roll(ref, 1, axis=0)
    return image, ref, pred, (pred != ref).astype(np.float32)


def test_case_images_3d_planes_aligned():
    image, ref, pred, unc = _volume()
    ci = case_images("c1", image, pred, ref, unc, "predictive_entropy",
                     spacing=(1.0, 1.0, 2.0), max_slices=16, max_slices_other=6)
    assert ci.panels == ["image", "reference", "prediction", "predictive_entropy (full colour "
                         "at 1, this case's 99th percentile)"]
    assert [len(ci.planes[p]) for p in ("axial", "coronal", "sagittal")] == [16, 6, 6]
    assert ci.n_slices == {"axial": 40, "coronal": 12, "sagittal": 20}
    axial = ci.planes["axial"]
    idx = [k for k, _ in axial]
    assert idx == slice_positions(40, 16)
    best = pick_slice(ref, 2)
    k, uri = axial[ci.start["axial"]]
    assert abs(k - best) == min(abs(j - best) for j in idx)
    rgb = _decode(uri)
    # axial (R, A) cut shown radiologically: rows A (anterior up), columns R reversed
    rows, cols = panel_size((12, 20), (1.0, 1.0))
    assert (rows, cols) == (115, 192) and rgb.shape == (rows, 4 * cols + 3 * GAP, 3)
    ri = np.minimum((np.arange(rows) * 12) // rows, 11)
    cj = np.minimum((np.arange(cols) * 20) // cols, 19)
    grey_panel = rgb[:, :cols].astype(int)
    for p, lab in ((1, ref), (2, pred)):
        panel = rgb[:, p * (cols + GAP):p * (cols + GAP) + cols].astype(int)
        changed = (panel != grey_panel).any(axis=-1)
        shown = lab[..., k].T[::-1, ::-1]  # the same slice k in every panel
        assert np.array_equal(changed, shown[np.ix_(ri, cj)] > 0)
    # sagittal (A, S): rows S stretched by the 2 mm spacing (40 x 2 mm = 80 mm over 12 mm)
    r, c = panel_size((40, 12), (2.0, 1.0))
    assert (r, c) == (192, 29)
    assert _decode(ci.planes["sagittal"][0][1]).shape == (r, 4 * c + 3 * GAP, 3)


def test_case_images_follow_the_affine_orientation():
    """A volume stored with its axes permuted and flipped, given its orientation, shows the very
    same pictures as the canonical (R, A, S) one; the slice numbers are the file's."""
    image, ref, pred, unc = _volume()
    canon = case_images("c", image, pred, ref, unc, spacing=(1.0, 1.5, 2.0), max_slices=8,
                        max_slices_other=5)
    # file axes: (S, R flipped, A): file axis 0 = S, 1 = R running to the left, 2 = A
    def to_file(a):
        return np.transpose(a[::-1], (2, 0, 1))
    ornt = np.array([[2, 1], [0, -1], [1, 1]])
    other = case_images("c", to_file(image), to_file(pred), to_file(ref), to_file(unc),
                        spacing=(2.0, 1.0, 1.5), max_slices=8, max_slices_other=5,
                        orientation=ornt)
    for plane in ("axial", "coronal"):
        assert [u for _, u in other.planes[plane]] == [u for _, u in canon.planes[plane]]
        assert [k for k, _ in other.planes[plane]] == [k for k, _ in canon.planes[plane]]
    # sagittal cuts the flipped file axis: the same pictures in reverse file order
    n = image.shape[0]
    pos = slice_positions(n, 5)
    assert [k for k, _ in other.planes["sagittal"]] == pos
    canon_by_k = {k: u for k, u in case_images(
        "c", image, pred, ref, unc, spacing=(1.0, 1.5, 2.0), max_slices=8,
        max_slices_other=n).planes["sagittal"]}
    assert [u for _, u in other.planes["sagittal"]] == [canon_by_k[n - 1 - k] for k in pos]
    with pytest.raises(ValueError, match="orientation must map"):
        case_images("c", image, pred, orientation=np.array([[0, 1], [0, 1], [2, 1]]))


def test_case_images_2d_and_bad_shapes():
    img = np.arange(64.0).reshape(8, 8)
    lab = (img > 40).astype(np.int64)
    ci = case_images("c2", img, lab)
    assert ci.panels == ["image", "prediction"] and list(ci.planes) == ["image"]
    assert _decode(ci.planes["image"][0][1]).shape == (192, 2 * 192 + GAP, 3)
    with pytest.raises(ValueError, match="not one 2D or 3D grid"):
        case_images("c3", img, lab[:4])
