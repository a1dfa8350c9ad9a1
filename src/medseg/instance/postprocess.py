"""Class probabilities (background / interior / boundary) -> instances, by seeded watershed.

Steps, in 2D and 3D:

0. optionally (``smooth_sigma > 0``) the interior and boundary probabilities are smoothed with a
   Gaussian of that sigma in voxels, so that speckle in the boundary probability inside a
   faint, textured object does not cut it into several seeds;
1. seeds: connected components (face connectivity) of ``p_interior - boundary_weight *
   p_boundary > seed_threshold`` (a positive ``boundary_weight`` cuts seeds apart where
   touching objects meet); seeds smaller than ``min_seed_size`` voxels are dropped (noise would
   otherwise split objects);
2. foreground: ``p_interior + p_boundary > fg_threshold``;
3. flood the seeds over the foreground with a watershed on ``-p_interior`` (``flood =
   "probability"``) or on the negated distance transform of the foreground (``"distance"``);
4. instances smaller than ``min_size`` voxels are removed, ids renumbered ``1..N`` in the order
   of their seeds (raster order of each seed's first voxel);
5. every instance gets a score, the mean foreground probability over its voxels, and a class:
   1, or the majority vote of a semantic class map when one is given.

Foreground without a seed stays background. N = 0 is a valid result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from medseg.tasks import InstanceSet


@dataclass
class PostprocessParams:
    """Tunable thresholds of :func:`probs_to_instance_map`.

    Attributes:
        seed_threshold: Interior probability above which a voxel may seed an instance.
        fg_threshold: Interior + boundary probability above which a voxel is foreground.
        min_seed_size: Seeds with fewer voxels are discarded.
        min_size: Instances with fewer voxels after flooding are discarded.
        flood: ``"probability"`` (flood on ``-p_interior``) or ``"distance"`` (on the negated
            Euclidean distance to the background).
        boundary_weight: Weight ``w >= 0`` of the boundary probability subtracted from the
            interior probability before seeding (``0``: seeds from ``p_interior`` alone).
        smooth_sigma: Gaussian sigma in voxels applied to the interior and boundary
            probabilities before everything else (``0``: none). Instance scores are taken
            from the unsmoothed probabilities.
    """

    seed_threshold: float = 0.5
    fg_threshold: float = 0.5
    min_seed_size: int = 4
    min_size: int = 10
    flood: str = "probability"
    boundary_weight: float = 0.0
    smooth_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not self.boundary_weight >= 0.0:  # also NaN
            raise ValueError(f"boundary_weight must be >= 0, got {self.boundary_weight}")
        if not 0.0 <= self.smooth_sigma < float("inf"):  # also NaN
            raise ValueError(f"smooth_sigma must be >= 0 and finite, got {self.smooth_sigma}")
        if not (0.0 <= self.seed_threshold <= 1.0 and 0.0 <= self.fg_threshold <= 1.0):
            raise ValueError("seed_threshold and fg_threshold must lie in [0, 1]")
        if self.min_seed_size < 0 or self.min_size < 0:
            raise ValueError("min_seed_size and min_size must be >= 0")
        if self.flood not in ("probability", "distance"):
            raise ValueError(f"flood must be 'probability' or 'distance', got {self.flood!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; ``boundary_weight`` and ``smooth_sigma`` only when they are used
        (non-zero), so records of runs without them keep their earlier form (``plan.json``,
        ``*_instances.json``)."""
        d = asdict(self)
        for optional in ("boundary_weight", "smooth_sigma"):
            if not d[optional]:
                del d[optional]
        return d


def as_probs(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(3, *spatial)`` float32 numpy probabilities of a tensor or array.

    Raises:
        ValueError: not 3 channels (background, interior, boundary) of a 2D or 3D image.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if p.ndim not in (3, 4) or p.shape[0] != 3:
        raise ValueError(f"expected (3, *spatial) probabilities (background, interior, "
                         f"boundary), got shape {p.shape}")
    return p.astype(np.float32, copy=False)


def relabel_by_size(lab: np.ndarray, min_size: int) -> np.ndarray:
    """Drop components smaller than ``min_size`` and renumber the rest ``1..N`` in id order."""
    n = int(lab.max(initial=0))
    if n == 0:
        return lab
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[lab]


def probs_to_instance_map(probs: np.ndarray | torch.Tensor,
                          params: PostprocessParams | None = None) -> np.ndarray:
    """Seeded watershed of 3-class probabilities.

    Args:
        probs: ``(3, *spatial)`` probabilities of background, interior, boundary.
        params: Thresholds (defaults: :class:`PostprocessParams`).

    Returns:
        ``(*spatial)`` int64 instance map, 0 background, instances ``1..N``.
    """
    prm = params or PostprocessParams()
    p = smooth_probs(as_probs(probs), prm.smooth_sigma)
    return relabel_by_size(flood_seeds(p, prm), prm.min_size)


def smooth_probs(probs: np.ndarray, sigma: float) -> np.ndarray:
    """``(3, *spatial)`` probabilities with the interior and boundary maps Gaussian-smoothed
    (``sigma`` in voxels; ``0`` returns ``probs`` itself). The background map is not used by
    the watershed and is left as it is."""
    if not sigma:
        return probs
    out = probs.copy()
    for c in (1, 2):
        out[c] = ndi.gaussian_filter(probs[c], float(sigma), mode="nearest")
    return out


def flood_seeds(p: np.ndarray, prm: PostprocessParams) -> np.ndarray:
    """Steps 1-3 of :func:`probs_to_instance_map` (no smoothing, no ``min_size``): the
    watershed label map of the seeds, ids in seed order with gaps where nothing flooded.

    Args:
        p: ``(3, *spatial)`` float32 probabilities (already smoothed when that is wanted).
        prm: The thresholds (``smooth_sigma`` and ``min_size`` are not used here).

    Returns:
        ``(*spatial)`` int64 labels, 0 background.
    """
    interior = p[1]
    fg = (p[1] + p[2]) > prm.fg_threshold
    conn = ndi.generate_binary_structure(interior.ndim, 1)
    seed_map = interior - prm.boundary_weight * p[2] if prm.boundary_weight else interior
    seeds, _ = ndi.label((seed_map > prm.seed_threshold) & fg, structure=conn)
    seeds = relabel_by_size(seeds, prm.min_seed_size)
    if seeds.max(initial=0) == 0:
        return np.zeros(interior.shape, dtype=np.int64)
    if prm.flood == "probability":
        surface = -interior
    else:
        surface = -ndi.distance_transform_edt(fg).astype(np.float32)
    return np.asarray(watershed(surface, markers=seeds, mask=fg, connectivity=1),
                      dtype=np.int64)


def instance_scores(instance_map: np.ndarray, probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(N,)`` mean foreground probability (interior + boundary) of instances ``1..N``."""
    p = as_probs(probs)
    n = int(instance_map.max(initial=0))
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    fgp = np.clip(p[1] + p[2], 0.0, 1.0)
    s = np.asarray(ndi.mean(fgp, instance_map, np.arange(1, n + 1)), dtype=np.float32)
    return np.clip(np.nan_to_num(s, nan=0.0), 0.0, 1.0)


def probs_to_instances(probs: np.ndarray | torch.Tensor, params: PostprocessParams | None = None,
                       semantic: np.ndarray | torch.Tensor | None = None) -> InstanceSet:
    """Class probabilities -> :class:`~medseg.tasks.InstanceSet` (N may be 0).

    Args:
        probs: ``(3, *spatial)`` probabilities of background, interior, boundary.
        params: Post-processing thresholds.
        semantic: Optional ``(*spatial)`` integer class map; each instance takes the majority
            class of its voxels (ties: the smaller class). Without it every class is 1.

    Returns:
        Instances ``1..N`` of :func:`probs_to_instance_map` with scores (mean foreground
        probability) and classes.
    """
    lab = probs_to_instance_map(probs, params)
    scores = instance_scores(lab, probs)
    sem = None
    if semantic is not None:
        sem = torch.as_tensor(np.asarray(semantic.cpu() if isinstance(semantic, torch.Tensor)
                                         else semantic)).to(torch.int64)
    return InstanceSet.from_label_map(torch.from_numpy(lab), semantic=sem,
                                      scores=torch.from_numpy(scores))
