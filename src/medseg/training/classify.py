"""Training loop for image-level classification (T1 single-label, T2 multi-label).

The same guarantees as the segmentation loop (:mod:`medseg.training.loop`): configuration saved
beside every checkpoint, atomic checkpoints loadable with ``weights_only=True``, per-epoch seeding
from ``(seed, epoch, rank)`` so ``--resume`` replays exactly, Ctrl-C keeps the last good
checkpoint, a wall-clock budget refitted every epoch.

Losses: single-label -> cross-entropy on logits (L1, optional class weights); multi-label ->
BCE on logits (L2) where a missing label (``-1``, T5) is unobserved: it contributes neither to
the loss nor to the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from medseg.losses import masked_bce_with_logits, masked_cross_entropy
from medseg.metrics.classification import evaluate_classification
from medseg.training.config import ExperimentConfig
from medseg.training.fit import fit_epochs
from medseg.training.loop import (
    TrainResult,
    check_output_folder,
    resolve_device,
)
from medseg.training.prepare import build_model
from medseg.transforms.augment import Augmenter


@dataclass
class ClsArrays:
    """Classification data on the network's grid.

    Attributes:
        train_x: ``(N, C, *spatial)`` float32, normalised.
        train_y: ``(N,)`` int64 class indices (single) or ``(N, K)`` float in {0, 1, -1}
            (multi; -1 = missing).
        val_x: Validation images (same layout).
        val_y: Validation labels.
        task: ``"single"`` or ``"multi"``.
        class_names: One name per class / label.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    task: str
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.task not in ("single", "multi"):
            raise ValueError(f"task must be 'single' or 'multi', got {self.task!r}")
        if len(self.train_x) != len(self.train_y) or len(self.val_x) != len(self.val_y):
            raise ValueError("images and labels differ in number")

    @property
    def spatial_dims(self) -> int:
        return self.train_x.ndim - 2

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def classification_loss(logits: torch.Tensor, target: torch.Tensor, task: str,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CE (single-label, ``target`` ``(B,)``) or masked BCE (multi-label, ``(B, K)`` with -1
    = missing) on logits ``(B, K)``; mean over observed terms."""
    if task == "single":
        # one "pixel" per image: (B, K, 1) logits, (B, 1) targets
        return masked_cross_entropy(logits[..., None], target.long()[..., None],
                                    class_weights=class_weights)
    return masked_bce_with_logits(logits, target.float())


@torch.inference_mode()
def predict_classifier(model: torch.nn.Module, x: np.ndarray, task: str, device: torch.device,
                       batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` probabilities (softmax for single-label, sigmoid for multi-label)."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device))
            p = torch.softmax(logits.float(), 1) if task == "single" else torch.sigmoid(
                logits.float())
            out.append(p.cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _val_metrics(model: torch.nn.Module, data: ClsArrays, device: torch.device) -> dict:
    probs = predict_classifier(model, data.val_x, data.task, device)
    res = evaluate_classification(probs, data.val_y, data.task, data.class_names, n_boot=0)
    return {"val_auroc": float(res["macro"]["auroc"]),
            "val_accuracy": float(res["macro"].get("accuracy", float("nan")))}


def train_classifier(cfg: ExperimentConfig, data: ClsArrays, resume: bool = False,
                     log: Callable[[str], None] | None = None,
                     plan: dict | None = None) -> TrainResult:
    """Train a registered classification network on ``data``.

    Args:
        cfg: Configuration (``model.name`` a classification model, e.g. ``resnet_classifier``).
        data: Arrays on the network's grid.
        resume: Continue from ``checkpoint_last.pt`` in ``cfg.output_dir``.
        log: Progress lines (default ``print``).
        plan: Extra entries for ``plan.json`` (how to preprocess images at prediction).

    Returns:
        A :class:`~medseg.training.loop.TrainResult` whose ``best_dice`` holds the best
        validation macro AUROC.
    """
    say = log or print
    device = resolve_device(cfg.train.device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    cfg, out, last_path = check_output_folder(cfg, resume)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data.in_channels, data.num_classes, data.spatial_dims).to(device)
    plan_json = {
        "format": "medseg-plan/1", "task": "classification", "label_task": data.task,
        "spatial_dims": data.spatial_dims, "in_channels": data.in_channels,
        "num_classes": data.num_classes, "class_names": data.class_names,
        "image_shape": list(data.train_x.shape[2:]),
        "model": {"name": cfg.model_name(), "options": dict(cfg.model.options)},
        **(plan or {}),
    }

    def make_epoch(es: int, rng: np.random.Generator) -> Callable[[np.ndarray], torch.Tensor]:
        aug = Augmenter(cfg.augment, data.spatial_dims, seed=es) if cfg.augment.enabled else None

        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(data.train_x[idx])
            if aug is not None:
                x, _ = aug(x)
            y = torch.from_numpy(data.train_y[idx]).to(device)
            return classification_loss(model(x.to(device)), y, data.task)

        return batch_loss

    return fit_epochs(
        cfg, model, device, out, last_path, resume, plan_json, len(data.train_x), make_epoch,
        validate=(lambda: _val_metrics(model, data, device)) if len(data.val_x) else None,
        metric="val_auroc", higher_is_better=True, initial_best=-1.0,
        state_extra={"num_classes": data.num_classes, "in_channels": data.in_channels,
                     "spatial_dims": data.spatial_dims},
        describe_val=lambda val: "".join(f"  {k[4:]} {v:.3f}" for k, v in val.items()),
        say=say)


def preprocess_cls_images(images: np.ndarray | list[np.ndarray], image_size: list[int] | None,
                          sources: list[str]) -> np.ndarray:
    """Stack images to ``(N, C, *image_size)`` float32, each resized (linear) and z-scored.

    Per-image z-scoring makes intensities comparable across scanners and file types (after a
    min-max scaling, as for US / XR / PNG images).

    Raises:
        InputError: sizes differ and no ``image_size`` is set (naming the first odd file).
    """
    from medseg.errors import InputError
    from medseg.transforms.resample import resample_to_shape

    arrs = list(images) if isinstance(images, list) else list(images)
    if not arrs:
        return np.zeros((0, 1, 1, 1), np.float32)
    shape0 = tuple(arrs[0].shape[1:])
    target = tuple(image_size) if image_size else shape0
    out = np.empty((len(arrs), arrs[0].shape[0], *target), dtype=np.float32)
    for i, a in enumerate(arrs):
        if tuple(a.shape[1:]) != target:
            if not image_size:
                raise InputError(
                    f"image size {tuple(a.shape[1:])} differs from the first image's {shape0}",
                    sources[i] if i < len(sources) else None,
                    "set data.image_size (e.g. --set data.image_size=[224,224]) to resize")
            if len(target) != a.ndim - 1:
                raise InputError(f"data.image_size {list(target)} does not match a "
                                 f"{a.ndim - 1}D image", sources[i] if i < len(sources) else None)
            a = resample_to_shape(a, target, order="linear")
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / max(hi - lo, 1e-8)
        out[i] = (a - a.mean()) / max(float(a.std()), 1e-8)
    return out


def prepare_classification(cfg: ExperimentConfig, log: Callable[[str], None] = print
                           ) -> tuple[ClsArrays, dict]:
    """Open a classification dataset (CSV + images, NIfTI + CSV, MedMNIST ``.npz``), check it,
    preprocess and split it (the dataset's own train/val splits when it has them).

    Returns:
        The arrays and the ``plan.json`` entries prediction needs.
    """
    from medseg.data.classification import load_images, open_classification
    from medseg.training.prepare import split_cases

    ds = open_classification(cfg.data.dataset, modality=cfg.data.modality or "other")
    splits = ds.splits()
    if "train" in splits and "val" in splits:
        tr, va = ds.subset(split="train"), ds.subset(split="val")
    else:
        ids = ds.ids
        tr_ids, va_ids = split_cases(ids, cfg.data.val_fraction, cfg.data.split_seed,
                                     cfg.data.group_regex)
        pos = {i: k for k, i in enumerate(ids)}
        tr = ds.subset(indices=[pos[i] for i in tr_ids])
        va = ds.subset(indices=[pos[i] for i in va_ids])
    srcs = [str(it.images[0]) if it.images else it.item_id for it in tr.items + va.items]
    x = preprocess_cls_images(list(load_images(tr)) + list(load_images(va)),
                              cfg.data.image_size, srcs)
    arrays = ClsArrays(x[: len(tr.items)], tr.labels(), x[len(tr.items):], va.labels(),
                       ds.task, list(ds.class_names))
    log(f"  {len(tr.items)} training / {len(va.items)} validation images "
        f"{list(x.shape[1:])}, {ds.task}-label, classes {ds.class_names}")
    plan = {"image_size": list(x.shape[2:]), "val_ids": va.ids, "train_ids": tr.ids}
    return arrays, plan
