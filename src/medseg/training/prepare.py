"""From a configuration to arrays on the network's grid: the data side of training.

``prepare_data`` opens the dataset, validates every case before any training starts (so a bad
file is reported at once, naming it), plans and applies the preprocessing, and splits the
cases into training and validation by subject. ``make_epoch_loader`` gives one epoch's batches
(sampling + augmentation, prefetched in a background thread), seeded per epoch.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
    validate_dataset,
)
from medseg.data.layouts import load_image_mask_folders, modality_of_channel
from medseg.data.sampler import PatchBatchLoader, PatchSampler
from medseg.data.validate import effective_spatial_dims
from medseg.errors import ConfigError, InputError
from medseg.io import read_image
from medseg.networks import create_model
from medseg.training.augmentation import make_augmenter
from medseg.training.config import ExperimentConfig


@dataclass
class PreparedData:
    """Preprocessed training and validation arrays plus what prediction needs to repeat it.

    Attributes:
        train_images: ``(C, *spatial)`` float32 per training case.
        train_labels: ``(*spatial)`` int64 per training case.
        val_images: Validation images (same layout).
        val_labels: Validation labels.
        train_ids: Case ids of the training split.
        val_ids: Case ids of the validation split.
        plan: The preprocessing plan.
        dataset: The opened dataset.
        spatial_dims: 2 or 3.
        patch_size: Training patch / inference window size.
        class_names: Name per class index ``0 .. K-1``.
        summary: The dataset summary (as a dict) from validation.
        train_affines: Per training case, ``(C, 2)`` float64 ``(scale, offset)`` of each
            channel's normalisation (:func:`medseg.data.preprocess.channel_affine`), for
            augmentation in the raw domain.
    """

    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    val_images: list[np.ndarray]
    val_labels: list[np.ndarray]
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

    def plan_dict(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """What a model folder's ``plan.json`` holds: all prediction needs besides weights.

        For ``task: instance`` it adds ``"task": "instance"`` and an ``"instance"`` block
        (boundary width, mask threshold, post-processing parameters).
        """
        d = {
            "format": "medseg-plan/1",
            "task": "semantic_segmentation",
            "preprocess": self.plan.to_dict(),
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "labels": dict(self.dataset.labels),
            "ignore_label": self.ignore_label,
            "channel_names": list(self.dataset.channel_names),
            "modalities": list(self.dataset.modalities),
            "patch_size": list(self.patch_size),
            "model": {"name": cfg.model_name(), "options": dict(cfg.model.options)},
            "inference": {
                "overlap": cfg.inference.overlap,
                "sw_batch_size": cfg.inference.sw_batch_size,
                "sigma_scale": cfg.inference.sigma_scale,
                "tta": cfg.inference.tta,
            },
            "file_ending": self.dataset.file_ending,
            "train_ids": self.train_ids,
            "val_ids": self.val_ids,
            "dataset_summary": self.summary,
        }
        if cfg.task == "instance":
            d["task"] = "instance"
            d["instance"] = {"boundary_width": cfg.instance.boundary_width,
                             "mask_threshold": cfg.instance.mask_threshold,
                             "postprocess": cfg.instance.postprocess_dict()}
        return d


def split_cases(ids: list[str], val_fraction: float, seed: int,
                group_regex: str | None = None) -> tuple[list[str], list[str]]:
    """Split case ids into train / validation, keeping each group (subject) on one side.

    Args:
        ids: Case ids.
        val_fraction: Target share of cases in validation (``0`` = none).
        seed: Shuffle seed.
        group_regex: Regex whose first capture group is the subject id; ``None`` = each case is
            its own subject.

    Returns:
        ``(train_ids, val_ids)``, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[str]] = {}
    pat = re.compile(group_regex) if group_regex else None
    for cid in ids:
        key = cid
        if pat is not None:
            m = pat.search(cid)
            if m is None:
                raise ConfigError(f"data.group_regex {group_regex!r} does not match case {cid!r}")
            key = m.group(1) if m.groups() else m.group(0)
        groups.setdefault(key, []).append(cid)
    if val_fraction == 0 or len(groups) < 2:
        return list(ids), []
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val_target = max(1, round(val_fraction * len(ids)))
    val: set[str] = set()
    for k in keys:
        if len(val) >= n_val_target or len(val) + len(groups[k]) > len(ids) - 1:
            break
        val.update(groups[k])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def auto_patch_size(median_shape: tuple[int, ...], divisor: tuple[int, ...] | int,
                    max_voxels: int) -> tuple[int, ...]:
    """A patch no larger than the median image, at most ``max_voxels``, divisible by ``divisor``.

    The axis whose patch covers the largest share of the median image is shrunk first, one
    divisor step at a time, so the patch keeps the data's aspect ratio.
    """
    nd = len(median_shape)
    div = (divisor,) * nd if isinstance(divisor, int) else tuple(divisor)
    p = [max(d, int(math.ceil(s / d) * d)) for s, d in zip(median_shape, div, strict=True)]
    while math.prod(p) > max_voxels:
        share = [pi / max(si, 1) for pi, si in zip(p, median_shape, strict=True)]
        i = int(np.argmax(share))
        if p[i] <= div[i]:
            break
        p[i] -= div[i]
    return tuple(p)


def infer_spatial_dims(ds: SegDataset) -> int:
    """2 or 3 from the first training image (a 3D grid with one singleton axis counts as 2D)."""
    if ds.spatial_dims is not None:
        return ds.spatial_dims
    _, meta = read_image(ds.cases[0].images if len(ds.cases[0].images) > 1
                         else ds.cases[0].images[0])
    return effective_spatial_dims(meta.spatial_shape)


def open_configured_dataset(cfg: ExperimentConfig) -> SegDataset:
    """Open the dataset the config names (MSD folder, or images + masks folders)."""
    if not cfg.data.dataset:
        raise ConfigError("no dataset given", hint="pass --dataset DIR or set data.dataset")
    if cfg.task == "instance":
        from medseg.data.instance import build_semantic_dataset, open_instance_dataset

        inst = open_instance_dataset(cfg.data.dataset, cfg.data.masks, cfg.data.mask_suffix)
        return build_semantic_dataset(inst, Path(cfg.output_dir) / "instance_targets",
                                      cfg.instance.boundary_width, cfg.instance.mask_threshold)
    if cfg.data.masks:
        ds = load_image_mask_folders(cfg.data.dataset, cfg.data.masks,
                                     mask_suffix=cfg.data.mask_suffix,
                                     modality=cfg.data.modality or "PNG")
    else:
        ds = open_dataset(cfg.data.dataset)
        if cfg.data.modality:
            ds.modalities = [modality_of_channel(cfg.data.modality)] * len(ds.channel_names)
    return ds


def build_model(cfg: ExperimentConfig, in_channels: int, num_classes: int,
                spatial_dims: int) -> torch.nn.Module:
    """Create the configured network.

    Raises:
        ConfigError: unknown model name, unknown option or an invalid option value (the
            model's own message, with where to fix it).
    """
    try:
        return create_model(cfg.model_name(), spatial_dims=spatial_dims, in_channels=in_channels,
                            num_classes=num_classes, **dict(cfg.model.options))
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"model {cfg.model_name()!r}: {msg}",
                          hint="fix model.name / model.options in the config") from None


def prepare_data(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> PreparedData:
    """Open, validate (every case, before training), plan, preprocess and split.

    Raises:
        InputError: the first bad file, named, with what to do about it.
    """
    ds = open_configured_dataset(cfg)
    dims = cfg.data.spatial_dims or infer_spatial_dims(ds)
    # a bad model option is reported now, not after minutes of reading data
    build_model(cfg, len(ds.channel_names), ds.num_classes, dims)
    summary = validate_dataset(ds, dims, keep_arrays=True, seed=cfg.data.split_seed)
    plan = make_plan(summary, ds, target_spacing=cfg.preprocess.target_spacing,
                     normalization=cfg.preprocess.normalization,
                     physics=cfg.preprocess.physics)
    if plan.target_spacing is not None:
        log(f"  resampling to spacing {plan.target_spacing} (median spacing "
            f"{[round(s, 3) for s in summary.median_spacing]})")
    train_ids, val_ids = split_cases(summary.case_ids, cfg.data.val_fraction,
                                     cfg.data.split_seed, cfg.data.group_regex)
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
    names = ds.label_names
    class_names = [names.get(v, str(v)) for v in range(ds.num_classes)]
    shapes = np.array([x.shape[1:] for x in tr_x])
    median_shape = tuple(int(s) for s in np.median(shapes, axis=0))
    summary_d = summary.to_dict()
    summary_d["preprocessed_median_shape"] = list(median_shape)
    return PreparedData(tr_x, tr_y, va_x, va_y, [i for i in summary.case_ids if i in train_ids],
                        [i for i in summary.case_ids if i in val_ids], plan, ds, dims,
                        median_shape, class_names, summary_d, train_affines=tr_aff)


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
