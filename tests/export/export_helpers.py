"""Tiny model folders written directly (plan + checkpoint) for the export tests.

Imported by the tests of this folder (``from export_helpers import ...``; pytest puts the folder
on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medseg.model_folder import Plan, write_plan
from medseg.networks import (
    MeanAndLogVar,
    add_variance_head,
    create_model,
    model_signature,
    model_task,
)
from medseg.training.checkpoint import BEST_NAME, atomic_torch_save, atomic_write_json

#: Smallest widths that keep exports fast; the architecture is the registered one.
SMALL: dict[str, dict[str, Any]] = {
    "unet": {"channels": [4, 8]},
    "unetpp": {"channels": [4, 8, 16]},
    "deeplabv3plus": {"channels": [4, 8, 16, 16], "decoder_channels": 8,
                      "low_level_channels": 4},
    "transunet": {"channels": [4, 8, 16], "embed_dim": 16, "num_heads": 2, "num_layers": 1},
    "resnet_classifier": {"channels": [4, 8], "blocks_per_stage": [1, 1]},
    "vit_classifier": {"patch_size": 8, "dim": 16, "depth": 1, "heads": 2},
}
#: The export sizes of the tests (a 2D patch of 32^2, a 3D one of 16^3) and a second one.
SIZES = {2: ([32, 32], [64, 48]), 3: ([16, 16, 16], [32, 16, 24])}
PREPROCESS_ZSCORE = {"spatial_dims": 2, "target_spacing": None,
                     "normalization": [{"scheme": "zscore", "modality": "MR"}],
                     "label_interpolation": "nearest", "ignore_label": None}
INFERENCE = {"overlap": 0.5, "sw_batch_size": 4, "sigma_scale": 0.125, "tta": False}


def options_for(name: str, size: list[int]) -> dict[str, Any]:
    """The tiny options of ``name``; networks with a positional grid learn it at ``size``."""
    opts = dict(SMALL.get(name, {}))
    if "image_size" in model_signature(name).parameters:
        opts["image_size"] = list(size)
    return opts


def write_model_folder(
    path: Path, name: str, dims: int, size: list[int], *, num_classes: int = 3,
    variance_head: bool = False, temperature: float | None = None,
    preprocess: dict[str, Any] | None = None, inference: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None, in_channels: int = 1, seed: int = 0,
    logit_scale: float = 1.0,
) -> Path:
    """A model folder for network ``name`` with seeded random weights.

    Segmentation folders get ``patch_size = size``, classification ones ``image_size = size``.
    ``logit_scale`` multiplies the weights of the last layer (decisive arg-maxes for the
    label-map comparisons).
    """
    task = model_task(name)
    opts = options_for(name, size) if options is None else options
    torch.manual_seed(seed)
    net = create_model(name, spatial_dims=dims, in_channels=in_channels,
                       num_classes=num_classes, **opts)
    if logit_scale != 1.0:
        for attr in net.head_attrs:
            head = getattr(net, attr)
            for p in head.parameters():
                p.data.mul_(logit_scale)
    if variance_head:
        net = add_variance_head(net)
        for m in net.modules():  # the log-variance layers start at zero: make them non-trivial
            if isinstance(m, MeanAndLogVar):
                for p in m.log_var.parameters():
                    torch.nn.init.normal_(p, std=0.1)
    names = ["background", "organ", "lesion", "c3", "c4"][:num_classes]
    if task == "classification":
        entries: dict[str, Any] = {"label_task": "single", "image_size": list(size)}
        names = [str(i) for i in range(num_classes)]
    else:
        pre = dict(preprocess or PREPROCESS_ZSCORE)
        pre["spatial_dims"] = dims
        pre["normalization"] = pre["normalization"] * in_channels \
            if len(pre["normalization"]) == 1 else pre["normalization"]
        entries = {"preprocess": pre, "patch_size": list(size),
                   "inference": dict(inference or INFERENCE)}
    plan = Plan(task, dims, in_channels, num_classes, name, opts, names, ["a"], ["b"],
                entries, variance_head=variance_head)
    path.mkdir(parents=True, exist_ok=True)
    write_plan(plan, path)
    atomic_torch_save({"model": net.state_dict()}, path / BEST_NAME)
    if temperature is not None:
        atomic_write_json({"format": "medseg-calibration/1", "method": "temperature",
                           "temperature": temperature, "kind": "softmax"},
                          path / "calibration.json")
    return path
