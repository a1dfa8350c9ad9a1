"""The one training engine (E3, E7): every task trains through :func:`train`.

What it guarantees, for every registered task:

* **exact resume** — every random stream of an epoch (batch drawing, augmentation, dropout) is
  seeded from ``(seed, epoch, rank)`` at the start of that epoch, and the checkpoint written at
  the end of epoch ``e`` holds the model, optimiser, grad scaler, the task's own state and the
  history, so a run resumed from it replays epoch ``e + 1`` bit for bit;
* **a time budget** (``train.max_minutes``) refitted after every epoch, the schedule following;
* **checkpoints** ``checkpoint_last.pt`` every epoch and ``checkpoint_best.pt`` at the best
  validation value of the task's key metric (``best_metric``), written atomically with Ctrl-C
  held back during the write, never holding non-finite weights;
* **a non-finite guard** — the loss and the gradient norm are checked before the optimiser
  step; a bad step is skipped and logged, ``train.max_bad_steps`` bad steps in a row stop the
  run with a :class:`TrainingError` (the last good checkpoint stays);
* **DDP under torchrun** (NCCL on CUDA, Gloo on CPU): each rank draws its own batches, rank 0
  alone validates, writes and reports; **mixed precision** (``train.precision``: bf16 autocast
  on a CPU with native bf16 or a bf16 GPU, fp16 + grad scaler on older GPUs, fp32 otherwise;
  the loss is computed on float32 logits), optional **channels-last** and **torch.compile**
  around the step; **deterministic** algorithms on request (``train.deterministic``);
* **weight averaging** on request (``train.ema``): an exponential moving average of the
  weights (``torch.optim.swa_utils.AveragedModel``, buffers included) updated after every
  applied step; validation, the best checkpoint, the out-of-fold rows and so prediction use
  the averaged weights (checkpoint key ``model``), the raw weights travel beside them
  (``train_model``, with ``ema_steps``) so that resume stays exact;
* a progress line per epoch and ``train_log.csv`` (with the number of processes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError, InputError, MedsegError
from medseg.inference.precision import (
    autocast,
    describe,
    maybe_compile,
    model_to_channels_last,
    to_channels_last,
    use_channels_last,
)
from medseg.io.atomic import atomic_write_text
from medseg.training.checkpoint import (
    BEST_NAME,
    CONFIG_NAME,
    LAST_NAME,
    LOG_NAME,
    atomic_torch_save,
    load_checkpoint,
)
from medseg.training.config import ExperimentConfig
from medseg.training.device import resolve_device, resolve_precision
from medseg.training.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_int,
    cleanup,
    init_distributed,
)
from medseg.training.oof import OOF_NAME


class TrainingError(MedsegError):
    """Training cannot go on (e.g. the loss or the gradients stay non-finite)."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves behind.

    Attributes:
        output_dir: The model folder.
        epochs_done: Completed epochs.
        best_metric: Best validation value of ``metric`` (``-1`` / ``inf`` when never
            validated, by direction).
        metric: The task's key metric.
        metric_label: Its name for a person (``Dice``, ``AUROC``, ``loss``).
        history: One row per epoch (as in ``train_log.csv``).
        interrupted: Ended by Ctrl-C (the last complete checkpoint is kept).
        is_main: This process is rank 0 (the one that reports).
        skipped_steps: Optimiser steps skipped by the non-finite guard.
    """

    output_dir: Path
    epochs_done: int
    best_metric: float
    metric: str = ""
    metric_label: str = ""
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    is_main: bool = True
    skipped_steps: int = 0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch's random streams on one rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def lr_at(cfg: ExperimentConfig, progress: float, epoch: int) -> float:
    """Learning rate at training ``progress`` in [0, 1] (per step), with linear warm-up."""
    base = cfg.optim.lr
    if cfg.optim.warmup_epochs and epoch < cfg.optim.warmup_epochs:
        return base * (epoch + 1) / (cfg.optim.warmup_epochs + 1)
    s = cfg.optim.schedule
    if s == "poly":
        return base * (1.0 - min(progress, 1.0)) ** 0.9
    if s == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if s == "constant":
        return base
    raise ConfigError(f"unknown optim.schedule {s!r}", hint="use poly, cosine or constant")


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW as configured."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                               weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    raise ConfigError(f"unknown optim.name {o.name!r}", hint="use sgd or adamw")


def fmt_time(s: float) -> str:
    """Seconds as ``m:ss`` or ``h:mm:ss``."""
    s = max(0, int(round(s)))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


def fit_budget(cfg: ExperimentConfig, epoch: int, planned: int, spent: float,
               say: Callable[[str], None]) -> int:
    """Epochs that fit ``train.max_minutes`` given the mean epoch time so far.

    Re-estimated after every epoch (so a slower machine, or validation epochs, are accounted
    for); never more than ``train.epochs`` and never fewer than the epochs already done. The
    schedule (poly/cosine) follows the new total, so it still ends at its final learning rate.
    """
    done = epoch + 1
    budget = cfg.train.max_minutes * 60.0
    per_epoch = spent / done
    fit = done + max(0, int((budget - spent) // per_epoch))
    new = max(done, min(cfg.train.epochs, fit))
    if new != planned and (epoch == 0 or abs(new - planned) >= max(2, planned // 20)):
        say(f"  time budget {cfg.train.max_minutes:g} min: {planned} -> {new} epochs "
            f"({per_epoch:.1f} s each)")
    return new


def write_log(path: Path, history: list[dict]) -> None:
    """``train_log.csv`` (atomically): one row per epoch, the union of the rows' columns."""
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in history:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


#: What a run writes in its model folder before its first checkpoint (a folder holding only
#: these is a run that stopped early and may be started again).
RUN_ITEMS = frozenset({CONFIG_NAME, "plan.json", LOG_NAME, "instance_targets", OOF_NAME,
                       "calibration.json", "reliability_before.png", "reliability_after.png"})


def _is_partial(p: Path) -> bool:
    """A temporary file of an atomic write that a killed process left behind."""
    return p.name.startswith(".") and ".partial" in p.name


def remove_partial_files(folder: Path) -> list[str]:
    """Delete what killed writes left in a model folder (never a file under its final name)."""
    gone = []
    for p in folder.iterdir() if folder.is_dir() else []:
        if _is_partial(p) and p.is_file():
            p.unlink()
            gone.append(p.name)
    return gone


def check_output_folder(cfg: ExperimentConfig, resume: bool
                        ) -> tuple[ExperimentConfig, Path, Path]:
    """Refuse to overwrite a model; on resume, return the folder's saved config.

    Returns:
        ``(config to use, output folder, path of checkpoint_last.pt)``.

    Raises:
        InputError: a model exists and ``resume`` is false, or nothing to resume.
    """
    out = Path(cfg.output_dir)
    last_path = out / LAST_NAME
    if not resume and last_path.exists():
        raise InputError(
            "the output folder already holds a trained model", out,
            "pass --resume to continue it, or choose another --output folder "
            "(medseg never overwrites a model)",
        )
    if out.exists() and not out.is_dir():
        raise InputError("the output is a file, not a folder", out,
                         "give a new folder for the model")
    foreign = [p.name for p in out.iterdir() if p.name not in RUN_ITEMS
               and not _is_partial(p)] if out.is_dir() else []
    if not resume and foreign:
        raise InputError(
            f"the output folder is not empty and not a medseg model folder (it holds "
            f"{foreign[0]!r})", out, "choose a new --output folder (medseg never writes into a "
            "folder of other files)")
    if resume and not last_path.exists():
        raise InputError("nothing to resume: no checkpoint_last.pt", out,
                         "start without --resume")
    if resume:
        # the saved config is the truth for a resumed run (same task, data, model, schedule)
        cfg = ExperimentConfig.load(out / CONFIG_NAME)
        cfg.output_dir = str(out)
    return cfg, out, last_path


def _saved_members(cfg: ExperimentConfig) -> int:
    saved = Path(cfg.output_dir) / CONFIG_NAME
    if not saved.is_file():
        return 1
    c = ExperimentConfig.load(saved)
    if c.data.fold is not None:
        return 1
    return c.train.ensemble * c.train.folds


def member_name(k: int, folds: int = 0) -> str:
    """The sub-folder of ensemble member ``k``: ``member_<k>`` without folds; with ``folds``
    = K, member ``k`` is fold ``k mod K`` of repeat ``k div K``: ``fold_<f>`` in the first
    repeat, ``fold_<f>_seed_<r>`` in repeat ``r`` (trained with seed ``seed + r``)."""
    if not folds:
        return f"member_{k}"
    f, r = k % folds, k // folds
    return f"fold_{f}" if r == 0 else f"fold_{f}_seed_{r}"


def train_ensemble(cfg: ExperimentConfig, resume: bool = False,
                   log: Callable[[str], None] | None = None,
                   members: list[int] | None = None) -> TrainResult:
    """Train a deep ensemble (U3): ``train.ensemble`` members into one model folder.

    Member ``k`` is a complete model folder ``<output>/member_<k>/`` trained by :func:`train`
    with seed ``train.seed + k`` (so it can also be resumed or retrained alone); the members
    run in sequence here, or as separate jobs (``members=[k]``, ``medseg train --member k``,
    e.g. one per GPU or torchrun job). When every member is complete the folder's own
    ``plan.json`` lists them, and prediction averages them.

    With ``train.folds`` = K the members are the K fold models (``fold_<k>/``, fold ``k``
    held out); with ``train.ensemble`` = R as well, each fold is trained R times with seeds
    ``seed .. seed + R - 1`` (repeated cross-validation, :func:`member_name`): the
    out-of-fold prediction of a case is then the average of the R models that never saw it,
    an honest estimate of an ensemble, and prediction averages all K R models.

    Args:
        cfg: The configuration (``train.ensemble`` = number of members, or of repeats of
            each fold with ``train.folds``).
        resume: Continue: complete members are kept, interrupted ones resumed, missing ones
            trained.
        log: Progress lines.
        members: Train only these members (default: all).

    Returns:
        The last member's :class:`TrainResult` with ``best_metric`` the members' mean (or the
        interrupted member's result).

    Raises:
        InputError: the folder holds a model already (without ``resume``).
    """
    from medseg.model_folder import ModelFolder, write_plan

    out = Path(cfg.output_dir)
    one_job = members is not None  # one of several jobs training an ensemble's members
    if resume or (one_job and (out / CONFIG_NAME).is_file()):
        if not (out / CONFIG_NAME).is_file():
            raise InputError("nothing to resume: no config.yaml", out, "start without --resume")
        saved = ExperimentConfig.load(out / CONFIG_NAME)
        if one_job and not resume and saved.to_dict() != {**cfg.to_dict(),
                                                          "output_dir": saved.output_dir}:
            raise InputError("the ensemble folder was started with another configuration", out,
                             "train its members with the same flags, or choose another folder")
        cfg = saved
        cfg.output_dir = str(out)
    elif (out / CONFIG_NAME).exists() or (out / LAST_NAME).exists():
        raise InputError("the output folder already holds a trained model", out,
                         "pass --resume to continue it, or choose another --output folder "
                         "(medseg never overwrites a model)")
    n_folds = cfg.train.folds if cfg.train.folds > 1 else 0
    folds = n_folds > 0
    n = cfg.train.ensemble * (n_folds or 1)
    todo = list(range(n)) if members is None else members
    bad = [k for k in todo if not 0 <= k < n]
    if bad:
        raise ConfigError(f"member {bad[0]} does not exist ({n} members)",
                          hint=f"give a member between 0 and {n - 1}")
    say = log or print
    if not (out / CONFIG_NAME).exists():
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / CONFIG_NAME)
    results = []
    for k in todo:
        sub = out / member_name(k, n_folds)
        mcfg = ExperimentConfig.from_dict(cfg.to_dict())
        mcfg.output_dir, mcfg.train.ensemble = str(sub), 1
        if folds:
            mcfg.data.fold = k % n_folds
            mcfg.train.seed = cfg.train.seed + k // n_folds
        else:
            mcfg.train.seed = cfg.train.seed + k
        again = (sub / LAST_NAME).is_file()
        if again and not resume and one_job:
            raise InputError(f"ensemble member {k} is already trained", sub,
                             "pass --resume to continue it, or train another member")
        if again:
            ck = load_checkpoint(sub / LAST_NAME)
            if int(ck["epoch"]) + 1 >= int(ck["planned_epochs"]):
                say(f"ensemble member {k + 1}/{n}: complete, kept")
                results.append(float(ck.get("best_metric", math.nan)))
                continue
        if folds:
            say(f"fold {k % n_folds + 1}/{n_folds}" + (
                f", repeat {k // n_folds + 1}/{cfg.train.ensemble} (seed {mcfg.train.seed})"
                if cfg.train.ensemble > 1 else ""))
        else:
            say(f"ensemble member {k + 1}/{n} (seed {mcfg.train.seed})")
        res = train(mcfg, resume=again, log=log)
        if res.interrupted or not res.is_main:
            return res
        results.append(res.best_metric)
    names = [member_name(k, n_folds) for k in range(n)]
    done = [k for k in range(n) if (out / names[k] / LAST_NAME).is_file()
            and _complete(out / names[k])]
    if len(done) == n:
        first = ModelFolder.open(out / names[0])
        plan = first.plan
        plan.members = names
        kind = ({"kind": "folds", "members": n, "folds": n_folds,
                 "repeats": cfg.train.ensemble,
                 "seeds": [cfg.train.seed + r for r in range(cfg.train.ensemble)],
                 "stratified": True,
                 "group_regex": cfg.data.group_regex, "split_seed": cfg.data.split_seed}
                if folds else {"kind": "seeds", "members": n,
                               "seeds": [cfg.train.seed + k for k in range(n)]})
        plan.entries = {**plan.entries, "ensemble": kind}
        if folds:  # every case was seen by the model that did not train on it
            plan.train_ids = sorted({i for m in names for i in
                                     ModelFolder.open(out / m).plan.val_ids})
            plan.val_ids = []
            from medseg.training.oof import write_out_of_fold

            report = write_out_of_fold(out, names, cfg.task, cfg.data.group_regex)
            say(f"out-of-fold estimate over {n_folds} folds"
                + (f" x {cfg.train.ensemble} seeds" if cfg.train.ensemble > 1 else "")
                + f": {report}")
        write_plan(plan, out)
        say(f"{'cross-validation' if folds else 'ensemble'} of {n} written to {out}")
        if folds:
            from medseg.tasks import get_task

            get_task(cfg.task).after_folds(out, cfg, say)
        if not folds and cfg.train.calibrate and first.plan.val_ids:
            _calibrate_ensemble(cfg, out, first.plan.val_ids, say)
    else:
        say(f"{len(done)}/{n} members complete; train the others with --member K")
    task_name = cfg.task
    from medseg.tasks import get_task

    task = get_task(task_name)
    best = float(np.mean(results)) if results else math.nan
    return TrainResult(out, cfg.train.epochs, best, task.key_metric, task.metric_label)


def _calibrate_ensemble(cfg: ExperimentConfig, out: Path, val_ids: list[str],
                        say: Callable[[str], None]) -> None:
    """One temperature for a seeds ensemble, shared by its members and fitted on their averaged
    prediction of the validation split they share (``calibration.json`` of the ensemble
    folder; it replaces the members' own temperatures at prediction).

    Data a task cannot re-read as a labelled table here (an images + masks folder pair, a
    task without class probabilities) keep the members' own temperatures, said in the log.
    """
    from medseg.model_folder import ModelFolder
    from medseg.tasks import get_task
    from medseg.training.calibration import calibrate, describe, write_calibration

    if cfg.data.masks:
        say("  ensemble calibration: members keep their own temperatures (images + masks "
            "folders); run medseg calibrate --model on labelled data for one shared T")
        return
    data = Path(cfg.data.dataset)
    try:
        cs = get_task(cfg.task).calibration_set_from(
            ModelFolder.open(out), data, None, "Tr" if (data / "imagesTr").is_dir() else None,
            cfg.train.device, lambda _: None, ids=val_ids)
    except InputError as e:
        say(f"  ensemble calibration: members keep their own temperatures ({e})")
        return
    if cs.targets.numel() == 0:
        return
    doc = calibrate(cs)
    write_calibration(out, doc, overwrite=True)
    say(f"  ensemble calibration: {describe(doc)}")


def _complete(folder: Path) -> bool:
    ck = load_checkpoint(folder / LAST_NAME)
    return int(ck["epoch"]) + 1 >= int(ck["planned_epochs"])


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values()
               if torch.is_tensor(p) and p.is_floating_point())


def train(cfg: ExperimentConfig, resume: bool = False,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the configured task; see the module docstring for the guarantees.

    Args:
        cfg: The experiment configuration (saved as ``config.yaml`` in ``cfg.output_dir``);
            ``cfg.task`` names the registered task.
        resume: Continue from ``checkpoint_last.pt`` in ``cfg.output_dir`` (its saved config
            is used).
        log: Where progress lines go (default: stdout on rank 0).

    Returns:
        A :class:`TrainResult`. A Ctrl-C ends the run cleanly with ``interrupted=True`` and the
        last complete checkpoint untouched.

    Raises:
        InputError / ConfigError: bad data or settings, before any training.
        TrainingError: ``train.max_bad_steps`` non-finite steps in a row.
    """
    from medseg.tasks import get_task

    if (cfg.train.ensemble > 1 or (cfg.train.folds > 1 and cfg.data.fold is None)
            or (resume and _saved_members(cfg) > 1)):
        return train_ensemble(cfg, resume, log)
    cfg, out, last_path = check_output_folder(cfg, resume)
    try:
        task = get_task(cfg.task)
    except KeyError as e:
        raise ConfigError(e.args[0], hint="set task to one of the registered tasks") from None
    task.check_config(cfg)
    device = resolve_device(cfg.train.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    say = log or (print if info.is_main else (lambda _s: None))
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False

    try:
        result = _Run(task, cfg, resume, out, last_path, device, info, say).run()
        barrier(info)  # every rank done before the group is torn down (a rank leaving early
        return result  # let Gloo's threads die under a peer's last collective: SIGABRT)
    finally:
        cleanup(info)


def _batch_channels_last(batch: Any) -> Any:
    """The batch with its 4D / 5D floating-point tensors (the images) in channels-last."""
    if isinstance(batch, torch.Tensor):
        return to_channels_last(batch) if batch.is_floating_point() and batch.ndim in (4, 5) \
            else batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(_batch_channels_last(b) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_batch_channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _batch_channels_last(v) for k, v in batch.items()}
    return batch


class _Run:
    """One training run: the state the engine carries across steps and epochs."""

    def __init__(self, task: Any, cfg: ExperimentConfig, resume: bool, out: Path,
                 last_path: Path, device: torch.device, info: Any, say: Callable[[str], None]):
        from medseg.model_folder import write_plan

        self.task, self.cfg, self.out, self.last_path = task, cfg, out, last_path
        self.device, self.info, self.say = device, info, say
        torch.manual_seed(cfg.train.seed)
        say(f"medseg train: preparing {task.name} data from {cfg.data.dataset}")
        data = task.prepare(cfg, log=say)
        self.model = task.build_model(cfg, data).to(device)
        self.trainer = task.trainer(cfg, data, self.model, device, say)
        plan = task.plan(cfg, data)
        plan.variance_head = cfg.model.variance_head
        self.optimizer = build_optimizer(cfg, self.model)
        self.precision = resolve_precision(cfg.train.precision, device)
        # fp16 needs the gradient scaler (its range underflows small gradients); bf16 does not
        self.use_amp = self.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        plan.entries["train_precision"] = self.precision
        self.channels_last = use_channels_last(cfg.train.channels_last, plan.spatial_dims,
                                               self.precision, training=True,
                                               device_type=device.type)
        if self.channels_last:
            model_to_channels_last(self.model, plan.spatial_dims)
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if cfg.train.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(
                cfg.train.ema), use_buffers=True)
            # counters (batch norm's step count) take the raw value, not torch's blend
            self._ema_counters = [(mine, theirs) for mine, theirs in zip(
                self.ema.module.buffers(), self.model.buffers(), strict=True)
                if not mine.is_floating_point()]
            say(f"  weight averaging: exponential, decay {cfg.train.ema:g} per step "
                f"(horizon ~{1.0 / (1.0 - cfg.train.ema):.0f} steps)")
        say(f"  precision: {describe(self.precision, self.channels_last, cfg.train.compile)}"
            f" (train.precision={cfg.train.precision}, device {device.type})")
        self.sign = 1.0 if task.higher_is_better else -1.0
        self.start_epoch, self.best, self.history, self.spent = 0, -math.inf * self.sign, [], 0.0
        self.planned = cfg.train.epochs
        self.skipped_total = self.bad_run = 0
        if info.is_main and remove_partial_files(out):
            say(f"  removed the temporary files of an interrupted write in {out}")
        if resume:
            self._restore()
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / CONFIG_NAME)
            write_plan(plan, out)
        self.net: torch.nn.Module = self.model
        if info.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = maybe_compile(self.net, cfg.train.compile, "training")
        self.max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        self.tty = info.is_main and sys.stderr.isatty()

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, saved as ``model`` and predicted with."""
        return self.model if self.ema is None else self.ema.module

    def _restore(self) -> None:
        ck = load_checkpoint(self.last_path, map_location=self.device)
        if (self.ema is not None) != ("train_model" in ck):
            raise ConfigError(
                f"{self.last_path} was written with train.ema "
                f"{'on' if 'train_model' in ck else 'off'}, this run has it "
                f"{'on' if self.ema is not None else 'off'}",
                hint="resume with the configuration the run was started with")
        if self.ema is not None:
            self.model.load_state_dict(ck["train_model"])
            self.ema.module.load_state_dict(ck["model"])
            self.ema.n_averaged.fill_(int(ck["ema_steps"]))
        else:
            self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.use_amp and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch = int(ck["epoch"]) + 1
        self.best = float(ck.get("best_metric", ck.get("best_dice", self.best)))
        self.history, self.planned = list(ck["history"]), int(ck["planned_epochs"])
        if self.info.is_main:  # a kill between the checkpoint and the log left it behind
            write_log(self.out / LOG_NAME, self.history)
        self.spent = float(ck.get("train_seconds", 0.0))
        # "class_weights_state": the key of checkpoints written before the engine
        self.trainer.load_state_dict(ck.get("task_state", {
            "class_weights_state": ck.get("class_weights_state")}))
        self.say(f"  resumed from {self.last_path} at epoch {self.start_epoch}/{self.planned}")

    def step(self, epoch: int, step: int, batch: Any, losses: list[float]) -> bool:
        """One optimiser step behind the guard; ``False`` when it was skipped."""
        cfg, steps = self.cfg, self.cfg.train.steps_per_epoch
        lr = lr_at(cfg, (epoch * steps + step) / max(1, self.planned * steps), epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.channels_last:
            batch = _batch_channels_last(batch)
        with autocast(self.precision, self.device):
            loss, output = self.trainer.loss(self.net, batch)
        loss = loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm))
        lv = float(loss.detach())
        if math.isfinite(lv) and (math.isfinite(gnorm) or self.use_amp):
            # fp16 overflow of the gradients: the scaler skips the step itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
                for mine, theirs in self._ema_counters:
                    mine.copy_(theirs)
            self.trainer.after_step(batch, output)
            losses.append(lv)
            self.bad_run = 0
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_run += 1
        self.say(f"  epoch {epoch + 1} step {step + 1}: loss {lv:.4g}, gradient norm "
                 f"{gnorm:.4g}: step skipped ({self.bad_run} in a row)")
        if self.bad_run >= cfg.train.max_bad_steps:
            raise TrainingError(
                f"training diverged: {self.bad_run} steps in a row with a non-finite loss or "
                f"gradient (epoch {epoch + 1}, step {step + 1}); the last good checkpoint is "
                f"kept in {self.out}")
        return False

    def train_epoch(self, epoch: int) -> tuple[float, float, int, float]:
        """The epoch's steps: ``(mean loss over ranks, data-wait seconds, skipped, last lr)``."""
        cfg, info = self.cfg, self.info
        es = epoch_seed(cfg.train.seed, epoch, info.rank)
        torch.manual_seed(es)
        stream = self.trainer.batches(epoch, es, info.rank, info.world_size)
        losses: list[float] = []
        wait, skipped = 0.0, 0
        try:
            for step in range(cfg.train.steps_per_epoch):
                tw = time.perf_counter()
                batch = next(stream)
                wait += time.perf_counter() - tw
                skipped += not self.step(epoch, step, batch, losses)
                if self.tty:
                    print(f"\r  epoch {epoch + 1}/{self.planned} step {step + 1}/"
                          f"{cfg.train.steps_per_epoch} loss "
                          f"{np.mean(losses) if losses else math.nan:.4f}", end="",
                          file=sys.stderr, flush=True)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if self.tty:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
        loss = all_reduce_mean(float(np.mean(losses)) if losses else math.nan, info,
                               self.device)
        return loss, wait, skipped, self.optimizer.param_groups[0]["lr"]

    def save(self, epoch: int, is_best: bool) -> None:
        """Rank 0: ``checkpoint_last.pt`` (+ best) and ``train_log.csv``, atomically."""
        if not (_finite_weights(self.model) and _finite_weights(self.eval_model)):
            raise TrainingError(f"the weights became non-finite in epoch {epoch + 1}; the last "
                                f"good checkpoint is kept in {self.out}")
        state = {
            "model": self.eval_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "planned_epochs": self.planned, "best_metric": self.best,
            "metric": self.task.key_metric, "task": self.task.name,
            "train_seconds": self.spent, "history": self.history,
            "task_state": self.trainer.state_dict(),
        }
        if self.use_amp:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["train_model"] = self.model.state_dict()
            state["ema_steps"] = int(self.ema.n_averaged)
        atomic_torch_save(state, self.last_path)
        if is_best or self.trainer.n_val == 0:
            atomic_torch_save(state, self.out / BEST_NAME)
        write_log(self.out / LOG_NAME, self.history)

    def finish(self) -> None:
        """With the best checkpoint: the out-of-fold rows of a fold run (``oof.json``) and
        temperature scaling on the validation split (U5)."""
        from medseg.training.calibration import calibrate, describe, write_calibration

        best = self.out / BEST_NAME
        self.model.load_state_dict(load_checkpoint(best, self.device)["model"] if best.is_file()
                                   else self.eval_model.state_dict())
        self.model.eval()
        try:
            rows, cs = self.trainer.finish_outputs(self.model, self.cfg.data.fold is not None,
                                                   bool(self.cfg.train.calibrate))
            if rows is not None:
                atomic_write_text(self.out / OOF_NAME, json.dumps(
                    {"fold": self.cfg.data.fold, "rows": rows}))
        finally:
            self.model.train()
        if cs is None or cs.targets.numel() == 0:
            return
        doc = calibrate(cs)
        write_calibration(self.out, doc, overwrite=True)
        self.say(f"  calibration: {describe(doc)}")

    def run(self) -> TrainResult:
        cfg, info, trainer = self.cfg, self.info, self.trainer
        t_start = time.perf_counter()
        epoch, interrupted = self.start_epoch, False
        self.model.train()
        try:
            while epoch < self.planned:
                t0 = time.perf_counter()
                train_loss, wait, skipped, lr = self.train_epoch(epoch)
                t_train = time.perf_counter() - t0
                if cfg.train.max_minutes > 0:
                    # rank 0's decision holds for every rank so that all stop together
                    self.planned = broadcast_int(fit_budget(cfg, epoch, self.planned,
                                                            self.spent + t_train, self.say),
                                                 info, self.device)
                do_val = trainer.n_val > 0 and (epoch + 1 == self.planned or (
                    cfg.train.val_every > 0 and (epoch + 1) % cfg.train.val_every == 0))
                val: dict[str, float] = {}
                if do_val and info.is_main:
                    self.eval_model.eval()
                    try:
                        val = trainer.validate(self.eval_model)
                    finally:
                        self.eval_model.train()
                barrier(info)
                extra = trainer.end_epoch()
                row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, **extra,
                       "data_wait_fraction": wait / max(t_train, 1e-9),
                       "epoch_seconds": time.perf_counter() - t0,
                       "processes": info.world_size, "skipped_steps": skipped, **val}
                self.history.append(row)
                self.spent += time.perf_counter() - t0
                self.skipped_total += skipped
                value = val.get(self.task.key_metric, math.nan)
                is_best = do_val and math.isfinite(value) and \
                    self.sign * value > self.sign * self.best
                if is_best:
                    self.best = value
                if info.is_main:
                    self.save(epoch, is_best)
                eta = (time.perf_counter() - t_start) / (epoch + 1 - self.start_epoch) * (
                    self.planned - epoch - 1)
                text = trainer.describe(val) if val else ""
                if extra:
                    text += "  " + " ".join(f"{k} {v:.3g}" for k, v in extra.items())
                epoch += 1  # complete (its checkpoint is written) before it is said
                self.say(f"  epoch {epoch}/{self.planned}  loss {train_loss:.4f}{text}  "
                         f"data-wait {row['data_wait_fraction']:.0%}  "
                         f"{row['epoch_seconds']:.1f}s  left ~{fmt_time(eta)}"
                         + (f"  ({skipped} step(s) skipped)" if skipped else ""))
        except KeyboardInterrupt:
            interrupted = True
            self.say(f"\ninterrupted during epoch {epoch + 1}; the last complete checkpoint is "
                     f"kept at {self.last_path} (epoch {epoch}). Continue with --resume.")
        if not interrupted and trainer.n_val > 0 and (cfg.train.calibrate
                                                      or cfg.data.fold is not None):
            if info.is_main:
                self.finish()
            barrier(info)  # the other ranks wait: none leaves the group before rank 0
        return TrainResult(self.out, epoch, self.best, self.task.key_metric,
                           self.task.metric_label, self.history, interrupted, info.is_main,
                           self.skipped_total)
