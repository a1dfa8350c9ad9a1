"""On-disk data types: which one a writer uses, and safe casts to it (no silent wrap-around)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError

_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)
_SIGNED = (np.int8, np.int16, np.int32, np.int64)


def is_integral(array: np.ndarray) -> bool:
    """True when every value of ``array`` is a finite whole number (always for integer dtypes)."""
    a = np.asarray(array)
    if a.dtype.kind in "biu":
        return True
    if a.dtype.kind != "f":
        return False
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))


def smallest_int_dtype(array: np.ndarray, unsigned_only: bool = False) -> np.dtype | None:
    """The smallest integer dtype holding every value of an integral ``array``.

    Unsigned types are used when the minimum is ``>= 0``, signed ones otherwise. Returns ``None``
    when no candidate fits (or when ``unsigned_only`` and a value is negative). An empty array
    gives ``uint8``.
    """
    a = np.asarray(array)
    if a.size == 0:
        return np.dtype(np.uint8)
    lo, hi = a.min(), a.max()
    if lo < 0 and unsigned_only:
        return None
    for t in _UNSIGNED if lo >= 0 else _SIGNED:
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return np.dtype(t)
    return None


def cast_checked(array: np.ndarray, dtype: np.dtype | str, path: Path) -> np.ndarray:
    """Cast ``array`` to ``dtype``; floats going to an integer type are rounded to nearest.

    Raises:
        InputError: an integer target cannot hold the values (NaN/inf or out of range).
    """
    target = np.dtype(dtype)
    a = np.asarray(array)
    if target.kind in "iu":
        if a.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:
                raise InputError(
                    f"cannot store {bad} NaN/inf values as {target.name}",
                    path,
                    "replace them first, or write a float dtype (e.g. dtype='float32')",
                )
            a = np.rint(a)
        if a.size:
            info = np.iinfo(target)
            lo, hi = a.min(), a.max()
            if lo < info.min or hi > info.max:
                raise InputError(
                    f"values span [{lo}, {hi}], outside the range of {target.name} "
                    f"[{info.min}, {info.max}]",
                    path,
                    "rescale the array or choose a wider dtype",
                )
    elif a.dtype.kind == "c":
        raise InputError("complex arrays cannot be written", path, "write the magnitude or parts")
    return a.astype(target, copy=False)


def default_write_dtype(array: np.ndarray, keep: str | None) -> np.dtype:
    """The dtype a writer uses when the caller gives none.

    * booleans -> ``uint8``;
    * integer arrays -> ``keep`` if it is an integer type that holds them, else the smallest
      fitting integer type (``int64`` only when nothing smaller fits);
    * float arrays whose values are all whole numbers and fit ``keep`` (an integer on-disk type,
      e.g. ``ImageMeta.dtype == "int16"`` for a CT read from disk) -> ``keep``;
    * anything else -> ``float32``.
    """
    a = np.asarray(array)
    if a.dtype.kind == "b":
        return np.dtype(np.uint8)
    keep_dt = np.dtype(keep) if keep else None
    if keep_dt is not None and keep_dt.kind in "iu" and is_integral(a):
        if a.size == 0:
            return keep_dt
        info = np.iinfo(keep_dt)
        if info.min <= a.min() and a.max() <= info.max:
            return keep_dt
    if a.dtype.kind in "iu":
        return smallest_int_dtype(a) or a.dtype
    return np.dtype(np.float32)
