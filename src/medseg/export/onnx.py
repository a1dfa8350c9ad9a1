"""ONNX files of a network: written with PyTorch's TorchScript-based exporter, run with onnxruntime.

Why that exporter: it writes every registered network here with only ``onnx`` installed. The
``torch.export``-based one (PyTorch's default since 2.9) also needs ``onnxscript`` and took
3-5x longer on these networks; with dynamic spatial axes it ran DeepLabV3+ in 2D at a second
size but not in 3D, and not the fixed-grid Transformers either (measured with onnxscript 0.7).
PyTorch marks the TorchScript-based exporter deprecated; the warnings it raises while writing
are silenced here, and :func:`medseg.export.export_model` checks every file it writes against
the eager network.

The tracer records what the network computed for the example input: Python-side shape
arithmetic (padding to a multiple of the network's stride, a positional grid chosen by size)
becomes constant. That is why a dynamic spatial axis needs sizes that are multiples of the
network's ``size_divisor`` (no padding path is recorded) and why some networks cannot have one
(:func:`medseg.export.fixed_spatial_reason`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import ConfigError

#: Opset written when ``--opset`` is not given (onnxruntime >= 1.12 runs it).
DEFAULT_OPSET = 17
#: Opsets the TorchScript-based exporter writes.
OPSETS = range(9, 21)


def onnx_versions() -> dict[str, str | None]:
    """Versions of ``onnx`` and ``onnxruntime`` (``None`` where not installed)."""
    out: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def write_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = DEFAULT_OPSET,
) -> None:
    """Trace ``net`` on ``example`` and write an ONNX file.

    Args:
        net: In eval mode; returns a tensor or a tuple of tensors (one per output name).
        example: ``(B, C, *spatial)`` input the graph is traced with.
        path: File to write.
        input_name: Name of the graph input.
        output_names: Names of the graph outputs.
        dynamic_axes: Per input / output name, ``{axis: symbolic name}`` of its dynamic axes.
        opset: ONNX opset.

    Raises:
        ConfigError: an opset this exporter does not write (or too old for one of the
            network's operators), or ``onnx`` is not installed.
    """
    if opset not in OPSETS:
        raise ConfigError(f"--opset {opset} is not supported",
                          hint=f"use an opset in {OPSETS.start}..{OPSETS.stop - 1} (default "
                               f"{DEFAULT_OPSET})")
    if onnx_versions()["onnx"] is None:
        raise ConfigError("ONNX export needs the onnx package",
                          hint="pip install 'medseg[export]' (onnx and onnxruntime)")
    with warnings.catch_warnings():
        # The exporter's own deprecation notice, the tracer's notes on shape arithmetic
        # (constant by design, see the module docstring) and InstanceNorm's train flag.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset, do_constant_folding=True,
            )
        except torch.onnx.errors.OnnxExporterError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise ConfigError(f"this network cannot be written at opset {opset} ({first})",
                              hint=f"use --opset {DEFAULT_OPSET} or higher") from None


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of an ONNX file (errors come back as exceptions, no console
    noise).

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(model: Path | Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file (or a session of :func:`onnx_session`) with onnxruntime on the CPU.

    Args:
        model: The ``.onnx`` file, or a session.
        inputs: Input name -> array.

    Returns:
        The outputs in graph order.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    sess = onnx_session(model) if isinstance(model, str | Path) else model
    return list(sess.run(None, dict(inputs)))
