"""Prediction with a trained model folder: the folder alone is enough (no code, no env vars).

The model folder's ``plan.json`` states the preprocessing, the classes and the network; the
checkpoint holds the weights. Each input is read with its geometry, preprocessed exactly as in
training, predicted with Gaussian-weighted sliding windows (optionally flip TTA), mapped back to
the input grid, and written with the input's affine so it overlays the input in any viewer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.data import PreprocessPlan, preprocess_image, restore_probabilities
from medseg.data.validate import effective_spatial_dims
from medseg.errors import InputError
from medseg.inference import predict_probs
from medseg.io import is_dicom_folder, list_image_files, read_image, write_image, write_label
from medseg.io.files import file_suffix
from medseg.io.meta import ImageMeta
from medseg.training.checkpoint import (
    PLAN_NAME,
    load_trained_network,
)

ImageSource = Path | tuple[Path, ...]
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class TrainedModel:
    """A network with its preprocessing plan, ready to predict.

    Attributes:
        folder: The model folder.
        model: The network in eval mode.
        plan: The preprocessing plan used in training.
        info: The whole ``plan.json`` (classes, patch size, inference defaults...).
        device: Where the network runs.
    """

    folder: Path
    model: torch.nn.Module
    plan: PreprocessPlan
    info: dict[str, Any]
    device: torch.device

    @classmethod
    def load(cls, folder: str | Path, checkpoint: str = "best",
             device: str = "auto") -> TrainedModel:
        """Load ``plan.json`` and ``checkpoint_{best,last}.pt`` from a model folder.

        Raises:
            InputError: not a model folder, or a corrupt checkpoint.
        """
        folder = Path(folder)
        plan_path = folder / PLAN_NAME
        if not plan_path.is_file():
            raise InputError("not a medseg model folder (no plan.json)", folder,
                             "give the --output folder of medseg train")
        try:
            info = json.loads(plan_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"plan.json is not valid JSON ({e})", plan_path) from None
        model, dev = load_trained_network(folder, info, checkpoint, device)
        return cls(folder, model, PreprocessPlan.from_dict(info["preprocess"]), info, dev)

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    def check_modality(self, meta: ImageMeta) -> None:
        """Refuse an input whose header names another modality than the model was trained on.

        Only inputs that state their modality (DICOM ``Modality``) are checked; a model trained
        before modalities were recorded accepts everything.

        Raises:
            InputError: e.g. an MR series given to a CT model.
        """
        trained = {n.modality for n in self.plan.normalization if n.modality}
        got = (meta.modality or "").upper()
        if not got or not trained or got in trained or got == "OT":
            return
        src = meta.source[0] if meta.source else None
        raise InputError(
            f"wrong modality: this model was trained on {'/'.join(sorted(trained))} images but "
            f"the input is {got}", src,
            f"predict {'/'.join(sorted(trained))} images with this model (its intensity "
            "normalisation and learnt appearance are modality-specific)")

    def predict(self, image: np.ndarray, meta: ImageMeta, tta: bool | None = None,
                overlap: float | None = None) -> torch.Tensor:
        """Class probabilities on the input's own grid.

        Args:
            image: ``(C, *spatial)`` as read by :func:`medseg.io.read_image`.
            meta: Its geometry.
            tta: Flip test-time augmentation (default: the model's setting).
            overlap: Window overlap (default: the model's setting).

        Returns:
            ``(num_classes, *spatial)`` float32 probabilities on CPU.
        """
        src = meta.source[0] if meta.source else None
        if not np.isfinite(image).all():
            raise InputError(f"{int((~np.isfinite(image)).sum())} NaN/inf voxel(s) in the image",
                             src, "fix or mask the image before predicting")
        dims = effective_spatial_dims(meta.spatial_shape)
        if dims != self.plan.spatial_dims:
            raise InputError(
                f"this model segments {self.plan.spatial_dims}D images but the input is {dims}D "
                f"(spatial shape {meta.spatial_shape})", src,
                f"predict {self.plan.spatial_dims}D images with this model, or train one on "
                f"{dims}D data")
        self.check_modality(meta)
        x, _ = preprocess_image(image, meta, self.plan)
        inf = self.info["inference"]
        probs = predict_probs(
            self.model, torch.from_numpy(np.ascontiguousarray(x))[None],
            roi_size=tuple(self.info["patch_size"]),
            overlap=inf["overlap"] if overlap is None else overlap,
            sw_batch_size=inf["sw_batch_size"], tta=inf["tta"] if tta is None else tta,
            device=self.device, output_device="cpu",
        )[0]
        return restore_probabilities(probs, self.plan, meta)


def _case_name(src: ImageSource) -> str:
    first = src[0] if isinstance(src, tuple) else src
    if first.is_dir():
        return first.name
    name = first.name
    suf = file_suffix(first)
    stem = name[: -len(suf)] if suf and name.lower().endswith(suf) else first.stem
    return stem


def collect_inputs(path: str | Path, in_channels: int) -> list[tuple[str, ImageSource | list]]:
    """Cases to predict from a file, a DICOM series folder, a folder of images or an MSD folder.

    nnU-Net channel files (``case_0000.nii.gz``, ``case_0001.nii.gz``) are grouped per case when
    the model has several input channels.

    Returns:
        ``(case_name, source)`` pairs; ``source`` is what :func:`read_image` takes.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("input not found", p, "check the --input path")
    if p.is_file():
        return [(_strip_channel(_case_name(p)), p)]
    if is_dicom_folder(p):
        return [(p.name, p)]
    if (p / "dataset.json").exists() and (p / "imagesTs").is_dir():
        p = p / "imagesTs"
    entries = list_image_files(p)
    if not entries:
        raise InputError("no images found in the folder", p,
                         "give NIfTI/NRRD/PNG/TIFF files or DICOM series")
    groups: dict[str, list[ImageSource]] = {}
    for e in entries:
        groups.setdefault(_strip_channel(_case_name(e)) if in_channels > 1 or
                          _CHANNEL_RE.match(_case_name(e)) else _case_name(e), []).append(e)
    out: list[tuple[str, ImageSource | list]] = []
    for name, srcs in groups.items():
        if len(srcs) == 1:
            out.append((name, srcs[0]))
        else:
            out.append((name, sorted(srcs, key=lambda s: _case_name(s))))
    return out


def _strip_channel(name: str) -> str:
    m = _CHANNEL_RE.match(name)
    return m.group("case") if m else name


def _output_suffix(src: ImageSource | list, fmt: str) -> str:
    if fmt != "auto":
        return "." + fmt
    first = src[0] if isinstance(src, list | tuple) else src
    if first.is_dir():
        return ".nii.gz"
    suf = file_suffix(first)
    if suf in (".png", ".tif", ".tiff", ".nrrd", ".nii", ".nii.gz"):
        return suf
    if suf in (".jpg", ".jpeg"):
        return ".png"
    return ".nii.gz"


def predict_inputs(
    model: TrainedModel,
    input_path: str | Path,
    output_dir: str | Path,
    fmt: str = "auto",
    tta: bool | None = None,
    overlap: float | None = None,
    save_probabilities: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Predict every case under ``input_path`` and write label maps into ``output_dir``.

    Returns:
        The written label files, in case order.

    Raises:
        InputError: unreadable input, channel mismatch, NaN voxels, or an output path that is
            one of the inputs.
    """
    out = Path(output_dir)
    cases = collect_inputs(input_path, model.plan.in_channels)
    written: list[Path] = []
    for i, (name, src) in enumerate(cases):
        image, meta = read_image(src if not isinstance(src, list) else list(src))
        probs = model.predict(image, meta, tta=tta, overlap=overlap)
        labels = probs.argmax(0).numpy().astype(np.uint8 if model.num_classes < 256 else np.uint16)
        dest = out / f"{name}{_output_suffix(src, fmt)}"
        if dest.suffix == ".png" and labels.ndim != 2:
            dest = out / f"{name}.nii.gz"
        write_label(dest, labels, meta)
        if save_probabilities:
            write_image(out / f"{name}_probabilities.nii.gz", probs.numpy(), meta,
                        dtype=np.float32)
        written.append(dest)
        log(f"  [{i + 1}/{len(cases)}] {name} -> {dest}")
    return written

