"""Instance targets, watershed post-processing and the instance dataset loaders (T4 / A8)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medseg.data.instance import (
    build_semantic_dataset,
    load_dsb2018,
    open_instance_dataset,
    read_instance_image,
    read_instance_map,
)
from medseg.errors import InputError
from medseg.instance import (
    PostprocessParams,
    boundary_distance_map,
    instance_boundaries,
    instance_to_semantic,
    probs_to_instance_map,
    probs_to_instances,
)
from medseg.io import read_label, write_label
from medseg.io.meta import ImageMeta
from medseg.metrics.instance import iou_matrix


def two_discs(shape=(64, 64), r=12):
    """Two discs that touch along a vertical line (the right one painted where free)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, dtype=np.int64)
    lab[(yy - 32) ** 2 + (xx - 20) ** 2 <= r * r] = 1
    lab[((yy - 32) ** 2 + (xx - 43) ** 2 <= r * r) & (lab == 0)] = 2
    return lab


def two_balls(n=32, r=7):
    zz, yy, xx = np.mgrid[:n, :n, :n]
    lab = np.zeros((n, n, n), dtype=np.int64)
    lab[(zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 10) ** 2 <= r * r] = 1
    lab[((zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 23) ** 2 <= r * r) & (lab == 0)] = 2
    return lab


def ideal_probs(target):
    return np.eye(3, dtype=np.float32)[target].transpose(-1, *range(target.ndim))


def test_boundary_hand_values():
    # a 3x3 square: ring of 8 boundary voxels, 1 interior; with width 2 all 9 are boundary
    lab = np.zeros((5, 5), dtype=np.int64)
    lab[1:4, 1:4] = 1
    b1 = instance_boundaries(lab, 1)
    assert b1.sum() == 8 and not b1[2, 2]
    assert instance_boundaries(lab, 2).sum() == 9
    # the image border is not a boundary: a full image of one instance has none
    assert instance_boundaries(np.ones((4, 4), dtype=np.int64), 1).sum() == 0
    t = instance_to_semantic(lab, 2)  # keep_small marks the deepest voxel interior
    assert t[2, 2] == 1 and (t == 2).sum() == 8


def test_touching_discs_separated_by_boundary():
    lab = two_discs()
    t = instance_to_semantic(lab, 1)
    # every voxel where label 1 touches label 2 is boundary in both instances
    touch1 = (lab == 1) & (np.roll(lab, -1, axis=1) == 2)
    touch2 = (lab == 2) & (np.roll(lab, 1, axis=1) == 1)
    assert touch1.any() and np.all(t[touch1] == 2) and np.all(t[touch2] == 2)
    # the interiors of the two discs are not connected
    from scipy import ndimage as ndi

    _, n = ndi.label(t == 1)
    assert n == 2
    assert set(np.unique(t)) == {0, 1, 2}


@pytest.mark.parametrize("case", ["2d", "3d"])
def test_postprocess_of_ideal_probabilities_recovers_instances(case):
    lab = two_discs() if case == "2d" else two_balls()
    t = instance_to_semantic(lab, 1)
    for flood in ("probability", "distance"):
        pred = probs_to_instance_map(ideal_probs(t), PostprocessParams(flood=flood))
        assert pred.max() == 2
        iou, _, _ = iou_matrix(lab, pred)
        best = iou.max(axis=1)
        assert np.all(best > 0.9), (flood, best)


def test_instances_scores_classes_and_min_size():
    lab = two_discs()
    t = instance_to_semantic(lab, 1)
    p = ideal_probs(t) * 0.8
    p[0] += 0.2  # foreground probability 0.8 on instance voxels
    sem = np.where(lab == 2, 3, np.where(lab == 1, 1, 0))
    inst = probs_to_instances(p, PostprocessParams(seed_threshold=0.5), semantic=sem)
    assert len(inst) == 2
    assert np.allclose(inst.scores.numpy(), 0.8, atol=1e-6)
    assert sorted(inst.classes.tolist()) == [1, 3]
    # min_size above the disc area removes both
    big = PostprocessParams(min_size=int((lab == 1).sum()) + 1000)
    assert probs_to_instance_map(p, big).max() == 0


def test_empty_image_gives_empty_instance_set():
    probs = np.zeros((3, 20, 24), dtype=np.float32)
    probs[0] = 1.0
    inst = probs_to_instances(probs)
    assert len(inst) == 0 and inst.spatial_shape == (20, 24)
    assert tuple(inst.masks.shape) == (0, 20, 24)
    assert instance_to_semantic(np.zeros((6, 6), dtype=np.int64)).max() == 0


def test_distance_map():
    lab = np.zeros((7, 7), dtype=np.int64)
    lab[1:6, 1:6] = 1  # 5x5 square: edge ring 1, next ring 2, centre 3
    d = boundary_distance_map(lab, normalise=False)
    assert d[1, 1] == 1 and d[2, 2] == 2 and d[3, 3] == 3 and d[0, 0] == 0
    dn = boundary_distance_map(lab)
    assert dn.max() == pytest.approx(1.0) and dn[2, 2] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- loaders
def write_dsb(root, n=2, size=32, soft=False):
    rng = np.random.default_rng(0)
    for i in range(n):
        cid = f"case{i}"
        (root / cid / "images").mkdir(parents=True)
        (root / cid / "masks").mkdir()
        img = rng.integers(0, 50, size=(size, size, 4), dtype=np.uint8)
        img[..., 3] = 255
        Image.fromarray(img, "RGBA").save(root / cid / "images" / f"{cid}.png")
        for k, (y, x) in enumerate([(8, 8), (20, 20), (14, 22)]):
            m = np.zeros((size, size), dtype=np.uint8)
            m[y - 4:y + 4, x - 4:x + 4] = 255
            if soft:
                m[y - 5, x - 4:x + 4] = 100
            Image.fromarray(m).save(root / cid / "masks" / f"m{k}.png")
    return root


def test_dsb_loader_and_conversion(tmp_path):
    root = write_dsb(tmp_path / "dsb")
    ds = open_instance_dataset(root)
    assert ds.layout == "dsb2018" and [c.case_id for c in ds.cases] == ["case0", "case1"]
    img, meta = read_instance_image(ds.cases[0])
    assert img.shape == (1, 32, 32)
    rgb = np.asarray(Image.open(root / "case0" / "images" / "case0.png"))[..., :3]
    assert np.allclose(img[0], rgb.astype(np.float32).mean(-1))
    lab = read_instance_map(ds.cases[0], meta.spatial_shape)
    assert sorted(np.unique(lab).tolist()) == [0, 1, 2, 3]
    # masks 2 (rows 16..23, cols 16..23) and 3 (rows 10..17, cols 18..25) overlap on
    # 2 x 6 pixels: the later mask (3) wins there
    assert lab[16, 20] == 3 and np.sum(lab == 3) == 64 and np.sum(lab == 2) == 64 - 12
    seg = build_semantic_dataset(ds, tmp_path / "conv", boundary_width=1)
    assert seg.num_classes == 3 and seg.spatial_dims == 2 and len(seg.cases) == 2
    t, _ = read_label(seg.cases[0].label)
    assert np.array_equal(t, instance_to_semantic(lab, 1))


def test_bad_inputs_name_the_file(tmp_path):
    root = write_dsb(tmp_path / "soft", n=1, soft=True)
    case = load_dsb2018(root).cases[0]
    with pytest.raises(InputError) as e:
        read_instance_map(case, (32, 32))
    assert "m0.png" in str(e.value) and "not binary" in str(e.value)
    # with a threshold the soft rim (100 < 0.5 * 255) is left out
    lab = read_instance_map(case, (32, 32), mask_threshold=0.5)
    assert np.sum(lab == 1) == 64
    # a mask of the wrong size
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(root / "case0" / "masks" / "z.png")
    with pytest.raises(InputError) as e:
        read_instance_map(load_dsb2018(root).cases[0], (32, 32), mask_threshold=0.5)
    assert "z.png" in str(e.value) and "shape" in str(e.value)
    # an empty folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        open_instance_dataset(tmp_path / "empty")
    # a label map with non-integer values
    lm = tmp_path / "lm"
    (lm / "images").mkdir(parents=True)
    (lm / "masks").mkdir()
    meta = ImageMeta(np.eye(4), (8, 8))
    write_label(lm / "images" / "a.nii.gz", np.zeros((8, 8), np.uint8), meta)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((8, 8), 1.5, np.float32), np.eye(4)),
             lm / "masks" / "a.nii.gz")
    ds = open_instance_dataset(lm)
    with pytest.raises(InputError) as e:
        read_instance_map(ds.cases[0])
    assert "a.nii.gz" in str(e.value) and "whole numbers" in str(e.value)


def test_label_map_layout_3d(tmp_path):
    lm = tmp_path / "lm3"
    lab = two_balls(24, 5)
    meta = ImageMeta(np.diag([0.5, 0.5, 2.0, 1.0]), lab.shape)
    from medseg.io import write_image

    write_image(lm / "images" / "vol.nii.gz", (lab > 0).astype(np.float32), meta)
    write_label(lm / "labels" / "vol.nii.gz", lab, meta)
    ds = open_instance_dataset(lm)
    assert ds.layout == "label_maps" and ds.cases[0].case_id == "vol"
    seg = build_semantic_dataset(ds, tmp_path / "conv3", boundary_width=1)
    assert seg.spatial_dims == 3
    t, tmeta = read_label(seg.cases[0].label)
    assert np.array_equal(t, instance_to_semantic(lab, 1))
    assert np.allclose(tmeta.affine, meta.affine)


def test_real_dsb2018_loads(shared_data):
    root = shared_data / "inst_dsb2018"
    if not root.is_dir():
        pytest.skip("inst_dsb2018 not present")
    ds = open_instance_dataset(root)
    assert len(ds.cases) == 12
    counts = {}
    for c in ds.cases:
        img, meta = read_instance_image(c)
        lab = read_instance_map(c, meta.spatial_shape, mask_threshold=0.5)
        counts[c.case_id] = len(np.unique(lab)) - 1
        assert img.shape[0] == 1 and lab.shape == meta.spatial_shape
        assert counts[c.case_id] == len(c.masks)
    assert min(counts.values()) == 22 and max(counts.values()) == 100
    assert sum(counts.values()) == 518
    # two of the sources store anti-aliased masks: strict reading names the file
    gnf = ds.case("gnf_dna-13")
    with pytest.raises(InputError, match="not binary"):
        read_instance_map(gnf, None)


def test_instance_table_areas_in_mm():
    from medseg.tasks.instance import instance_table

    lab = np.zeros((4, 5), dtype=np.int64)
    lab[0, :3] = 1
    lab[2:4, 2:5] = 2
    rows = instance_table(lab, np.array([1, 2]), np.array([0.5, 0.25]), (0.5, 2.0))
    assert [r["area_voxels"] for r in rows] == [3, 6]
    assert [r["area_mm2"] for r in rows] == [3.0, 6.0] and rows[1]["volume_mm3"] is None
    assert instance_table(lab, np.array([1, 1]), np.array([1.0, 1.0]), None)[0]["area_mm2"] is None
