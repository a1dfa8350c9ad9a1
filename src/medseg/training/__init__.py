"""Training: configuration as data, the one engine (E3), atomic checkpoints, DDP plumbing (E7)."""

from medseg.training.config import ExperimentConfig
from medseg.training.engine import TrainingError, TrainResult, train

__all__ = ["ExperimentConfig", "TrainResult", "TrainingError", "train"]
