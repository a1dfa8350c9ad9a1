"""``medseg export``: a trained network as one file that runs without medseg, plus its JSON.

:func:`export_model` loads a model folder's network (CPU, eval mode), writes it as

* ``onnx`` (:mod:`medseg.export.onnx`; runs in onnxruntime and other ONNX runtimes),
* ``torchscript`` (``torch.jit.trace``; ``torch.jit.load`` runs it, no medseg needed; PyTorch
  deprecates TorchScript in favour of ``torch.export``, libtorch C++ deployments still load it),
  or
* ``exported-program`` (``torch.export``; ``torch.export.load(path).module()`` runs it),

checks the written file against the eager network on random inputs (onnxruntime for ONNX; the
largest absolute difference is recorded, and more than :data:`TOLERANCE` times the largest
output magnitude, at least 1, is an error), and writes a JSON beside it (``<file>.json``,
:func:`deployment_info`) with what a deployment needs: input and output names and shapes, which
axes are dynamic, the preprocessing plan, the patch size and the sliding-window settings, the
class names and the temperature. Both files are written atomically
(temp file + rename) and an existing one is replaced only with ``force``.

Inputs and outputs (every format):

* input ``image``: ``(B, C, *spatial)`` float32, already preprocessed (normalised, on the plan's
  grid); segmentation: one sliding window (``patch_size``); classification: ``image_size``;
* output ``logits``: ``(B, K, *spatial)`` segmentation logits (softmax over axis 1 gives the
  probabilities medseg stitches), ``(B, K)`` classification logits (softmax for single-label,
  sigmoid for multi-label); with a variance head (U1) also ``log_var``, same shape: the log
  of the logits' variance.

The batch axis is always dynamic. ``dynamic=True`` makes the spatial axes dynamic too; sizes
must then be multiples of the network's ``size_divisor`` (recorded as ``spatial_multiple_of``;
zero-pad at the end of each axis and crop the output, as the network does itself). Networks
that cannot have dynamic spatial axes (:func:`fixed_spatial_reason`):

* ``transunet``, ``vit_classifier`` (any format): positional embeddings learnt for one token
  grid; another input size needs them resized, which the exported graph does not record;
* ``deeplabv3plus`` (any format): its decoder computes the padded output size with
  ``math.ceil`` in Python; the tracer records it as a constant, and ``torch.export`` keeps it
  symbolic but cannot save that expression.

An ensemble (or cross-validation) folder is refused: a file holds one network, while
``medseg predict`` averages the members' probabilities. Export each member
(``--model M/member_0`` ...) and average their softmax outputs. Restoration models are refused
(their output is a correction mapped through the noise model, which the file would not hold).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medseg
from medseg.errors import ConfigError, InputError
from medseg.export.onnx import (
    DEFAULT_OPSET,
    onnx_session,
    onnx_versions,
    run_onnx,
    write_onnx,
)
from medseg.io.atomic import atomic_path, atomic_write_text
from medseg.layers.attention import PatchEmbedding
from medseg.model_folder import ModelFolder
from medseg.networks import DeepLabV3Plus, VarianceHead
from medseg.networks.common import round_up_size
from medseg.training.calibration import read_temperature

#: Formats ``medseg export`` writes.
FORMATS = ("onnx", "torchscript", "exported-program")
#: Tasks whose networks export (segmentation and instance share the sliding-window pipeline).
TASKS = ("segmentation", "instance", "classification")
#: Schema of the JSON written beside the file.
SIDECAR_FORMAT = "medseg-export/1"
#: Accepted difference between the written file and eager PyTorch, relative to the largest
#: output magnitude (at least 1): ``max |file - eager| <= TOLERANCE * max(1, max |eager|)``.
TOLERANCE = 1e-4
INPUT_NAME = "image"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: The network file.
        sidecar: The JSON beside it.
        info: The JSON's content.
        max_abs_diff: Largest absolute difference between the file's outputs and eager
            PyTorch on the check inputs (``None`` where onnxruntime is not installed).
    """

    path: Path
    sidecar: Path
    info: dict[str, Any]
    max_abs_diff: float | None


class _Deployed(nn.Module):
    """The network with a fixed output structure: a tensor, or ``(logits, log_var)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        if isinstance(out, tuple):
            return tuple(o[0] if isinstance(o, list) else o for o in out)  # type: ignore
        return out[0] if isinstance(out, list) else out


def sidecar_path(path: str | Path) -> Path:
    """The JSON written beside an exported file: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _core(net: nn.Module) -> nn.Module:
    return net.model if isinstance(net, VarianceHead) else net


def size_divisor(net: nn.Module, spatial_dims: int) -> tuple[int, ...] | None:
    """What every spatial size must be a multiple of for the exported graph (``None``: any)."""
    core = _core(net)
    div = getattr(core, "size_divisor", None)
    if div is not None:
        return tuple(int(d) for d in div)
    if isinstance(core, DeepLabV3Plus):
        return (int(core.output_stride),) * spatial_dims
    return None


def fixed_spatial_reason(net: nn.Module, fmt: str) -> str | None:
    """Why ``net`` cannot have dynamic spatial axes in format ``fmt`` (``None`` if it can)."""
    if any(isinstance(m, PatchEmbedding) for m in net.modules()):
        return ("its positional embeddings are learnt for one token grid and another input size "
                "resizes them, which the exported graph does not record")
    if isinstance(_core(net), DeepLabV3Plus):
        return ("its decoder computes the padded output size with math.ceil in Python, which "
                "the tracer records as a constant" + (
                    "" if fmt != "exported-program" else
                    " and torch.export cannot save as a symbolic expression"))
    return None


def _spatial_names(dims: int) -> list[str]:
    return [f"spatial_{i}" for i in range(dims)]


def deployment_info(folder: ModelFolder, net: nn.Module, fmt: str, shape: Sequence[int],
                    dynamic: bool, checkpoint: str, opset: int | None) -> dict[str, Any]:
    """The JSON written beside an exported file (everything but the check's result).

    Args:
        folder: The model folder.
        net: Its network (as exported).
        fmt: One of :data:`FORMATS`.
        shape: The input shape ``(B, C, *spatial)`` of the export.
        dynamic: Spatial axes dynamic.
        checkpoint: ``best`` or ``last``.
        opset: ONNX opset (``None`` for the other formats).
    """
    plan = folder.plan
    dims = plan.spatial_dims
    seg = plan.task != "classification"
    spatial: list[int | str] = _spatial_names(dims) if dynamic else [int(s) for s in shape[2:]]
    in_shape = ["batch", int(shape[1]), *spatial]
    out_shape = ["batch", plan.num_classes, *spatial] if seg else ["batch", plan.num_classes]
    names = ["logits", "log_var"] if plan.variance_head else ["logits"]
    label_task = plan.get("label_task", "single")
    activation = "sigmoid" if plan.task == "classification" and label_task == "multi" \
        else "softmax"
    outputs = [{"name": "logits", "shape": out_shape, "dtype": "float32",
                "meaning": f"class logits; {activation} over axis 1 gives the probabilities"}]
    if plan.variance_head:
        outputs.append({"name": "log_var", "shape": out_shape, "dtype": "float32",
                        "meaning": "log of the logits' variance (aleatoric, U1)"})
    div = size_divisor(net, dims)
    info: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "file_format": fmt,
        "opset": opset,
        "medseg_version": medseg.__version__,
        "torch_version": torch.__version__,
        "task": plan.task,
        "network": {"name": plan.model_name, "options": plan.model_options,
                    "variance_head": plan.variance_head},
        "source": {"model_folder": str(folder.path), "checkpoint": checkpoint,
                   "checkpoint_file": folder.checkpoint_path(checkpoint).name},
        "spatial_dims": dims,
        "in_channels": plan.in_channels,
        "num_classes": plan.num_classes,
        "class_names": list(plan.class_names),
        "inputs": [{"name": INPUT_NAME, "shape": in_shape, "dtype": "float32",
                    "meaning": "preprocessed image, (B, C, *spatial) in the file's index order"}],
        "outputs": outputs,
        "output_names": names,
        "dynamic": {"batch": True, "spatial": dynamic,
                    "spatial_multiple_of": list(div) if dynamic and div else None},
        "activation": activation,
        "temperature": read_temperature(folder.path),
    }
    if seg:
        info["preprocess"] = plan["preprocess"]
        info["patch_size"] = list(plan["patch_size"])
        info["inference"] = dict(plan["inference"])
        info["pipeline"] = [
            "read the image as (C, *spatial) in the file's index order (NIfTI: (X, Y[, Z]); a 3D "
            "grid with one axis of size 1 is squeezed to 2D for a 2D model)",
            "normalise each channel (preprocess.normalization, the schemes of "
            "medseg.data.preprocess) in float64, then float32",
            "resample (linear, align_corners=False) to preprocess.target_spacing when it is set",
            "sliding window of patch_size: evenly spaced starts per axis (first 0, last at the "
            "border, step <= patch * (1 - inference.overlap)); axes shorter than the patch are "
            "zero-padded symmetrically",
            "per window: logits -> softmax over axis 1 (with inference.tta, the mean of the "
            "softmax over every flip of the spatial axes, flipped back)",
            "weight each window by a Gaussian: exp(-(i - (n - 1) / 2)^2 / (2 (sigma_scale n)^2)) "
            "per axis, product, divided by its maximum, floored at 1e-4; sum the weighted "
            "probabilities and the weights, divide",
            "temperature T != 1: p <- softmax(log(max(p, 1e-12)) / T) over the classes",
            "resample back to the input grid (linear) when the grid was resampled; arg-max over "
            "the classes is the label map",
        ]
        if plan.task == "instance":
            info["instance"] = plan.get("instance")
            info["pipeline"].append("instance: seeded watershed on the probabilities "
                                    "(instance.postprocess; medseg.instance.postprocess)")
    else:
        info["label_task"] = label_task
        info["image_size"] = list(plan["image_size"])
        info["pipeline"] = [
            "read the image as (C, *spatial)",
            "resize (linear, align_corners=False) to image_size when its size differs",
            "per image: x <- (x - min) / max(max - min, 1e-8), then (x - mean) / max(std, 1e-8)",
            f"logits / temperature -> {activation}",
        ]
    return info


def _check_inputs(shape: Sequence[int], dynamic: bool, div: Sequence[int] | None,
                  seed: int = 0) -> list[torch.Tensor]:
    """Random inputs the written file is checked on: the export shape at batch 1 and 2, and
    with dynamic spatial axes also a larger size (one ``size_divisor`` more per axis)."""
    g = torch.Generator().manual_seed(seed)
    c, spatial = int(shape[1]), [int(s) for s in shape[2:]]
    shapes = [(1, c, *spatial), (2, c, *spatial)]
    if dynamic:
        step = list(div) if div else [8] * len(spatial)
        shapes.append((2, c, *(s + d for s, d in zip(spatial, step, strict=True))))
    return [torch.randn(s, generator=g) for s in shapes]


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor], tuple[np.ndarray, ...]] | None:
    """Runs the written file (``None`` for ONNX without onnxruntime)."""
    if fmt == "onnx":
        if onnx_versions()["onnxruntime"] is None:
            return None
        sess = onnx_session(path)
        return lambda x: tuple(run_onnx(sess, {INPUT_NAME: x.numpy()}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        loaded = (torch.jit.load(str(path), map_location="cpu") if fmt == "torchscript"
                  else torch.export.load(str(path)).module())

    def run(x: torch.Tensor) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(o.numpy() for o in _as_tuple(loaded(x)))

    return run


def check_export(fmt: str, path: Path, net: nn.Module, inputs: Sequence[torch.Tensor],
                 dynamic_reason: str, shown_as: Path | None = None) -> float | None:
    """Largest absolute difference between the written file and eager ``net`` over ``inputs``.

    The outputs must agree to ``TOLERANCE * max(1, max |eager output|)`` (float32 rounding
    grows with the size of the logits).

    Args:
        fmt: The file's format.
        path: The file.
        net: The eager network (eval mode).
        inputs: Check inputs; the first two at the traced size.
        dynamic_reason: Why a later input's size may fail (for the message).
        shown_as: The path errors name (the final file while ``path`` is a temporary one).

    Returns:
        The largest absolute difference, or ``None`` for ONNX without onnxruntime.

    Raises:
        ConfigError: the file fails on, or returns another shape for, an input after the first
            two (a spatial size the graph does not generalise to: ``dynamic_reason`` names it).
        InputError: outputs differ by more than the tolerance.
    """
    run = _runner(fmt, path)
    if run is None:
        return None
    worst = 0.0
    for k, x in enumerate(inputs):
        with torch.no_grad():
            ref = tuple(o.numpy() for o in _as_tuple(net(x)))
        try:
            got = run(x)
            if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref,
                                                                              strict=True)):
                raise ValueError(f"output shapes {[a.shape for a in got]}, expected "
                                 f"{[b.shape for b in ref]}")
        except Exception as e:  # noqa: BLE001 - any runtime's failure on a size means the same
            if k < 2:
                raise
            raise ConfigError(
                f"the exported graph does not run at input size {tuple(x.shape[2:])} "
                f"({dynamic_reason}: {type(e).__name__}: {str(e).strip()[:160]})",
                hint="export without --dynamic (fixed spatial size, dynamic batch)") from None
        diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0
                   for a, b in zip(got, ref, strict=True))
        scale = max([1.0] + [float(np.max(np.abs(b))) for b in ref if b.size])
        if not np.isfinite(diff) or diff > TOLERANCE * scale:
            raise InputError(
                f"the exported {fmt} file's output differs from PyTorch's by {diff:.3g} at input "
                f"{tuple(x.shape)} (more than {TOLERANCE:g} x {scale:.3g}, the largest output)",
                shown_as or path, "try another --format or --opset; please report it")
        worst = max(worst, diff)
    return worst


def _write(fmt: str, wrapped: nn.Module, example: torch.Tensor, tmp: Path,
           names: Sequence[str], dense: bool, dynamic: bool, div: Sequence[int] | None,
           opset: int) -> None:
    """Write ``wrapped`` traced on ``example`` to ``tmp`` in format ``fmt``."""
    dims = example.ndim - 2
    spatial = dict(enumerate(_spatial_names(dims), start=2)) if dynamic else {}
    if fmt == "onnx":
        axes = {0: "batch", **spatial}
        out_axes = axes if dense else {0: "batch"}
        write_onnx(wrapped, example, tmp, INPUT_NAME, names,
                   {INPUT_NAME: axes, **{n: out_axes for n in names}}, opset)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            # the tracer's notes on shape arithmetic; TorchScript's deprecation notice
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
            torch.jit.save(traced, str(tmp))
    else:
        from torch.export import Dim

        spec: dict[int, Any] = {0: Dim("batch", min=1, max=65536)}
        for axis, name in spatial.items():
            if div:  # sizes that are multiples of the network's stride
                d = div[axis - 2]
                spec[axis] = d * Dim(name, min=1, max=65536 // d)
            else:
                spec[axis] = Dim(name, min=8, max=65536)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                program = torch.export.export(wrapped, (example,), dynamic_shapes={"x": spec},
                                              strict=False)
                torch.export.save(program, str(tmp))
            except Exception as e:  # noqa: BLE001 - torch.export's many constraint errors
                first = str(e).strip().splitlines()[0][:200]
                raise ConfigError(f"torch.export cannot export this network with "
                                  f"{'dynamic spatial axes' if dynamic else 'a dynamic batch'} "
                                  f"({type(e).__name__}: {first})",
                                  hint="export without --dynamic, or --format onnx") from None


def load_for_export(model: str | Path, checkpoint: str = "best") -> tuple[ModelFolder, nn.Module]:
    """The model folder and its network on the CPU in eval mode.

    Raises:
        InputError: not a model folder, a bad plan or checkpoint, an ensemble, or a task whose
            networks do not export.
    """
    folder = ModelFolder.open(model)
    if folder.is_ensemble:
        names = ", ".join(folder.plan.members)
        raise InputError(
            f"this is an ensemble of {len(folder.members)} models ({names}); an exported file "
            "holds one network, and medseg predict averages the members' probabilities",
            folder.path,
            f"export each member (--model {folder.path / folder.plan.members[0]} ...) and "
            "average their softmax outputs")
    if folder.task not in TASKS:
        raise InputError(f"{folder.task} models do not export (tasks that do: "
                         f"{', '.join(TASKS)})", folder.path,
                         "export a segmentation, instance or classification model")
    net, _ = folder.load_network(checkpoint, device="cpu")
    return folder, net.eval()


def export_model(model: str | Path, fmt: str, output: str | Path, *, opset: int | None = None,
                 dynamic: bool = False, checkpoint: str = "best", force: bool = False,
                 log: Callable[[str], None] = lambda _m: None) -> ExportResult:
    """Export a model folder's network to ``output`` and write ``<output>.json`` beside it.

    Args:
        model: The model folder (``medseg train --output``).
        fmt: One of :data:`FORMATS`.
        output: The file to write (e.g. ``model.onnx``, ``model.pt``, ``model.pt2``).
        opset: ONNX opset (``onnx`` only; default :data:`medseg.export.onnx.DEFAULT_OPSET`).
        dynamic: Make the spatial axes dynamic (the batch axis always is).
        checkpoint: ``best`` or ``last``.
        force: Replace an existing file (and its JSON).
        log: Progress lines.

    Returns:
        What was written, with the check's largest absolute difference.

    Raises:
        ConfigError: an unknown format, ``opset`` with another format, an existing output
            without ``force``, ``dynamic`` for a network that cannot have dynamic spatial axes.
        InputError: a bad model folder (one line naming the file), an ensemble, a task that
            does not export, or a file whose outputs differ from eager PyTorch.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of {FORMATS}")
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset applies to --format onnx only, not {fmt}",
                          hint="remove --opset")
    out = Path(output)
    side = sidecar_path(out)
    if out.is_dir():
        raise ConfigError("the output is a folder", out, "give a file name, e.g. model.onnx")
    if not force:
        for p in (out, side):
            if p.exists():
                raise ConfigError("the output exists already", p,
                                  "choose another --output, or pass --force to replace it")
    folder, net = load_for_export(model, checkpoint)
    plan = folder.plan
    dims = plan.spatial_dims
    div = size_divisor(net, dims)
    reason = fixed_spatial_reason(net, fmt)
    if dynamic and reason is not None:
        raise ConfigError(f"{plan.model_name} cannot be exported with dynamic spatial axes to "
                          f"{fmt}: {reason}",
                          hint="export without --dynamic (fixed spatial size, dynamic batch)")
    size = list(plan["patch_size"] if plan.task != "classification" else plan["image_size"])
    if dynamic and div:
        size = list(round_up_size(size, div))
    shape = (2 if fmt == "exported-program" else 1, plan.in_channels, *size)
    wrapped = _Deployed(net).eval()
    names = ["logits", "log_var"] if plan.variance_head else ["logits"]
    opset_used = (DEFAULT_OPSET if opset is None else int(opset)) if fmt == "onnx" else None
    example = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    info = deployment_info(folder, net, fmt, shape, dynamic, checkpoint, opset_used)
    inputs = _check_inputs(shape, dynamic, div)
    log(f"exporting {plan.model_name} ({plan.task}, {dims}D, input {info['inputs'][0]['shape']})"
        f" to {fmt}")
    with atomic_path(out, "".join(out.suffixes) or ".bin") as tmp:
        _write(fmt, wrapped, example, tmp, names, plan.task != "classification", dynamic, div,
               opset_used or DEFAULT_OPSET)
        diff = check_export(fmt, tmp, wrapped, inputs,
                            f"{plan.model_name} at a size it was not traced with", out)
        info["check"] = {
            "max_abs_diff": diff, "relative_tolerance": TOLERANCE,
            "input_shapes": [list(x.shape) for x in inputs],
            "runtime": (f"onnxruntime {onnx_versions()['onnxruntime']}" if fmt == "onnx"
                        else f"torch {torch.__version__}") if diff is not None else None,
        }
        if diff is None:
            log("  not checked: onnxruntime is not installed (pip install 'medseg[export]')")
    atomic_write_text(side, json.dumps(info, indent=2) + "\n")
    return ExportResult(out, side, info, diff)
