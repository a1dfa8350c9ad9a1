"""Instance segmentation (T4, A8) built on the semantic pipeline.

An instance label map is turned into a 3-class semantic target (background / interior /
boundary, :mod:`~medseg.instance.targets`); any registered segmentation network is trained on it
with the ordinary Dice + CE loop; at prediction time the class probabilities are turned back
into a variable-size :class:`medseg.tasks.InstanceSet` by seeded watershed
(:mod:`~medseg.instance.postprocess`). Matching metrics (F1, AP, PQ) live in
:mod:`medseg.metrics.instance`, the dataset layouts in :mod:`medseg.data.instance`.
"""

from medseg.instance.postprocess import (
    PostprocessParams,
    instance_scores,
    probs_to_instance_map,
    probs_to_instances,
)
from medseg.instance.targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    TARGET_LABELS,
    boundary_distance_map,
    instance_boundaries,
    instance_to_semantic,
)

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "INTERIOR",
    "TARGET_LABELS",
    "PostprocessParams",
    "boundary_distance_map",
    "instance_boundaries",
    "instance_scores",
    "instance_to_semantic",
    "probs_to_instance_map",
    "probs_to_instances",
]
