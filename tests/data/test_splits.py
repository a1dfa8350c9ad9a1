"""Case splits: by subject, and K folds stratified by label and grouped by subject."""

from __future__ import annotations

from collections import Counter

import pytest

from medseg.data.splits import assign_folds, fold_split
from medseg.errors import ConfigError


def test_folds_are_grouped_stratified_deterministic_and_cover_every_case_once():
    ids = [f"{s:03d}_{k}" for s in range(40) for k in range(3)]  # 40 subjects, 3 images each
    label = {f"{s:03d}": int(s % 4 == 0) for s in range(40)}  # 10 positive subjects of 40
    strata = [label[i[:3]] for i in ids]
    f = assign_folds(ids, 5, seed=3, group_regex=r"^(\d+)_", strata=strata)
    assert f == assign_folds(ids, 5, seed=3, group_regex=r"^(\d+)_", strata=strata)
    assert f != assign_folds(ids, 5, seed=4, group_regex=r"^(\d+)_", strata=strata)
    assert set(f) == set(ids) and set(f.values()) == set(range(5))
    for s in range(40):  # a subject never spans two folds
        assert len({f[f"{s:03d}_{k}"] for k in range(3)}) == 1
    per_fold = Counter(f.values())
    assert set(per_fold.values()) == {24}  # 8 subjects x 3 images in every fold
    pos = Counter(f[i] for i, y in zip(ids, strata, strict=True) if y)
    assert set(pos.values()) == {6}  # 2 positive subjects x 3 images in every fold
    # the K validation sets partition the cases: every case is out of fold exactly once
    seen = Counter()
    for k in range(5):
        tr, va = fold_split(ids, 5, k, seed=3, group_regex=r"^(\d+)_", strata=strata)
        assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(ids)
        seen.update(va)
    assert set(seen.values()) == {1} and len(seen) == len(ids)


def test_fold_errors():
    with pytest.raises(ConfigError, match="train.folds must lie in"):
        assign_folds(["a", "b"], 3, 0)
    with pytest.raises(ConfigError, match="fold 5 does not exist"):
        fold_split(["a", "b", "c"], 3, 5, 0)
