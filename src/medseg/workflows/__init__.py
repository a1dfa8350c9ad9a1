"""End-to-end workflows used by the CLI and from Python (E3): train, predict, evaluate, demo.

This is the top layer: it composes io, data, networks, inference, metrics and reports.
"""

from medseg.workflows.evaluate import evaluate_folders
from medseg.workflows.predict import TrainedModel, predict_inputs

__all__ = ["TrainedModel", "evaluate_folders", "predict_inputs"]
