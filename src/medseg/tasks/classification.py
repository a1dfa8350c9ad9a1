"""Image-level classification (T1 single-label, T2 multi-label): the task module.

Data: a CSV label table (``image,label`` or one 0/1/-1 column per label; -1 = missing, T5) with
images or NIfTI volumes, or a MedMNIST ``.npz`` (its own train/val splits). Images are resized
(``data.image_size``) and z-scored per image. Losses: single-label -> cross-entropy on logits (L1,
optionally class-weighted by ``loss.class_weighting``, L4); multi-label -> BCE on logits (L2)
where a missing label is unobserved: it contributes neither to the loss nor to the metrics.

``medseg predict`` writes ``predictions.csv`` (``id, p_<class>..., prediction``);
``medseg evaluate`` joins it with a label table by id and writes ``metrics.json``,
``metrics.csv``, ``roc.png``, ``reliability.png`` and ``report.html`` (accuracy, balanced
accuracy, AUROC, sensitivity, specificity, F1, confusion matrix, ECE, bootstrap 95% intervals);
the hard labels are taken at the model's stored threshold (``decision.json``, copied beside the
predictions by predict) when there is one. Small-data recipes (issue 13): ``data.image_size``
upsampling, ``train.label_smoothing``, ``train.mixup``, ``train.balanced_sampling``, ultrasound
speckle augmentation (``data.modality: US``) and test-time flips (``inference.tta``/``--tta``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.data.classification import ClsDataset, load_images, open_classification
from medseg.errors import ConfigError, InputError
from medseg.inference.precision import autocast
from medseg.io import list_image_files, read_image
from medseg.io.atomic import atomic_write_text
from medseg.io.paths import read_json_object
from medseg.losses import masked_bce_with_logits, masked_cross_entropy
from medseg.metrics.classification import (
    classification_case_rows,
    evaluate_classification,
    roc_curve,
    write_classification_metrics,
)
from medseg.model_folder import ModelFolder, Plan
from medseg.reports import (
    classification_report,
    model_card,
    save_reliability_diagram,
    save_roc_curve,
    write_report,
)
from medseg.tasks import register_task
from medseg.tasks.base import (
    CLASS_WEIGHTING_SETTINGS,
    SPLIT_SETTINGS,
    TABLE_SETTINGS,
    EvaluateRequest,
    Log,
    PredictRequest,
    Task,
    TaskTrainer,
    class_weighting,
    index_batches,
    plan_entry,
    split_ids,
)
from medseg.tasks.outputs import ClassProbs, MultiLabel
from medseg.training.augmentation import make_image_augmenter
from medseg.training.calibration import CalibrationSet, temper
from medseg.training.config import ExperimentConfig
from medseg.training.device import resolve_precision
from medseg.uncertainty.calibration import observed_elements
from medseg.uncertainty.decompose import heteroscedastic_ce


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
        val_ids: Ids of the validation images (out-of-fold rows of a K-fold run).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    task: str
    class_names: list[str]
    val_ids: list[str] = field(default_factory=list)

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


def heteroscedastic_bce(logits: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor,
                        n_samples: int) -> torch.Tensor:
    """Sampled-logit BCE for independent labels (U1, the multi-label twin of
    :func:`medseg.uncertainty.decompose.heteroscedastic_ce`).

    Per observed entry ``-log (1/S) sum_s Bernoulli(y | sigmoid(z + sigma eps_s))`` with
    ``sigma = exp(log_var / 2)``; entries with target ``-1`` (missing, T5) are excluded and the
    mean runs over observed entries (0 when none is observed).

    Args:
        logits: ``(B, K)`` logits.
        log_var: ``(B, K)`` logit log-variances.
        target: ``(B, K)`` in {0, 1, -1}.
        n_samples: Noise draws ``S``.

    Returns:
        Scalar loss.
    """
    observed = target >= 0
    y = target.clamp_min(0.0)
    z = logits.unsqueeze(0) + torch.exp(0.5 * log_var).unsqueeze(0) * torch.randn(
        (n_samples, *logits.shape), dtype=logits.dtype, device=logits.device)
    logp = -torch.nn.functional.binary_cross_entropy_with_logits(
        z, y.unsqueeze(0).expand_as(z), reduction="none")
    nll = -(torch.logsumexp(logp, 0) - math.log(n_samples))
    w = observed.to(nll.dtype)
    return (w * nll).sum() / w.sum().clamp_min(1.0)


def soft_targets(y: torch.Tensor, num_classes: int, task: str, smoothing: float = 0.0
                 ) -> torch.Tensor:
    """Label-smoothed targets ``(B, K)`` of hard labels.

    Single-label: ``(1 - e) onehot(y) + e / K``; multi-label: ``y (1 - e) + e / 2`` for observed
    entries, missing entries (``-1``) kept ``-1``.

    Args:
        y: ``(B,)`` class indices (single) or ``(B, K)`` in {0, 1, -1} (multi).
        num_classes: ``K``.
        task: ``"single"`` or ``"multi"``.
        smoothing: ``e`` in [0, 1).

    Returns:
        ``(B, K)`` float64 targets.
    """
    if task == "single":
        onehot = torch.nn.functional.one_hot(y.long(), num_classes).double()
        return onehot * (1.0 - smoothing) + smoothing / num_classes
    y = y.double()
    return torch.where(y >= 0, y * (1.0 - smoothing) + smoothing / 2.0, y)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy ``-sum_k t_k log softmax(z)_k`` against soft targets. Takes logits.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` rows summing to 1.

    Returns:
        ``(B,)`` losses.
    """
    return -(target * torch.log_softmax(logits, 1)).sum(1)


def mixed_classification_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                              lam: float, task: str, smoothing: float = 0.0,
                              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of a mixed (mixup) and/or label-smoothed batch. Takes logits.

    Single-label: ``sum_i [lam w_a l(t_a) + (1 - lam) w_b l(t_b)] / sum_i [lam w_a +
    (1 - lam) w_b]`` with ``l`` the soft cross-entropy of :func:`soft_cross_entropy`, ``t`` the
    smoothed targets of the two images mixed into image ``i`` and ``w`` their class weights (1
    without); without class weights this is the cross-entropy against the convex combination
    ``lam t_a + (1 - lam) t_b``. Multi-label: masked BCE against ``lam t_a + (1 - lam) t_b``
    where both labels are observed (missing otherwise).

    Args:
        logits: ``(B, K)``.
        y_a: ``(B,)`` / ``(B, K)`` labels of the first images.
        y_b: Labels of the images mixed in (``y_a`` and ``lam = 1`` without mixup).
        lam: Mixing weight of the first images, in [0, 1].
        task: ``"single"`` or ``"multi"``.
        smoothing: Label smoothing ``e``.
        class_weights: Optional ``(K,)`` (single-label).

    Returns:
        Scalar loss.
    """
    k = logits.shape[1]
    t_a = soft_targets(y_a, k, task, smoothing).to(logits)
    t_b = soft_targets(y_b, k, task, smoothing).to(logits)
    if task == "multi":
        both = (t_a >= 0) & (t_b >= 0)
        target = torch.where(both, lam * t_a + (1.0 - lam) * t_b, torch.full_like(t_a, -1.0))
        return masked_bce_with_logits(logits, target)
    if class_weights is None:
        w_a = w_b = torch.ones(len(logits), dtype=logits.dtype, device=logits.device)
    else:
        cw = class_weights.to(logits)
        w_a, w_b = cw[y_a.long()], cw[y_b.long()]
    num = lam * w_a * soft_cross_entropy(logits, t_a) + \
        (1.0 - lam) * w_b * soft_cross_entropy(logits, t_b)
    return num.sum() / (lam * w_a + (1.0 - lam) * w_b).sum().clamp_min(1e-12)


def mixup(x: torch.Tensor, alpha: float, rng: np.random.Generator
          ) -> tuple[torch.Tensor, np.ndarray, float]:
    """Mix a batch with a permutation of itself (mixup, Zhang et al. 2018).

    Args:
        x: ``(B, C, *spatial)`` images.
        alpha: Beta(alpha, alpha) parameter (> 0).
        rng: Draws ``lam`` then the permutation.

    Returns:
        ``(lam x + (1 - lam) x[perm], perm, lam)``.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    return lam * x + (1.0 - lam) * x[torch.from_numpy(perm)], perm, lam


def balanced_batches(labels: np.ndarray, batch_size: int, steps: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch's index batches drawn with replacement so that every class present is equally
    likely: image ``i`` of class ``c`` has probability ``1 / (K n_c)`` (``K`` classes present).

    Args:
        labels: ``(N,)`` class indices.
        batch_size: Images per batch.
        steps: Batches.
        rng: The epoch's generator.

    Returns:
        ``steps`` sorted index arrays of ``batch_size``.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    classes, counts = np.unique(y, return_counts=True)
    per = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    p = np.array([1.0 / (len(classes) * per[int(c)]) for c in y])
    draw = rng.choice(len(y), size=(steps, batch_size), replace=True, p=p / p.sum())
    return [np.sort(b) for b in draw]


def tta_flip_axes(cfg: ExperimentConfig | None, spatial_dims: int) -> tuple[int, ...]:
    """The spatial axes whose flips test-time augmentation averages: those the training run's
    augmentation flipped (``augment.flip_axes``, every axis when unset), none when it did not
    flip (a flip it never saw is not a valid view of the anatomy)."""
    if cfg is None:
        return tuple(range(spatial_dims))
    a = cfg.augment
    if not a.enabled or a.p_flip <= 0:
        return ()
    return tuple(range(spatial_dims)) if a.flip_axes is None else tuple(a.flip_axes)


def _float_logits(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """``(B, K)`` float32 logits of ``model(x)`` run in ``precision`` (autocast); a variance
    head's ``(logits, log_var)`` gives its logits."""
    with autocast(precision, x.device):
        out = model(x)
    return (out[0] if isinstance(out, tuple) else out).float()


def tta_logits(model: torch.nn.Module, x: torch.Tensor, axes: tuple[int, ...], task: str,
               precision: str = "fp32") -> torch.Tensor:
    """Logits ``(B, K)`` of the flip-averaged probabilities of ``x`` ``(B, C, *spatial)``:
    ``log mean_g softmax(f(g x))`` (single) or ``logit mean_g sigmoid(f(g x))`` (multi) over
    every combination of flips of ``axes`` (:func:`medseg.inference.tta.flip_tta`); the
    network runs in ``precision``, the averaging in float32/64."""
    from medseg.inference.tta import flip_tta

    def predictor(image: torch.Tensor) -> torch.Tensor:
        out = _float_logits(model, image, precision)
        return out.reshape(*out.shape, *([1] * (image.ndim - 2)))

    act = "softmax" if task == "single" else "sigmoid"
    p = flip_tta(predictor, x, axes, act).reshape(len(x), -1).double()
    p = p.clamp(1e-12, 1.0)
    logits = p.log() if task == "single" else p.log() - (1.0 - p).clamp_min(1e-12).log()
    return logits.float()


@torch.inference_mode()
def classifier_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device,
                      batch_size: int = 64, tta: tuple[int, ...] = (), task: str = "single",
                      precision: str = "fp32") -> torch.Tensor:
    """``(N, K)`` float32 logits of ``x`` ``(N, C, *spatial)`` on CPU (eval mode); with ``tta``
    axes, those of the flip-averaged probabilities (:func:`tta_logits`). ``precision``: the
    network's arithmetic (``fp32``, ``bf16``, ``fp16`` autocast; resolved, not ``auto``)."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
            if tta:
                out.append(tta_logits(model, xb, tta, task, precision).cpu())
                continue
            out.append(_float_logits(model, xb, precision).cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros((0, 0))


def predict_classifier(model: torch.nn.Module, x: np.ndarray, task: str, device: torch.device,
                       batch_size: int = 64, temperature: float = 1.0,
                       tta: tuple[int, ...] = (), precision: str = "fp32"
                       ) -> ClassProbs | MultiLabel:
    """Probabilities of ``x`` ``(N, C, *spatial)``: :class:`ClassProbs` (softmax, single-label)
    or :class:`MultiLabel` (a sigmoid per label), ``(N, K)`` on CPU; logits divided by
    ``temperature`` (U5); ``tta``: flip axes averaged (:func:`tta_logits`); the network in
    ``precision``."""
    logits = classifier_logits(model, x, device, batch_size, tta, task, precision) / temperature
    return ClassProbs.from_logits(logits) if task == "single" else MultiLabel.from_logits(logits)


def probabilities(p: ClassProbs | MultiLabel) -> np.ndarray:
    """``(N, K)`` float numpy probabilities of either output type."""
    return (p.probs if isinstance(p, ClassProbs) else p.scores).numpy()


class ClassificationTrainer(TaskTrainer):
    """Whole images by index (or class-balanced), augmented and optionally mixed per batch; CE
    or masked BCE, optionally against label-smoothed / mixed targets."""

    def __init__(self, cfg: ExperimentConfig, data: ClsArrays, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.n_val = len(data.val_x)
        self.tta = tta_flip_axes(cfg, data.spatial_dims) if cfg.inference.tta else ()
        self.acw, self.weights = None, None
        if data.task == "single":
            alpha = torch.bincount(torch.from_numpy(data.train_y).long(),
                                   minlength=data.num_classes).double()
            self.acw, self.weights = class_weighting(cfg, alpha)
            if self.weights is not None:
                self.weights = self.weights.to(device)

    def batches(self, epoch: int, seed: int, rank: int, world_size: int) -> Iterator[Any]:
        cfg, data = self.cfg, self.data
        rng = np.random.default_rng(seed)
        aug = make_image_augmenter(cfg.augment, cfg.physics_noise, data.spatial_dims, seed,
                                   cfg.data.modality)
        draw = balanced_batches if cfg.train.balanced_sampling else None
        batches = draw(data.train_y, cfg.train.batch_size, cfg.train.steps_per_epoch, rng) \
            if draw is not None else index_batches(len(data.train_x), cfg.train.batch_size,
                                                   cfg.train.steps_per_epoch, rng)
        for idx in batches:
            x = torch.from_numpy(data.train_x[idx])
            if aug is not None:
                x, _ = aug(x)
            y = torch.from_numpy(data.train_y[idx])
            if cfg.train.mixup > 0:
                x, perm, lam = mixup(x, cfg.train.mixup, rng)
                yield x, y, y[torch.from_numpy(perm)], lam
            else:
                yield x, y

    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        x, y = batch[:2]
        y = y.to(self.device)
        weights = self.acw.weights.to(self.device) if self.acw is not None else self.weights
        out = net(x.to(self.device))
        if isinstance(out, tuple):  # variance head (U1): the sampled-logit loss
            logits, log_var = out[0].float(), out[1].float()
            s = self.cfg.model.variance_samples
            if self.data.task == "single":
                loss = heteroscedastic_ce(logits[..., None], log_var[..., None],
                                          y.long()[..., None], s)
            else:
                loss = heteroscedastic_bce(logits, log_var, y.float(), s)
            return loss, (logits, y)
        logits = out.float()
        if len(batch) == 4 or self.cfg.train.label_smoothing > 0:
            y_b, lam = (batch[2].to(self.device), float(batch[3])) if len(batch) == 4 else (y, 1.0)
            return mixed_classification_loss(logits, y, y_b, lam, self.data.task,
                                             self.cfg.train.label_smoothing, weights), (logits, y)
        return classification_loss(logits, y, self.data.task, weights), (logits, y)

    def after_step(self, batch: Any, output: Any) -> None:
        if self.acw is not None:
            logits, y = output
            self.acw.update(torch.softmax(logits.detach(), 1)[..., None], y.long()[..., None])

    def end_epoch(self) -> dict[str, float]:
        if self.acw is None:
            return {}
        self.acw.end_epoch()
        return {f"weight_{n}": float(w) for n, w in zip(self.data.class_names, self.acw.weights,
                                                        strict=True)}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        probs = probabilities(predict_classifier(model, self.data.val_x, self.data.task,
                                                 self.device, tta=self.tta))
        res = evaluate_classification(probs, self.data.val_y, self.data.task,
                                      self.data.class_names, n_boot=0)
        return {"val_auroc": float(res["macro"]["auroc"]),
                "val_accuracy": float(res["macro"].get("accuracy", float("nan")))}

    def out_of_fold(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        logits = classifier_logits(model, self.data.val_x, self.device, tta=self.tta,
                                   task=self.data.task)
        return [{"id": i, "label": np.asarray(y).tolist(), "logits": z.tolist()}
                for i, y, z in zip(self.data.val_ids, self.data.val_y, logits, strict=True)]

    def calibration_set(self, model: torch.nn.Module) -> CalibrationSet:
        """The validation images' logits and labels (missing labels left out)."""
        d = self.data
        kind = "softmax" if d.task == "single" else "sigmoid"
        z, y = observed_elements(classifier_logits(model, d.val_x, self.device, tta=self.tta,
                                                   task=d.task),
                                 torch.from_numpy(d.val_y), kind=kind)
        return CalibrationSet(z, y, kind, f"the validation split ({len(d.val_x)} image(s))",
                              len(d.val_x))

    def describe(self, val: dict[str, float]) -> str:
        return "".join(f"  {k[4:]} {v:.3f}" for k, v in val.items())

    def state_dict(self) -> dict[str, Any]:
        return {} if self.acw is None else {"class_weights_state": self.acw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.acw is not None and state.get("class_weights_state") is not None:
            self.acw.load_state_dict(state["class_weights_state"])


def preprocess_cls_images(images: np.ndarray | list[np.ndarray], image_size: list[int] | None,
                          sources: list[str]) -> np.ndarray:
    """Stack images to ``(N, C, *image_size)`` float32, each resized (linear) and z-scored.

    Per-image z-scoring makes intensities comparable across scanners and file types (after a
    min-max scaling, as for US / XR / PNG images).

    Raises:
        InputError: sizes differ and no ``image_size`` is set (naming the first odd file).
    """
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


def prepare_classification(cfg: ExperimentConfig, log: Log = print
                           ) -> tuple[ClsArrays, dict]:
    """Open a classification dataset (CSV + images, NIfTI + CSV, MedMNIST ``.npz``), check it,
    preprocess and split it (the dataset's own train/val splits when it has them).

    Returns:
        The arrays and the ``plan.json`` entries prediction needs.
    """
    ds = open_classification(cfg.data.dataset, modality=cfg.data.modality or "other",
                             allow_outside_root=cfg.data.allow_outside_root)
    splits = ds.splits()
    if "train" in splits and "val" in splits and cfg.train.folds < 2:
        tr, va = ds.subset(split="train"), ds.subset(split="val")
    else:
        # K folds pool the dataset's train and val splits (never a test split)
        keep = [k for k, it in enumerate(ds.items) if it.split in (None, "", "train", "val")]
        if not keep:
            raise InputError("no train or val images to train on (a test split is never "
                             "trained on)", cfg.data.dataset,
                             "add train_images / train_labels, or give the training file")
        pool = ds.subset(indices=keep)
        ids = pool.ids
        labels = pool.labels()
        strata = [int(v) if np.ndim(v) == 0 else tuple(int(t) for t in v) for v in labels]
        tr_ids, va_ids = split_ids(cfg, ids, strata)
        pos = {i: k for k, i in enumerate(ids)}
        tr = pool.subset(indices=[pos[i] for i in tr_ids])
        va = pool.subset(indices=[pos[i] for i in va_ids])
    srcs = [str(it.images[0]) if it.images else it.item_id for it in tr.items + va.items]
    x = preprocess_cls_images(list(load_images(tr)) + list(load_images(va)),
                              cfg.data.image_size, srcs)
    arrays = ClsArrays(x[: len(tr.items)], tr.labels(), x[len(tr.items):], va.labels(),
                       ds.task, list(ds.class_names), list(va.ids))
    log(f"  {len(tr.items)} training / {len(va.items)} validation images "
        f"{list(x.shape[1:])}, {ds.task}-label, classes {ds.class_names}")
    plan = {"image_size": list(x.shape[2:]), "val_ids": va.ids, "train_ids": tr.ids}
    return arrays, plan


def _inputs(path: Path, split: str | None) -> tuple[list[str], list[np.ndarray] | np.ndarray,
                                                    ClsDataset | None]:
    """Ids and images from a dataset (CSV / npz / folder with a CSV) or a folder of images."""
    if path.is_dir() and not list(path.glob("*.csv")):
        entries = list_image_files(path)
        if not entries:
            raise InputError("no images in the folder", path, "give images or a label table")
        imgs, ids = [], []
        for e in entries:
            arr, meta = read_image(e)
            imgs.append(arr)
            ids.append(meta.name)
        return ids, imgs, None
    ds = open_classification(path)
    if split:
        ds = ds.subset(split=split)
        if not ds.items:
            raise InputError(f"no cases in split {split!r}", path,
                             f"choose one of {open_classification(path).splits()}")
    return ds.ids, load_images(ds), ds


@torch.inference_mode()
def sample_classifier(models: list[torch.nn.Module], x: np.ndarray, task: str,
                      device: torch.device, method: str, n_samples: int = 10, seed: int = 0,
                      batch_size: int = 64, precision: str = "fp32"
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``T`` probability samples of every image: ``(T, N, K)`` (and logit variances or None),
    the networks run in ``precision``.

    See :func:`medseg.uncertainty.samplers.sample_probs` for the methods.
    """
    from medseg.uncertainty.samplers import sample_probs

    act = "softmax" if task == "single" else "sigmoid"
    probs, variances = [], []
    for k, i in enumerate(range(0, len(x), batch_size)):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
        try:
            with autocast(precision, device):  # samples come back as float32
                p, v = sample_probs(models, xb, method, n_samples, seed=seed * 100003 + k,
                                    activation=act)
        except ValueError as e:
            raise InputError(str(e), hint="choose another --uncertainty method") from None
        probs.append(p.cpu())
        variances.append(None if v is None else v.cpu())
    var = None if variances[0] is None else torch.cat(variances, 1)  # type: ignore[arg-type]
    return torch.cat(probs, 1), var


def read_decision(folder: Path) -> dict[str, Any]:
    """The folder's ``decision.json`` (thresholds chosen on out-of-fold predictions), or {}.

    Raises:
        InputError: unreadable or without thresholds.
    """
    path = folder / "decision.json"
    if not path.is_file():
        return {}
    doc = read_json_object(path, "delete it (predictions then use 0.5 / the most probable "
                                 "class)")
    try:
        if not all(isinstance(v, int | float) for v in doc["thresholds"].values()):
            raise ValueError("thresholds")
    except (ValueError, KeyError, AttributeError) as e:
        raise InputError(f"decision.json is invalid ({type(e).__name__})", path,
                         "delete it (predictions then use 0.5 / the most probable class)"
                         ) from None
    return doc


def model_decision(folder: ModelFolder) -> dict[str, Any]:
    """The model folder's ``decision.json`` with its thresholds at the temperature prediction
    now applies (:meth:`ModelFolder.temperatures`; their mean if the members carry different
    ones), or {}.

    The thresholds are chosen on out-of-fold probabilities at the temperature fitted on them
    (stored as ``"temperature"``); after ``medseg calibrate`` fits another one, the same
    operating point on the logits is a different probability
    (:func:`medseg.metrics.thresholds.threshold_at_temperature`), so the sensitivity and
    specificity stored with it still describe the decisions. A file without ``"temperature"``
    (written before 2026-12-06) is taken as it is.

    Raises:
        InputError: an unreadable or invalid ``decision.json`` or ``calibration.json``.
    """
    from medseg.metrics.thresholds import threshold_at_temperature

    doc = read_decision(folder.path)
    if not doc or "temperature" not in doc:
        return doc
    try:
        t_from = float(doc["temperature"])
        now = float(np.mean(folder.temperatures()))
        if math.isclose(t_from, now, rel_tol=1e-9):
            return doc
        moved = {n: threshold_at_temperature(t, t_from, now)
                 for n, t in doc["thresholds"].items()}
    except (ValueError, TypeError) as e:
        raise InputError(f"decision.json is invalid ({e})", folder.path / "decision.json",
                         "delete it (predictions then use 0.5 / the most probable class)"
                         ) from None
    return {**doc, "thresholds": moved, "temperature": now,
            "moved_from": {"temperature": t_from, "thresholds": doc["thresholds"],
                           "why": "recalibrated: the same operating point on the logits at "
                                  "the new temperature"}}


def uncertainty_columns(task: str, names: list[str]) -> list[str]:
    """The uncertainty columns of ``predictions.csv``: per image for single-label (variances
    of the predicted class), per label for multi-label."""
    from medseg.uncertainty.maps import SCALAR_TERMS

    if task == "single":
        return [*SCALAR_TERMS]
    return [f"{t}_{n}" for n in names for t in SCALAR_TERMS]


def predict_classification(folder: ModelFolder, input_path: str | Path,
                           output_dir: str | Path, split: str | None = None,
                           checkpoint: str = "best", device: str = "auto",
                           log: Log = print, request: PredictRequest | None = None) -> Path:
    """Write ``predictions.csv`` for every case of ``input_path``; returns its path.

    An ensemble folder predicts the mean of its members. With ``request.uncertainty`` the
    prediction is the mean of ``T`` samples and the columns of :func:`uncertainty_columns`
    (entropies in nats, the variance split of the predicted class's probability) follow it.
    """
    from medseg.uncertainty.maps import SCALAR_TERMS, uncertainty_maps

    plan = folder.plan
    task = plan["label_task"]
    models, dev = folder.load_networks(checkpoint, device)
    temps = folder.temperatures()
    ids, imgs, _ = _inputs(Path(input_path), split)
    x = preprocess_cls_images(list(imgs), plan["image_size"], ids)
    if x.shape[1] != plan.in_channels:
        raise InputError(f"images have {x.shape[1]} channel(s), the model expects "
                         f"{plan.in_channels}", input_path)
    method = request.uncertainty if request is not None else None
    cfg = folder.config()
    # a folder trained before precisions existed (no train_precision in its plan) keeps fp32
    stored = cfg.inference.precision if cfg is not None and plan.get("train_precision") \
        else "fp32"
    precision = resolve_precision(
        request.precision if request is not None and request.precision else stored, dev)
    maps = None
    if method:
        samples, var = sample_classifier(models, x, task, dev, method, request.samples,
                                         request.seed, precision=precision)
        kind = "softmax" if task == "single" else "sigmoid"
        per = temps if method == "ensemble" else temps[:1] * samples.shape[0]
        samples = torch.stack([temper(p, tk, kind, class_dim=1)
                               for p, tk in zip(samples, per, strict=True)])
        maps = uncertainty_maps(samples.permute(0, 2, 1),
                                None if var is None else var.permute(0, 2, 1),
                                "softmax" if task == "single" else "sigmoid")
        mean = maps["mean"].T
        out_probs: ClassProbs | MultiLabel = ClassProbs(mean) if task == "single" else \
            MultiLabel(mean)
    else:
        use_tta = request.tta if request is not None and request.tta is not None else \
            bool(cfg is not None and cfg.inference.tta)
        axes = tta_flip_axes(cfg, plan.spatial_dims) if use_tta else ()
        if use_tta and not axes:
            raise InputError("test-time flips were asked for but the model was trained "
                             "without flips (augment.p_flip 0), so no flip is a view it saw",
                             folder.path, "predict without --tta")
        parts = [predict_classifier(m, x, task, dev, temperature=tk, tta=axes,
                                    precision=precision)
                 for m, tk in zip(models, temps, strict=True)]
        mean = torch.stack([torch.from_numpy(probabilities(p)) for p in parts]).mean(0)
        out_probs = ClassProbs(mean) if task == "single" else MultiLabel(mean)
    probs = probabilities(out_probs)
    names = plan.class_names
    hard = out_probs.hard().numpy()
    decision = model_decision(folder)
    if decision:  # the operating point chosen on out-of-fold predictions
        th = decision["thresholds"]
        # threshold the values predictions.csv holds (6 decimals), so evaluate agrees
        shown = np.array([[float(f"{v:.6f}") for v in r] for r in probs]).reshape(probs.shape)
        if task == "single":
            hard = (shown[:, 1] >= th[names[1]]).astype(np.int64)
        else:
            hard = (shown >= np.array([th[n] for n in names])[None]).astype(np.int64)
    extra = uncertainty_columns(task, names) if maps is not None else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *[f"p_{n}" for n in names], "prediction", *extra])
    for i, cid in enumerate(ids):
        if task == "single":
            pred = names[int(hard[i])]
        else:
            pred = ";".join(n for n, h in zip(names, hard[i], strict=True) if h)
        unc: list[str] = []
        if maps is not None:
            if task == "single":
                unc = [f"{float(maps[t][i]):.6g}" for t in SCALAR_TERMS]
            else:
                unc = [f"{float(maps[t][k, i]):.6g}" for k in range(len(names))
                       for t in SCALAR_TERMS]
        w.writerow([cid, *[f"{p:.6f}" for p in probs[i]], pred, *unc])
    out = Path(output_dir) / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    _copy_decision(decision, folder.path, out.parent)
    log(f"{len(ids)} prediction(s) written to {out}")
    seen = set(plan.train_ids) & set(ids)
    if seen:
        log(f"  note: {len(seen)} of the {len(ids)} input id(s) are ids the model trained on "
            "(plan.json train_ids; a K-fold model trained on every case of its pool): scores on "
            "them are no estimate for new images (oof_metrics.json is)")
    return out


def _copy_decision(decision: dict[str, Any], model: Path, out_dir: Path) -> None:
    """Put the operating point beside ``predictions.csv`` (``decision.json`` with the model's
    path) so ``medseg evaluate`` scores at it; an earlier copy is removed when the model has
    none (a user's own ``decision.json`` without ``"model"`` is never touched)."""
    import json

    target = out_dir / "decision.json"
    if decision:
        atomic_write_text(target, json.dumps({**decision, "model": str(model)}, indent=2))
    elif target.is_file():
        try:
            stale = "model" in json.loads(target.read_text())
        except (OSError, ValueError, TypeError):
            stale = False
        if stale:
            target.unlink()


def read_predictions(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(ids, class names, (N, K) probabilities)`` from a ``predictions.csv``.

    Args:
        path: The file, or the folder holding ``predictions.csv``.

    Raises:
        InputError: missing or unreadable file (not UTF-8, a field over the CSV limit), no ``id``
            or ``p_<class>`` column, a short row, a duplicate id, or a probability that is not a
            finite number in [0, 1] (each naming the file and the line).
    """
    from medseg.data.classification import read_csv_rows
    from medseg.io.limits import check_regular_file
    from medseg.io.paths import path_exists

    p = Path(path)
    if path_exists(p) and p.is_dir():
        p = p / "predictions.csv"
    if not path_exists(p):
        raise InputError("predictions.csv not found", p, "run medseg predict first")
    check_regular_file(p)
    header, rows = read_csv_rows(p, "predictions table")
    if header is None or not rows:
        raise InputError("no predictions in the file", p, "run medseg predict first")
    header = [h.strip() for h in header]
    redo = "write it again with medseg predict"
    if "id" not in header:
        raise InputError(f"no 'id' column in header {header[:10]}", p, redo)
    names = [h[2:] for h in header if h.startswith("p_")]
    if not names:
        raise InputError(f"no probability columns (p_<class>) in header {header[:10]}", p, redo)
    if len(set(names)) != len(names):
        raise InputError(f"duplicate probability columns in header {header[:10]}", p, redo)
    cols = [header.index(f"p_{n}") for n in names]
    at_id = header.index("id")
    ids: list[str] = []
    seen: dict[str, int] = {}
    probs = np.empty((len(rows), len(names)), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) < len(header):
            raise InputError(f"line {line} has {len(row)} values but the header has "
                             f"{len(header)} columns", p, redo)
        cid = row[at_id]
        if not cid or cid in seen:
            what = "an empty id" if not cid else f"id {cid!r} again (first at line {seen[cid]})"
            raise InputError(f"line {line} has {what}", p, "give every case one distinct id")
        seen[cid] = line
        ids.append(cid)
        for k, c in enumerate(cols):
            try:
                v = float(row[c])
            except ValueError:
                v = math.nan
            if not (0.0 <= v <= 1.0):  # also NaN
                raise InputError(
                    f"line {line}: probability p_{names[k]} = {row[c][:40]!r} is not a number in "
                    "[0, 1]",
                    p,
                    redo,
                )
            probs[r, k] = v
    return ids, names, probs


def _predictions_file(pred: str | Path) -> Path:
    """``pred`` itself, or ``pred/predictions.csv`` when ``pred`` is a folder."""
    p = Path(pred)
    return p / "predictions.csv" if p.is_dir() else p


def _prediction_column(path: Path) -> list[str] | None:
    """The ``prediction`` column of a ``predictions.csv`` (``None`` when it has none)."""
    from medseg.data.classification import read_csv_rows

    header, rows = read_csv_rows(path, "predictions table")
    header = [h.strip() for h in header or []]
    if "prediction" not in header:
        return None
    at = header.index("prediction")
    return [row[at] for _, row in rows]


def evaluation_decision(pred: str | Path, names: list[str], probs: np.ndarray, task: str,
                        log: Log = print) -> dict[str, Any]:
    """The operating point ``medseg evaluate`` scores the hard labels at.

    ``medseg predict`` copies the model's ``decision.json`` (the threshold chosen on
    out-of-fold predictions, issue 13) beside the ``predictions.csv`` it thresholded with it;
    without one the hard label is the most probable class (single-label) or ``p >= 0.5``
    (multi-label).

    Args:
        pred: ``predictions.csv`` or the folder holding it.
        names: The class names of its ``p_<class>`` columns.
        probs: ``(N, K)`` its probabilities.
        task: ``"single"`` or ``"multi"``.
        log: Where a note on a ``prediction`` column that argmax does not give goes.

    Returns:
        ``{"rule", "thresholds" ({name: t} or None), "source", "argument"}``; ``argument`` is
        what :func:`~medseg.metrics.classification.evaluate_classification` takes as
        ``thresholds`` (a float on ``p_<class 1>``, one per label, or None).

    Raises:
        InputError: ``decision.json`` is invalid, names other classes, belongs to a
            multi-class model, or its thresholds do not give the file's ``prediction`` column
            (a stale copy from another model).
    """
    from medseg.metrics.classification import predict_classes

    csv_path = _predictions_file(pred)
    doc = read_decision(csv_path.parent)
    column = _prediction_column(csv_path)
    if not doc:
        if column is not None:
            hard = predict_classes(probs, task)
            stored = _hard_labels(column, names, task)
            if stored is not None and not np.array_equal(stored, hard):
                log(f"  note: the 'prediction' column of {csv_path} differs from "
                    f"{'argmax' if task == 'single' else 'p >= 0.5'} on "
                    f"{int(np.sum(np.any((stored != hard).reshape(len(hard), -1), 1)))} "
                    "case(s) and no decision.json is beside it; scoring at "
                    f"{'argmax' if task == 'single' else '0.5'}")
        return {"rule": "argmax" if task == "single" else "0.5 per label", "thresholds": None,
                "source": "no decision.json beside the predictions", "argument": None}
    path = csv_path.parent / "decision.json"
    th = doc["thresholds"]
    wanted = names[1:] if task == "single" else names
    if task == "single" and len(names) != 2:
        raise InputError(f"decision.json holds thresholds but the predictions have "
                         f"{len(names)} classes (a threshold needs a binary problem)", path,
                         "delete it to score the most probable class")
    if any(n not in th for n in wanted):
        raise InputError(f"decision.json has thresholds for {sorted(th)[:10]}, the predictions "
                         f"need {wanted[:10]}", path,
                         "predict again into an empty folder with the model that made it")
    arg: float | list[float] = float(th[names[1]]) if task == "single" else \
        [float(th[n]) for n in names]
    if column is not None:
        stored = _hard_labels(column, names, task)
        hard = predict_classes(probs, task, arg)
        if stored is None or not np.array_equal(stored, hard):
            raise InputError("decision.json beside the predictions does not give their "
                             "'prediction' column (a copy left by another model?)", path,
                             "predict again into an empty folder, or delete decision.json "
                             "to score the most probable class")
    return {"rule": str(doc.get("rule", "stored")), "thresholds": {n: float(th[n])
                                                                   for n in wanted},
            "source": str(path), "argument": arg}


def _hard_labels(column: list[str], names: list[str], task: str) -> np.ndarray | None:
    """The ``prediction`` column as ``(N,)`` class indices or ``(N, K)`` 0/1 (None if a value
    is not a class name)."""
    pos = {n: k for k, n in enumerate(names)}
    if task == "single":
        if any(v not in pos for v in column):
            return None
        return np.array([pos[v] for v in column], dtype=np.int64)
    out = np.zeros((len(column), len(names)), dtype=np.int64)
    for i, v in enumerate(column):
        for n in filter(None, v.split(";")):
            if n not in pos:
                return None
            out[i, pos[n]] = 1
    return out


def evaluate_classification_files(pred: str | Path, ref: str | Path, output: str | Path,
                                  split: str | None = None, n_boot: int = 1000, seed: int = 0,
                                  log: Log = print, model: str | Path | None = None,
                                  group_regex: str | None = None) -> dict:
    """Score ``predictions.csv`` against a label table (CSV / npz), by id.

    ``report.html`` / ``report.md`` carry the tables, ROC and reliability diagrams and, with
    ``model`` (the model folder), its model card (calibration before / after temperature
    scaling among its validation results).

    The hard labels (accuracy, sensitivity, specificity, balanced accuracy, F1, confusion) are
    those of the stored operating point when ``medseg predict`` wrote one beside the
    predictions (``decision.json``, the model's threshold chosen on out-of-fold predictions),
    else of the most probable class (0.5 for labels); ``metrics.json`` records which
    (``summary.decision``). With ``group_regex`` (the subject of each id) the bootstrap
    intervals resample subjects.
    """
    from medseg.data.splits import case_subjects

    folder = None if model is None else ModelFolder.open(model)  # checked before any work
    ids, names, probs = read_predictions(pred)
    subjects = case_subjects(ids, group_regex, pred)
    ds = open_classification(ref)
    if split:
        ds = ds.subset(split=split)
    if list(ds.class_names) != names:
        raise InputError(f"prediction classes {names} differ from the label table's "
                         f"{list(ds.class_names)}", ref)
    pos = {cid: k for k, cid in enumerate(ds.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise InputError(f"{len(missing)} predicted id(s) are not in the label table "
                         f"(e.g. {missing[0]})", ref, "evaluate against the same cases")
    labels = ds.labels()[[pos[i] for i in ids]]
    decision = evaluation_decision(pred, names, probs, ds.task, log)
    res = evaluate_classification(probs, labels, ds.task, names, thresholds=decision["argument"],
                                  n_boot=n_boot, seed=seed, clusters=subjects)
    res["decision"] = {k: v for k, v in decision.items() if k != "argument"}
    rows = classification_case_rows(ids, probs, labels, ds.task, names, decision["argument"])
    out = Path(output)
    json_path, csv_path = write_classification_metrics(out, res, rows)
    curves = {}
    for c, n in enumerate(names):
        if ds.task == "single" and len(names) == 2 and c == 0:
            continue
        y = (labels == c).astype(int) if ds.task == "single" else labels[:, c]
        keep = y >= 0
        if keep.any() and 0 < y[keep].sum() < keep.sum():
            fpr, tpr, _ = roc_curve(probs[keep, c], y[keep])
            curves[n] = (fpr, tpr, res["per_class"][n]["auroc"])
    files = [json_path, csv_path]
    if curves:
        files.append(save_roc_curve(out / "roc.png", curves))
    cal = res["calibration"]
    if cal["ece"] is not None:
        files.append(save_reliability_diagram(
            out / "reliability.png", cal["reliability"], cal["ece"],
            title="top-label reliability" if ds.task == "single" else
            "reliability (every observed label)"))
    from medseg.uncertainty.ranking import rank_cases

    try:  # most uncertain first when predict --uncertainty added the columns
        ranking = rank_cases(Path(pred).parent, "predictive_entropy")
    except InputError:
        ranking = None
    card = None if folder is None else model_card(
        folder, ClassificationTask.key_metric, ClassificationTask.higher_is_better)
    captions = {"roc.png": "ROC curves", "reliability.png": "Reliability diagram"}
    files.append(write_report(out, classification_report(
        res, rows, Path(pred), Path(ref), None if model is None else Path(model), card,
        ranking, [(captions.get(Path(f).name, Path(f).stem), Path(f)) for f in files
                  if str(f).endswith(".png")])))
    m = res["macro"]
    ci = res.get("ci", {}).get("macro", {})
    parts = []
    for k in ("accuracy", "balanced_accuracy", "auroc", "f1"):
        if m.get(k) is None:
            continue
        iv = ci.get(k)
        parts.append(f"{k}={m[k]:.4f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]"
                                          if iv and None not in iv else ""))
    if cal["ece"] is not None:
        floor = cal.get("ece_if_calibrated")
        parts.append(f"ECE={cal['ece']:.4f}" + (
            f" (a calibrated model on {len(ids)} case(s): {floor['mean']:.3f} "
            f"[{floor['interval95'][0]:.3f}, {floor['interval95'][1]:.3f}], "
            f"p={floor['p_value']:.2f})" if floor and "p_value" in floor else "")
            + f" Brier={cal['brier']:.4f}")
    if decision["thresholds"]:
        parts.append(f"at the stored {decision['rule']} threshold(s) " + ", ".join(
            f"{n} {t:.4f}" for n, t in decision["thresholds"].items()))
    else:
        parts.append(f"hard labels by {decision['rule']}")
    log("  ".join(parts))
    return {"result": res, "files": files}


@register_task
class ClassificationTask(Task):
    """Image-level classification (T1 / T2), single- or multi-label by the label table."""

    name = "classification"
    description = "single- or multi-label image classification (CSV / NIfTI + CSV / .npz)"
    key_metric = "val_auroc"
    metric_label = "AUROC"
    higher_is_better = True
    default_model = "resnet_classifier"
    predict_options = frozenset({"checkpoint", "device", "split", "uncertainty",
                                 "samples", "seed", "tta", "precision"})
    uses = SPLIT_SETTINGS | CLASS_WEIGHTING_SETTINGS | TABLE_SETTINGS | {
        "data.modality", "data.image_size", "augment", "train.threshold",
        "train.label_smoothing", "train.mixup", "train.balanced_sampling", "inference.tta",
        "inference.precision", "physics_noise"}

    def prepare(self, cfg: ExperimentConfig, log: Log) -> tuple[ClsArrays, dict]:
        if not cfg.data.dataset:
            raise ConfigError("no dataset given", hint="pass --dataset TABLE or set data.dataset")
        return prepare_classification(cfg, log)

    def build_model(self, cfg: ExperimentConfig, data: Any) -> torch.nn.Module:
        arrays, _ = data
        if arrays.task == "multi" and cfg.loss.class_weighting != "none":
            raise ConfigError("loss.class_weighting applies to single-label classification",
                              hint="remove it for a multi-label table")
        if arrays.task == "multi" and cfg.train.balanced_sampling:
            raise ConfigError("train.balanced_sampling applies to single-label classification",
                              hint="remove it for a multi-label table")
        if cfg.model.variance_head and (cfg.train.mixup > 0 or cfg.train.label_smoothing > 0):
            raise ConfigError("train.mixup and train.label_smoothing do not combine with "
                              "model.variance_head (its loss takes hard labels)",
                              hint="remove one of them")
        return self.build_network(cfg, arrays.spatial_dims, arrays.in_channels,
                                  arrays.num_classes)

    def trainer(self, cfg: ExperimentConfig, data: Any, model: torch.nn.Module,
                device: torch.device, log: Log) -> ClassificationTrainer:
        return ClassificationTrainer(cfg, data[0], device)

    def plan(self, cfg: ExperimentConfig, data: Any) -> Plan:
        arrays, extra = data
        return Plan(self.name, arrays.spatial_dims, arrays.in_channels, arrays.num_classes,
                    self.model_name(cfg), dict(cfg.model.options), list(arrays.class_names),
                    list(extra["train_ids"]), list(extra["val_ids"]),
                    {"label_task": arrays.task, "image_shape": list(arrays.train_x.shape[2:]),
                     "image_size": list(extra["image_size"])})

    def check_plan(self, plan: Plan, source: Path) -> None:
        if plan_entry(plan, "label_task", str, source) not in ("single", "multi"):
            raise InputError("plan.json entry 'label_task' must be single or multi", source,
                             "give the plan.json that medseg train wrote")
        size = plan_entry(plan, "image_size", list, source)
        if len(size) != plan.spatial_dims or not all(
                isinstance(s, int) and 1 <= s <= 65536 for s in size):
            raise InputError(f"plan.json entry 'image_size' must be {plan.spatial_dims} sizes",
                             source, "give the plan.json that medseg train wrote")
        if len(plan.class_names) != plan.num_classes:
            raise InputError("plan.json class_names do not match num_classes", source,
                             "give the plan.json that medseg train wrote")

    def predict(self, folder: ModelFolder, request: PredictRequest, log: Log) -> list[Path]:
        return [predict_classification(folder, request.input, request.output,
                                       split=request.split, checkpoint=request.checkpoint,
                                       device=request.device, log=log, request=request)]

    def evaluate(self, request: EvaluateRequest, log: Log) -> dict[str, Any]:
        return evaluate_classification_files(request.pred, request.ref, request.output,
                                             split=request.split, n_boot=request.bootstrap,
                                             log=log, model=request.model,
                                             group_regex=request.group_regex)

    def calibration_set_from(self, folder: ModelFolder, data: Path, labels: Path | None,
                             split: str | None, device: str, log: Log,
                             ids: Sequence[str] | None = None) -> CalibrationSet:
        """A label table (CSV / npz; ``split`` picks its rows, ``ids`` its cases) with the
        model's logits (every member's, for an ensemble)."""
        ids_all, imgs, ds = _inputs(data, split)
        if ds is None:
            raise InputError("calibration needs labels: a label table or .npz, not a folder "
                             "of images", data, "give the table with the labels")
        if ids is not None:
            keep = set(ids)
            rows = [k for k, i in enumerate(ids_all) if i in keep]
            ds = ds.subset(indices=rows)
            ids_all, imgs = ds.ids, load_images(ds)
        ids = ids_all
        plan = folder.plan
        models, dev = folder.load_networks("best", device)
        x = preprocess_cls_images(list(imgs), plan["image_size"], ids)
        kind = "softmax" if plan["label_task"] == "single" else "sigmoid"
        labels = torch.from_numpy(ds.labels())
        parts = [observed_elements(classifier_logits(m, x, dev), labels, kind=kind)
                 for m in models]  # an ensemble: every member's logits of the same elements
        return CalibrationSet.from_members(
            torch.stack([z for z, _ in parts]), parts[0][1], kind,
            f"{data}" + (f" split {split}" if split else "") + f" ({len(ids)} image(s))",
            len(ids))

    def after_calibration(self, folder: ModelFolder, log: Log) -> None:
        """The stored operating point at the new temperature (``decision.json`` keeps the
        thresholds as chosen; predict moves them, :func:`model_decision`)."""
        d = model_decision(folder)
        if "moved_from" in d:
            old = d["moved_from"]["thresholds"]
            log(f"decision.json: the {d['rule']} operating point chosen on out-of-fold "
                f"predictions at temperature {d['moved_from']['temperature']:.3f} is now "
                + ", ".join(f"{n} {old[n]:.4f} -> {t:.4f}" for n, t in d["thresholds"].items())
                + " (the same logit; its stored sensitivity / specificity still hold)")

    def recognises(self, pred: Path) -> bool:
        return pred.suffix.lower() == ".csv" or (pred / "predictions.csv").is_file()
