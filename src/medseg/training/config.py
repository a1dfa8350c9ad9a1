"""Configuration as data: every knob is a dataclass field (STYLE habit 8).

A config loads from YAML and/or ``--set section.key=value`` flags, is validated field by field
(unknown keys are an error that lists the valid ones), and its resolved form is saved beside
every checkpoint as ``config.yaml`` so a trained model folder is enough to predict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import ConfigError
from medseg.io.atomic import atomic_write_text
from medseg.transforms.augment import AugmentConfig
from medseg.transforms.physics_noise import PhysicsNoiseConfig


@dataclass
class DataConfig:
    """Where the training data is and how it is split.

    Attributes:
        dataset: An MSD / nnU-Net folder (with ``dataset.json``) or a folder of 2D images.
        masks: With a folder of images: the folder of masks matched by name.
        mask_suffix: Suffix of mask names before the extension (e.g. ``"_Annotation"``).
        modality: Overrides the dataset's modality (``CT``, ``MR``, ``US``, ``XR``, ``PNG``).
        spatial_dims: 2 or 3; ``None`` infers it from the data.
        val_fraction: Fraction of training cases held out for validation.
        group_regex: Regex whose first group is the subject id; cases of one subject stay in
            one split (e.g. ``"^(\\d+)_"`` for HC18).
        split_seed: Seed of the train/validation split.
        val_max_cases: Cap on the validation cases scored at each validation (``0`` = all);
            the others stay held out of training.
        image_size: Classification only: resize every image to this spatial size (``None``
            keeps the size; then all images must share it).
        fold: With ``train.folds = K``: the validation fold of this run (set by the engine
            for each fold member; ``None`` otherwise).
        allow_outside_root: Accept ``dataset.json`` / label-table paths that are absolute,
            contain ``..`` or resolve outside the dataset folder (only for tables you trust).
        cache: Segmentation: preprocess every case once into an on-disk cache of ``.npy`` files
            read lazily (memory-mapped) during training, so memory does not grow with the
            number of cases and a second run skips reading and preprocessing
            (:mod:`medseg.data.cache`); ``false`` keeps every case in memory.
        cache_dir: Folder of caches (one sub-folder per dataset and preprocessing key);
            ``None`` = ``.medseg_cache`` beside the output folder (shared by the runs written
            next to each other). Safe to delete at any time.
        workers: Processes that preprocess cases into the cache: ``0`` = auto (the usable
            CPUs, at most 4), ``1`` = in the training process.
    """

    dataset: str = ""
    masks: str | None = None
    mask_suffix: str = ""
    modality: str | None = None
    spatial_dims: int | None = None
    val_fraction: float = 0.2
    group_regex: str | None = None
    split_seed: int = 0
    val_max_cases: int = 0
    image_size: list[int] | None = None
    fold: int | None = None
    allow_outside_root: bool = False
    cache: bool = True
    cache_dir: str | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0 (0 = auto), got {self.workers}",
                              hint="set data.workers: 0 for auto, 1 for no worker processes")


@dataclass
class PreprocessConfig:
    """Resampling and intensity normalisation (see :mod:`medseg.data.preprocess`).

    Attributes:
        target_spacing: ``"auto"`` (dataset median when spacings vary), ``None`` (keep), or a
            list of mm per axis.
        normalization: ``"auto"`` (by modality) or one scheme for every channel (``ct``,
            ``ct_vst``, ``zscore``, ``minmax_zscore``, ``log_zscore``, ``none``).
        physics: With ``"auto"``, the physics-aware schemes (P4): variance-stabilised CT
            (``ct_vst``) and log-domain linear ultrasound (``log_zscore``).
    """

    target_spacing: str | list[float] | None = "auto"
    normalization: str = "auto"
    physics: bool = False


@dataclass
class ModelConfig:
    """Which registered network and its constructor options (``medseg.networks``).

    ``name="auto"`` means the task's default network (``unet`` for segmentation,
    ``resnet_classifier`` for classification; :meth:`ExperimentConfig.model_name`).

    Attributes:
        name: Registered network name.
        options: Its constructor options.
        variance_head: Give the network a per-pixel (per-image) logit log-variance head and
            train it with the sampled-logit heteroscedastic loss (U1, "learned loss
            attenuation"); prediction then reports the aleatoric term from it.
        variance_samples: Logit-noise draws per pixel in that loss.
    """

    name: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    variance_head: bool = False
    variance_samples: int = 10


@dataclass
class LossConfig:
    """Dice + CE (L6) with the observation mask (T5).

    Attributes:
        dice_weight: Weight of the soft Dice term (L5).
        ce_weight: Weight of the cross-entropy term (L1).
        eps: Dice smoothing.
        batch_dice: Pool Dice sums over the batch.
        include_background: Include class 0 in the Dice average.
        class_weighting: CE class weights for imbalance (L4): ``"none"``; ``"fixed"`` from the
            dataset's class fractions and the chosen predictions ``balance_p_own`` (mean p_c on
            class-c voxels, the spec's p1) and ``balance_p_rest`` (mean p_c elsewhere, p0);
            ``"adaptive"``: re-estimated every step from the model's current predictions on
            observed voxels (EMA with ``adaptive_momentum``), logged every epoch.
        weight_min: Lower clip of the class weights.
        weight_max: Upper clip, so a weight cannot explode while a class is predicted near 0.
        restoration: Restoration task only (:mod:`medseg.losses.restoration`): ``"l2"`` in the
            image's intensity domain, ``"likelihood"`` (the modality's NLL: Poisson counts for
            CT, Rician for MR, Gamma intensity for US) or ``"anscombe_l2"`` (CT).
        deep_supervision_weights: Weight per deep-supervision output (normalised to sum 1), or
            ``None`` for the network's own rule: its ``deep_supervision_weights`` attribute
            (UNet++: equal weights over its heads, as in Zhou et al.) or else halving per level
            from full resolution (nnU-Net, U-Net).
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    eps: float = 1.0
    batch_dice: bool = False
    include_background: bool = False
    class_weighting: str = "none"
    balance_p_own: float = 0.30
    balance_p_rest: float = 0.02
    adaptive_momentum: float = 0.9
    weight_min: float = 1.0
    weight_max: float = 100.0
    restoration: str = "l2"
    deep_supervision_weights: list[float] | None = None

    def __post_init__(self) -> None:
        w = self.deep_supervision_weights
        if w is not None and (not w or min(w) < 0 or sum(w) <= 0):
            raise ConfigError(f"loss.deep_supervision_weights must be >= 0 with a positive sum, "
                              f"got {w}")
        if self.restoration not in ("l2", "likelihood", "anscombe_l2"):
            raise ConfigError(f"loss.restoration must be l2, likelihood or anscombe_l2, got "
                              f"{self.restoration!r}")
        if self.class_weighting not in ("none", "fixed", "adaptive"):
            raise ConfigError(f"loss.class_weighting must be none, fixed or adaptive, got "
                              f"{self.class_weighting!r}")
        if not 0 <= self.weight_min <= self.weight_max:
            raise ConfigError("need 0 <= loss.weight_min <= loss.weight_max")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        name: ``"sgd"`` (Nesterov, nnU-Net default) or ``"adamw"``.
        lr: Initial learning rate.
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum.
        schedule: ``"poly"`` (``lr * (1 - t)^0.9``), ``"cosine"`` or ``"constant"``.
        warmup_epochs: Linear warm-up epochs.
        grad_clip: Max gradient norm (``0`` disables).
    """

    name: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    schedule: str = "poly"
    warmup_epochs: int = 0
    grad_clip: float = 12.0


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: Number of epochs.
        steps_per_epoch: Optimiser steps per epoch.
        batch_size: Patches per step (per process under DDP).
        patch_size: Patch size per spatial axis; ``None`` picks one from the data.
        fg_oversample: Fraction of each batch centred on foreground (T6).
        val_every: Validate every N epochs (``0`` = never; the last epoch always validates).
        max_minutes: Wall-clock budget of the training epochs; after every epoch the number of
            epochs is re-fitted to it (at most ``epochs``) and the learning-rate schedule follows,
            so it still ends within the budget (``0`` = no budget; a budget makes the run length
            depend on the machine's speed, so leave it at 0 for bit-exact reproduction).
        seed: Seed of everything random (``--seed``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        precision: Arithmetic of the network's forward and backward: ``"auto"`` (bf16
            autocast on a CPU with native bf16 and on a bf16-capable GPU, fp16 autocast with
            the gradient scaler on an older GPU, fp32 otherwise;
            :func:`medseg.training.device.resolve_precision`), ``"fp32"``, ``"bf16"`` or
            ``"fp16"``. Losses, softmax and metrics stay float32. The resolved choice is
            printed and recorded in ``plan.json`` (``train_precision``).
        channels_last: Channels-last memory layout of weights and patches: ``true``,
            ``false`` or ``"auto"`` (off for training: its backward pass measured slower,
            :func:`medseg.inference.precision.use_channels_last`).
        compile: Run the network through ``torch.compile`` (a warm-up cost at the first
            step; eager with a warning where the compiler fails).
        amp: Deprecated (use ``precision``): ``false`` means ``precision: fp32`` when
            ``precision`` is ``auto``; ``true`` or empty changes nothing.
        num_threads: Torch intra-op threads (``0`` = torch default).
        prefetch: Prepare the next batch in a background thread.
        deterministic: Ask torch for deterministic algorithms.
        max_bad_steps: Steps in a row with a non-finite loss or gradient norm (each skipped,
            never applied) after which training stops with an error.
        ensemble: Members of a deep ensemble (U3) trained into one model folder
            (``member_<k>/``, seed ``seed + k``); 1 = a single model. With ``folds``: the
            repeats of each fold (seeds ``seed .. seed + R - 1``, ``fold_<k>_seed_<r>/``), so
            that each case's out-of-fold prediction averages R models that never saw it.
        calibrate: Fit a temperature on the validation split at the end of training and
            write ``calibration.json`` (U5); prediction then uses it.
        threshold: Classification with ``folds``: the decision rule chosen on the
            out-of-fold probabilities and used by predict (``decision.json``): ``"youden"``
            (= the balanced-accuracy optimum for two classes), ``"balanced_accuracy"``,
            ``"sensitivity:0.9"`` (the largest threshold reaching that sensitivity) or
            ``"argmax"`` (0.5 / the most probable class). Binary and multi-label tasks only.
        folds: K-fold cross-validation (``K >= 2``): K models (``fold_<k>/``, fold ``k``
            held out, grouped by subject and stratified by label) in one model folder, their
            out-of-fold predictions and estimate with an interval beside them; prediction
            averages the K models. 1 = one train/validation split (``data.val_fraction``).
        label_smoothing: Classification: targets ``(1 - e) onehot + e / K`` (single-label)
            or ``y (1 - e) + e / 2`` per label (multi-label) instead of the hard labels.
        mixup: Classification: the Beta(a, a) parameter ``a`` of mixup (each batch is mixed
            with a permutation of itself, ``lam x_i + (1 - lam) x_j``, and the loss is the same
            convex combination of the two targets' losses); ``0`` = off.
        balanced_sampling: Single-label classification: draw training images with
            probability ``1 / (K n_class)`` so that every class is seen equally often.
        ema: Exponential moving average of the weights (Polyak averaging), the decay per
            optimiser step in ``[0, 1)`` (``0.99`` averages over about the last 100 steps);
            validation, the checkpoints' ``model`` and so prediction use the averaged
            weights. ``0`` = off.
    """

    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 8
    patch_size: list[int] | None = None
    fg_oversample: float = 0.33
    val_every: int = 1
    max_minutes: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    amp: bool | None = None
    num_threads: int = 0
    prefetch: bool = True
    deterministic: bool = False
    max_bad_steps: int = 5
    ensemble: int = 1
    calibrate: bool = True
    folds: int = 1
    threshold: str = "youden"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    balanced_sampling: bool = False
    ema: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema must lie in [0, 1) (0 = off), got {self.ema}")
        if not 0.0 <= self.label_smoothing < 1.0 or self.mixup < 0:
            raise ConfigError("train.label_smoothing must lie in [0, 1) and train.mixup be >= 0, "
                              f"got {self.label_smoothing} and {self.mixup}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "max_bad_steps", "ensemble",
                     "folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fg_oversample <= 1.0:
            raise ConfigError(f"train.fg_oversample must lie in [0, 1], got {self.fg_oversample}")
        if self.max_minutes < 0 or self.val_every < 0:
            raise ConfigError("train.max_minutes and train.val_every must be >= 0")
        if self.patch_size is not None and min(self.patch_size, default=1) < 1:
            raise ConfigError(f"train.patch_size must be positive, got {self.patch_size}")
        check_speed_options("train", self.precision, self.channels_last)
        if self.amp is False and self.precision == "auto":
            self.precision = "fp32"  # the deprecated switch, mapped once
        rule, _, target = self.threshold.partition(":")
        if rule not in ("youden", "balanced_accuracy", "sensitivity", "argmax") or (
                (rule == "sensitivity") != bool(target)):
            raise ConfigError(f"train.threshold must be youden, balanced_accuracy, argmax or "
                              f"sensitivity:<0..1>, got {self.threshold!r}")
        if target:
            try:
                ok = 0.0 < float(target) <= 1.0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"train.threshold sensitivity target must lie in (0, 1], "
                                  f"got {target!r}")


@dataclass
class InferenceConfig:
    """Sliding-window prediction (E4).

    Attributes:
        overlap: Fraction of overlap between windows.
        sw_batch_size: Windows per forward pass.
        tta: Average over flips.
        sigma_scale: Gaussian importance sigma as a fraction of the window.
        precision: Arithmetic of prediction, independent of training's (``"auto"``,
            ``"fp32"``, ``"bf16"``, ``"fp16"``; see ``train.precision``); resolved on the
            device that predicts. The stitching accumulator stays float32.
        channels_last: ``true``, ``false`` or ``"auto"`` (on for prediction on a CPU, 2D and
            3D: 1.3-1.6x faster forward passes measured; off on a GPU, not measured).
        compile: ``torch.compile`` the network for prediction.
        skip_background: Do not run windows lying entirely in background (CT: every voxel
            at or below -900 HU; other modalities: every voxel at the image's minimum; see
            :mod:`medseg.inference.background`); their output is the background class.
    """

    overlap: float = 0.5
    sw_batch_size: int = 4
    tta: bool = False
    sigma_scale: float = 0.125
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    skip_background: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"inference.overlap must lie in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1 or self.sigma_scale <= 0:
            raise ConfigError("inference.sw_batch_size must be >= 1 and sigma_scale > 0")
        check_speed_options("inference", self.precision, self.channels_last)


def check_speed_options(section: str, precision: str, channels_last: bool | str) -> None:
    """Refuse an unknown ``precision`` or ``channels_last`` value of ``section``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"{section}.precision must be auto, fp32, bf16 or fp16, got "
                          f"{precision!r}")
    if channels_last != "auto" and not isinstance(channels_last, bool):
        raise ConfigError(f"{section}.channels_last must be true, false or auto, got "
                          f"{channels_last!r}")


@dataclass
class InstanceConfig:
    """Instance segmentation (``task: instance``, T4 / A8): targets and post-processing.

    Attributes:
        boundary_width: Thickness in voxels of each instance's boundary band in the 3-class
            training target (:func:`medseg.instance.instance_to_semantic`).
        mask_threshold: DSB2018 layout: per-instance masks with more than two grey values
            (anti-aliased edges) are an error unless this is set; then a voxel belongs to the
            instance where ``value > mask_threshold * max``.
        seed_threshold: Interior probability that seeds an instance.
        fg_threshold: Interior + boundary probability that counts as foreground.
        min_seed_size: Smallest seed in voxels.
        min_size: Smallest predicted instance in voxels.
        flood: Watershed surface, ``"probability"`` or ``"distance"``.
    """

    boundary_width: int = 2
    mask_threshold: float | None = None
    seed_threshold: float = 0.5
    fg_threshold: float = 0.5
    min_seed_size: int = 4
    min_size: int = 10
    flood: str = "probability"

    def __post_init__(self) -> None:
        if self.boundary_width < 1:
            raise ConfigError(f"instance.boundary_width must be >= 1, got {self.boundary_width}")
        if self.mask_threshold is not None and not 0.0 <= self.mask_threshold < 1.0:
            raise ConfigError("instance.mask_threshold must lie in [0, 1)")
        for name in ("seed_threshold", "fg_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"instance.{name} must lie in [0, 1]")
        if self.min_seed_size < 0 or self.min_size < 0:
            raise ConfigError("instance.min_seed_size and instance.min_size must be >= 0")
        if self.flood not in ("probability", "distance"):
            raise ConfigError(f"instance.flood must be probability or distance, got "
                              f"{self.flood!r}")

    def postprocess_dict(self) -> dict[str, Any]:
        """The keyword arguments of :class:`medseg.instance.PostprocessParams`."""
        return {"seed_threshold": self.seed_threshold, "fg_threshold": self.fg_threshold,
                "min_seed_size": self.min_seed_size, "min_size": self.min_size,
                "flood": self.flood}


@dataclass
class ExperimentConfig:
    """Everything needed to train and to reproduce a model.

    ``task`` names a registered task (:func:`medseg.tasks.list_tasks`): ``"segmentation"`` (T3),
    ``"classification"`` (T1 / T2, single- or multi-label decided by the label table),
    ``"instance"`` (T4: a segmentation network trained on background / interior / boundary
    targets, see the ``instance`` section) or ``"restoration"`` (denoising with L2 or the
    modality's likelihood, ``loss.restoration``). Each task refuses settings it does not use.
    """

    task: str = "segmentation"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    physics_noise: PhysicsNoiseConfig = field(default_factory=PhysicsNoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    output_dir: str = "runs/model"

    def __post_init__(self) -> None:
        from medseg.tasks import ALIASES, list_tasks

        self.task = ALIASES.get(self.task, self.task)
        if self.task not in list_tasks():
            raise ConfigError(f"task must be one of {', '.join(list_tasks())}, got "
                              f"{self.task!r}")

    def model_name(self) -> str:
        """The registered network to build (``model.name``, with ``auto`` resolved by task)."""
        from medseg.tasks import get_task

        return get_task(self.task).model_name(self)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML-safe: tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ExperimentConfig:
        """Build from a nested dict, rejecting unknown keys and ill-typed values."""
        return _build(cls, d, source)

    def save(self, path: str | Path) -> None:
        """Write YAML atomically."""
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """Read a YAML file (missing keys take defaults)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config file not found", p, "check the path given to --config")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"the config is {p.stat().st_size} bytes, more than a config can "
                              "be", p, "give a YAML configuration file")
        try:
            d = load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
        except UnicodeDecodeError:
            raise ConfigError("not a text file (not UTF-8)", p,
                              "give a YAML configuration file") from None
        if not isinstance(d, dict):
            raise ConfigError("the YAML top level must be a mapping of sections", p)
        return cls.from_dict(d, source=str(p))

    def override(self, assignments: list[str]) -> ExperimentConfig:
        """Apply ``section.key=value`` strings (values parsed as YAML)."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"override {a!r} must look like section.key=value")
            key, val = a.split("=", 1)
            parts = key.strip().split(".")
            node = d
            for p in parts[:-1]:
                if not isinstance(node, dict) or p not in node:
                    raise ConfigError(f"unknown config section {key!r}")
                node = node[p]
                if node is None:
                    raise ConfigError(f"cannot set {key!r}: its parent is empty")
            if not isinstance(node, dict):
                raise ConfigError(f"unknown config key {key!r}")
            leaf = parts[-1]
            is_free_dict = parts[-2:-1] == ["options"] if len(parts) > 1 else False
            if leaf not in node and not is_free_dict:
                raise ConfigError(
                    f"unknown config key {key!r}; valid keys here: {', '.join(sorted(node))}"
                )
            node[leaf] = load_yaml(val, f"--set {key}")
        return ExperimentConfig.from_dict(d, source="--set")


#: A configuration larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors/aliases: a config never needs them, and nested
    aliases expand exponentially (a 400-byte "billion laughs" document takes gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a medseg configuration",
                event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str) -> Any:
    """Parse a configuration text: safe types only, no aliases.

    Raises:
        ConfigError: a syntax error, an alias, or a tag such as ``!!python/object`` (naming
            ``source``).
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError("the configuration is nested too deeply", source,
                          "use plain YAML: mappings, lists, numbers, text, true/false") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        msg = " ".join(line.strip() for line in first[:3])
        raise ConfigError(f"not a valid medseg configuration ({msg[:200]})", source,
                          "use plain YAML: mappings, lists, numbers, text, true/false") from None


def _plain(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_plain(v) for v in o]
    return o


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional  # noqa: UP007
    return tp, False


def _check_value(tp: Any, value: Any, where: str) -> Any:
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} may not be empty")
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(base):
            try:
                return _check_value(a, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {base}")
    if base is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(base) or (Any,)
        return [_check_value(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    if dataclasses.is_dataclass(base):
        return _build(base, value, where)
    return value


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in {cls.__name__}; valid: {sorted(names)}"
        )
    kwargs = {k: _check_value(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError,
            KeyError) as e:  # a section's own range checks on values of odd types
        raise ConfigError(f"{where}: {e}", hint="fix the value in the config") from None
