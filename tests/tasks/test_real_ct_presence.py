"""Derived multi-label organ-presence set from the real TotalSegmentator CT (skipped without
../shared/data): labels agree with the segmentation, missing entries are -1 and are read as
missing by the classification loader."""

from __future__ import annotations

import numpy as np

from helpers import load_example
from medseg.data.classification import MISSING, load_classification_csv
from medseg.io import read_image, read_label


def _module():
    return load_example("ct_organ_presence/make_dataset.py", "ct_presence")


def test_derived_labels_match_the_segmentation(shared_data, tmp_path):
    mod = _module()
    src = shared_data / "ct_totalseg"
    table = mod.make(src, tmp_path, missing=0.2, seed=0)
    ds = load_classification_csv(table)
    assert ds.task == "multi" and list(ds.class_names) == list(mod.ORGANS)
    seg, _ = read_label(src / "example_seg.nii.gz")
    y = ds.labels()
    assert y.shape == (seg.shape[0], 4)
    observed = y != MISSING
    assert 0.12 < 1 - observed.mean() < 0.28  # about 20% written as missing
    for k, values in enumerate(mod.ORGANS.values()):
        truth = np.array([np.isin(seg[x], values).sum() >= 20 for x in range(seg.shape[0])])
        assert np.array_equal(y[observed[:, k], k], truth[observed[:, k]].astype(y.dtype))
    # a slice keeps its HU values and the plane's geometry
    ct, meta = read_image(src / "example_ct_sm.nii.gz")
    sl, smeta = read_image(tmp_path / "images" / "sag_050.nii.gz")
    assert np.array_equal(sl[0], ct[0, 50])
    assert np.allclose(smeta.affine[:3, 3], meta.affine[:3, 3] + 50 * meta.affine[:3, 0])
    assert set(ds.splits()) == {"train", "val"}
