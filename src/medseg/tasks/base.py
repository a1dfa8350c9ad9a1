"""The task protocol: what a task tells the engine, and what the engine does for every task.

A task (segmentation, instance segmentation, classification, restoration ...) is a small class
registered by name (:func:`medseg.tasks.register_task`). The engine
(:func:`medseg.training.engine.train`) owns everything that is the same for every task —
resume, time budget, checkpoints, Ctrl-C, seeding, DDP, AMP, determinism, the non-finite guard,
the progress line and ``train_log.csv`` — and asks the task only for what is specific to it:

=====================  ========================================================================
``check_config``        refuse a setting the task does not read (generic, from ``uses``)
``prepare``             read, check, preprocess and split the data of a config
``build_model``         the network for that data
``trainer``             a :class:`TaskTrainer`: an epoch's batches, a batch's loss, validation
``plan``                the :class:`~medseg.model_folder.Plan` of the model folder
``check_plan``          the task's entries of a ``plan.json`` that is being loaded
``predict``             a model folder onto inputs (files, folders, tables)
``evaluate``            predictions against references -> ``metrics.json`` / ``metrics.csv``
``recognises``          whether a prediction folder/file is this task's (evaluate dispatch)
=====================  ========================================================================
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.losses import AdaptiveClassWeights, gradient_balance_weights
from medseg.training.config import ExperimentConfig

Log = Callable[[str], None]

#: Settings the engine reads for every task (a task adds its own in ``Task.uses``).
ENGINE_SETTINGS = frozenset({
    "task", "output_dir", "data.dataset", "model", "optim",
    "train.epochs", "train.steps_per_epoch", "train.batch_size", "train.val_every",
    "train.max_minutes", "train.seed", "train.device", "train.amp", "train.num_threads",
    "train.precision", "train.channels_last", "train.compile",
    "train.deterministic", "train.max_bad_steps", "train.ensemble", "train.calibrate",
    "train.folds", "data.fold", "train.ema",
})

#: The setting of tasks whose datasets list file paths in a table (``dataset.json``, CSV).
TABLE_SETTINGS = frozenset({"data.allow_outside_root"})

#: The settings of ``loss.class_weighting`` (L4), for tasks that use :func:`class_weighting`.
CLASS_WEIGHTING_SETTINGS = frozenset({
    "loss.class_weighting", "loss.balance_p_own", "loss.balance_p_rest",
    "loss.adaptive_momentum", "loss.weight_min", "loss.weight_max",
})
#: The settings of :func:`medseg.data.splits.split_cases`.
SPLIT_SETTINGS = frozenset({"data.val_fraction", "data.group_regex", "data.split_seed"})


@dataclass
class PredictRequest:
    """What ``medseg predict`` asks of a task (each task reads the fields it needs).

    Attributes:
        input: Image file, folder, DICOM series folder, label table or ``.npz``.
        output: Folder for the predictions.
        checkpoint: ``"best"`` or ``"last"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        format: Output format of image predictions (``auto`` = the input's).
        tta: Flip test-time augmentation (``None`` = the model's setting).
        overlap: Sliding-window overlap (``None`` = the model's setting).
        save_probabilities: Also write class probabilities (segmentation).
        split: Only this split of a label table (classification).
        overwrite: Predictions may replace files in a non-empty output folder (never the
            inputs, and never in the folder that holds them).
        uncertainty: ``None``, or how to sample the prediction for the uncertainty maps and
            tables (U2-U4): ``"mc"``, ``"mc_decoder"``, ``"ensemble"``, ``"tta"``, or
            ``"none"`` (the single deterministic prediction: entropy, and the variance head's
            aleatoric term when the model has one).
        samples: ``T`` for MC Dropout.
        seed: Seed of the sampling.
        per_class: Also write the per-class variance maps ``(C, *spatial)``.
        precision: Network arithmetic of this prediction (``auto``, ``fp32``, ``bf16``,
            ``fp16``; ``None`` = the model's ``inference.precision``).
    """

    input: Path
    output: Path
    checkpoint: str = "best"
    device: str = "auto"
    format: str = "auto"
    tta: bool | None = None
    overlap: float | None = None
    save_probabilities: bool = False
    split: str | None = None
    overwrite: bool = False
    uncertainty: str | None = None
    samples: int = 10
    seed: int = 0
    per_class: bool = False
    precision: str | None = None


@dataclass
class EvaluateRequest:
    """What ``medseg evaluate`` asks of a task (each task reads the fields it needs).

    Attributes:
        pred: Predictions (folder or file).
        ref: References (folder, file, dataset or label table).
        output: Folder for ``metrics.json`` / ``metrics.csv`` (and figures, report).
        labels: Segmentation: foreground labels to score.
        ignore_label: Segmentation: reference value marking unlabelled voxels.
        dataset_json: Segmentation: ``dataset.json`` with names and the ignore label.
        ref_suffix: Suffix of reference names.
        images: Segmentation: input images, for overlays and a report.
        split: Classification: only this split of the label table.
        bootstrap: Classification and segmentation: bootstrap resamples for the 95% intervals.
        group_regex: Classification and segmentation: the subject of each case (the regex's
            first group of its id): the intervals resample subjects, not cases.
        mask_threshold: Instances: binarisation of soft DSB2018 masks.
        nsd_tolerance: Segmentation: tolerance in mm of the normalised surface Dice.
        surface: Segmentation: surface definition of HD95 / ASSD / NSD, ``full`` or ``face``.
        allow_outside_root: Accept paths in label tables and ``restoration.json`` that are
            absolute, climb out with ``..`` or resolve outside their folder.
        model: The model folder that made the predictions, for the report's model card.
    """

    pred: Path
    ref: Path
    output: Path
    labels: list[int] | None = None
    ignore_label: int | None = None
    dataset_json: Path | None = None
    ref_suffix: str = ""
    images: Path | None = None
    split: str | None = None
    bootstrap: int = 1000
    group_regex: str | None = None
    mask_threshold: float | None = None
    nsd_tolerance: float = 1.0
    surface: str = "full"
    allow_outside_root: bool = False
    model: Path | None = None


def check_prediction_output(request: PredictRequest) -> None:
    """Nothing a prediction writes may destroy data (issue: hostile input, data safety).

    The output folder may not hold any input (``--output`` = the input folder, or a folder
    above an input file), with or without ``--overwrite``; an existing non-empty output folder
    is refused unless ``request.overwrite``; an output that is a file is refused.

    Raises:
        InputError: naming the folder and what to do.
    """
    out = request.output.resolve()
    src = request.input.resolve()
    if out.exists() and not out.is_dir():
        raise InputError("the output is a file, not a folder", request.output,
                         "give a folder for the predictions")
    inputs = [src] if src.is_file() else (
        [p.resolve() for p in src.rglob("*") if p.is_file()] if src.is_dir() else [])
    if src.is_dir() and (out == src or out in src.parents or src in out.parents):
        raise InputError("the output folder holds the inputs", request.output,
                         "write the predictions to a new folder (medseg never writes into "
                         "its input folder)")
    if any(out == p.parent or out in p.parents for p in inputs):
        raise InputError("the output folder holds input files", request.output,
                         "write the predictions to a new folder (medseg never writes over "
                         "or beside its inputs)")
    if out.is_dir() and any(out.iterdir()) and not request.overwrite:
        raise InputError("the output folder is not empty", request.output,
                         "choose a new folder, or pass --overwrite to replace predictions "
                         "written there before")


class TaskTrainer(ABC):
    """One training run of a task: the engine calls these, in this order, every epoch.

    ``batches`` -> per step ``loss`` (under autocast) -> ``after_step`` -> at the epoch's end
    ``end_epoch`` and, on rank 0 only, ``validate``. ``state_dict`` / ``load_state_dict`` carry
    whatever the task keeps across epochs (e.g. adaptive class weights) through checkpoints, so
    a resumed run replays exactly.
    """

    #: Number of validation items (0 = the run has no validation split).
    n_val: int = 0

    @abstractmethod
    def batches(self, epoch: int, seed: int, rank: int, world_size: int) -> Iterator[Any]:
        """The epoch's batches; every random stream seeded from ``seed`` (= the epoch seed)."""

    @abstractmethod
    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """``(scalar fp32 loss, network output)`` of one batch; ``net`` may be DDP-wrapped."""

    def after_step(self, batch: Any, output: Any) -> None:
        """After a successful optimiser step (e.g. update adaptive weights); none by default."""
        return None

    def end_epoch(self) -> dict[str, float]:
        """Extra ``train_log.csv`` columns of the epoch (e.g. the class weights in use)."""
        return {}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics (the task's ``key_metric`` among them)."""
        return {}

    def calibration_set(self, model: torch.nn.Module) -> Any:
        """The validation split as a :class:`~medseg.training.calibration.CalibrationSet`
        for temperature scaling, or ``None`` where the task has no probabilities."""
        return None

    def describe(self, val: dict[str, float]) -> str:
        """Validation metrics -> text for the progress line."""
        return "".join(f"  {k} {v:.4f}" for k, v in val.items())

    def out_of_fold(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """One row per validation case for the out-of-fold estimate of a K-fold run: ``id``
        and what the task's estimate needs (classification: ``label`` and ``logits``;
        segmentation: per-class Dice)."""
        return []

    def finish_outputs(self, model: torch.nn.Module, fold_rows: bool, calibrate: bool
                       ) -> tuple[list[dict[str, Any]] | None, Any]:
        """What the end of training needs from the best weights: the :meth:`out_of_fold`
        rows (if ``fold_rows``) and the :meth:`calibration_set` (if ``calibrate``), ``None``
        for each not asked. A task whose validation prediction is costly (sliding windows)
        overrides this to predict each case once for both."""
        return (self.out_of_fold(model) if fold_rows else None,
                self.calibration_set(model) if calibrate else None)

    def state_dict(self) -> dict[str, Any]:
        """Task state carried in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (nothing to restore by default)."""
        return None


class Task(ABC):
    """A task the engine trains, predicts and evaluates; subclass, register, done.

    Class attributes:
        name: Registered name (``--task NAME``, ``task:`` in the config and the plan).
        description: One line for ``--help``.
        key_metric: The validation metric that selects ``checkpoint_best.pt``.
        metric_label: How the key metric is named to a person.
        higher_is_better: Direction of ``key_metric``.
        default_model: The network ``model.name: auto`` means.
        uses: Settings the task reads besides :data:`ENGINE_SETTINGS` (``"section"`` or
            ``"section.key"``); any other setting changed from its default is refused.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    key_metric: ClassVar[str]
    metric_label: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    default_model: ClassVar[str] = "unet"
    uses: ClassVar[frozenset[str]] = frozenset()
    #: The :class:`PredictRequest` fields the task's ``predict`` honours (others are refused).
    predict_options: ClassVar[frozenset[str]] = frozenset({"checkpoint", "device"})

    # ------------------------------------------------------------------ configuration
    def check_config(self, cfg: ExperimentConfig) -> None:
        """Refuse settings this task would silently ignore.

        Raises:
            ConfigError: naming the first such setting and its value.
        """
        allowed = ENGINE_SETTINGS | self.uses
        default = _flatten(ExperimentConfig(task=cfg.task).to_dict())
        for key, value in _flatten(cfg.to_dict()).items():
            if value == default.get(key, _MISSING):
                continue
            parts = key.split(".")
            if any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)):
                continue
            raise ConfigError(
                f"the {self.name} task does not use the setting {key} (set to {value!r})",
                hint=f"remove it, or train another task (it has no effect on {self.name})")

    def model_name(self, cfg: ExperimentConfig) -> str:
        """``model.name`` with ``auto`` resolved to this task's default network."""
        return self.default_model if cfg.model.name == "auto" else cfg.model.name

    def build_network(self, cfg: ExperimentConfig, spatial_dims: int, in_channels: int,
                      num_classes: int) -> torch.nn.Module:
        """Create the configured network.

        Raises:
            ConfigError: unknown model name, unknown option or an invalid option value (the
                model's own message, with where to fix it).
        """
        from medseg.networks import create_model
        from medseg.networks.heads import add_variance_head

        name = self.model_name(cfg)
        try:
            net = create_model(name, spatial_dims=spatial_dims, in_channels=in_channels,
                               num_classes=num_classes, **dict(cfg.model.options))
        except (KeyError, TypeError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ConfigError(f"model {name!r}: {msg}",
                              hint="fix model.name / model.options in the config") from None
        return add_variance_head(net) if cfg.model.variance_head else net

    # ------------------------------------------------------------------ training
    @abstractmethod
    def prepare(self, cfg: ExperimentConfig, log: Log) -> Any:
        """Read, check (every case, before training), preprocess and split the data.

        Raises:
            InputError: the first bad file, named, with what to do about it.
        """

    @abstractmethod
    def build_model(self, cfg: ExperimentConfig, data: Any) -> torch.nn.Module:
        """The network for ``data`` (on CPU; the engine moves it)."""

    @abstractmethod
    def trainer(self, cfg: ExperimentConfig, data: Any, model: torch.nn.Module,
                device: torch.device, log: Log) -> TaskTrainer:
        """A :class:`TaskTrainer` for one run."""

    @abstractmethod
    def plan(self, cfg: ExperimentConfig, data: Any) -> Any:
        """The model folder's :class:`~medseg.model_folder.Plan` (after ``trainer``)."""

    @abstractmethod
    def check_plan(self, plan: Any, source: Path) -> None:
        """Check the task's entries of a plan being loaded.

        Raises:
            InputError: a missing or ill-typed entry, naming ``source``.
        """

    # ------------------------------------------------------------------ use
    def check_request(self, request: PredictRequest) -> None:
        """Refuse prediction options this task would ignore.

        Raises:
            ConfigError: naming the first such option.
        """
        default = PredictRequest(request.input, request.output)
        if request.uncertainty is None:
            for name, flag in (("samples", "--samples"), ("seed", "--uncertainty-seed"),
                               ("per_class", "--per-class")):
                if getattr(request, name) != getattr(default, name):
                    raise ConfigError(f"{flag} applies with --uncertainty only",
                                      hint="add --uncertainty mc|mc_decoder|ensemble|tta|none")
        for f in dataclasses.fields(PredictRequest):
            if f.name in ("input", "output", "overwrite") or f.name in self.predict_options:
                continue
            if getattr(request, f.name) != getattr(default, f.name):
                flag = {"save_probabilities": "--save-probabilities", "per_class": "--per-class",
                        "seed": "--uncertainty-seed"}.get(f.name, "--" + f.name)
                raise ConfigError(f"{flag} does not apply to {self.name} models",
                                  hint=f"remove {flag}")

    @abstractmethod
    def predict(self, folder: Any, request: PredictRequest, log: Log) -> list[Path]:
        """Predict every input of ``request`` with the model folder; returns written files."""

    @abstractmethod
    def evaluate(self, request: EvaluateRequest, log: Log) -> dict[str, Any]:
        """Score predictions against references; returns ``{"files": [...], ...}``."""

    def after_folds(self, folder: Path, cfg: ExperimentConfig, log: Log) -> None:
        """Called once a K-fold model folder is complete (its ``plan.json`` lists the folds):
        a task may choose settings on the out-of-fold predictions here. Default: nothing."""
        return None

    def after_calibration(self, folder: Any, log: Log) -> None:
        """Say what a new temperature (``medseg calibrate``) changes beyond
        ``calibration.json``; nothing by default."""
        return None

    def calibration_set_from(self, folder: Any, data: Path, labels: Path | None,
                             split: str | None, device: str, log: Log,
                             ids: Sequence[str] | None = None) -> Any:
        """Labelled data as a :class:`~medseg.training.calibration.CalibrationSet`
        (``medseg calibrate``; the end of ``train --ensemble`` with ``ids`` the members' shared
        validation cases). An ensemble folder gives every member's logits of the same elements.

        Raises:
            InputError: the task has no probabilities to calibrate.
        """
        raise InputError(f"{self.name} models have no class probabilities to calibrate",
                         folder.path, "calibrate segmentation or classification models")

    @abstractmethod
    def recognises(self, pred: Path) -> bool:
        """Whether ``pred`` (a prediction folder or file) holds this task's predictions."""


# ---------------------------------------------------------------------- shared helpers
_MISSING = object()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("options"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def split_ids(cfg: ExperimentConfig, ids: list[str], strata: list[object] | None = None
              ) -> tuple[list[str], list[str]]:
    """Training and validation ids: fold ``data.fold`` of ``train.folds`` (grouped by subject,
    stratified by ``strata``), or the ``data.val_fraction`` split by subject."""
    from medseg.data.splits import fold_split, split_cases

    if cfg.train.folds > 1:
        if cfg.data.fold is None:
            raise ConfigError("train.folds > 1 needs data.fold (the engine sets it per fold)",
                              hint="train with medseg train --folds K")
        return fold_split(ids, cfg.train.folds, cfg.data.fold, cfg.data.split_seed,
                          cfg.data.group_regex, strata)
    return split_cases(ids, cfg.data.val_fraction, cfg.data.split_seed, cfg.data.group_regex)


def plan_entry(plan: Any, key: str, kind: type | tuple[type, ...], source: Path) -> Any:
    """A task entry of a plan, type-checked.

    Raises:
        InputError: missing or of another type, naming ``source``.
    """
    if key not in plan.entries:
        raise InputError(f"plan.json of a {plan.task} model has no {key!r} entry", source,
                         "give the plan.json that medseg train wrote")
    v = plan.entries[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind in (int, float):
        raise InputError(f"plan.json entry {key!r} has the wrong type ({type(v).__name__})",
                         source, "give the plan.json that medseg train wrote")
    return v


def index_batches(n: int, batch_size: int, steps: int, rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """An epoch's index batches: sorted slices of repeated permutations of ``range(n)``.

    Every item is drawn once before any is drawn twice; the permutations are drawn up front
    from ``rng`` so that what the steps then draw from ``rng`` follows in a fixed order.
    """
    order = np.concatenate([rng.permutation(n) for _ in range(
        math.ceil(steps * batch_size / max(n, 1)) + 1)])
    return [np.sort(order[s * batch_size:(s + 1) * batch_size]) for s in range(steps)]


def class_weighting(cfg: ExperimentConfig, alpha: torch.Tensor
                    ) -> tuple[AdaptiveClassWeights | None, torch.Tensor | None]:
    """CE class weights for imbalance (L4) as configured by ``loss.class_weighting``.

    Args:
        cfg: The configuration (``loss.class_weighting``, ``balance_p_*``, ``weight_*``).
        alpha: ``(C,)`` class fractions over observed voxels / images of the training set.

    Returns:
        ``(adaptive state or None, fixed (C,) weights or None)``.
    """
    mode = cfg.loss.class_weighting
    if mode == "none":
        return None, None
    alpha = alpha.double() / alpha.double().sum().clamp_min(1e-12)
    c = int(alpha.numel())
    if mode == "fixed":
        w = gradient_balance_weights(alpha, [cfg.loss.balance_p_own] * c,
                                     [cfg.loss.balance_p_rest] * c, w_min=cfg.loss.weight_min,
                                     w_max=cfg.loss.weight_max)
        return None, w.float()
    return AdaptiveClassWeights(c, momentum=cfg.loss.adaptive_momentum,
                                w_min=cfg.loss.weight_min, w_max=cfg.loss.weight_max,
                                class_fractions=alpha), None


def output_label(path: Path) -> str:
    """A prediction file's case name (extension removed)."""
    from medseg.io.files import file_suffix

    suf = file_suffix(path)
    return path.name[: -len(suf)] if suf and path.name.lower().endswith(suf) else path.stem
