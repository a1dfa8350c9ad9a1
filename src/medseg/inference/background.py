"""Which voxels are background before any network runs: the rule of window skipping.

A sliding window is skipped (:func:`medseg.inference.sliding_window.sliding_window_inference`
with ``background``) when *every* voxel of it is background by this rule, decided on the image
**as read, before normalisation**:

* a **CT** channel (modality ``CT``, or a ``ct`` / ``ct_vst`` normalisation) is background
  where it is at or below ``air_hu`` (default -900 HU: air is about -1000 HU, aerated lung
  -500 to -900 HU and every tissue above that, so only air, what surrounds the table and the
  scanner's out-of-field padding fall below);
* **any other** channel is background where it equals the image's minimum of that channel (the
  zero padding outside an MR field of view, the black surround of an ultrasound sector); a
  channel with one value everywhere is background everywhere;
* a voxel is background when all of its channels are.

The raw mask is then brought onto the network's grid by the plan's own resampling (linear), and
a voxel of that grid counts as background only where every raw voxel it interpolates from is
background (interpolated value 1). The decision is taken before the normalisation because the
CT normalisation clips below the foreground's 0.5th percentile (often above -900 HU), after
which air and clipped tissue look alike.

Skipping changes the output only where the network would not have predicted the background
class with probability 1 inside such a window; ``benchmarks/bench_precision.py --real-ct``
measures the difference of the label maps on real CT volumes (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from medseg.data.preprocess import ChannelNorm, PreprocessPlan, preprocess_image
from medseg.io.meta import ImageMeta

#: Default air threshold of the CT rule, in Hounsfield units.
AIR_HU = -900.0


def is_ct(norm: ChannelNorm) -> bool:
    """Whether a channel follows the CT rule (modality CT or a CT normalisation)."""
    return (norm.modality or "").upper() == "CT" or norm.scheme in ("ct", "ct_vst")


def raw_background(image: np.ndarray, norms: list[ChannelNorm],
                   air_hu: float = AIR_HU) -> np.ndarray:
    """The background mask of an image as read, by the module's rule.

    Args:
        image: ``(C, *spatial)`` raw intensities (HU for CT).
        norms: One :class:`~medseg.data.preprocess.ChannelNorm` per channel (its modality /
            scheme picks the rule).
        air_hu: The CT air threshold.

    Returns:
        ``(*spatial)`` bool, true where every channel is background.

    Raises:
        ValueError: ``norms`` does not have one entry per channel.
    """
    if len(norms) != image.shape[0]:
        raise ValueError(f"norms must have one entry per channel ({image.shape[0]}), got "
                         f"{len(norms)}")
    mask = np.ones(image.shape[1:], dtype=bool)
    for c, norm in enumerate(norms):
        mask &= image[c] <= (air_hu if is_ct(norm) else image[c].min())
    return mask


def background_mask(image: np.ndarray, meta: ImageMeta, plan: PreprocessPlan,
                    air_hu: float = AIR_HU) -> torch.Tensor:
    """The background mask on the network's grid (the grid of ``preprocess_image``).

    Args:
        image: ``(C, *spatial)`` as read by :func:`medseg.io.read_image`.
        meta: Its geometry.
        plan: The model's preprocessing plan.
        air_hu: The CT air threshold.

    Returns:
        ``(*spatial')`` bool tensor, true where the voxel and every raw voxel it is
        interpolated from are background.
    """
    raw = raw_background(image, plan.normalization, air_hu).astype(np.float32)
    indicator = np.broadcast_to(raw, image.shape).copy()  # the plan checks the channel count
    none = dataclasses.replace(plan, normalization=[ChannelNorm("none")] * plan.in_channels)
    grid, _ = preprocess_image(indicator, meta, none)
    return torch.from_numpy(np.ascontiguousarray(grid[0] >= 1.0 - 1e-6))
