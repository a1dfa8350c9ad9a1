"""Restoration (denoising, P4): the task module; L2 or the modality's likelihood.

Data: a restoration dataset folder (:mod:`medseg.physics.restoration_data`): ``imagesTr``
(noisy inputs) and ``targetsTr`` (a second noisy realisation or the clean image); ``cleanTr`` is
never read here. A step draws ``batch_size`` images (a random crop of ``train.patch_size`` when
set, else whole images) mirrored at random (``augment.p_flip`` / ``flip_axes`` when
``augment.enabled``; the other augmentations would change the noise law and are not used) and,
for Noise2Noise pairs, with input and target exchanged at random (the two realisations are
exchangeable, which doubles the pairs), maps them to the network's range, and the output is
turned into the predicted clean image (:func:`medseg.losses.restoration.from_network`: a
residual correction of the input, positive where the likelihood needs it) and
scored with ``loss.restoration``. Validation: the same loss on the held-out training cases'
targets (the clean truth is not used, as in practice); the best checkpoint has the lowest.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.io import list_image_files, read_image, write_image
from medseg.io.atomic import atomic_write_text
from medseg.io.paths import read_json_object, resolve_listed_path
from medseg.losses.restoration import (
    from_network,
    restoration_loss,
    restoration_nll,
    to_network,
)
from medseg.metrics.aggregate import json_safe, write_metrics_pair
from medseg.metrics.image_quality import psnr, ssim
from medseg.model_folder import ModelFolder, Plan
from medseg.physics.restoration_data import NoiseParams, read_restoration_json
from medseg.tasks import register_task
from medseg.tasks.base import (
    SPLIT_SETTINGS,
    EvaluateRequest,
    Log,
    PredictRequest,
    Task,
    TaskTrainer,
    index_batches,
    plan_entry,
    split_ids,
)
from medseg.training.config import ExperimentConfig

RECORD_NAME = "restoration.json"


@dataclass
class RestorationArrays:
    """Restoration pairs in image units.

    Attributes:
        train_x: ``(N, 1, *spatial)`` float32 noisy inputs.
        train_y: ``(N, 1, *spatial)`` float32 targets.
        val_x: Validation inputs.
        val_y: Validation targets.
        noise: The dataset's noise record.
        target: ``"noisy"`` or ``"clean"`` (from ``dataset.json``).
        train_ids: Case ids of the training pairs.
        val_ids: Case ids of the validation pairs.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    noise: NoiseParams
    target: str
    train_ids: list[str]
    val_ids: list[str]

    @property
    def spatial_dims(self) -> int:
        return self.train_x.ndim - 2


def check_domain(arr: np.ndarray, noise: NoiseParams, path: str | Path) -> None:
    """Refuse values outside the likelihood's support.

    Raises:
        InputError: non-finite values, a negative MR magnitude, or a US grey value outside
            [0, 255] (the Gamma likelihood needs non-negative intensity from log-compressed grey).
    """
    if not np.isfinite(arr).all():
        raise InputError("the image holds NaN or infinite values", path, "fix or drop the case")
    if noise.modality == "MR" and float(arr.min()) < 0:
        raise InputError(f"negative MR magnitude ({float(arr.min()):.4g})", path,
                         "a Rician magnitude is >= 0: give magnitude images, not real parts")
    if noise.modality == "US" and (float(arr.min()) < 0 or float(arr.max()) > 255):
        raise InputError(f"grey values outside [0, 255] ({float(arr.min()):.4g} .. "
                         f"{float(arr.max()):.4g}): negative intensity for the Gamma likelihood",
                         path, "give B-mode grey values 0-255 (log compressed)")


def load_restoration_pairs(folder: str | Path, split: str = "Tr"
                           ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], dict,
                                      NoiseParams]:
    """Read ``images{split}`` and ``targets{split}`` of a restoration dataset.

    Returns:
        ``(case ids, inputs (1, *spatial) each, targets, dataset.json dict, noise params)``.

    Raises:
        InputError: missing folder or target, a target whose shape differs from its input,
            values outside the likelihood's support (each naming the file).
    """
    root = Path(folder)
    d, noise = read_restoration_json(root)
    ending = d.get("file_ending", ".nii.gz")
    img_dir, tgt_dir = root / f"images{split}", root / f"targets{split}"
    files = sorted(img_dir.glob(f"*_0000{ending}")) if img_dir.is_dir() else []
    if not files:
        raise InputError(f"no images{split}/*_0000{ending} files", img_dir,
                         "write the dataset with `medseg restoration-data`")
    ids, xs, ys = [], [], []
    for f in files:
        cid = f.name[: -len(f"_0000{ending}")]
        tf = tgt_dir / f"{cid}{ending}"
        if not tf.is_file():
            raise InputError(f"no target for case {cid}", tf,
                             f"put the target of {f.name} in targets{split}/")
        x, _ = read_image(f)
        y, _ = read_image(tf)
        if x.shape != y.shape:
            raise InputError(f"target shape {y.shape} differs from the input's {x.shape}", tf,
                             "input and target must be on the same voxel grid")
        if x.shape[0] != 1:
            raise InputError(f"restoration needs single-channel images, got {x.shape[0]}", f)
        check_domain(x, noise, f)
        check_domain(y, noise, tf)
        ids.append(cid)
        xs.append(x)
        ys.append(y)
    return ids, xs, ys, d, noise


def prepare_restoration(cfg: ExperimentConfig, log: Log = print
                        ) -> tuple[RestorationArrays, dict]:
    """Open a restoration dataset, check every pair and split it (by ``data.*`` settings).

    Returns:
        The arrays and the ``plan.json`` entries prediction needs.

    Raises:
        InputError: see :func:`load_restoration_pairs`; images of different sizes.
    """
    ids, xs, ys, d, noise = load_restoration_pairs(cfg.data.dataset)
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise InputError(f"images differ in size ({sorted(shapes)[:3]})", cfg.data.dataset,
                         "restoration training stacks whole images: give one size")
    tr_ids, va_ids = split_ids(cfg, ids) if len(ids) > 1 else (ids, [])
    pos = {c: i for i, c in enumerate(ids)}
    x, y = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)
    tr = [pos[c] for c in tr_ids]
    va = [pos[c] for c in va_ids]
    arrays = RestorationArrays(x[tr], y[tr], x[va], y[va], noise, str(d.get("target", "noisy")),
                               list(tr_ids), list(va_ids))
    log(f"  {len(tr)} training / {len(va)} validation pairs {list(x.shape[1:])}, "
        f"{noise.modality}, {arrays.target} targets, loss {cfg.loss.restoration}")
    return arrays, {"target": arrays.target, "val_ids": list(va_ids),
                    "train_ids": list(tr_ids)}


def sample_pairs(x: np.ndarray, y: np.ndarray, patch: tuple[int, ...] | None,
                 rng: np.random.Generator, p_flip: float = 0.0,
                 flip_axes: list[int] | None = None, swap: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the same random crop and mirroring of input and target, optionally swapped.

    Mirroring leaves every noise law here unchanged (voxel-wise noise), unlike intensity or
    resampling augmentations, which would alter it; swapping is valid for Noise2Noise pairs,
    whose two realisations are exchangeable.

    Args:
        x: ``(B, 1, *spatial)`` inputs.
        y: ``(B, 1, *spatial)`` targets.
        patch: Crop size per spatial axis (``None``: whole images).
        rng: Random generator (the epoch's).
        p_flip: Probability of mirroring, per axis.
        flip_axes: Spatial axes that may be mirrored (``None`` = all).
        swap: Exchange input and target with probability 1/2.

    Returns:
        ``(inputs, targets)``, ``(B, 1, *patch)``.
    """
    d = x.ndim - 2
    axes = list(range(d)) if flip_axes is None else [int(a) for a in flip_axes]
    xs, ys = [], []
    for i in range(len(x)):
        xi, yi = x[i], y[i]
        if patch is not None and tuple(x.shape[2:]) != patch:
            sl = tuple(slice(s, s + p) for s, p in zip(
                [int(rng.integers(0, n - p + 1)) for n, p in zip(x.shape[2:], patch,
                                                                 strict=True)],
                patch, strict=True))
            xi, yi = xi[(slice(None), *sl)], yi[(slice(None), *sl)]
        flips = [a + 1 for a in axes if rng.random() < p_flip]
        if flips:
            xi, yi = np.flip(xi, flips), np.flip(yi, flips)
        if swap and rng.random() < 0.5:
            xi, yi = yi, xi
        xs.append(xi)
        ys.append(yi)
    return np.stack(xs), np.stack(ys)


def zero_output_layer(model: torch.nn.Module) -> bool:
    """Zero the weights and bias of the network's last single-output convolution.

    The output is a correction of the input (:func:`medseg.losses.restoration.from_network`), so
    an untrained network then returns the noisy input itself: the likelihoods' exponentials
    start in range (a random head gives corrections of order 1, i.e. intensities off by tens of
    dB, and Gamma / Poisson gradients that overflow).

    Returns:
        Whether such a layer was found (networks without one are left as they are).
    """
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d
                                                       | torch.nn.Conv3d) and m.out_channels == 1]
    if not convs:
        return False
    with torch.no_grad():
        convs[-1].weight.zero_()
        if convs[-1].bias is not None:
            convs[-1].bias.zero_()
    return True


@torch.inference_mode()
def predict_clean(model: torch.nn.Module, x: np.ndarray, noise: NoiseParams,
                  device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Predicted clean images ``(N, 1, *spatial)`` in image units from noisy ``x`` (same shape)."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
            out.append(from_network(model(to_network(xb, noise)).float(), xb, noise).cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class RestorationTrainer(TaskTrainer):
    """Pairs by index, cropped / mirrored / swapped alike; L2 or the likelihood."""

    def __init__(self, cfg: ExperimentConfig, data: RestorationArrays, device: torch.device,
                 patch: tuple[int, ...] | None):
        self.cfg, self.data, self.device, self.patch = cfg, data, device, patch
        self.kind = cfg.loss.restoration
        self.n_val = len(data.val_x)
        self.p_flip = cfg.augment.p_flip if cfg.augment.enabled else 0.0
        self.swap = data.target == "noisy"

    def batches(self, epoch: int, seed: int, rank: int, world_size: int) -> Iterator[Any]:
        rng = np.random.default_rng(seed)
        d = self.data
        for idx in index_batches(len(d.train_x), self.cfg.train.batch_size,
                                 self.cfg.train.steps_per_epoch, rng):
            xb, yb = sample_pairs(d.train_x[idx], d.train_y[idx], self.patch, rng, self.p_flip,
                                  self.cfg.augment.flip_axes, self.swap)
            yield torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(
                np.ascontiguousarray(yb))

    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        x, y = (t.to(self.device) for t in batch)
        noise = self.data.noise
        pred = from_network(net(to_network(x, noise)).float(), x, noise)
        return restoration_loss(pred, y, noise, self.kind), None

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        pred = predict_clean(model, self.data.val_x, self.data.noise, self.device)
        return {"val_loss": float(restoration_loss(torch.from_numpy(pred),
                                                   torch.from_numpy(self.data.val_y),
                                                   self.data.noise, self.kind))}

    def describe(self, val: dict[str, float]) -> str:
        return f"  val loss {val['val_loss']:.4f}"


def _case_id(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".png", ".tif", ".tiff"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[:-5] if name.endswith("_0000") else name


def predict_restoration(folder: ModelFolder, input_path: str | Path, output_dir: str | Path,
                        checkpoint: str = "best", device: str = "auto",
                        log: Log = print) -> list[Path]:
    """Denoise every image of ``input_path`` (a file or a folder) into ``output_dir``.

    Each prediction is ``<case>.nii.gz`` (``_0000`` channel suffix dropped) with the input's
    geometry, float32, in the image's units. ``restoration.json`` lists the cases.

    Returns:
        The written image paths.

    Raises:
        InputError: no images, a multi-channel image, or values outside the noise law's support.
    """
    plan = folder.plan
    noise = NoiseParams.from_dict(plan["noise"], folder.path / "plan.json")
    model, dev = folder.load_network(checkpoint, device)
    src = Path(input_path)
    entries = [src] if src.is_file() else list_image_files(src) if src.is_dir() else []
    if not entries:
        raise InputError("no images to denoise", src, "give an image file or a folder of images")
    out = Path(output_dir)
    written, cases = [], []
    for e in entries:
        arr, meta = read_image(e)
        first = Path(e[0] if isinstance(e, tuple) else e)
        if arr.shape[0] != 1:
            raise InputError(f"restoration models take single-channel images, got "
                             f"{arr.shape[0]} channels", first)
        check_domain(arr, noise, first)
        pred = predict_clean(model, arr[None].astype(np.float32), noise, dev)[0]
        cid = _case_id(first)
        dest = out / f"{cid}.nii.gz"
        write_image(dest, pred.astype(np.float32), meta, dtype="float32")
        written.append(dest)
        cases.append({"id": cid, "input": str(first), "prediction": dest.name})
    atomic_write_text(out / RECORD_NAME, json.dumps({
        "format": "medseg-restoration/1", "model": str(folder.path),
        "loss": plan.get("loss"), "noise": noise.to_dict(), "cases": cases}, indent=2))
    log(f"{len(written)} denoised image(s) written to {out}")
    return written


def _ref_folders(ref: Path) -> tuple[Path, Path | None, NoiseParams | None]:
    """``(clean folder, held-out noisy folder or None, noise from dataset.json or None)``."""
    if (ref / "dataset.json").is_file():
        _, noise = read_restoration_json(ref)
        noisy = ref / "targetsTs"
        return ref / "cleanTs", noisy if noisy.is_dir() else None, noise
    noisy = ref.parent / "targetsTs"
    return ref, noisy if noisy.is_dir() else None, None


def _record_cases(rec: dict, pred_dir: Path, rec_path: Path, allow_outside_root: bool
                  ) -> list[tuple[str, Path]]:
    """``(case id, prediction file)`` of each ``restoration.json`` entry, checked.

    A case id names files in the reference folders, so it must be a plain file name; the
    prediction must lie in the prediction folder (unless ``allow_outside_root``).

    Raises:
        InputError: ``cases`` is not a list of objects, an id is not a plain name, or a
            prediction path is absolute, climbs out with ``..`` or resolves outside the folder.
    """
    cases = rec.get("cases")
    if not isinstance(cases, list):
        raise InputError(f"{RECORD_NAME} has no list of \"cases\"", rec_path,
                         "run medseg predict with a restoration model again")
    out = []
    for i, c in enumerate(cases):
        if not isinstance(c, dict):
            raise InputError(f"cases[{i}] is not an object", rec_path,
                             "run medseg predict with a restoration model again")
        cid = c.get("id")
        if (not isinstance(cid, str) or not cid or cid in (".", "..")
                or any(ch in cid for ch in "/\\\0")):
            raise InputError(f"cases[{i}].id {cid!r} is not a plain case name", rec_path,
                             "a case id is a file name without folders")
        out.append((cid, resolve_listed_path(pred_dir, c.get("prediction"),
                                             f"cases[{i}].prediction", rec_path,
                                             allow_outside_root)))
    return out


def evaluate_restoration(pred: str | Path, ref: str | Path, output: str | Path,
                         log: Log = print, allow_outside_root: bool = False) -> dict:
    """Score denoised images against the clean truth, and a held-out noisy realisation's NLL.

    Args:
        pred: Folder written by :func:`predict_restoration` (holds ``restoration.json``).
        ref: A restoration dataset folder (uses ``cleanTs`` and ``targetsTs``), or a folder of
            clean images (then ``../targetsTs`` is used for the NLL when it exists).
        output: Folder for ``metrics.json`` and ``metrics.csv``.
        log: Where the summary goes.
        allow_outside_root: Accept ``restoration.json`` prediction paths outside its folder.

    Returns:
        ``{"result": {...per case and mean...}, "files": [json, csv]}``. PSNR uses the noise
        record's ``data_range`` (stated in the JSON); NLL is the mean per voxel (nats). A
        prediction equal to the truth has PSNR ``inf`` (``null`` in ``metrics.json``).

    Raises:
        InputError: missing record, reference or shape mismatch (naming the file).
    """
    pred_dir, ref = Path(pred), Path(ref)
    rec_path = pred_dir / RECORD_NAME
    if not rec_path.is_file():
        raise InputError(f"no {RECORD_NAME} in the prediction folder", pred_dir,
                         "run medseg predict with a restoration model first")
    rec = read_json_object(rec_path, "run medseg predict with a restoration model again")
    noise = NoiseParams.from_dict(rec.get("noise"), rec_path)
    cases = _record_cases(rec, pred_dir, rec_path, allow_outside_root)
    clean_dir, noisy_dir, ds_noise = _ref_folders(ref)
    if ds_noise is not None and ds_noise.modality != noise.modality:
        raise InputError(f"the model is for {noise.modality}, the dataset is "
                         f"{ds_noise.modality}", ref)
    rows = []
    for cid, pred_file in cases:
        p_arr, _ = read_image(pred_file)
        cf = clean_dir / f"{cid}.nii.gz"
        if not cf.is_file():
            raise InputError(f"no clean reference for case {cid}", cf,
                             "give the dataset folder or its cleanTs folder as --ref")
        c_arr, _ = read_image(cf)
        if c_arr.shape != p_arr.shape:
            raise InputError(f"reference shape {c_arr.shape} differs from the prediction's "
                             f"{p_arr.shape}", cf)
        pt, ct = torch.from_numpy(p_arr), torch.from_numpy(c_arr)
        row = {"id": cid, "psnr": psnr(pt, ct, noise.data_range),
               "ssim": ssim(pt[None], ct[None], noise.data_range)}
        nf = noisy_dir / f"{cid}.nii.gz" if noisy_dir is not None else None
        if nf is not None and nf.is_file():
            n_arr, _ = read_image(nf)
            if n_arr.shape != p_arr.shape:
                raise InputError(f"noisy reference shape {n_arr.shape} differs from the "
                                 f"prediction's {p_arr.shape}", nf)
            check_domain(n_arr, noise, nf)
            row["nll"] = float(restoration_nll(pt.double(), torch.from_numpy(n_arr).double(),
                                               noise))
        rows.append(row)
    keys = ["psnr", "ssim"] + (["nll"] if rows and all("nll" in r for r in rows) else [])
    mean = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in keys}
    result = {"task": "restoration", "modality": noise.modality, "loss": rec.get("loss"),
              "data_range": noise.data_range,
              "nll": "mean per voxel of -log p(held-out noisy realisation | prediction): "
                     + {"CT": "Poisson, counts", "MR": "Rician, magnitude",
                        "US": "Gamma, linear intensity"}[noise.modality],
              "ssim_settings": "Gaussian window sigma 1.5 (11 voxels), K1 0.01, K2 0.03",
              "n_cases": len(rows), "mean": mean, "per_case": rows}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", *keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in ["id", *keys]})
    json_path, csv_path = write_metrics_pair(out, json_safe(result), buf.getvalue())
    log("  ".join(f"{k}={v:.4f}" for k, v in mean.items()) + f"  ({len(rows)} cases)")
    return {"result": result, "files": [json_path, csv_path]}


@register_task
class RestorationTask(Task):
    """Denoising with L2 or the modality's likelihood (P4)."""

    name = "restoration"
    description = "denoising (a `medseg restoration-data` folder): L2 or the modality's NLL"
    key_metric = "val_loss"
    metric_label = "loss"
    higher_is_better = False
    default_model = "unet"
    predict_options = frozenset({"checkpoint", "device"})
    uses = SPLIT_SETTINGS | {"loss.restoration", "train.patch_size", "augment.enabled",
                             "augment.p_flip", "augment.flip_axes"}

    def prepare(self, cfg: ExperimentConfig, log: Log) -> tuple[RestorationArrays, dict]:
        if not cfg.data.dataset:
            raise ConfigError("no dataset given", hint="pass --dataset DIR or set data.dataset")
        arrays, extra = prepare_restoration(cfg, log)
        if cfg.loss.restoration == "anscombe_l2" and arrays.noise.modality != "CT":
            raise InputError(f"loss.restoration=anscombe_l2 is for CT counts, the data is "
                             f"{arrays.noise.modality}", cfg.data.dataset, "use l2 or likelihood")
        patch = self.patch(cfg, arrays)
        if patch is not None and (len(patch) != arrays.spatial_dims or any(
                p > n for p, n in zip(patch, arrays.train_x.shape[2:], strict=True))):
            raise InputError(f"train.patch_size {list(patch)} does not fit images "
                             f"{list(arrays.train_x.shape[2:])}", cfg.data.dataset,
                             "give a smaller patch with one size per axis, or none "
                             "(whole images)")
        return arrays, extra

    @staticmethod
    def patch(cfg: ExperimentConfig, arrays: RestorationArrays) -> tuple[int, ...] | None:
        return tuple(int(p) for p in cfg.train.patch_size) if cfg.train.patch_size else None

    def build_model(self, cfg: ExperimentConfig, data: Any) -> torch.nn.Module:
        if cfg.model.variance_head:
            raise ConfigError("model.variance_head is for segmentation and classification; the "
                              "restoration likelihoods already model the noise",
                              hint="remove model.variance_head")
        model = self.build_network(cfg, data[0].spatial_dims, 1, 1)
        zero_output_layer(model)
        return model

    def trainer(self, cfg: ExperimentConfig, data: Any, model: torch.nn.Module,
                device: torch.device, log: Log) -> RestorationTrainer:
        return RestorationTrainer(cfg, data[0], device, self.patch(cfg, data[0]))

    def plan(self, cfg: ExperimentConfig, data: Any) -> Plan:
        arrays, extra = data
        return Plan(self.name, arrays.spatial_dims, 1, 1, self.model_name(cfg),
                    dict(cfg.model.options), [], list(extra["train_ids"]),
                    list(extra["val_ids"]),
                    {"modality": arrays.noise.modality, "noise": arrays.noise.to_dict(),
                     "loss": cfg.loss.restoration, "target": extra["target"]})

    def check_plan(self, plan: Plan, source: Path) -> None:
        NoiseParams.from_dict(plan_entry(plan, "noise", dict, source), source)
        if plan.in_channels != 1 or plan.num_classes != 1:
            raise InputError("a restoration model has one input and one output channel",
                             source, "give the plan.json that medseg train wrote")

    def predict(self, folder: ModelFolder, request: PredictRequest, log: Log) -> list[Path]:
        return predict_restoration(folder, request.input, request.output,
                                   checkpoint=request.checkpoint, device=request.device, log=log)

    def evaluate(self, request: EvaluateRequest, log: Log) -> dict[str, Any]:
        return evaluate_restoration(request.pred, request.ref, request.output, log=log,
                                    allow_outside_root=request.allow_outside_root)

    def recognises(self, pred: Path) -> bool:
        return (pred / RECORD_NAME).is_file()
