"""Training: configuration as data, the loop (E3), atomic checkpoints, DDP plumbing (E7)."""

from medseg.training.config import ExperimentConfig
from medseg.training.loop import TrainResult, train

__all__ = ["ExperimentConfig", "TrainResult", "train"]
