"""Inference: sliding-window stitching (E4), flip test-time augmentation, the predictor."""

from medseg.inference.predictor import Predictor, predict_probs
from medseg.inference.sliding_window import (
    gaussian_importance_map,
    sliding_window_inference,
    window_starts,
)
from medseg.inference.tta import FlipTTA, apply_activation, flip_combinations, flip_tta

__all__ = [
    "FlipTTA",
    "Predictor",
    "apply_activation",
    "flip_combinations",
    "flip_tta",
    "gaussian_importance_map",
    "predict_probs",
    "sliding_window_inference",
    "window_starts",
]
