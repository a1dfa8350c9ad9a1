"""Splitting cases by subject, and patch sizes that fit the data and the network."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError, InputError


def split_cases(ids: list[str], val_fraction: float, seed: int,
                group_regex: str | None = None) -> tuple[list[str], list[str]]:
    """Split case ids into train / validation, keeping each group (subject) on one side.

    Args:
        ids: Case ids.
        val_fraction: Target share of cases in validation (``0`` = none).
        seed: Shuffle seed.
        group_regex: Regex whose first capture group is the subject id; ``None`` = each case is
            its own subject.

    Returns:
        ``(train_ids, val_ids)``, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[str]] = {}
    pat = re.compile(group_regex) if group_regex else None
    for cid in ids:
        key = cid
        if pat is not None:
            m = pat.search(cid)
            if m is None:
                raise ConfigError(f"data.group_regex {group_regex!r} does not match case {cid!r}")
            key = m.group(1) if m.groups() else m.group(0)
        groups.setdefault(key, []).append(cid)
    if val_fraction == 0 or len(groups) < 2:
        return list(ids), []
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val_target = max(1, round(val_fraction * len(ids)))
    val: set[str] = set()
    for k in keys:
        if len(val) >= n_val_target or len(val) + len(groups[k]) > len(ids) - 1:
            break
        val.update(groups[k])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def auto_patch_size(median_shape: tuple[int, ...], divisor: tuple[int, ...] | int,
                    max_voxels: int) -> tuple[int, ...]:
    """A patch no larger than the median image, at most ``max_voxels``, divisible by ``divisor``.

    The axis whose patch covers the largest share of the median image is shrunk first, one
    divisor step at a time, so the patch keeps the data's aspect ratio.
    """
    nd = len(median_shape)
    div = (divisor,) * nd if isinstance(divisor, int) else tuple(divisor)
    p = [max(d, int(math.ceil(s / d) * d)) for s, d in zip(median_shape, div, strict=True)]
    while math.prod(p) > max_voxels:
        share = [pi / max(si, 1) for pi, si in zip(p, median_shape, strict=True)]
        i = int(np.argmax(share))
        if p[i] <= div[i]:
            break
        p[i] -= div[i]
    return tuple(p)


def subject_of(case_id: str, group_regex: str | None) -> str:
    """The subject (group) of a case: the regex's first group, or the case itself."""
    if not group_regex:
        return case_id
    m = re.compile(group_regex).search(case_id)
    if m is None:
        raise ConfigError(f"data.group_regex {group_regex!r} does not match case {case_id!r}")
    return m.group(1) if m.groups() else m.group(0)


def case_subjects(ids: Sequence[str], group_regex: str | None, source: str | Path
                  ) -> list[str] | None:
    """The subject of each case for intervals that resample subjects (``evaluate
    --group-regex``), or ``None`` without a regex.

    Raises:
        InputError: the regex is invalid or does not match a case (naming ``source``).
    """
    if not group_regex:
        return None
    try:
        return [subject_of(str(i), group_regex) for i in ids]
    except ConfigError as e:
        raise InputError(str(e).replace("data.group_regex", "--group-regex"), source,
                         "give a regex that matches every case name (its first group is "
                         "the subject)") from None
    except re.error as e:
        raise InputError(f"--group-regex {group_regex!r} is not a regular expression ({e})",
                         source, "fix the regex") from None


def assign_folds(ids: list[str], k: int, seed: int, group_regex: str | None = None,
                 strata: list[object] | None = None) -> dict[str, int]:
    """K-fold assignment, grouped by subject and stratified by label, deterministic by seed.

    Every subject lands in exactly one fold (its cases together). With ``strata`` (one label
    per case, e.g. the class of a single-label case or a tuple of a multi-label case's labels)
    subjects are taken stratum by stratum (a subject's stratum is its most frequent one), shuffled
    within each, and dealt to the fold that currently holds the fewest cases of that stratum
    (ties: the fold with fewer cases, then the lower index) — so every fold gets about ``1/k``
    of each stratum and of the cases.

    Args:
        ids: Case ids.
        k: Number of folds, ``2 <= k <= number of subjects``.
        seed: Shuffle seed.
        group_regex: Subject id regex (see :func:`split_cases`).
        strata: Optional label per case (same order as ``ids``).

    Returns:
        ``{case id: fold}`` with folds ``0 .. k-1``.

    Raises:
        ConfigError: ``k`` out of range or ``strata`` of another length.
    """
    groups: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        groups.setdefault(subject_of(cid, group_regex), []).append(i)
    if not 2 <= k <= len(groups):
        raise ConfigError(f"train.folds must lie in [2, {len(groups)}] (the number of subjects), "
                          f"got {k}")
    if strata is not None and len(strata) != len(ids):
        raise ConfigError("one stratum per case is needed")
    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)

    def stratum(g: str) -> str:
        if strata is None:
            return ""
        vals = [repr(strata[i]) for i in groups[g]]
        return max(sorted(set(vals)), key=vals.count)

    by_stratum: dict[str, list[str]] = {}
    for g in keys:
        by_stratum.setdefault(stratum(g), []).append(g)
    per_fold = [0] * k
    per_fold_stratum: dict[str, list[int]] = {s: [0] * k for s in by_stratum}
    fold_of: dict[str, int] = {}
    for s in sorted(by_stratum):
        for g in by_stratum[s]:
            f = min(range(k), key=lambda j: (per_fold_stratum[s][j], per_fold[j], j))
            n = len(groups[g])
            per_fold[f] += n
            per_fold_stratum[s][f] += n
            for i in groups[g]:
                fold_of[ids[i]] = f
    return fold_of


def fold_split(ids: list[str], k: int, fold: int, seed: int, group_regex: str | None = None,
               strata: list[object] | None = None) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)`` of fold ``fold`` of :func:`assign_folds`, input order."""
    if not 0 <= fold < k:
        raise ConfigError(f"fold {fold} does not exist with {k} folds")
    f = assign_folds(ids, k, seed, group_regex, strata)
    return [i for i in ids if f[i] != fold], [i for i in ids if f[i] == fold]
