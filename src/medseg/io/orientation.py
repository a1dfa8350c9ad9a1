"""Matching voxel orders: the same world grid stored with axes permuted or flipped."""

from __future__ import annotations

import numpy as np

from medseg.errors import InputError
from medseg.io.meta import ImageMeta


def reorient_like(
    array: np.ndarray, meta: ImageMeta, target: ImageMeta, atol: float = 1e-3
) -> tuple[np.ndarray, ImageMeta]:
    """Permute and flip the spatial axes of ``array`` so its voxels line up with ``target``'s grid.

    Two readers can store one voxel grid in different index orders (a DICOM series read
    ITK-style vs. dcm2niix's row-flipped NIfTI, or an LPS vs. RAS export). When
    ``inv(target.affine) @ meta.affine`` is a signed permutation plus a shift that maps the grid
    onto ``target``'s, this returns the array in ``target``'s index order; no interpolation.

    Args:
        array: ``(C, *spatial)`` or ``(*spatial)``, spatial shape ``meta.spatial_shape``.
        meta: Geometry of ``array``.
        target: The grid to match.
        atol: Tolerance in voxels on the index mapping (and hence ~mm for mm-sized voxels).

    Returns:
        ``(array in target order, same layout as given; meta with target's affine and shape)``.

    Raises:
        InputError: the grids are not the same up to axis permutation and flips (resample
            instead).
    """
    d = meta.ndim
    if target.ndim != d:
        raise InputError(f"cannot match a {d}D grid to a {target.ndim}D grid", None)
    a = np.asarray(array)
    has_channel = a.ndim == d + 1
    if tuple(a.shape[-d:]) != meta.spatial_shape:
        raise ValueError(f"array shape {a.shape} does not match meta {meta.spatial_shape}")
    m = np.linalg.inv(target.affine) @ meta.affine  # our index -> target index
    rot = m[:d, :d]
    perm = np.abs(rot).argmax(axis=0)  # target axis of each of our axes
    signed = np.zeros_like(rot)
    signed[perm, np.arange(d)] = np.sign(rot[perm, np.arange(d)])
    ok = (
        len(set(perm.tolist())) == d
        and np.allclose(rot, signed, atol=atol)
        and all(meta.spatial_shape[i] == target.spatial_shape[perm[i]] for i in range(d))
    )
    if ok:
        shift = m[:d, 3]
        for i in range(d):
            t = perm[i]
            expect = 0.0 if signed[t, i] > 0 else meta.spatial_shape[i] - 1.0
            ok = ok and abs(shift[t] - expect) <= atol
    if not ok:
        raise InputError(
            "the two images are not on the same voxel grid (not even up to axis order and flips)",
            target.source[0] if target.source else None,
            "resample one onto the other's grid instead",
        )
    out = a
    off = 1 if has_channel else 0
    for i in range(d):
        if signed[perm[i], i] < 0:
            out = np.flip(out, axis=off + i)
    # our axis i goes to target axis perm[i]: output axis perm[i] is our axis i
    inv = np.argsort(perm)
    axes = ([0] if has_channel else []) + [off + int(j) for j in inv]
    out = np.ascontiguousarray(np.transpose(out, axes))
    new_meta = ImageMeta(
        affine=target.affine.copy(),
        spatial_shape=target.spatial_shape,
        modality=meta.modality,
        source=meta.source,
        dtype=meta.dtype,
        extra=dict(meta.extra),
    )
    return out, new_meta
