"""Tensor transforms for 2D and 3D: resampling and batch augmentation.

:mod:`medseg.transforms.functional` holds the pure functions; :class:`Augmenter` composes them
with its own random generator; :mod:`medseg.transforms.resample` moves arrays between grids.
"""

from medseg.transforms import functional
from medseg.transforms.augment import AugmentConfig, Augmenter
from medseg.transforms.resample import (
    resample_labels,
    resample_to_shape,
    resample_to_spacing,
    shape_for_spacing,
    spacing_after_resample,
)

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "functional",
    "resample_labels",
    "resample_to_shape",
    "resample_to_spacing",
    "shape_for_spacing",
    "spacing_after_resample",
]
