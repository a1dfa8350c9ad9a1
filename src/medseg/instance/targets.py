"""Instance label map -> 3-class semantic target (background / interior / boundary).

The boundary is computed per instance: a voxel of instance ``k`` is a boundary voxel when a
voxel within ``width`` steps (city-block distance, i.e. a diamond / octahedron footprint) carries
a different label, background or another instance. Two touching instances therefore each get
their own boundary band and the interiors are separated, which is what lets the watershed of
:mod:`medseg.instance.postprocess` split them again. The image border is *not* a boundary
(objects cut by the field of view keep their interior up to the edge).

Every function is vectorised (min / max filters, one distance transform) and works in 2D and 3D.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: The label table of the semantic targets (name -> value).
TARGET_LABELS = {"background": BACKGROUND, "interior": INTERIOR, "boundary": BOUNDARY}


def _check_map(instance_map: np.ndarray) -> np.ndarray:
    a = np.asarray(instance_map)
    if a.ndim not in (2, 3):
        raise ValueError(f"instance map must be 2D or 3D, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"instance map must be integer, got {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError("instance ids must be >= 0 (0 = background)")
    return a.astype(np.int64, copy=False)


def _footprint(ndim: int, width: int) -> np.ndarray:
    return ndi.iterate_structure(ndi.generate_binary_structure(ndim, 1), width)


def instance_boundaries(instance_map: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary band of every instance.

    Args:
        instance_map: ``(*spatial)`` integer map, 0 = background, ``k > 0`` = instance ``k``.
        width: Band thickness in voxels (city-block distance to a differently labelled voxel).

    Returns:
        ``(*spatial)`` bool, True on instance voxels that lie within ``width`` of another label.
    """
    lab = _check_map(instance_map)
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    fp = _footprint(lab.ndim, width)
    hi = ndi.maximum_filter(lab, footprint=fp, mode="nearest")
    lo = ndi.minimum_filter(lab, footprint=fp, mode="nearest")
    return (lab > 0) & (hi != lo)


def instance_to_semantic(instance_map: np.ndarray, width: int = 1,
                         keep_small: bool = True) -> np.ndarray:
    """The 3-class training target of an instance label map.

    Args:
        instance_map: ``(*spatial)`` integer map, 0 = background.
        width: Boundary thickness (see :func:`instance_boundaries`).
        keep_small: An instance thinner than ``2 * width`` would be all boundary and could never
            be seeded; with ``keep_small`` its deepest voxel (largest distance to another label)
            is marked interior so every instance keeps a seed.

    Returns:
        ``(*spatial)`` uint8 with 0 background, 1 interior, 2 boundary.
    """
    lab = _check_map(instance_map)
    bnd = instance_boundaries(lab, width)
    out = np.zeros(lab.shape, dtype=np.uint8)
    out[lab > 0] = INTERIOR
    out[bnd] = BOUNDARY
    if keep_small and lab.max(initial=0) > 0:
        inner = np.bincount(lab[out == INTERIOR], minlength=int(lab.max()) + 1)
        present = np.bincount(lab.ravel(), minlength=int(lab.max()) + 1) > 0
        lost = np.flatnonzero(present & (inner == 0))
        lost = lost[lost > 0]
        if lost.size:
            depth = boundary_distance_map(lab, normalise=False)
            objs = ndi.find_objects(lab)
            for k in lost:
                sl = objs[k - 1]
                d = np.where(lab[sl] == k, depth[sl], -1.0)
                idx = np.unravel_index(int(np.argmax(d)), d.shape)
                out[sl][idx] = INTERIOR
    return out


def boundary_distance_map(instance_map: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Euclidean distance of each instance voxel to the nearest voxel of another label.

    Args:
        instance_map: ``(*spatial)`` integer map, 0 = background.
        normalise: Divide by each instance's maximum so values lie in ``(0, 1]`` per instance.

    Returns:
        ``(*spatial)`` float32, 0 on background; an isolated voxel has distance 1.
    """
    lab = _check_map(instance_map)
    if lab.max(initial=0) == 0:
        return np.zeros(lab.shape, dtype=np.float32)
    # a voxel whose 1-neighbourhood holds another label is at distance 1 from it; the rest
    # measure the distance to those edge voxels (+1)
    edge = instance_boundaries(lab, 1) | (lab == 0)
    dist = ndi.distance_transform_edt(~edge).astype(np.float32) + 1.0
    dist[lab == 0] = 0.0
    if normalise:
        ids = np.arange(int(lab.max()) + 1)
        mx = np.asarray(ndi.maximum(dist, lab, ids), dtype=np.float32)
        mx[0] = 1.0
        mx[mx == 0] = 1.0
        dist = dist / mx[lab]
    return dist.astype(np.float32)
