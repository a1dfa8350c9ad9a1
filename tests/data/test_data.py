"""Dataset layouts, validation, preprocessing, patch sampling and outline filling."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medseg.data import (
    ChannelNorm,
    PatchBatchLoader,
    PatchSampler,
    PreprocessPlan,
    fill_outline_masks,
    full_image_batches,
    load_image_mask_folders,
    load_msd_folder,
    make_plan,
    normalize_channel,
    open_dataset,
    preprocess_image,
    preprocess_label,
    restore_probabilities,
    validate_dataset,
)
from medseg.data.convert import fill_outline, fit_ellipse, rasterize_ellipse
from medseg.errors import ConfigError, InputError
from medseg.io import read_image, read_label
from medseg.io.meta import ImageMeta
from medseg.transforms import AugmentConfig, Augmenter

# ------------------------------------------------------------------------------- helpers


def _nii(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), shift=0.0) -> None:
    aff = np.diag([*spacing, 1.0])
    aff[0, 3] = shift
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def _case_arrays(rng: np.random.Generator, shape=(8, 9, 6)) -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:6, 2:7, 1:5] = 1
    lab[3:5, 3:5, 2:4] = 2
    img = (rng.normal(0, 5, shape) + 100 * lab).astype(np.float32)
    return img, lab


def make_v2(root: Path, n=3, channels=("CT",), spacing=None, labels=None, ignore=None,
            test=1, shape=(8, 9, 6)) -> Path:
    """A small nnU-Net v2 folder written with nibabel."""
    rng = np.random.default_rng(0)
    for i in range(n + test):
        img, lab = _case_arrays(rng, shape)
        sp = spacing[i] if spacing else (1.0, 1.0, 1.0)
        split = ("imagesTr", "labelsTr") if i < n else ("imagesTs", "labelsTs")
        for c in range(len(channels)):
            _nii(root / split[0] / f"case_{i:03d}_{c:04d}.nii.gz", img + 10 * c, sp)
        _nii(root / split[1] / f"case_{i:03d}.nii.gz", lab, sp)
    js = {
        "channel_names": {str(c): ch for c, ch in enumerate(channels)},
        "labels": labels or {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    if ignore is not None:
        js["ignore_label"] = ignore
    (root / "dataset.json").write_text(json.dumps(js))
    return root


def make_msd(root: Path, n=2) -> Path:
    rng = np.random.default_rng(1)
    training = []
    for i in range(n):
        img, lab = _case_arrays(rng)
        _nii(root / "imagesTr" / f"liver_{i}.nii.gz", img)
        _nii(root / "labelsTr" / f"liver_{i}.nii.gz", lab)
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz",
                         "label": f"./labelsTr/liver_{i}.nii.gz"})
    _nii(root / "imagesTs" / "liver_9.nii.gz", _case_arrays(rng)[0])
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": n, "training": training, "test": ["./imagesTs/liver_9.nii.gz"],
    }))
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- layouts


def test_load_nnunet_v2(tmp_path):
    ds = load_msd_folder(make_v2(tmp_path / "d", channels=("T2", "ADC")))
    assert [c.case_id for c in ds.cases] == ["case_000", "case_001", "case_002"]
    assert [p.name for p in ds.cases[1].images] == ["case_001_0000.nii.gz",
                                                   "case_001_0001.nii.gz"]
    assert ds.cases[0].label.name == "case_000.nii.gz"
    assert ds.num_classes == 3 and ds.foreground_labels == [1, 2]
    assert ds.modalities == ["MR", "MR"] and ds.channel_names == ["T2", "ADC"]
    assert len(ds.test_cases) == 1 and ds.test_cases[0].label is not None
    assert ds.ignore_label is None


def test_load_v2_ignore_label_variants(tmp_path):
    ds = load_msd_folder(make_v2(tmp_path / "a", labels={"background": 0, "organ": 1,
                                                         "lesion": 2, "ignore": 3}))
    assert ds.ignore_label == 3 and ds.num_classes == 3 and ds.foreground_labels == [1, 2]
    ds = load_msd_folder(make_v2(tmp_path / "b", ignore=255))
    assert ds.ignore_label == 255 and ds.num_classes == 3
    assert ds.allowed_label_values == {0, 1, 2, 255}


def test_load_msd_style(tmp_path):
    ds = open_dataset(make_msd(tmp_path / "msd"))
    assert ds.labels == {"background": 0, "liver": 1, "cancer": 2}
    assert ds.modalities == ["CT"] and ds.spatial_dims == 3 and ds.name == "Liver"
    assert [c.case_id for c in ds.cases] == ["liver_0", "liver_1"]
    assert ds.test_cases[0].case_id == "liver_9" and ds.test_cases[0].label is None


def test_noncontiguous_labels_name_dataset_json(tmp_path):
    with pytest.raises(InputError, match="0..K-1") as e:
        load_msd_folder(make_v2(tmp_path / "d", labels={"background": 0, "organ": 2}))
    assert e.value.path.name == "dataset.json"


@pytest.mark.parametrize("problem", ["missing", "empty", "no_json", "bad_json", "listed_absent",
                                     "no_label", "bad_name", "region"])
def test_layout_errors(tmp_path, problem):
    root = tmp_path / "d"
    if problem == "missing":
        with pytest.raises(InputError, match="not found") as e:
            open_dataset(root)
        assert e.value.path == root
        return
    if problem == "empty":
        root.mkdir()
        with pytest.raises(InputError, match="empty"):
            open_dataset(root)
        return
    if problem == "no_json":
        make_v2(root)
        (root / "dataset.json").unlink()
        with pytest.raises(InputError, match="dataset.json not found"):
            load_msd_folder(root)
        return
    if problem == "bad_json":
        make_v2(root)
        (root / "dataset.json").write_text("{'labels': ")
        with pytest.raises(InputError, match="not valid JSON") as e:
            open_dataset(root)
        assert e.value.path.name == "dataset.json"
        return
    if problem == "listed_absent":
        make_msd(root)
        (root / "labelsTr" / "liver_1.nii.gz").unlink()
        with pytest.raises(InputError, match="do not exist") as e:
            open_dataset(root)
        assert e.value.path.name == "liver_1.nii.gz"
        return
    if problem == "no_label":
        make_v2(root)
        (root / "labelsTr" / "case_002.nii.gz").unlink()
        with pytest.raises(InputError, match="no label file") as e:
            open_dataset(root)
        assert e.value.path.name == "case_002.nii.gz"
        return
    if problem == "bad_name":
        make_v2(root)
        (root / "imagesTr" / "case_001_0000.nii.gz").rename(root / "imagesTr" / "case_001.nii.gz")
        with pytest.raises(InputError, match="not named") as e:
            open_dataset(root)
        assert e.value.path.name == "case_001.nii.gz"
        return
    make_v2(root, labels={"background": 0, "tumour": [1, 2]})
    with pytest.raises(InputError, match="region"):
        open_dataset(root)


def _png_pairs(root: Path, n=3, suffix="_Annotation") -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = np.full((20, 24), 40 * i, dtype=np.uint8)
        m = np.zeros((20, 24), dtype=np.uint8)
        m[5:10, 6:12] = 1
        Image.fromarray(img).save(root / "images" / f"{i:03d}_HC.png")
        Image.fromarray(m).save(root / "masks" / f"{i:03d}_HC{suffix}.png")
    return root / "images", root / "masks"


def test_image_mask_folders_pairing_and_hints(tmp_path):
    imgs, masks = _png_pairs(tmp_path / "p")
    ds = load_image_mask_folders(imgs, masks, mask_suffix="_Annotation", modality="US")
    assert [c.case_id for c in ds.cases] == ["000_HC", "001_HC", "002_HC"]
    assert ds.cases[0].label.name == "000_HC_Annotation.png"
    assert ds.spatial_dims == 2 and ds.modalities == ["US"] and ds.num_classes == 2
    with pytest.raises(InputError, match="have no mask") as e:
        load_image_mask_folders(imgs, masks)  # suffix forgotten
    assert "mask_suffix='_Annotation'" in e.value.hint and e.value.path.name == "000_HC.png"
    ds2 = open_dataset(tmp_path / "p", mask_suffix="_Annotation")
    assert len(ds2.cases) == 3
    with pytest.raises(TypeError):
        open_dataset(tmp_path / "p", mask_sufix="_Annotation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG"):
        load_image_mask_folders(tmp_path / "empty", masks)


# ------------------------------------------------------------------------------ validation


def test_validate_summary_numbers(tmp_path):
    root = make_v2(tmp_path / "d", spacing=[(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (1.5, 1.0, 3.0),
                                           (1.0, 1.0, 1.0)])
    ds = load_msd_folder(root)
    s = validate_dataset(ds, spatial_dims=3, keep_arrays=True)
    assert s.spatial_dims == 3 and s.shapes == [(8, 9, 6)] * 3
    assert s.median_spacing == pytest.approx((1.0, 1.0, 3.0))
    # reference statistics from the files themselves
    imgs = [nib.load(str(c.images[0])).get_fdata() for c in ds.cases]
    labs = [np.asarray(nib.load(str(c.label)).dataobj) for c in ds.cases]
    allv = np.concatenate([lb.ravel() for lb in labs])
    assert s.class_fractions == pytest.approx({v: float(np.mean(allv == v)) for v in (0, 1, 2)})
    fg = np.concatenate([im[lb > 0] for im, lb in zip(imgs, labs, strict=True)])
    st = s.intensity[0]
    assert st.mean == pytest.approx(fg.mean(), rel=1e-6)
    assert st.std == pytest.approx(fg.std(), rel=1e-6)
    assert st.percentile_00_5 == pytest.approx(np.percentile(fg, 0.5), rel=1e-6)
    assert st.percentile_99_5 == pytest.approx(np.percentile(fg, 99.5), rel=1e-6)
    assert st.n_voxels == fg.size and st.source == "foreground"
    assert set(s.loaded) == {"case_000", "case_001", "case_002"}
    np.testing.assert_allclose(s.loaded["case_001"].image[0], imgs[1], rtol=1e-6)
    assert json.dumps(s.to_dict())  # serialisable


def test_validate_without_foreground_uses_all_voxels(tmp_path):
    root = make_v2(tmp_path / "bg", n=2, test=0)
    for i in range(2):
        _nii(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.zeros((8, 9, 6), np.uint8))
    ds = load_msd_folder(root)
    s = validate_dataset(ds, 3)
    allv = np.concatenate([nib.load(str(c.images[0])).get_fdata().ravel() for c in ds.cases])
    assert s.intensity[0].source == "all" and s.class_fractions == {0: 1.0}
    assert s.intensity[0].mean == pytest.approx(allv.mean(), rel=1e-6)
    assert s.intensity[0].n_voxels == allv.size


def test_modality_names():
    from medseg.data import modality_of_channel

    got = [modality_of_channel(n) for n in ("CT", "T2", "ADC", "FLAIR", "US", "noNorm", "XR")]
    assert got == ["CT", "MR", "MR", "MR", "US", "other", "XR"]


def _expect_error(ds, match, name, dims=3):
    with pytest.raises(InputError, match=match) as e:
        validate_dataset(ds, spatial_dims=dims)
    assert e.value.path is not None and e.value.path.name == name
    return e.value


def test_validate_errors_name_the_file(tmp_path):
    # shape mismatch
    root = make_v2(tmp_path / "shape")
    _nii(root / "labelsTr" / "case_001.nii.gz", np.zeros((8, 9, 5), np.uint8))
    _expect_error(load_msd_folder(root), "differs from image shape", "case_001.nii.gz")
    # geometry mismatch
    root = make_v2(tmp_path / "geom")
    lab = np.asarray(nib.load(str(root / "labelsTr" / "case_002.nii.gz")).dataobj)
    _nii(root / "labelsTr" / "case_002.nii.gz", lab, shift=2.0)
    _expect_error(load_msd_folder(root), "geometry differs", "case_002.nii.gz")
    # undeclared label value
    root = make_v2(tmp_path / "val")
    lab = lab.copy()
    lab[0, 0, 0] = 5
    _nii(root / "labelsTr" / "case_001.nii.gz", lab)
    err = _expect_error(load_msd_folder(root), r"label values \[5\] are not declared",
                        "case_001.nii.gz")
    assert "dataset.json" in err.hint
    # ... which check_values=False lets through
    validate_dataset(load_msd_folder(root), 3, check_values=False)
    # NaN intensities
    root = make_v2(tmp_path / "nan")
    img = nib.load(str(root / "imagesTr" / "case_000_0000.nii.gz")).get_fdata().astype(np.float32)
    img[1, 1, 1] = np.nan
    _nii(root / "imagesTr" / "case_000_0000.nii.gz", img)
    _expect_error(load_msd_folder(root), "NaN", "case_000_0000.nii.gz")
    # corrupt file
    root = make_v2(tmp_path / "corrupt")
    (root / "imagesTr" / "case_002_0000.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    _expect_error(load_msd_folder(root), "corrupt", "case_002_0000.nii.gz")


def test_validate_dimensionality_and_channels(tmp_path):
    ds = load_msd_folder(make_v2(tmp_path / "d3"))
    err = _expect_error(ds, "configuration is 2D", "case_000_0000.nii.gz", dims=2)
    assert "spatial_dims: 3" in err.hint
    # a 3D file with one singleton axis is 2D data
    ds2 = load_msd_folder(make_v2(tmp_path / "d2", shape=(8, 9, 1)))
    s = validate_dataset(ds2, spatial_dims=2)
    assert s.shapes[0] == (8, 9) and len(s.median_spacing) == 2
    err = _expect_error(ds2, "configuration is 3D", "case_000_0000.nii.gz", dims=3)
    assert "spatial_dims: 2" in err.hint
    # channel count mismatch: dataset.json declares 2, the MSD file holds 1
    root = make_msd(tmp_path / "msd")
    js = json.loads((root / "dataset.json").read_text())
    js["modality"] = {"0": "T1", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(js))
    _expect_error(open_dataset(root), "channel", "liver_0.nii.gz")


def test_input_folder_is_never_modified(tmp_path):
    root = make_v2(tmp_path / "d")
    before = _hashes(root)
    ds = open_dataset(root)
    s = validate_dataset(ds, 3, keep_arrays=True, include_test=True)
    plan = make_plan(s, ds, target_spacing=[2.0, 2.0, 2.0])
    for c in ds.cases:
        lc = s.loaded[c.case_id]
        preprocess_image(lc.image, lc.image_meta, plan)
        preprocess_label(lc.label, lc.label_meta, plan)
    assert _hashes(root) == before


# --------------------------------------------------------------------------- preprocessing


def test_normalisation_numbers():
    rng = np.random.default_rng(0)
    x = rng.normal(300.0, 40.0, (20, 30)).astype(np.float32)
    z = normalize_channel(x, ChannelNorm("zscore"))
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, abs=1e-5)
    mz = normalize_channel(x, ChannelNorm("minmax_zscore"))
    np.testing.assert_allclose(mz, z, atol=1e-4)  # z-score is affine invariant
    ct = ChannelNorm("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    h = np.array([-1000.0, -100.0, 50.0, 100.0, 3000.0])
    np.testing.assert_allclose(normalize_channel(h, ct), [-6.0, -6.0, 0.0, 2.0, 6.0])
    np.testing.assert_array_equal(normalize_channel(x, ChannelNorm("none")), x)
    assert not normalize_channel(np.full((4, 4), 7.0), ChannelNorm("zscore")).any()


def test_make_plan_auto_choices(tmp_path):
    ds = load_msd_folder(make_v2(tmp_path / "same"))
    s = validate_dataset(ds, 3)
    plan = make_plan(s, ds)
    assert plan.target_spacing is None  # spacings agree -> keep the grids
    n = plan.normalization[0]
    assert n.scheme == "ct" and n.mean == pytest.approx(s.intensity[0].mean)
    assert n.clip_high == pytest.approx(s.intensity[0].percentile_99_5)
    ds2 = load_msd_folder(make_v2(tmp_path / "vary", channels=("T2",),
                                  spacing=[(1, 1, 2), (1, 1, 3), (1, 1, 3), (1, 1, 1)]))
    s2 = validate_dataset(ds2, 3)
    plan2 = make_plan(s2, ds2)
    assert plan2.target_spacing == [1.0, 1.0, 3.0]
    assert plan2.normalization[0].scheme == "zscore"
    plan3 = make_plan(s2, ds2, normalization={"T2": "none"})
    assert plan3.normalization[0].scheme == "none"
    with pytest.raises(ConfigError):
        make_plan(s2, ds2, normalization={"FLAIR": "zscore"})
    with pytest.raises(ConfigError):
        make_plan(s2, ds2, normalization={0: "histogram"})
    rt = PreprocessPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert rt == plan
    with pytest.raises(ConfigError, match="target_spacin"):
        PreprocessPlan.from_dict({**plan.to_dict(), "target_spacin": [1, 1, 1]})


def test_preprocess_resample_and_restore():
    rng = np.random.default_rng(0)
    meta = ImageMeta.from_spacing((2.0, 1.0, 1.0), (5, 8, 6))
    img = rng.normal(size=(1, 5, 8, 6)).astype(np.float32)
    lab = rng.integers(0, 3, (5, 8, 6))
    lab[0, 0, 0] = 9  # ignore value survives nearest resampling
    plan = PreprocessPlan(3, target_spacing=[1.0, 1.0, 1.0], normalization=[ChannelNorm("zscore")],
                          ignore_label=9)
    out, m2 = preprocess_image(img, meta, plan)
    assert out.shape == (1, 10, 8, 6) and out.dtype == np.float32
    assert m2.spacing == pytest.approx((1.0, 1.0, 1.0))
    # same field of view: voxel 0 centre moves half an old voxel minus half a new one
    assert m2.origin == pytest.approx((-0.5, 0.0, 0.0))
    lab2, ml = preprocess_label(lab, meta, plan)
    assert lab2.shape == (10, 8, 6) and lab2.dtype == np.int64 and ml.same_geometry(m2)
    assert set(np.unique(lab2)) <= set(np.unique(lab)) and 9 in lab2
    np.testing.assert_array_equal(lab2[::2], lab)  # 2x along axis 0: each voxel doubled
    probs = torch.softmax(torch.randn(3, 10, 8, 6), 0)
    back = restore_probabilities(probs, plan, meta)
    assert back.shape == (3, 5, 8, 6)
    assert torch.allclose(back.sum(0), torch.ones(5, 8, 6), atol=1e-5)
    # 2x down-sampling with edges aligned averages voxel pairs exactly
    assert torch.allclose(back, 0.5 * (probs[:, 0::2] + probs[:, 1::2]), atol=1e-6)
    # identity: no target spacing -> the very same tensor
    plan_id = PreprocessPlan(3, None, [ChannelNorm("zscore")])
    out_id, m_id = preprocess_image(img, meta, plan_id)
    assert out_id.shape == img.shape and m_id.same_geometry(meta)
    p0 = torch.softmax(torch.randn(3, 5, 8, 6), 0)
    assert restore_probabilities(p0, plan_id, meta) is p0


def test_preprocess_2d_from_singleton_volume():
    meta = ImageMeta.from_spacing((0.5, 0.7, 3.0), (6, 4, 1))
    img = np.arange(24, dtype=np.float32).reshape(1, 6, 4, 1)
    plan = PreprocessPlan(2, None, [ChannelNorm("none")])
    out, m2 = preprocess_image(img, meta, plan)
    assert out.shape == (1, 6, 4) and m2.spacing == pytest.approx((0.5, 0.7))
    np.testing.assert_array_equal(out[0], img[0, :, :, 0])
    back = restore_probabilities(torch.ones(2, 6, 4) / 2, plan, meta)
    assert back.shape == (2, 6, 4, 1)
    with pytest.raises(InputError, match="channel"):
        preprocess_image(np.zeros((2, 6, 4, 1), np.float32), meta, plan)
    with pytest.raises(InputError, match="spatial_dims: 3"):
        preprocess_image(np.zeros((1, 6, 4, 5), np.float32),
                         ImageMeta.from_spacing((1, 1, 1), (6, 4, 5)), plan)


# --------------------------------------------------------------------------------- sampler


def _lesion_volume() -> tuple[np.ndarray, np.ndarray]:
    """64^3 volume with a 0.1% lesion (a 6x6x7 box = 252 of 262144 voxels)."""
    lab = np.zeros((64, 64, 64), dtype=np.int64)
    lab[40:46, 10:16, 30:37] = 1
    img = np.random.default_rng(0).normal(size=(1, 64, 64, 64)).astype(np.float32)
    return img, lab


def _fg_fraction(sampler: PatchSampler, n_batches: int) -> float:
    hits = total = 0
    for _ in range(n_batches):
        _, y = sampler.sample_batch()
        hits += int((y.flatten(1) == 1).any(1).sum())
        total += y.shape[0]
    return hits / total


def test_foreground_oversampling_finds_a_tiny_lesion():
    img, lab = _lesion_volume()
    assert 0.0009 < lab.mean() < 0.0011
    over = PatchSampler([img], [lab], (16, 16, 16), batch_size=2, fg_oversample=0.33, seed=0)
    uniform = PatchSampler([img], [lab], (16, 16, 16), batch_size=2, fg_oversample=0.0, seed=0)
    f_over, f_uni = _fg_fraction(over, 150), _fg_fraction(uniform, 150)
    assert f_over >= 0.33  # every forced patch holds lesion, plus the random ones that do
    assert f_uni < 0.15   # chance alone: about (21/49)^3 ~ 8%
    x, y = over.sample_batch()
    assert x.shape == (2, 1, 16, 16, 16) and x.dtype == torch.float32
    assert y.shape == (2, 1, 16, 16, 16) and y.dtype == torch.int64
    # fg_oversample=1 with batch 1: every patch is centred on the lesion
    always = PatchSampler([img], [lab], (16, 16, 16), batch_size=1, fg_oversample=1.0, seed=3)
    assert _fg_fraction(always, 20) == 1.0


def test_sampler_determinism_ranks_and_resume():
    img, lab = _lesion_volume()
    kw = dict(patch_size=(16, 16, 16), batch_size=2, seed=7)
    a, b = PatchSampler([img], [lab], **kw), PatchSampler([img], [lab], **kw)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    r1 = PatchSampler([img], [lab], rank=1, world_size=2, **kw)
    assert not torch.equal(next(PatchSampler([img], [lab], **kw))[0], next(r1)[0])
    state = a.state_dict()
    expected = [next(a) for _ in range(2)]
    c = PatchSampler([img], [lab], **kw)
    c.load_state_dict(json.loads(json.dumps(state)))  # survives JSON (checkpoint metadata)
    for x, y in expected:
        xc, yc = next(c)
        assert torch.equal(x, xc) and torch.equal(y, yc)
    with pytest.raises(ValueError):
        PatchSampler([img], [lab], rank=2, world_size=2, **kw)


def test_sampler_pads_small_cases():
    img = np.full((2, 5, 6), 3.0, dtype=np.float32)
    img[1] = -2.0
    img[0, 0, 0] = 1.0
    lab = np.ones((5, 6), dtype=np.int64)
    s = PatchSampler([img], [lab], (8, 8), batch_size=1, fg_oversample=0.0, ignore_label=4,
                     seed=0)
    x, y = s.sample_batch()
    assert x.shape == (1, 2, 8, 8)
    assert (y == 4).sum() == 64 - 30 and (y == 1).sum() == 30
    pad = y[0, 0] == 4
    assert torch.all(x[0, 0][pad] == 1.0) and torch.all(x[0, 1][pad] == -2.0)  # channel minima
    s0 = PatchSampler([img], [lab], (8, 8), batch_size=1, seed=0)
    assert (s0.sample_batch()[1] == 0).sum() == 34  # no ignore label: pad with background


def test_prefetch_loader_matches_synchronous_and_resumes():
    img, lab = _lesion_volume()
    kw = dict(patch_size=(16, 16, 16), batch_size=2, seed=1)
    cfg = AugmentConfig()
    ref_s = PatchSampler([img], [lab], **kw)
    ref_a = Augmenter(cfg, 3, seed=2)
    ref = [ref_a(*ref_s.sample_batch()) for _ in range(5)]
    loader = PatchBatchLoader(PatchSampler([img], [lab], **kw), Augmenter(cfg, 3, seed=2),
                              prefetch=2)
    with loader:
        got = [next(loader) for _ in range(3)]
        state = loader.state_dict()  # as of batch 3, though more are prefetched
        assert loader.wait_time >= 0.0 and loader.batches_served == 3
    for (x, y), (xr, yr) in zip(got, ref[:3], strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    fresh = PatchBatchLoader(PatchSampler([img], [lab], **kw), Augmenter(cfg, 3, seed=99),
                             prefetch=2)
    fresh.load_state_dict(state)
    try:
        for xr, yr in ref[3:]:
            x, y = next(fresh)
            assert torch.equal(x, xr) and torch.equal(y, yr)
    finally:
        fresh.close()
    assert not any(t.name == "medseg-prefetch" for t in threading.enumerate())


def test_prefetch_loader_forwards_errors():
    img, lab = _lesion_volume()

    def broken(x, y):
        raise RuntimeError("augmentation failed")

    loader = PatchBatchLoader(PatchSampler([img], [lab], (8, 8, 8), 1), broken, prefetch=1)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        next(loader)
    loader.close()


def test_full_image_batches():
    ims = [np.zeros((2, 5, 6), np.float32), np.ones((2, 7, 3), np.float32)]
    labs = [np.zeros((5, 6), np.int64), np.ones((7, 3), np.int64)]
    out = list(full_image_batches(ims, labs, ["a", "b"]))
    assert [o[0] for o in out] == ["a", "b"]
    assert out[1][1].shape == (1, 2, 7, 3) and out[1][2].shape == (1, 1, 7, 3)
    assert out[1][2].dtype == torch.int64
    assert list(full_image_batches(ims))[0][2] is None


# ------------------------------------------------------------------------------- convert


def _ellipse_ring(shape, params, width=2.0):
    xc, yc, a, b, t = params
    outer = rasterize_ellipse(shape, (xc, yc, a + width / 2, b + width / 2, t))
    inner = rasterize_ellipse(shape, (xc, yc, a - width / 2, b - width / 2, t))
    return outer & ~inner


def test_fill_outline_methods_on_synthetic_ellipses():
    shape = (120, 160)
    params = (80.0, 60.0, 50.0, 30.0, 0.4)
    ring = _ellipse_ring(shape, params)
    mask, used = fill_outline(ring, boundary="outer")
    assert used == "fill"
    assert abs(mask.sum() - np.pi * 51 * 31) / (np.pi * 51 * 31) < 0.02
    # small gap (3 px): closed by morphology
    gap = ring.copy()
    gap[:60, 79:82] = False
    mask2, used2 = fill_outline(gap, boundary="outer")
    assert used2 == "closing" and abs(int(mask2.sum()) - int(mask.sum())) < 40
    # large gap (a third of the outline): ellipse fit recovers the region
    open_ = ring.copy()
    open_[:, 110:] = False
    mask3, used3 = fill_outline(open_, boundary="outer")
    assert used3 == "ellipse"
    assert (mask3 ^ mask).sum() / mask.sum() < 0.02
    fitted = fit_ellipse(np.column_stack(np.nonzero(open_)[::-1]))
    assert fitted[2] == pytest.approx(50.0, abs=1.0) and fitted[3] == pytest.approx(30.0, abs=1.0)


@pytest.mark.parametrize("cut", ["fill", "closing", "ellipse"])
def test_fill_outline_centre_boundary_is_the_drawn_curve(cut):
    """boundary="centre": the moment ellipse of the mask is the curve the line was drawn along
    (semi-axes 50 and 30 to a fifth of a pixel for a 3-pixel line, 0.4 px where two thirds of it
    are fitted); "outer" is half a line
    width larger; the ring's pixels split between inside and outside."""
    from medseg.metrics.shape import fit_ellipse as moment_ellipse

    shape, params = (120, 160), (80.0, 60.0, 50.0, 30.0, 0.4)
    ring = _ellipse_ring(shape, params, width=3.0)
    if cut == "closing":
        ring[:60, 79:82] = False
    elif cut == "ellipse":
        ring[:, 110:] = False
    axes = {}
    for boundary in ("centre", "outer"):
        mask, used = fill_outline(ring, boundary=boundary)
        assert used == cut
        e = moment_ellipse(mask)
        axes[boundary] = (e.semi_major, e.semi_minor)
    # the algebraic ellipse fit to two thirds of a thick ring lands within 0.4 px
    assert axes["centre"] == pytest.approx((50.0, 30.0), abs=0.4 if cut == "ellipse" else 0.2)
    if cut != "ellipse":  # (for the open ring "outer" adds only the line that is left)
        assert np.subtract(axes["outer"], axes["centre"]) == pytest.approx((1.5, 1.5), abs=0.35)
    with pytest.raises(ValueError, match="boundary"):
        fill_outline(ring, boundary="inner")


def test_fill_outline_masks_folder(tmp_path):
    src, dst = tmp_path / "ann", tmp_path / "out"
    src.mkdir()
    ring = _ellipse_ring((100, 120), (60.0, 50.0, 40.0, 25.0, 0.0)).astype(np.uint8) * 255
    Image.fromarray(ring).save(src / "001_HC_Annotation.png")
    cut = ring.copy()
    cut[:30] = 0  # cut by the top border, like the open HC18 outlines
    Image.fromarray(cut).save(src / "002_HC_Annotation.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "notes.png")
    before = _hashes(src)
    rep = fill_outline_masks(src, dst)
    assert _hashes(src) == before
    assert [p.name for p in rep.written] == ["001_HC.png", "002_HC.png"]
    assert rep.method == {"001_HC.png": "fill", "002_HC.png": "ellipse"}
    assert rep.n_fallback == 1 and [p.name for p in rep.skipped] == ["notes.png"]
    assert "1 closed outlines filled directly" in str(rep) and "1 by ellipse fit" in str(rep)
    m, _ = read_label(dst / "001_HC.png")
    assert set(np.unique(m)) == {0, 1}
    with pytest.raises(InputError, match="inside"):
        fill_outline_masks(src, src / "sub")
    with pytest.raises(InputError, match="no annotation"):
        fill_outline_masks(src, dst, suffix="_Mask")


def test_fill_hc18_annotations(shared_data, tmp_path):
    ann = shared_data / "us_hc18" / "annotations"
    names = ["000_HC", "001_HC", "002_HC", "186_HC", "346_HC"]  # the last two are open
    if not all((ann / f"{n}_Annotation.png").exists() for n in names):
        pytest.skip("HC18 annotations not present")
    src = tmp_path / "ann"
    src.mkdir()
    for n in names:
        (src / f"{n}_Annotation.png").write_bytes((ann / f"{n}_Annotation.png").read_bytes())
    rep = fill_outline_masks(src, tmp_path / "masks")
    assert rep.count("fill") == 3 and rep.count("ellipse") == 2
    for n in names:
        outline, _ = read_label(src / f"{n}_Annotation.png")
        mask, _ = read_label(tmp_path / "masks" / f"{n}.png")
        rows, cols = np.nonzero(outline)
        xc, yc, a, b, t = fit_ellipse(np.column_stack([cols, rows]))
        if rep.method[f"{n}.png"] == "fill":  # closed: the filled area is the ellipse's
            assert abs(mask.sum() - np.pi * a * b) / (np.pi * a * b) < 0.03
        else:  # cut by the border: everything inside the fitted ellipse within the image
            inside = rasterize_ellipse(mask.shape, (xc, yc, a, b, t))
            assert (mask[inside] == 1).mean() > 0.999
            assert mask.sum() <= inside.sum() + (outline > 0).sum()
            assert mask.sum() < 1.02 * np.pi * a * b
    # the centre masks measure the CSV's reference head circumference (the annotated curve's):
    # to 0.05 mm for closed outlines (all 805 closed training annotations: mean 0.006 mm, max
    # 0.041), to 0.5 mm where a border-cut outline needed the ellipse fit (186_HC: -0.46 mm)
    from medseg.metrics.shape import fit_ellipse as moment_ellipse

    rows = (shared_data / "us_hc18" / "pixel_size_and_hc.csv").read_text().splitlines()[1:]
    ref = {r.split(",")[0][:-4]: (float(r.split(",")[1]), float(r.split(",")[2])) for r in rows}
    for n in names:
        mask, _ = read_label(tmp_path / "masks" / f"{n}.png")
        pixel_mm, hc_mm = ref[n]
        tol = 0.05 if rep.method[f"{n}.png"] == "fill" else 0.5
        assert moment_ellipse(mask > 0).circumference(pixel_mm) == pytest.approx(hc_mm, abs=tol)


def test_read_image_roundtrip_sanity(tmp_path):
    """The medseg.io contract this package codes against (float32 (C, *sp), int64 labels)."""
    root = make_v2(tmp_path / "d", n=1, test=0)
    img, meta = read_image(root / "imagesTr" / "case_000_0000.nii.gz")
    lab, _ = read_label(root / "labelsTr" / "case_000.nii.gz")
    assert img.dtype == np.float32 and img.shape == (1, 8, 9, 6) and lab.dtype == np.int64
    assert meta.spacing == pytest.approx((1.0, 1.0, 1.0))


def test_make_plan_accepts_one_scheme_for_all_channels(tmp_path):
    from medseg.data import make_plan, open_dataset, validate_dataset
    from medseg.errors import ConfigError
    from medseg.physics import PhantomSpec, write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "p", PhantomSpec(shape=(24, 24), modality="ct"),
                                 n_train=2, n_test=0, seed=0)
    ds = open_dataset(root)
    summary = validate_dataset(ds, 2)
    assert [n.scheme for n in make_plan(summary, ds).normalization] == ["ct"]
    plan = make_plan(summary, ds, normalization="minmax_zscore")
    assert [n.scheme for n in plan.normalization] == ["minmax_zscore"]
    with pytest.raises(ConfigError, match="normalization"):
        make_plan(summary, ds, normalization="bogus")
