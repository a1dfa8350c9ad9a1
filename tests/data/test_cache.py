"""The on-disk preprocessed cache (issue 11, datasets larger than memory): exact round trip,
smallest label type, keyed rebuilds, corrupt files refused, lazy patches equal to in-memory ones,
and training with the cache on and off giving the same weights."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.data import make_plan, open_dataset, preprocess_image, preprocess_label
from medseg.data.cache import (
    MANIFEST_NAME,
    CachedCases,
    build_cache,
    cache_key,
    default_cache_root,
    open_cache,
    preprocess_case,
    resolve_workers,
    smallest_label_dtype,
)
from medseg.data.sampler import PatchSampler, owned_array
from medseg.data.validate import validate_dataset
from medseg.errors import ConfigError, InputError
from medseg.io import read_image, read_label
from medseg.physics import PhantomSpec, write_phantom_dataset
from medseg.tasks.segmentation import prepare_data
from medseg.training.config import DataConfig, ExperimentConfig
from medseg.training.engine import train

SETTINGS = {"spatial_dims": 3, "preprocess": {"target_spacing": "auto"}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Five 3D MR phantoms of 20^3 with organ + lesion labels."""
    root = tmp_path_factory.mktemp("cache_ds")
    write_phantom_dataset(root / "ds", PhantomSpec(shape=(20, 20, 20), modality="mr",
                                                   lesion_fraction=0.03), n_train=5, n_test=0,
                          seed=3)
    return root / "ds"


def _plan(ds):
    summary = validate_dataset(ds, 3, seed=0)
    return summary, make_plan(summary, ds)


def _build(ds, folder: Path, workers: int = 1):
    summary, plan = _plan(ds)
    key = cache_key(ds, SETTINGS)
    return build_cache(folder, key, ds, plan, summary.to_dict(), workers=workers), plan


def test_smallest_label_dtype_hand_values():
    assert smallest_label_dtype([0, 1, 2]) == np.uint8
    assert smallest_label_dtype([0, 255]) == np.uint8
    assert smallest_label_dtype([0, 256]) == np.uint16
    assert smallest_label_dtype([0, 70_000]) == np.uint32
    assert smallest_label_dtype([-1, 0, 5]) == np.int8
    assert smallest_label_dtype([-1, 300]) == np.int16
    assert resolve_workers(3, 100) == 3
    assert resolve_workers(0, 1) == 1
    assert resolve_workers(0, 15) == 1  # below AUTO_MIN_CASES: no worker processes


def test_round_trip_is_bit_exact_and_labels_are_uint8(dataset, tmp_path):
    ds = open_dataset(dataset)
    cache, plan = _build(ds, tmp_path / "c")
    assert cache.label_dtype == np.uint8
    ids = [c.case_id for c in ds.cases]
    images, labels = cache.images(ids), cache.labels(ids)
    assert isinstance(images, CachedCases) and len(images) == 5
    for k, case in enumerate(ds.cases):
        raw, meta = read_image(case.images[0])
        lab, _ = read_label(case.label)
        x_ref, _ = preprocess_image(raw, meta, plan)
        y_ref, _ = preprocess_label(lab, meta, plan)
        x, y = images[k], labels[k]
        assert isinstance(x, np.memmap) and not x.flags.writeable  # lazily mapped, read-only
        assert x.dtype == np.float32 and y.dtype == np.uint8
        assert x.tobytes() == np.ascontiguousarray(x_ref, dtype=np.float32).tobytes()
        assert np.array_equal(y.astype(np.int64), y_ref) and set(np.unique(y)) <= {0, 1, 2}
        # padding value = each channel's minimum; affine = the raw image's normalisation
        assert cache.images([case.case_id]).channel_min[0][0] == x_ref[0].min()
        assert cache.entries[case.case_id].image_bytes == x_ref.nbytes + 128
        assert cache.entries[case.case_id].label_bytes == y_ref.size + 128  # 1 byte a voxel
    assert preprocess_case(ds.cases[0], plan, np.dtype(np.uint8))[1].dtype == np.uint8


def test_workers_give_identical_files(dataset, tmp_path):
    ds = open_dataset(dataset)
    one, _ = _build(ds, tmp_path / "w1", workers=1)
    two, _ = _build(ds, tmp_path / "w2", workers=2)
    for name in sorted(os.listdir(tmp_path / "w1")):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert one.entries == two.entries


def test_workers_that_die_give_a_one_line_error(dataset, tmp_path, monkeypatch):
    """A worker process that dies (a script without the __main__ guard re-runs itself in
    every worker) is a one-line InputError with the fix, and no manifest is left behind."""
    from concurrent.futures.process import BrokenProcessPool

    import medseg.data.cache as cache_mod

    class DyingPool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, *args, **kwargs):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(cache_mod, "ProcessPoolExecutor", DyingPool)
    with pytest.raises(InputError, match="stopped abruptly") as e:
        _build(open_dataset(dataset), tmp_path / "w", workers=2)
    assert "__main__" in str(e.value) and "data.workers: 1" in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "w" / cache_mod.MANIFEST_NAME).exists()


def test_key_changes_with_plan_setting_and_touched_input(dataset):
    ds = open_dataset(dataset)
    k0 = cache_key(ds, SETTINGS)
    assert cache_key(open_dataset(dataset), SETTINGS) == k0  # stable
    assert cache_key(ds, {**SETTINGS, "preprocess": {"target_spacing": None}}) != k0
    img = ds.cases[2].images[0]
    st = img.stat()
    try:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert cache_key(open_dataset(dataset), SETTINGS) != k0
    finally:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache_key(open_dataset(dataset), SETTINGS) == k0


def test_corrupt_or_partial_cache_is_refused(dataset, tmp_path):
    ds = open_dataset(dataset)
    cache, _ = _build(ds, tmp_path / "c")
    key = cache.key
    assert open_cache(tmp_path / "c", key)[1] == "hit"
    assert open_cache(tmp_path / "c", "0" * 64)[0] is None  # another key
    label = tmp_path / "c" / cache.entries[ds.cases[1].case_id].label
    data = label.read_bytes()
    label.write_bytes(data[:-10])  # truncated .npy
    got, why = open_cache(tmp_path / "c", key)
    assert got is None and "truncated" in why
    label.write_bytes(data[:128] + data[128:])  # whole again
    assert open_cache(tmp_path / "c", key)[1] == "hit"
    image = tmp_path / "c" / cache.entries[ds.cases[0].case_id].image
    image.write_bytes(b"\x93NUMPY garbage" + b"\0" * (image.stat().st_size - 14))
    got, why = open_cache(tmp_path / "c", key)
    assert got is None and "header" in why
    (tmp_path / "c" / MANIFEST_NAME).unlink()
    got, why = open_cache(tmp_path / "c", key)
    assert got is None and "no manifest" in why
    (tmp_path / "c" / MANIFEST_NAME).write_text("{not json")
    assert "unreadable manifest" in open_cache(tmp_path / "c", key)[1]


def _cfg(dataset, out: Path, cache: bool, **data) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.data.dataset = str(dataset)
    cfg.data.val_fraction = 0.4
    cfg.data.cache = cache
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.output_dir = str(out)
    cfg.model.options = {"channels": [4, 8]}
    cfg.train.epochs = 2
    cfg.train.steps_per_epoch = 2
    cfg.train.batch_size = 2
    cfg.train.patch_size = [16, 16, 16]
    cfg.train.device = "cpu"
    cfg.train.precision = "fp32"
    cfg.train.calibrate = False
    return cfg


def test_prepare_hits_rebuilds_and_equals_in_memory(dataset, tmp_path):
    logs: list[str] = []
    cached = prepare_data(_cfg(dataset, tmp_path / "runs" / "a", True), log=logs.append)
    assert any("cache miss" in s for s in logs)
    folder = default_cache_root(tmp_path / "runs" / "a")
    assert folder == (tmp_path / "runs" / ".medseg_cache").resolve()
    (sub,) = folder.iterdir()
    logs.clear()
    again = prepare_data(_cfg(dataset, tmp_path / "runs" / "b", True), log=logs.append)
    assert any("cache hit" in s for s in logs)
    mem = prepare_data(_cfg(dataset, tmp_path / "runs" / "c", False), log=lambda s: None)
    for d in (cached, again):
        assert d.plan == mem.plan and d.train_ids == mem.train_ids and d.val_ids == mem.val_ids
        assert d.summary == mem.summary and d.patch_size == mem.patch_size
        for a, b in zip(d.train_images, mem.train_images, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(d.val_labels, mem.val_labels, strict=True):
            assert a.dtype == np.uint8 and b.dtype == np.int64 and np.array_equal(a, b)
        for a, b in zip(d.train_affines, mem.train_affines, strict=True):
            assert np.array_equal(a, b)
    # a truncated file is detected and rebuilt, not trusted
    victim = sub / "case_00003_image.npy"
    victim.write_bytes(victim.read_bytes()[:200])
    logs.clear()
    rebuilt = prepare_data(_cfg(dataset, tmp_path / "runs" / "d", True), log=logs.append)
    assert any("cache miss" in s and "case_00003_image.npy" in s for s in logs)
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.train_images, mem.train_images,
                                                     strict=True))
    # a changed plan setting builds another cache folder
    cfg = _cfg(dataset, tmp_path / "runs" / "e", True)
    cfg.preprocess.normalization = "minmax_zscore"
    logs.clear()
    prepare_data(cfg, log=logs.append)
    assert any("cache miss" in s for s in logs) and len(list(folder.iterdir())) == 2
    # a touched input file builds another one too; the untouched settings then hit it
    img = Path(mem.dataset.cases[0].images[0])
    st = img.stat()
    try:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        logs.clear()
        prepare_data(_cfg(dataset, tmp_path / "runs" / "f", True), log=logs.append)
        assert any("cache miss" in s for s in logs) and len(list(folder.iterdir())) == 3
    finally:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    logs.clear()
    prepare_data(_cfg(dataset, tmp_path / "runs" / "g", True), log=logs.append)
    assert any("cache hit" in s for s in logs)


def test_sampler_patches_from_memmap_equal_in_memory(dataset, tmp_path):
    ds = open_dataset(dataset)
    cache, plan = _build(ds, tmp_path / "c")
    ids = [c.case_id for c in ds.cases]
    mem_x = [owned_array(a, np.float32) for a in cache.images(ids)]
    mem_y = [owned_array(a, np.int64) for a in cache.labels(ids)]
    kw = dict(patch_size=(16, 24, 12), batch_size=3, fg_oversample=0.5, seed=7)
    a = PatchSampler(mem_x, mem_y, **kw)
    lazy_x = cache.images(ids)
    b = PatchSampler(lazy_x, cache.labels(ids), pad_values=lazy_x.channel_min, **kw)
    for _ in range(6):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and yb.dtype == torch.int64
        assert a.last_cases == b.last_cases
    # the lazy sampler keeps no array: only the small per-case index tables
    assert b.images is lazy_x and all(isinstance(t, dict | type(None)) for t in b.fg_indices)
    for t in b.fg_indices:
        for idx in (t or {}).values():
            assert idx.dtype == np.int32


def test_training_with_cache_on_and_off_is_identical(dataset, tmp_path):
    on_cfg, off_cfg = _cfg(dataset, tmp_path / "on", True), _cfg(dataset, tmp_path / "off", False)
    for cfg in (on_cfg, off_cfg):
        cfg.train.epochs, cfg.train.steps_per_epoch = 1, 3
    on = train(on_cfg, log=lambda s: None)
    off = train(off_cfg, log=lambda s: None)
    assert on.best_metric == off.best_metric
    wa = torch.load(tmp_path / "on" / "checkpoint_last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "off" / "checkpoint_last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    plan = json.loads((tmp_path / "on" / "plan.json").read_text())
    assert plan == json.loads((tmp_path / "off" / "plan.json").read_text())


def test_config_refuses_negative_workers_and_other_tasks_refuse_cache_settings():
    with pytest.raises(ConfigError, match="data.workers"):
        DataConfig(workers=-1)
    cfg = ExperimentConfig.from_dict({"task": "classification", "data": {"cache": False}})
    from medseg.tasks import get_task

    with pytest.raises(ConfigError, match="data.cache"):
        get_task("classification").check_config(cfg)
    seg = ExperimentConfig.from_dict({"data": {"cache": False, "workers": 2,
                                               "cache_dir": "/tmp/x"}})
    get_task("segmentation").check_config(seg)
    assert dataclasses.asdict(seg.data)["workers"] == 2
