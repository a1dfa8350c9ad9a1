"""Splitting cases by subject, and patch sizes that fit the data and the network."""

from __future__ import annotations

import math
import random
import re

import numpy as np

from medseg.errors import ConfigError


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
