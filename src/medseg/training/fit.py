"""The epoch loop shared by the whole-array trainers (classification, restoration).

The segmentation loop (:mod:`medseg.training.loop`) samples patches and runs under DDP; the
classification and restoration trainers draw whole arrays (or crops of them) by index in one
process. What they share lives here, once: resume from ``checkpoint_last.pt``, ``config.yaml`` +
``plan.json`` beside the checkpoints, per-epoch seeding from ``(seed, epoch)`` (so ``--resume``
replays exactly), the learning-rate schedule, gradient clipping, the non-finite-loss stop, the
wall-clock budget refitted every epoch, validation every ``val_every`` epochs and at the end,
atomic last/best checkpoints, ``train_log.csv``, a progress line, and Ctrl-C keeping the last
complete checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.training.checkpoint import (
    BEST_NAME,
    CONFIG_NAME,
    LOG_NAME,
    PLAN_NAME,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
)
from medseg.training.config import ExperimentConfig
from medseg.training.loop import (
    TrainResult,
    _fit_budget,
    _fmt_time,
    _write_log,
    build_optimizer,
    epoch_seed,
    lr_at,
)

#: ``make_epoch(epoch_seed, rng)`` returns the epoch's ``batch_loss(indices) -> scalar loss``.
EpochFactory = Callable[[int, np.random.Generator], Callable[[np.ndarray], torch.Tensor]]


def fit_epochs(
    cfg: ExperimentConfig,
    model: torch.nn.Module,
    device: torch.device,
    out: Path,
    last_path: Path,
    resume: bool,
    plan: Mapping[str, Any],
    n_train: int,
    make_epoch: EpochFactory,
    validate: Callable[[], dict[str, float]] | None,
    metric: str,
    higher_is_better: bool,
    initial_best: float,
    state_extra: Mapping[str, Any],
    describe_val: Callable[[dict[str, float]], str],
    say: Callable[[str], None],
) -> TrainResult:
    """Train ``model`` for ``cfg.train.epochs`` epochs (or what fits ``train.max_minutes``).

    Args:
        cfg: The resolved configuration (saved as ``config.yaml``).
        model: The network, on ``device``, seeded and initialised by the caller.
        device: Where it trains.
        out: The model folder (from :func:`medseg.training.loop.check_output_folder`).
        last_path: ``out / checkpoint_last.pt``.
        resume: Continue from ``last_path`` (model, optimiser, epoch, history, budget).
        plan: The whole ``plan.json``.
        n_train: Number of training items; each epoch draws ``steps_per_epoch`` batches of
            ``batch_size`` indices from repeated permutations of ``range(n_train)``.
        make_epoch: Builds the epoch's batch-loss function from the epoch seed and its
            ``numpy`` generator (augmenters, crops ... seeded from them).
        validate: Validation metrics, or ``None`` when there is no validation split.
        metric: The key of ``validate``'s result that selects the best checkpoint.
        higher_is_better: Direction of ``metric``.
        initial_best: ``best`` before any validation (reported when nothing was validated).
        state_extra: Extra checkpoint entries (``num_classes``, ``in_channels``,
            ``spatial_dims``).
        describe_val: Validation metrics -> text for the progress line.
        say: Progress output.

    Returns:
        The run's :class:`~medseg.training.loop.TrainResult` (``best_dice`` holds ``metric``).
    """
    optimizer = build_optimizer(cfg, model)
    start_epoch, best, history, spent = 0, initial_best, [], 0.0
    planned = cfg.train.epochs
    if resume:
        ck = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, best = int(ck["epoch"]) + 1, float(ck["best_metric"])
        history, planned = list(ck["history"]), int(ck["planned_epochs"])
        spent = float(ck.get("train_seconds", 0.0))
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / CONFIG_NAME)
    atomic_write_json(dict(plan), out / PLAN_NAME)

    bs, steps = cfg.train.batch_size, cfg.train.steps_per_epoch
    t_start = time.perf_counter()
    epoch, interrupted = start_epoch, False
    model.train()
    try:
        while epoch < planned:
            t0 = time.perf_counter()
            es = epoch_seed(cfg.train.seed, epoch, 0)
            torch.manual_seed(es)
            rng = np.random.default_rng(es)
            batch_loss = make_epoch(es, rng)
            order = np.concatenate([rng.permutation(n_train) for _ in range(
                math.ceil(steps * bs / max(n_train, 1)) + 1)])
            losses = []
            lr = cfg.optim.lr
            for step in range(steps):
                idx = np.sort(order[step * bs:(step + 1) * bs])
                lr = lr_at(cfg, (epoch * steps + step) / max(1, planned * steps), epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                loss = batch_loss(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise FloatingPointError(f"loss became {lv} at epoch {epoch} step {step}; "
                                             "lower optim.lr")
                losses.append(lv)
            t_train = time.perf_counter() - t0
            if cfg.train.max_minutes > 0:
                planned = _fit_budget(cfg, epoch, planned, spent + t_train, say)
            last = epoch + 1 == planned
            val: dict[str, float] = {}
            if validate is not None and (last or (cfg.train.val_every > 0
                                                  and (epoch + 1) % cfg.train.val_every == 0)):
                val = validate()
            spent += time.perf_counter() - t0
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                            "lr": lr, "epoch_seconds": time.perf_counter() - t0, **val})
            value = val.get(metric, math.nan)
            is_best = bool(val) and math.isfinite(value) and (
                value > best if higher_is_better else value < best)
            if is_best:
                best = value
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "planned_epochs": planned, "best_metric": best,
                     "train_seconds": spent, "history": history, **state_extra}
            atomic_torch_save(state, last_path)
            if is_best or validate is None:
                atomic_torch_save(state, out / BEST_NAME)
            _write_log(out / LOG_NAME, history)
            per_epoch = (time.perf_counter() - t_start) / (epoch + 1 - start_epoch)
            eta = per_epoch * (planned - epoch - 1)
            say(f"  epoch {epoch + 1}/{planned}  loss {np.mean(losses):.4f}"
                f"{describe_val(val) if val else ''}  "
                f"{history[-1]['epoch_seconds']:.1f}s  left ~{_fmt_time(eta)}")
            epoch += 1
    except KeyboardInterrupt:
        interrupted = True
        say(f"\ninterrupted during epoch {epoch + 1}; the last complete checkpoint is kept at "
            f"{last_path} (epoch {epoch}). Continue with --resume.")
    return TrainResult(out, epoch, best, history, interrupted)
