"""Export for deployment: a trained network as one file (ONNX, TorchScript or a ``torch.export``
program) plus a JSON of what runs around it, so it runs without medseg (``medseg export``).

See :mod:`medseg.export.deploy` for the inputs, outputs, dynamic axes and the networks that
cannot have dynamic spatial axes, and ``examples/onnx_deploy/`` for the whole segmentation
pipeline (preprocessing, Gaussian sliding window, temperature, arg-max) in numpy + onnxruntime.
"""

from medseg.export.deploy import (
    FORMATS,
    SIDECAR_FORMAT,
    TASKS,
    TOLERANCE,
    ExportResult,
    check_export,
    deployment_info,
    export_model,
    fixed_spatial_reason,
    load_for_export,
    sidecar_path,
    size_divisor,
)
from medseg.export.onnx import DEFAULT_OPSET, onnx_session, onnx_versions, run_onnx, write_onnx

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "SIDECAR_FORMAT",
    "TASKS",
    "TOLERANCE",
    "ExportResult",
    "check_export",
    "deployment_info",
    "export_model",
    "fixed_spatial_reason",
    "load_for_export",
    "onnx_session",
    "onnx_versions",
    "run_onnx",
    "sidecar_path",
    "size_divisor",
    "write_onnx",
]
