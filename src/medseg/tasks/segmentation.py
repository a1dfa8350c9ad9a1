"""Semantic segmentation (T3, 2D and 3D): the task module the engine drives.

Training data: an MSD / nnU-Net folder (``dataset.json``, ``imagesTr``, ``labelsTr``) or a
folder of images plus ``--masks``. :meth:`SegmentationTask.prepare` opens the dataset, validates
every case before any training starts (a bad file is reported at once, naming it), plans and
applies the preprocessing and splits the cases by subject. An epoch's batches are patches with
foreground oversampling (T6) augmented in a prefetch thread, seeded per epoch; the loss is
Dice + CE (L6) with the observation mask from the ignore label (T5), optionally CE class
weighting (L4, fixed or adaptive) and deep supervision; validation is the hard Dice per class
with sliding windows on the network's grid.

Prediction (:class:`SegmentationModel`): each input is read with its geometry, preprocessed
exactly as in training, predicted with Gaussian-weighted sliding windows (optionally flip TTA),
mapped back to the input grid (:class:`~medseg.tasks.outputs.SegProbs`) and written as a label
map with the input's affine. Evaluation: per case and class Dice, IoU, HD95 and ASSD in mm.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.data import (
    PreprocessPlan,
    SegDataset,
    channel_affine,
    make_plan,
    open_dataset,
    preprocess_image,
    preprocess_label,
    restore_probabilities,
    validate_dataset,
)
from medseg.data.cache import (
    CachedCases,
    PreprocessedCache,
    build_cache,
    cache_key,
    default_cache_root,
    open_cache,
)
from medseg.data.layouts import load_image_mask_folders, modality_of_channel
from medseg.data.sampler import PatchBatchLoader, PatchSampler, owned_array
from medseg.data.splits import auto_patch_size, case_subjects
from medseg.data.validate import effective_spatial_dims
from medseg.errors import ConfigError, InputError
from medseg.inference import predict_probs
from medseg.inference.background import background_mask
from medseg.inference.precision import autocast, to_channels_last, use_channels_last
from medseg.inference.predictor import channels_last_layout
from medseg.io import (
    is_dicom_folder,
    list_image_files,
    read_image,
    read_label,
    write_image,
    write_label,
)
from medseg.io.dicom_seg import require_highdicom, write_dicom_seg
from medseg.io.files import detect_format, file_suffix
from medseg.io.meta import ImageMeta
from medseg.losses import DeepSupervisionLoss, DiceCELoss
from medseg.metrics import dice, evaluate_case, format_summary_table, summarize, write_metrics
from medseg.metrics.aggregate import mean_intervals
from medseg.metrics.agreement import bland_altman_points, volume_agreement
from medseg.metrics.calibration import (
    bins_json,
    expected_calibration_error,
    reliability_bins,
    voxel_confidence,
)
from medseg.model_folder import ModelFolder, Plan
from medseg.reports import (
    model_card,
    save_overlay,
    save_reliability_diagram,
    segmentation_report,
    write_report,
)
from medseg.reports.bland_altman import save_bland_altman
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
    output_label,
    plan_entry,
    split_ids,
)
from medseg.tasks.outputs import ObservationMask, SegProbs
from medseg.training.augmentation import make_augmenter
from medseg.training.calibration import (
    CalibrationSet,
    log_probs_as_logits,
    read_calibration,
    temper,
)
from medseg.training.config import ExperimentConfig
from medseg.training.device import resolve_precision
from medseg.uncertainty.calibration import observed_elements
from medseg.uncertainty.decompose import heteroscedastic_ce
from medseg.uncertainty.maps import SCALAR_TERMS, uncertainty_maps

ImageSource = Path | tuple[Path, ...]
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


# ====================================================================== data
@dataclass
class PreparedData:
    """Preprocessed training and validation arrays plus what prediction needs to repeat it.

    With ``data.cache`` (the default) the four array sequences are
    :class:`~medseg.data.cache.CachedCases`: memory maps opened on access, labels in the cache's
    smallest integer type; otherwise in-memory lists.

    Attributes:
        train_images: ``(C, *spatial)`` float32 per training case.
        train_labels: ``(*spatial)`` integer (int64 in memory, uint8 cached) per training case.
        val_images: Validation images (same layout).
        val_labels: Validation labels.
        train_ids: Case ids of the training split.
        val_ids: Case ids of the validation split.
        plan: The preprocessing plan.
        dataset: The opened dataset.
        spatial_dims: 2 or 3.
        patch_size: Training patch / inference window size (the preprocessed median image shape
            until the trainer chooses the patch).
        class_names: Name per class index ``0 .. K-1``.
        summary: The dataset summary (as a dict) from validation.
        train_affines: Per training case, ``(C, 2)`` float64 ``(scale, offset)`` of each
            channel's normalisation (:func:`medseg.data.preprocess.channel_affine`), for
            augmentation in the raw domain.
    """

    train_images: Sequence[np.ndarray]
    train_labels: Sequence[np.ndarray]
    val_images: Sequence[np.ndarray]
    val_labels: Sequence[np.ndarray]
    train_ids: list[str]
    val_ids: list[str]
    plan: PreprocessPlan
    dataset: SegDataset
    spatial_dims: int
    patch_size: tuple[int, ...]
    class_names: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    sampler: PatchSampler | None = field(default=None, repr=False)
    train_affines: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def in_channels(self) -> int:
        return self.plan.in_channels

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def ignore_label(self) -> int | None:
        return self.dataset.ignore_label


def infer_spatial_dims(ds: SegDataset) -> int:
    """2 or 3 from the first training image (a 3D grid with one singleton axis counts as 2D)."""
    if ds.spatial_dims is not None:
        return ds.spatial_dims
    _, meta = read_image(ds.cases[0].images if len(ds.cases[0].images) > 1
                         else ds.cases[0].images[0])
    return effective_spatial_dims(meta.spatial_shape)


def prepare_data(cfg: ExperimentConfig, log: Log = print,
                 task: SegmentationTask | None = None) -> PreparedData:
    """Open, validate (every case, before training), plan, preprocess and split.

    With ``data.cache`` the preprocessed cases live in the on-disk cache
    (:mod:`medseg.data.cache`): a cache hit skips validation and preprocessing (the inputs are
    unchanged, so they validated before); a miss validates, plans and preprocesses one case at a
    time in ``data.workers`` processes. Without it every case is kept in memory.

    Raises:
        InputError: the first bad file, named, with what to do about it.
    """
    t0 = time.perf_counter()
    task = task or SegmentationTask()
    ds = task.open_dataset(cfg)
    if cfg.data.cache:
        data = _prepare_cached(cfg, ds, task, log)
        log(f"  data ready in {time.perf_counter() - t0:.2f} s")
        return data
    dims = cfg.data.spatial_dims or infer_spatial_dims(ds)
    # a bad model option is reported now, not after minutes of reading data
    task.build_network(cfg, dims, len(ds.channel_names), ds.num_classes)
    summary = validate_dataset(ds, dims, keep_arrays=True, seed=cfg.data.split_seed)
    plan = make_plan(summary, ds, target_spacing=cfg.preprocess.target_spacing,
                     normalization=cfg.preprocess.normalization,
                     physics=cfg.preprocess.physics)
    if plan.target_spacing is not None:
        log(f"  resampling to spacing {plan.target_spacing} (median spacing "
            f"{[round(s, 3) for s in summary.median_spacing]})")
    train_ids, val_ids = split_ids(cfg, summary.case_ids)
    tr_x, tr_y, va_x, va_y, tr_aff = [], [], [], [], []
    for cid in summary.case_ids:
        lc = summary.loaded.pop(cid)
        x, _ = preprocess_image(lc.image, lc.image_meta, plan)
        y, _ = preprocess_label(lc.label, lc.image_meta, plan)
        if cid in val_ids:
            va_x.append(x)
            va_y.append(y)
        elif cid in train_ids:
            tr_x.append(x)
            tr_y.append(y)
            tr_aff.append(np.array([channel_affine(lc.image[c], n)
                                    for c, n in enumerate(plan.normalization)]))
    if not tr_x:
        raise InputError("no training cases left after the validation split", ds.root,
                         "lower data.val_fraction or add cases")
    shapes = np.array([x.shape[1:] for x in tr_x])
    log(f"  data ready in {time.perf_counter() - t0:.2f} s")
    return _prepared(ds, dims, plan, summary.to_dict(), summary.case_ids, train_ids, val_ids,
                     (tr_x, tr_y, va_x, va_y, tr_aff), shapes)


def _prepared(ds: SegDataset, dims: int, plan: PreprocessPlan, summary_d: dict[str, Any],
              case_ids: list[str], train_ids: Sequence[str], val_ids: Sequence[str],
              arrays: tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray],
                            Sequence[np.ndarray], list[np.ndarray]],
              shapes: np.ndarray) -> PreparedData:
    """The :class:`PreparedData` of either path (``shapes``: ``(N_train, dims)``)."""
    names = ds.label_names
    class_names = [names.get(v, str(v)) for v in range(ds.num_classes)]
    median_shape = tuple(int(s) for s in np.median(shapes, axis=0))
    summary_d = {**summary_d, "preprocessed_median_shape": list(median_shape)}
    tr_x, tr_y, va_x, va_y, tr_aff = arrays
    return PreparedData(tr_x, tr_y, va_x, va_y, [i for i in case_ids if i in train_ids],
                        [i for i in case_ids if i in val_ids], plan, ds, dims,
                        median_shape, class_names, summary_d, train_affines=tr_aff)


def _prepare_cached(cfg: ExperimentConfig, ds: SegDataset, task: SegmentationTask, log: Log
                    ) -> PreparedData:
    """:func:`prepare_data` through the on-disk cache (see :mod:`medseg.data.cache`).

    The key holds ``data.spatial_dims`` as configured (``None`` = inferred): the inferred value
    depends only on the input files, which the key covers, and is kept in the summary, so a hit
    reads no image at all.
    """
    settings = {"spatial_dims": cfg.data.spatial_dims,
                "preprocess": dataclasses.asdict(cfg.preprocess),
                "intensity_seed": cfg.data.split_seed}
    key = cache_key(ds, settings)
    root = (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir
            else default_cache_root(cfg.output_dir))
    folder = root / key[:24]
    cache: PreprocessedCache | None
    cache, why = open_cache(folder, key)
    if cache is not None:
        dims = int(cache.summary["spatial_dims"])
        # a bad model option is reported now, not after minutes of training
        task.build_network(cfg, dims, len(ds.channel_names), ds.num_classes)
        log(f"  preprocessed cache hit: {folder} ({len(cache.entries)} cases)")
    else:
        dims = cfg.data.spatial_dims or infer_spatial_dims(ds)
        # a bad model option is reported now, not after minutes of reading data
        task.build_network(cfg, dims, len(ds.channel_names), ds.num_classes)
        log(f"  preprocessed cache miss ({why}): building {folder}")
        summary = validate_dataset(ds, dims, keep_arrays=False, seed=cfg.data.split_seed)
        plan = make_plan(summary, ds, target_spacing=cfg.preprocess.target_spacing,
                         normalization=cfg.preprocess.normalization,
                         physics=cfg.preprocess.physics)
        cache = build_cache(folder, key, ds, plan, summary.to_dict(), cfg.data.workers)
    plan, summary_d = cache.plan, cache.summary
    if plan.target_spacing is not None:
        log(f"  resampling to spacing {plan.target_spacing} (median spacing "
            f"{[round(s, 3) for s in summary_d['median_spacing']]})")
    case_ids = list(summary_d["case_ids"])
    train_ids, val_ids = split_ids(cfg, case_ids)
    tr = [i for i in case_ids if i in train_ids and i not in val_ids]
    va = [i for i in case_ids if i in val_ids]
    if not tr:
        raise InputError("no training cases left after the validation split", ds.root,
                         "lower data.val_fraction or add cases")
    arrays = (cache.images(tr), cache.labels(tr), cache.images(va), cache.labels(va),
              cache.affines(tr))
    shapes = np.array([cache.entries[i].shape for i in tr])
    return _prepared(ds, dims, plan, summary_d, case_ids, train_ids, val_ids, arrays, shapes)


def make_epoch_loader(data: PreparedData, cfg: ExperimentConfig, epoch: int, seed: int,
                      rank: int = 0, world_size: int = 1) -> PatchBatchLoader:
    """One epoch's batches: patches (foreground-oversampled) then augmentation, prefetched.

    The patch sampler (with its per-case foreground index tables) is built once and kept on
    ``data``; each epoch re-seeds it and builds a fresh augmenter from ``(seed, epoch, rank)``,
    which is what makes resume exact.
    """
    if data.sampler is None:
        data.sampler = PatchSampler(
            data.train_images, data.train_labels, data.patch_size, cfg.train.batch_size,
            fg_oversample=cfg.train.fg_oversample, ignore_label=data.ignore_label,
            seed=cfg.train.seed, rank=rank, world_size=world_size,
            pad_values=(data.train_images.channel_min
                        if isinstance(data.train_images, CachedCases) else None),
        )
    data.sampler.load_state_dict({
        "rng": np.random.default_rng([cfg.train.seed, epoch, rank]).bit_generator.state,
        "batches_drawn": 0,
    })
    sampler = data.sampler
    aug = make_augmenter(cfg.augment, cfg.physics_noise, data.spatial_dims, seed,
                         data.plan.normalization, data.train_affines,
                         lambda: sampler.last_cases)
    return PatchBatchLoader(sampler, aug, prefetch=2 if cfg.train.prefetch else 0)


def choose_patch_size(cfg: ExperimentConfig, data: PreparedData, model: torch.nn.Module,
                      device: torch.device) -> tuple[int, ...]:
    """The configured patch size, or one derived from the preprocessed median image shape.

    Auto patches are divisible by the network's total stride and capped at 256^2 (2D) or
    64^3 on CPU / 128^3 on GPU (3D).
    """
    if cfg.train.patch_size:
        p = tuple(int(v) for v in cfg.train.patch_size)
        if len(p) != data.spatial_dims:
            raise InputError(f"train.patch_size {list(p)} has {len(p)} entries but the data is "
                             f"{data.spatial_dims}D", hint=f"give {data.spatial_dims} sizes")
        return p
    div = getattr(model, "size_divisor", 16)
    if data.spatial_dims == 2:
        cap = 256 * 256 if device.type == "cpu" else 512 * 512
    else:
        cap = 64**3 if device.type == "cpu" else 128**3
    return auto_patch_size(data.patch_size, div, cap)


def inference_speed(inf: dict[str, Any], device: torch.device, spatial_dims: int
                    ) -> dict[str, Any]:
    """The ``precision`` / ``channels_last`` / ``compile`` arguments of :func:`predict_probs`
    from an ``inference`` section (config or ``plan.json``), resolved for ``device``."""
    precision = resolve_precision(str(inf.get("precision", "auto")), device)
    return {"precision": precision,
            "channels_last": use_channels_last(inf.get("channels_last", "auto"), spatial_dims,
                                               precision, training=False,
                                               device_type=device.type),
            "compile": bool(inf.get("compile", False))}


@torch.inference_mode()
def validate(model: torch.nn.Module, data: PreparedData, cfg: ExperimentConfig,
             device: torch.device, rows: list[dict[str, Any]] | None = None,
             elements: list[tuple[torch.Tensor, torch.Tensor]] | None = None
             ) -> dict[str, float]:
    """Mean hard Dice per foreground class over the validation cases.

    Runs on preprocessed arrays (the network's own grid) with sliding windows; the observation
    mask (ignore label) excludes unlabelled voxels from both prediction and reference. With
    ``rows``, one ``{"id", "dice_<class>"...}`` row per case is appended to it; with
    ``elements``, each case's observed ``(logits, targets)`` for temperature scaling (at most
    200,000 voxels per case, seeded), from the same prediction.
    """
    fg = list(range(1, data.num_classes))
    per_case: dict[int, list[float]] = {c: [] for c in fg}
    n = cfg.data.val_max_cases or len(data.val_images)
    speed = inference_speed(cfg.inference.__dict__, device, data.spatial_dims)
    for k, (img, lab) in enumerate(zip(data.val_images[:n], data.val_labels[:n], strict=True)):
        img, lab = owned_array(img, np.float32), owned_array(lab, np.int64)  # one case in RAM
        probs = predict_probs(
            model, torch.from_numpy(img)[None], roi_size=data.patch_size,
            overlap=cfg.inference.overlap, sw_batch_size=cfg.inference.sw_batch_size,
            device=device, output_device="cpu", sigma_scale=cfg.inference.sigma_scale,
            **speed,
        )
        pred = SegProbs(probs[0]).hard().labels.numpy()
        if elements is not None:
            target = torch.from_numpy(lab)[None].long()
            mask = None if data.ignore_label is None else target != data.ignore_label
            elements.append(observed_elements(log_probs_as_logits(probs), target, mask,
                                              max_elements=200_000, seed=k))
        observed = ObservationMask.from_labels(torch.from_numpy(lab), data.ignore_label)
        for c in fg:
            per_case[c].append(dice(pred == c, lab == c, mask=observed.observed.numpy()))
        if rows is not None:
            rows.append({"id": data.val_ids[k], **{f"dice_{data.class_names[c]}":
                                                   per_case[c][-1] for c in fg}})
    out = {f"dice_{data.class_names[c]}": float(np.mean(per_case[c])) if per_case[c] else
           float("nan") for c in fg}
    vals = [v for v in out.values() if not math.isnan(v)]
    out["dice_mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


class SegmentationTrainer(TaskTrainer):
    """Patches, Dice + CE with the observation mask, class weighting, deep supervision."""

    def __init__(self, cfg: ExperimentConfig, data: PreparedData, model: torch.nn.Module,
                 device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        data.patch_size = choose_patch_size(cfg, data, model, device)
        self.n_val = len(data.val_images)
        fr = data.summary.get("class_fractions", {})
        alpha = torch.tensor([float(fr.get(c, fr.get(str(c), 0.0)))
                              for c in range(data.num_classes)], dtype=torch.float64)
        self.acw, weights = class_weighting(cfg, alpha)
        lc = cfg.loss
        self.loss_fn = DiceCELoss(w_dice=lc.dice_weight, w_ce=lc.ce_weight, eps=lc.eps,
                                  batch_dice=lc.batch_dice,
                                  include_background=lc.include_background,
                                  class_weights=weights).to(device)
        ds_weights = lc.deep_supervision_weights
        if ds_weights is None:
            ds_weights = getattr(model, "deep_supervision_weights", None)
        self.ds_loss_fn = DeepSupervisionLoss(self.loss_fn, ds_weights)
        self.dice_fn = None
        if cfg.model.variance_head:  # U1: Dice + heteroscedastic (sampled-logit) CE
            if cfg.loss.class_weighting != "none":
                raise ConfigError("model.variance_head and loss.class_weighting do not combine "
                                  "(the sampled-logit CE has no class weights)",
                                  hint="set one of them only")
            self.dice_fn = DiceCELoss(w_dice=1.0, w_ce=0.0, eps=lc.eps,
                                      batch_dice=lc.batch_dice,
                                      include_background=lc.include_background).to(device)

    def batches(self, epoch: int, seed: int, rank: int, world_size: int) -> PatchBatchLoader:
        return make_epoch_loader(self.data, self.cfg, epoch, seed=seed, rank=rank,
                                 world_size=world_size)

    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        img, lab = batch
        img = img.to(self.device, non_blocking=True)
        target = lab.to(self.device, non_blocking=True)[:, 0]
        mask = ObservationMask.from_labels(target, self.data.ignore_label).observed \
            if self.data.ignore_label is not None else None
        if self.acw is not None:
            self.loss_fn.class_weights = self.acw.weights.to(self.device)
        logits = net(img)
        if self.dice_fn is not None:
            return self._heteroscedastic_loss(logits, target, mask), (logits[0], target, mask)
        if isinstance(logits, list | tuple):  # deep supervision (L6)
            loss = self.ds_loss_fn([o.float() for o in logits], target, mask)
        else:
            loss = self.loss_fn(logits.float(), target, mask)
        return loss, (logits, target, mask)

    def _heteroscedastic_loss(self, out: Any, target: torch.Tensor,
                              mask: torch.Tensor | None) -> torch.Tensor:
        logits, log_var = out
        if isinstance(logits, list):
            raise ConfigError("model.variance_head does not combine with deep supervision yet",
                              hint="set model.options.deep_supervision=false")
        logits, log_var = logits.float(), log_var.float()
        lc = self.cfg.loss
        ce = heteroscedastic_ce(logits, log_var, target, self.cfg.model.variance_samples,
                                mask=mask)
        return lc.dice_weight * self.dice_fn(logits, target, mask) + lc.ce_weight * ce

    def after_step(self, batch: Any, output: Any) -> None:
        if self.acw is not None:
            logits, target, mask = output
            full = logits[0] if isinstance(logits, list | tuple) else logits
            self.acw.update(torch.softmax(full.detach().float(), 1), target, mask)

    def end_epoch(self) -> dict[str, float]:
        if self.acw is None:
            return {}
        self.acw.end_epoch()
        return {f"weight_{self.data.class_names[c]}": float(w)
                for c, w in enumerate(self.acw.weights)}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        return validate(model, self.data, self.cfg, self.device)

    def out_of_fold(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return self.finish_outputs(model, fold_rows=True, calibrate=False)[0] or []

    def calibration_set(self, model: torch.nn.Module) -> CalibrationSet:
        """Observed voxels of the validation cases (at most 200,000 per case, seeded)."""
        return self.finish_outputs(model, fold_rows=False, calibrate=True)[1]

    def finish_outputs(self, model: torch.nn.Module, fold_rows: bool, calibrate: bool
                       ) -> tuple[list[dict[str, Any]] | None, CalibrationSet | None]:
        """The out-of-fold rows and the calibration set from one prediction of each
        validation case (not one pass for each)."""
        rows: list[dict[str, Any]] | None = [] if fold_rows else None
        parts: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if calibrate else None
        validate(model, self.data, self.cfg, self.device, rows, parts)
        cs = None if parts is None else CalibrationSet.concat(
            parts, "softmax", f"the validation split ({len(parts)} case(s))")
        return rows, cs

    def describe(self, val: dict[str, float]) -> str:
        return "  val Dice " + " ".join(f"{k[5:]}={v:.3f}" for k, v in val.items())

    def state_dict(self) -> dict[str, Any]:
        return {} if self.acw is None else {"class_weights_state": self.acw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.acw is not None and state.get("class_weights_state") is not None:
            self.acw.load_state_dict(state["class_weights_state"])


# ====================================================================== prediction
@dataclass
class SegmentationModel:
    """A segmentation model folder's network(s) with the preprocessing plan, ready to predict.

    Attributes:
        folder: The model folder.
        models: The network in eval mode, or an ensemble's members (averaged).
        plan: The preprocessing plan used in training.
        info: The folder's :class:`~medseg.model_folder.Plan` (classes, patch size, inference
            defaults...).
        device: Where the networks run.
    """

    folder: Path
    models: list[torch.nn.Module]
    plan: PreprocessPlan
    info: Plan
    device: torch.device
    temperatures: list[float] = field(default_factory=lambda: [1.0])
    conformal: dict[str, Any] | None = None
    precision: str | None = None
    last_stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path | ModelFolder, checkpoint: str = "best",
             device: str = "auto") -> SegmentationModel:
        """Load a segmentation (or instance) model folder, an ensemble's members included.

        Raises:
            InputError: not a model folder, a bad ``plan.json``, or a corrupt checkpoint.
        """
        mf = folder if isinstance(folder, ModelFolder) else ModelFolder.open(folder)
        if mf.task not in ("segmentation", "instance"):
            raise InputError(f"this is a {mf.task} model, not a segmentation model", mf.path,
                             "give a model trained on label maps")
        models, dev = mf.load_networks(checkpoint, device)
        return cls(mf.path, models, PreprocessPlan.from_dict(mf.plan["preprocess"]), mf.plan,
                   dev, mf.temperatures(), read_calibration(mf.path).get("conformal"))

    @property
    def model(self) -> torch.nn.Module:
        """The (first) network."""
        return self.models[0]

    @property
    def num_classes(self) -> int:
        return int(self.info.num_classes)

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

    def network_input(self, image: np.ndarray, meta: ImageMeta) -> torch.Tensor:
        """Check an image as read and preprocess it onto the network's grid, ``(C, *spatial')``.

        Raises:
            InputError: NaN voxels, another dimensionality or modality (naming the file).
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
        return torch.from_numpy(np.ascontiguousarray(x))

    def predict(self, image: np.ndarray, meta: ImageMeta, tta: bool | None = None,
                overlap: float | None = None) -> SegProbs:
        """Class probabilities on the input's own grid (an ensemble's mean).

        Args:
            image: ``(C, *spatial)`` as read by :func:`medseg.io.read_image`.
            meta: Its geometry.
            tta: Flip test-time augmentation (default: the model's setting).
            overlap: Window overlap (default: the model's setting).

        Returns:
            :class:`SegProbs` with ``(num_classes, *spatial)`` float32 probabilities on CPU.
        """
        x = self.network_input(image, meta)
        inf = self.info["inference"]
        speed = self.speed()
        background = None
        if inf.get("skip_background", False):
            background = background_mask(image, meta, self.plan)[None]
        self.last_stats = {}
        probs = sum(temper(predict_probs(
            m, x[None], roi_size=tuple(self.info["patch_size"]),
            overlap=inf["overlap"] if overlap is None else overlap,
            sw_batch_size=inf["sw_batch_size"], tta=inf["tta"] if tta is None else tta,
            device=self.device, output_device="cpu",
            sigma_scale=float(inf.get("sigma_scale", 0.125)), background=background,
            stats=self.last_stats, **speed,
        )[0], t) for m, t in zip(self.models, self.temperatures, strict=True))
        return SegProbs(restore_probabilities(probs / len(self.models), self.plan, meta))

    def speed(self) -> dict[str, Any]:
        """``precision`` / ``channels_last`` / ``compile`` of :func:`predict_probs` for this
        model: the plan's ``inference`` entries, :attr:`precision` overriding the precision.
        A plan written before these entries existed predicts in fp32, contiguous, eagerly."""
        inf = dict(self.info["inference"])
        inf.setdefault("precision", "fp32")
        inf.setdefault("channels_last", False)
        if self.precision is not None:
            inf["precision"] = self.precision
        return inference_speed(inf, self.device, self.plan.spatial_dims)

    def predict_samples(self, image: np.ndarray, meta: ImageMeta, method: str,
                        n_samples: int = 10, seed: int = 0, overlap: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``T`` probability samples on the input's grid, sampled inside the sliding window.

        Every window is sampled ``T`` times (MC Dropout passes batched, ensemble members, or
        flips; :func:`medseg.uncertainty.samplers.sample_probs`); each sample's windows are
        stitched with the same Gaussian weights as a plain prediction, so sample ``t`` is a
        whole-image probability field.

        Returns:
            ``(probs, logit_var)``: ``(T, C, *spatial)`` float32 on CPU, and the variance head's
            ``(T, C, *spatial)`` logit variances (or ``None``).

        Raises:
            InputError: as :meth:`network_input`; MC asked of a network without dropout; an
                ensemble asked of a single model.
        """
        from medseg.inference.sliding_window import sliding_window_inference
        from medseg.uncertainty.samplers import n_samples_of, sample_probs

        x = self.network_input(image, meta)
        if method == "ensemble" and len(self.models) < 2:
            raise InputError("--uncertainty ensemble needs an ensemble model folder", self.folder,
                             "train one with medseg train --ensemble M, or use mc or tta")
        models = self.models if method == "ensemble" else self.models[:1]
        t = n_samples_of(method, n_samples, len(self.models), self.plan.spatial_dims)
        c, head = self.num_classes, self.info.variance_head
        calls = [0]

        speed = self.speed()
        precision, channels_last = speed["precision"], speed["channels_last"]

        def predictor(win: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            if channels_last:
                win = to_channels_last(win)
            try:
                with autocast(precision, self.device):  # samples come back as float32
                    p, v = sample_probs(models, win, method, n_samples,
                                        seed=seed * 100003 + calls[0])
            except ValueError as e:
                raise InputError(str(e), self.folder, "choose another --uncertainty method"
                                 ) from None
            parts = [p.transpose(0, 1).reshape(win.shape[0], t * c, *win.shape[2:])]
            if v is not None:
                parts.append(v.transpose(0, 1).reshape(win.shape[0], t * c, *win.shape[2:]))
            return torch.cat(parts, 1)

        inf = self.info["inference"]
        for m in models:
            m.to(self.device).eval()
        with torch.inference_mode(), channels_last_layout(models, self.plan.spatial_dims,
                                                          channels_last):
            field_ = sliding_window_inference(
                x[None].float(), predictor, tuple(self.info["patch_size"]),
                overlap=inf["overlap"] if overlap is None else overlap,
                sw_batch_size=inf["sw_batch_size"],
                sigma_scale=float(inf.get("sigma_scale", 0.125)), device=self.device,
                output_device="cpu")[0]
        restored = restore_probabilities(field_, self.plan, meta)
        spatial = restored.shape[1:]
        probs = restored[:t * c].reshape(t, c, *spatial)
        temps = self.temperatures if method == "ensemble" else self.temperatures[:1] * t
        probs = torch.stack([temper(p, tk) for p, tk in zip(probs, temps, strict=True)])
        var = restored[t * c:].reshape(t, c, *spatial) if head else None
        return probs, var


def _case_name(src: ImageSource) -> str:
    first = src[0] if isinstance(src, tuple) else src
    if first.is_dir():
        return first.name
    return output_label(first)


def _strip_channel(name: str) -> str:
    m = _CHANNEL_RE.match(name)
    return m.group("case") if m else name


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


#: File ending of the DICOM SEG predictions of ``--format dcmseg``.
DCMSEG_SUFFIX = ".seg.dcm"


def check_dcmseg_inputs(cases: list[tuple[str, ImageSource | list]]) -> None:
    """``--format dcmseg`` needs DICOM input: refuse any other case before predicting.

    Raises:
        InputError: naming the first input that is not a DICOM series, or highdicom missing.
    """
    require_highdicom()
    for _, src in cases:
        first = src[0] if isinstance(src, list | tuple) else src
        if detect_format(first) != "dicom":
            raise InputError("--format dcmseg writes DICOM SEG objects, which reference a DICOM "
                             "series, but this input is not DICOM", first,
                             "predict a DICOM series folder, or choose --format nii.gz")


def output_suffix(src: ImageSource | list, fmt: str) -> str:
    """The prediction file's extension: ``fmt``, or the input's (NIfTI for DICOM / JPEG->PNG).

    Raises:
        InputError: ``fmt`` is ``dcmseg`` (DICOM SEG holds the class label maps of semantic
            segmentation only; :func:`predict_inputs` names those files itself).
    """
    if fmt == "dcmseg":
        raise InputError("--format dcmseg writes DICOM SEG objects of semantic segmentation "
                         "label maps only", None, "choose --format nii.gz for this model")
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


def case_seed(seed: int, case: str) -> int:
    """The sampling seed of one case: independent streams per case (dropout masks differ from
    case to case), reproducible from ``seed`` and the case name alone."""
    return (int(seed) * 1_000_003 + zlib.crc32(case.encode("utf-8"))) % (2**31 - 1)


#: Columns of ``uncertainty.csv`` (one row per case and foreground class).
UNCERTAINTY_COLUMNS = (
    "case", "class", "method", "samples", "volume", "volume_unit", "volume_sample_mean",
    "volume_sample_std", "volume_low", "volume_high", "volume_conformal_low",
    "volume_conformal_high", "conformal_coverage",
    *[f"{t}_{w}" for t in SCALAR_TERMS for w in ("structure", "image")],
)
_RASTER = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: Name endings of the files predict writes beside a label map (never label maps themselves).
SIDE_OUTPUTS = ("_probabilities", "_logit_variance", "_per_class",
                *[f"_{t}" for t in SCALAR_TERMS])


def uncertainty_rows(case: str, maps: dict[str, torch.Tensor], samples: torch.Tensor,
                     class_names: list[str], spacing: tuple[float, ...] | None, method: str,
                     conformal: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per foreground class: the structure's volume with its interval over the samples, and the
    mean of every uncertainty term inside the predicted structure and over the image.

    Args:
        case: Case name.
        maps: :func:`medseg.uncertainty.maps.uncertainty_maps` of the case.
        samples: ``(T, C, *spatial)`` the probability samples (their arg-max volumes give the
            interval: 2.5% and 97.5% quantiles, sample mean and standard deviation).
        class_names: One name per class.
        spacing: Voxel size in mm per axis, or ``None`` (raster images: volumes in pixels).
        method: The sampling method (recorded).
        conformal: The model folder's conformal block (``medseg calibrate --conformal``); its
            interval is added when it was calibrated with the same method and physical units.
    """
    from medseg.uncertainty.conformal import ConformalCalibration

    pred = maps["predicted"]
    unit_vol = float(np.prod(spacing)) if spacing is not None else 1.0
    unit = ("mm^2" if pred.ndim == 2 else "mm^3") if spacing is not None else (
        "pixels" if pred.ndim == 2 else "voxels")
    hard = samples.argmax(1)  # (T, *spatial)
    rows = []
    for c in range(1, len(class_names)):
        inside = pred == c
        vols = (hard == c).flatten(1).sum(1).double() * unit_vol
        row: dict[str, Any] = {
            "case": case, "class": class_names[c], "method": method,
            "samples": int(samples.shape[0]), "volume": float(inside.sum()) * unit_vol,
            "volume_unit": unit, "volume_sample_mean": float(vols.mean()),
            "volume_sample_std": float(vols.std(correction=1)) if len(vols) > 1 else 0.0,
            "volume_low": float(torch.quantile(vols, 0.025)),
            "volume_high": float(torch.quantile(vols, 0.975))}
        block = (conformal or {}).get("classes", {}).get(class_names[c])
        if block is not None and conformal_applies(conformal, method, int(samples.shape[0])):
            cal = ConformalCalibration.from_dict(block)
            lo, hi = cal.interval(np.array([row["volume"]]), np.array([row["volume_sample_std"]]))
            row.update(volume_conformal_low=max(0.0, float(lo[0])),
                       volume_conformal_high=float(hi[0]), conformal_coverage=1 - cal.alpha)
        for term in SCALAR_TERMS:
            m = maps[term].double()
            row[f"{term}_structure"] = float(m[inside].mean()) if inside.any() else None
            row[f"{term}_image"] = float(m.mean())
        rows.append(row)
    return rows


def conformal_applies(conformal: dict[str, Any] | None, method: str, n_samples: int) -> bool:
    """The folder's conformal quantiles hold for this prediction: same sampler, same ``T``."""
    if not conformal:
        return False
    t_cal = conformal.get("samples") if conformal.get("method") in ("mc", "mc_decoder") else None
    t_now = n_samples if method in ("mc", "mc_decoder") else None
    return conformal.get("method") == method and t_cal == t_now


def write_rows_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> Path:
    """A CSV (atomically), empty cells for ``None``."""
    import csv
    import io

    from medseg.io.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def write_uncertainty_maps(out: Path, name: str, maps: dict[str, torch.Tensor],
                           meta: ImageMeta, per_class: bool) -> list[Path]:
    """Float32 NIfTI maps with the input's geometry: ``<case>_<term>.nii.gz`` for each scalar
    term (and ``<case>_<term>_per_class.nii.gz`` ``(C, *spatial)`` with ``per_class``)."""
    files = []
    keys = list(SCALAR_TERMS) + (["logit_variance"] if "logit_variance" in maps else [])
    for term in keys:
        arr = maps[term]
        if term == "logit_variance":  # of the predicted class
            arr = arr.gather(0, maps["predicted"].unsqueeze(0))[0]
        dest = out / f"{name}_{term}.nii.gz"
        write_image(dest, arr.numpy().astype(np.float32)[None], meta, dtype=np.float32)
        files.append(dest)
    if per_class:
        for term in ("aleatoric_variance", "epistemic_variance", "total_variance"):
            dest = out / f"{name}_{term}_per_class.nii.gz"
            write_image(dest, maps[f"{term}_c"].numpy().astype(np.float32), meta,
                        dtype=np.float32)
            files.append(dest)
    return files


def predict_inputs(
    model: SegmentationModel,
    input_path: str | Path,
    output_dir: str | Path,
    fmt: str = "auto",
    tta: bool | None = None,
    overlap: float | None = None,
    save_probabilities: bool = False,
    log: Log = print,
    uncertainty: PredictRequest | None = None,
) -> list[Path]:
    """Predict every case under ``input_path`` and write label maps into ``output_dir``.

    With ``uncertainty`` (a request whose ``uncertainty`` names a method) the label map is the
    arg-max of the samples' mean, the maps of :func:`write_uncertainty_maps` are written beside
    it, and ``uncertainty.csv`` gets a row per case and foreground class.

    Returns:
        The written label files, in case order.

    Raises:
        InputError: unreadable input, channel mismatch, NaN voxels, or an output path that is
            one of the inputs.
    """
    out = Path(output_dir)
    cases = collect_inputs(input_path, model.plan.in_channels)
    if fmt == "dcmseg":
        check_dcmseg_inputs(cases)
    written: list[Path] = []
    rows: list[dict[str, Any]] = []
    for i, (name, src) in enumerate(cases):
        image, meta = read_image(src if not isinstance(src, list) else list(src))
        suffix = DCMSEG_SUFFIX if fmt == "dcmseg" else output_suffix(src, fmt)
        if uncertainty is not None and uncertainty.uncertainty:
            samples, var = model.predict_samples(image, meta, uncertainty.uncertainty,
                                                 uncertainty.samples,
                                                 case_seed(uncertainty.seed, name), overlap)
            maps = uncertainty_maps(samples, var)
            probs = SegProbs(maps["mean"])
            labels_t = maps["predicted"]
        else:
            probs = model.predict(image, meta, tta=tta, overlap=overlap)
            labels_t = probs.hard().labels
        labels = labels_t.numpy().astype(np.uint8 if model.num_classes < 256 else np.uint16)
        dest = out / f"{name}{suffix}"
        if dest.suffix == ".png" and labels.ndim != 2:
            dest = out / f"{name}.nii.gz"
        if fmt == "dcmseg":  # check_prediction_output refused a non-empty folder already
            write_dicom_seg(dest, labels, meta, list(model.info.class_names),
                            model_name=model.info.model_name,
                            overwrite=uncertainty is None or uncertainty.overwrite)
        else:
            write_label(dest, labels, meta)
        if save_probabilities:
            write_image(out / f"{name}_probabilities.nii.gz", probs.probs.numpy(), meta,
                        dtype=np.float32)
        if uncertainty is not None and uncertainty.uncertainty:
            write_uncertainty_maps(out, name, maps, meta, uncertainty.per_class)
            physical = not dest.name.lower().endswith(_RASTER)
            spacing = tuple(meta.spacing[: labels.ndim]) if physical else None
            rows += uncertainty_rows(name, maps, samples, list(model.info.class_names),
                                     spacing, uncertainty.uncertainty, model.conformal)
        written.append(dest)
        log(f"  [{i + 1}/{len(cases)}] {name} -> {dest}")
    if rows:
        write_rows_csv(out / "uncertainty.csv", rows, UNCERTAINTY_COLUMNS)
        conf = model.conformal
        if conf and not any(r.get("conformal_coverage") for r in rows):
            log(f"  note: no conformal volume interval: the model was calibrated with "
                f"--uncertainty {conf.get('method')} (T = {conf.get('samples')}); predict with "
                "the same to get it")
    return written


# ====================================================================== evaluation
def label_files(path: Path, what: str) -> list[Path]:
    """Label maps in a folder (or the file itself), probability maps left out."""
    if not path.exists():
        raise InputError(f"{what} not found", path, "check the path")
    if path.is_file():
        return [path]
    files = [e for e in list_image_files(path) if isinstance(e, Path) and e.is_file()]
    files = [f for f in files if not output_label(f).endswith(SIDE_OUTPUTS)]
    if not files:
        raise InputError(f"no label files in the {what} folder", path,
                         "give NIfTI/NRRD/PNG/TIFF label maps")
    return files


def match_cases(pred: Path, ref: Path, ref_suffix: str = "") -> list[tuple[str, Path, Path]]:
    """Pair prediction and reference files by case name.

    Raises:
        InputError: a prediction has no reference (named), or nothing matches.
    """
    preds = label_files(pred, "prediction")
    refs = label_files(ref, "reference")
    if pred.is_file() and ref.is_file():
        return [(output_label(pred), pred, ref)]
    by_name = {}
    for r in refs:
        n = output_label(r)
        if ref_suffix and n.endswith(ref_suffix):
            n = n[: -len(ref_suffix)]
        by_name[n] = r
    pairs, missing = [], []
    for p in preds:
        n = output_label(p)
        if n in by_name:
            pairs.append((n, p, by_name[n]))
        else:
            missing.append(p)
    if missing:
        raise InputError(
            f"{len(missing)} prediction(s) have no reference (e.g. {missing[0].name})", missing[0],
            "put the matching reference in --ref, or pass --ref-suffix if references are named "
            "with a suffix")
    return pairs


def evaluate_folders(
    pred: str | Path,
    ref: str | Path,
    output: str | Path,
    labels: Sequence[int] | None = None,
    ignore_label: int | None = None,
    dataset_json: str | Path | None = None,
    ref_suffix: str = "",
    images: str | Path | None = None,
    log: Log = print,
    max_overlays: int = 6,
    nsd_tolerance: float = 1.0,
    connectivity: str = "full",
    model: str | Path | None = None,
    bootstrap: int = 1000,
    group_regex: str | None = None,
) -> dict[str, Any]:
    """Score every matched case and write ``metrics.json`` / ``metrics.csv`` (and a report).

    Args:
        pred: Folder (or file) of predicted label maps.
        ref: Folder (or file) of reference label maps.
        output: Folder for the metric files (and ``report.html`` / ``report.md`` when ``images``
            or ``model`` is given).
        labels: Foreground labels to score; default: from ``dataset_json``, else every non-zero
            value found in the references.
        ignore_label: Reference value marking unlabelled voxels (T5), excluded everywhere.
        dataset_json: A ``dataset.json`` giving label names and the ignore label.
        ref_suffix: Suffix of reference names (``case_Annotation.png`` -> ``case``).
        images: Folder of input images; when given, overlays and a report are written.
        log: Where the summary table goes.
        max_overlays: Cases with an overlay figure in the report.
        nsd_tolerance: Tolerance in mm of the normalised surface Dice (recorded).
        connectivity: Surface definition of HD95 / ASSD / NSD, ``"full"`` or ``"face"``
            (MONAI's), recorded in every case.
        model: The model folder of the predictions; its model card joins the report (a report
            is written when ``images`` or ``model`` is given).
        bootstrap: Resamples of the 95% intervals of each mean (``summary["ci95"]``,
            :func:`medseg.metrics.aggregate.mean_intervals`); 0 for none.
        group_regex: Subject of each case (the regex's first group of its name): the
            intervals resample subjects, whose cases are not independent.

    Returns:
        ``{"cases": [...], "summary": {...}, "files": [json, csv(, report)]}``.

    Raises:
        InputError: unreadable or mismatched predictions and references, or a case name that
            ``group_regex`` does not match.
    """
    pred, ref, out = Path(pred), Path(ref), Path(output)
    folder = None if model is None else ModelFolder.open(model)  # checked before any work
    names: dict[int, str] = {}
    if dataset_json is not None:
        from medseg.data.layouts import load_label_table

        # checked: a JSON object, UTF-8, finite integer labels (one line naming the file)
        table, table_ignore = load_label_table(dataset_json)
        names = {int(v): k for k, v in table.items()}
        if ignore_label is None:
            ignore_label = table_ignore if table_ignore is not None else next(
                (v for v, k in names.items() if k == "ignore"), None)
        if labels is None:
            labels = sorted(v for v in names if v not in (0, ignore_label))
    pairs = match_cases(pred, ref, ref_suffix)
    subjects = case_subjects([name for name, _, _ in pairs], group_regex, pred)  # fail early
    refs = {}
    if labels is None:
        found: set[int] = set()
        for name, _, r in pairs:
            arr, meta = read_label(r)
            refs[name] = (arr, meta)
            found |= set(np.unique(arr).tolist())
        labels = sorted(v for v in found if v not in (0, ignore_label))
    results = []
    overlays = []
    conf_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for name, p, r in pairs:
        ref_arr, ref_meta = refs.pop(name, None) or read_label(r)
        pred_arr, pred_meta = read_label(p)
        if pred_arr.shape != ref_arr.shape:
            raise InputError(
                f"prediction shape {pred_arr.shape} differs from reference {ref_arr.shape} "
                f"({r})", p, "predict on the same images as the references")
        if ref_meta.ndim == pred_meta.ndim and not np.allclose(
                pred_meta.affine, ref_meta.affine, atol=1e-2):
            raise InputError(f"prediction geometry (affine) differs from the reference {r}", p,
                             "predictions must keep the input's geometry (medseg predict does)")
        mask = None if ignore_label is None else ref_arr != ignore_label
        res = evaluate_case(pred_arr, ref_arr, ref_meta.spacing, labels, mask=mask, case_id=name,
                            nsd_tolerance=nsd_tolerance, connectivity=connectivity)
        prob_file = p.with_name(f"{output_label(p)}_probabilities.nii.gz")
        if prob_file.is_file():  # saved with --save-probabilities: voxel calibration
            probs_arr, _ = read_image(prob_file)
            conf_parts.append(voxel_confidence(probs_arr.reshape(probs_arr.shape[0],
                                                                 *ref_arr.shape),
                                               ref_arr, mask))
        results.append(res)
        if images is not None and len(overlays) < max_overlays:
            srcs = [e for e in list_image_files(Path(images))
                    if output_label(e if isinstance(e, Path) else e[0])
                    in (name, f"{name}_0000")]
            if srcs:
                img, _ = read_image(srcs[0])
                overlays.append(save_overlay(out / "overlays" / f"{name}.png", img[0], pred_arr,
                                             ref_arr, title=name))
    summary = summarize(results)
    if bootstrap > 0 and results:
        summary["ci95"] = mean_intervals(results, n_boot=bootstrap, subjects=subjects)
    summary["surface"] = {"connectivity": connectivity, "nsd_tolerance_mm": nsd_tolerance}
    files_extra: list[Path] = []
    if conf_parts:
        conf = np.concatenate([c for c, _ in conf_parts])
        correct = np.concatenate([k for _, k in conf_parts])
        bins = {b: reliability_bins(conf, correct, 15, b) for b in ("width", "mass")}
        ece = {b: expected_calibration_error(conf, correct, 15, b) for b in bins}
        summary["calibration"] = {
            "level": "voxel (observed voxels, top-label confidence)", "n": int(conf.size),
            "cases": len(conf_parts), "ece": ece["width"][0], "mce": ece["width"][1],
            "ece_equal_mass": ece["mass"][0], "reliability": bins_json(bins["width"])}
        files_extra.append(save_reliability_diagram(
            out / "reliability.png", summary["calibration"]["reliability"], ece["width"][0],
            title="voxel reliability (top label)"))
    try:
        summary["volume_agreement"] = volume_agreement(results)  # Bland-Altman per class
    except ValueError as e:  # 2D and 3D cases mixed: volumes in mm^2 and ml
        raise InputError(f"cannot compare volumes across cases ({e})", pred,
                         "evaluate 2D and 3D predictions in separate runs") from None
    if summary["volume_agreement"]:
        files_extra.append(save_bland_altman(
            out / "bland_altman.png",
            {names.get(c, f"class {c}"): (*bland_altman_points(results, c), ba)
             for c, ba in summary["volume_agreement"].items()},
            unit=next(iter(summary["volume_agreement"].values()))["unit"]))
    if names:
        summary["class_names"] = {int(c): names.get(int(c), str(c)) for c in labels}
    json_path, csv_path = write_metrics(out, results, summary)
    log(format_summary_table(summary))
    if "calibration" in summary:
        c = summary["calibration"]
        log(f"voxel calibration over {c['cases']} case(s): ECE {c['ece']:.4f} (equal-mass "
            f"{c['ece_equal_mass']:.4f})")
    for c, ba in summary["volume_agreement"].items():
        log(f"volume {names.get(c, f'class {c}')}: predicted - reference bias {ba['bias']:.4g} "
            f"{ba['unit']}, 95% limits of agreement [{ba['loa_low']:.4g}, "
            f"{ba['loa_high']:.4g}] ({ba['n']} case(s))")
    files = [json_path, csv_path, *files_extra]
    if images is not None or model is not None:  # the self-contained report.html + report.md
        from medseg.uncertainty.ranking import rank_cases

        srcs = {} if images is None else {
            output_label(e if isinstance(e, Path) else e[0]).removesuffix("_0000"): e
            for e in list_image_files(Path(images))}
        card = None if folder is None else model_card(
            folder, SegmentationTask.key_metric, SegmentationTask.higher_is_better)
        try:  # most uncertain first when predict --uncertainty wrote uncertainty.csv
            ranking = rank_cases(pred if pred.is_dir() else pred.parent)
        except InputError:
            ranking = None
        files.append(write_report(out, segmentation_report(
            out, results, summary, {n: (p, r, srcs.get(n)) for n, p, r in pairs}, pred, ref,
            images=None if images is None else Path(images),
            model=None if model is None else Path(model), card=card, ranking=ranking,
            figures=[({"reliability.png": "Voxel reliability (top label)",
                       "bland_altman.png": "Volume agreement (Bland-Altman)"}.get(
                f.name, f.stem), f) for f in files_extra])))
    return {"cases": results, "summary": summary, "files": files}


# ====================================================================== the task
@register_task
class SegmentationTask(Task):
    """Semantic segmentation (T3): label maps in, label maps out, Dice + CE."""

    name = "segmentation"
    description = "semantic segmentation of 2D/3D images into label maps (Dice + CE)"
    key_metric = "dice_mean"
    metric_label = "Dice"
    higher_is_better = True
    default_model = "unet"
    predict_options = frozenset({"checkpoint", "device", "format", "tta", "overlap",
                                 "save_probabilities", "uncertainty", "samples", "seed",
                                 "per_class", "precision"})
    uses = SPLIT_SETTINGS | CLASS_WEIGHTING_SETTINGS | TABLE_SETTINGS | {
        "data.masks", "data.mask_suffix", "data.modality", "data.spatial_dims",
        "data.val_max_cases", "data.cache", "data.cache_dir", "data.workers",
        "preprocess", "augment", "physics_noise", "inference",
        "loss.dice_weight", "loss.ce_weight", "loss.eps", "loss.batch_dice",
        "loss.include_background", "loss.deep_supervision_weights",
        "train.patch_size", "train.fg_oversample", "train.prefetch",
    }

    def open_dataset(self, cfg: ExperimentConfig) -> SegDataset:
        """The dataset the config names (MSD folder, or images + masks folders)."""
        if not cfg.data.dataset:
            raise ConfigError("no dataset given", hint="pass --dataset DIR or set data.dataset")
        if cfg.data.masks:
            return load_image_mask_folders(cfg.data.dataset, cfg.data.masks,
                                           mask_suffix=cfg.data.mask_suffix,
                                           modality=cfg.data.modality or "PNG")
        ds = open_dataset(cfg.data.dataset, allow_outside_root=cfg.data.allow_outside_root)
        if cfg.data.modality:
            ds.modalities = [modality_of_channel(cfg.data.modality)] * len(ds.channel_names)
        return ds

    def prepare(self, cfg: ExperimentConfig, log: Log) -> PreparedData:
        data = prepare_data(cfg, log=log, task=self)
        return data

    def build_model(self, cfg: ExperimentConfig, data: PreparedData) -> torch.nn.Module:
        return self.build_network(cfg, data.spatial_dims, data.in_channels, data.num_classes)

    def trainer(self, cfg: ExperimentConfig, data: PreparedData, model: torch.nn.Module,
                device: torch.device, log: Log) -> SegmentationTrainer:
        tr = SegmentationTrainer(cfg, data, model, device)
        log(f"  {len(data.train_images)} training / {len(data.val_images)} validation cases, "
            f"{data.spatial_dims}D, {data.in_channels} channel(s), classes {data.class_names}, "
            f"patch {list(data.patch_size)}")
        return tr

    def plan_entries(self, cfg: ExperimentConfig, data: PreparedData) -> dict[str, Any]:
        """The task's entries of ``plan.json``."""
        return {
            "preprocess": data.plan.to_dict(),
            "labels": dict(data.dataset.labels),
            "ignore_label": data.ignore_label,
            "channel_names": list(data.dataset.channel_names),
            "modalities": list(data.dataset.modalities),
            "patch_size": list(data.patch_size),
            "inference": {"overlap": cfg.inference.overlap,
                          "sw_batch_size": cfg.inference.sw_batch_size,
                          "sigma_scale": cfg.inference.sigma_scale,
                          "tta": cfg.inference.tta,
                          "precision": cfg.inference.precision,
                          "channels_last": cfg.inference.channels_last,
                          "compile": cfg.inference.compile,
                          "skip_background": cfg.inference.skip_background},
            "file_ending": data.dataset.file_ending,
            "dataset_summary": data.summary,
        }

    def plan(self, cfg: ExperimentConfig, data: PreparedData) -> Plan:
        return Plan(self.name, data.spatial_dims, data.in_channels, data.num_classes,
                    self.model_name(cfg), dict(cfg.model.options), list(data.class_names),
                    list(data.train_ids), list(data.val_ids), self.plan_entries(cfg, data))

    def check_plan(self, plan: Plan, source: Path) -> None:
        pre = plan_entry(plan, "preprocess", dict, source)
        try:
            PreprocessPlan.from_dict(pre)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"plan.json entry 'preprocess' is not a preprocessing plan ({e})",
                             source, "give the plan.json that medseg train wrote") from None
        patch = plan_entry(plan, "patch_size", list, source)
        if len(patch) != plan.spatial_dims or not all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 4096
                for p in patch):
            raise InputError(f"plan.json entry 'patch_size' must be {plan.spatial_dims} sizes "
                             f"in 1..4096, got {patch!r:.60}", source,
                             "give the plan.json that medseg train wrote")
        inf = plan_entry(plan, "inference", dict, source)
        for key, kind in (("overlap", float), ("sw_batch_size", int), ("tta", bool)):
            v = inf.get(key)
            if not isinstance(v, kind | int) if kind is float else not isinstance(v, kind):
                raise InputError(f"plan.json entry 'inference.{key}' has the wrong type",
                                 source, "give the plan.json that medseg train wrote")
        if not 0.0 <= float(inf["overlap"]) < 1.0 or inf["sw_batch_size"] < 1:
            raise InputError("plan.json entry 'inference' is out of range (overlap in [0, 1), "
                             "sw_batch_size >= 1)", source,
                             "give the plan.json that medseg train wrote")

    def predict(self, folder: ModelFolder, request: PredictRequest, log: Log) -> list[Path]:
        model = SegmentationModel.load(folder, request.checkpoint, request.device)
        model.precision = request.precision
        files = predict_inputs(model, request.input, request.output, fmt=request.format,
                               tta=request.tta, overlap=request.overlap,
                               save_probabilities=request.save_probabilities, log=log,
                               uncertainty=request)
        log(f"{len(files)} prediction(s) written to {request.output}")
        return files

    def evaluate(self, request: EvaluateRequest, log: Log) -> dict[str, Any]:
        return evaluate_folders(request.pred, request.ref, request.output,
                                labels=request.labels, ignore_label=request.ignore_label,
                                dataset_json=request.dataset_json,
                                ref_suffix=request.ref_suffix, images=request.images, log=log,
                                nsd_tolerance=request.nsd_tolerance,
                                connectivity=request.surface, model=request.model,
                                bootstrap=request.bootstrap, group_regex=request.group_regex)

    def calibration_set_from(self, folder: ModelFolder, data: Path, labels: Path | None,
                             split: str | None, device: str, log: Log,
                             ids: Sequence[str] | None = None) -> CalibrationSet:
        """Images and label maps: an MSD folder (``imagesTs``/``labelsTs``, or ``Tr`` with
        ``split="Tr"``), or ``data`` images with ``labels`` label maps matched by name; only
        the cases named in ``ids`` when given."""
        if labels is None:
            sp = split or ("Ts" if (data / "imagesTs").is_dir() else "Tr")
            data, labels = data / f"images{sp}", data / f"labels{sp}"
        model = SegmentationModel.load(folder, device=device)
        # an ensemble: each member's probabilities (untempered) of the same voxels
        members = [replace(model, models=[m], temperatures=[1.0])
                   for m in model.models]
        refs = {output_label(f): f for f in label_files(labels, "label")}
        ignore = folder.plan.get("ignore_label")
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in members]
        cases = collect_inputs(data, model.plan.in_channels)
        if ids is not None:
            keep = set(ids)
            cases = [(name, src) for name, src in cases if name in keep]
        for i, (name, src) in enumerate(cases):
            if name not in refs:
                raise InputError(f"no label map for {name!r}", labels,
                                 "give the label maps of the same cases")
            image, meta = read_image(src if not isinstance(src, list) else list(src))
            lab, _ = read_label(refs[name])
            for k, member in enumerate(members):
                probs = member.predict(image, meta).probs
                target = torch.from_numpy(np.asarray(lab, dtype=np.int64).reshape(
                    probs.shape[1:]))[None]
                mask = None if ignore is None else target != ignore
                # the same seed: every member's subsample holds the same voxels
                parts[k].append(observed_elements(log_probs_as_logits(probs)[None], target,
                                                  mask, max_elements=200_000, seed=i))
            log(f"  [{i + 1}] {name}")
        if not parts[0]:
            raise InputError("no images to calibrate on", data, "give labelled images")
        return CalibrationSet.from_members(
            torch.stack([torch.cat([z for z, _ in p]) for p in parts]),
            torch.cat([y for _, y in parts[0]]), "softmax",
            f"{data} ({len(parts[0])} case(s))", len(parts[0]))

    def conformal_volumes(self, folder: ModelFolder, data: Path, labels: Path | None,
                          split: str | None, device: str, method: str, n_samples: int,
                          alpha: float, log: Log) -> dict[str, Any]:
        """Split-conformal calibration of each foreground structure's volume (U5).

        On labelled cases (as :meth:`calibration_set_from`): the predicted volume (arg-max of
        the mean of ``T`` samples of ``method``), its spread (the samples' volume standard
        deviation) and the reference volume give the normalised scores
        ``|v - v_hat| / (spread + eps)`` per class; the stored quantile then widens each new
        case's interval ``v_hat +- q (spread + eps)`` so that it covers the true volume with
        probability ``>= 1 - alpha`` on exchangeable cases.

        Returns:
            The ``conformal`` block of ``calibration.json``: method, samples, alpha and per
            class the :class:`~medseg.uncertainty.conformal.ConformalCalibration` dict.
        """
        from medseg.uncertainty.conformal import calibrate_conformal

        if labels is None:
            sp = split or ("Ts" if (data / "imagesTs").is_dir() else "Tr")
            data, labels = data / f"images{sp}", data / f"labels{sp}"
        model = SegmentationModel.load(folder, device=device)
        refs = {output_label(f): f for f in label_files(labels, "label")}
        names = list(folder.plan.class_names)
        rows: dict[int, list[tuple[float, float, float]]] = {c: [] for c in
                                                             range(1, len(names))}
        for i, (name, src) in enumerate(collect_inputs(data, model.plan.in_channels)):
            if name not in refs:
                raise InputError(f"no label map for {name!r}", labels,
                                 "give the label maps of the same cases")
            image, meta = read_image(src if not isinstance(src, list) else list(src))
            samples, _ = model.predict_samples(image, meta, method, n_samples,
                                               seed=case_seed(0, name))
            lab, _ = read_label(refs[name])
            lab = np.asarray(lab).reshape(samples.shape[2:])
            vox = float(np.prod(meta.spacing[: lab.ndim]))
            pred = samples.mean(0).argmax(0)
            hard = samples.argmax(1)
            for c in rows:
                vols = (hard == c).flatten(1).sum(1).double() * vox
                rows[c].append((float((lab == c).sum()) * vox,
                                float((pred == c).sum()) * vox,
                                float(vols.std(correction=1)) if len(vols) > 1 else 0.0))
            log(f"  [{i + 1}] {name}")
        per_class = {}
        for c, r in rows.items():
            y, yhat, spread = (np.array(v) for v in zip(*r, strict=True))
            per_class[names[c]] = calibrate_conformal(
                y, yhat, spread, alpha=alpha, score="normalized",
                eps=max(1.0, float(np.median(spread)) * 0.05)).to_dict()
        return {"method": method, "samples": n_samples, "alpha": alpha,
                "n_cases": len(next(iter(rows.values()))) if rows else 0,
                "volume_unit": "mm^3 (mm^2 in 2D)", "classes": per_class}

    def recognises(self, pred: Path) -> bool:
        return pred.is_dir() or (pred.is_file() and pred.suffix.lower() != ".csv")


__all__ = [
    "PreparedData",
    "SegmentationModel",
    "SegmentationTask",
    "SegmentationTrainer",
    "collect_inputs",
    "evaluate_folders",
    "make_epoch_loader",
    "predict_inputs",
    "prepare_data",
    "validate",
]
