"""The training loop (E3): progress, atomic checkpoints, exact resume, Ctrl-C, DDP-ready.

Reproducibility and exact resume come from one rule: every random stream of an epoch (patch
sampling, augmentation, dropout) is seeded from ``(seed, epoch, rank)`` at the start of that
epoch. A run resumed from the checkpoint written at the end of epoch ``e`` therefore replays
epoch ``e + 1`` bit for bit, exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.inference import predict_probs
from medseg.io.atomic import atomic_write_text
from medseg.losses import (
    AdaptiveClassWeights,
    DeepSupervisionLoss,
    DiceCELoss,
    gradient_balance_weights,
)
from medseg.metrics import dice
from medseg.training.checkpoint import (
    BEST_NAME,
    CONFIG_NAME,
    LAST_NAME,
    LOG_NAME,
    PLAN_NAME,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
)
from medseg.training.config import ExperimentConfig
from medseg.training.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_int,
    cleanup,
    init_distributed,
)
from medseg.training.prepare import (
    PreparedData,
    auto_patch_size,
    build_model,
    make_epoch_loader,
    prepare_data,
)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves behind."""

    output_dir: Path
    epochs_done: int
    best_dice: float
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    is_main: bool = True


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available",
                         hint="use --set train.device=cpu")
    return torch.device(name)


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
    raise InputError(f"unknown optim.schedule {s!r}", hint="use poly, cosine or constant")


def build_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW as configured."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                               weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    raise InputError(f"unknown optim.name {o.name!r}", hint="use sgd or adamw")


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


def _fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:d}:{sec:02d}"


@torch.inference_mode()
def validate(model: torch.nn.Module, data: PreparedData, cfg: ExperimentConfig,
             device: torch.device) -> dict[str, float]:
    """Mean hard Dice per foreground class over the validation cases.

    Runs on preprocessed arrays (the network's own grid) with sliding windows; the observation
    mask (ignore label) excludes unlabelled voxels from both prediction and reference.
    """
    fg = list(range(1, data.num_classes))
    per_case: dict[int, list[float]] = {c: [] for c in fg}
    n = cfg.data.val_max_cases or len(data.val_images)
    for img, lab in zip(data.val_images[:n], data.val_labels[:n], strict=True):
        probs = predict_probs(
            model, torch.from_numpy(img)[None], roi_size=data.patch_size,
            overlap=cfg.inference.overlap, sw_batch_size=cfg.inference.sw_batch_size,
            device=device, output_device="cpu",
        )
        pred = probs.argmax(1)[0].numpy()
        observed = np.ones_like(lab, dtype=bool)
        if data.ignore_label is not None:
            observed = lab != data.ignore_label
        for c in fg:
            per_case[c].append(dice(pred == c, lab == c, mask=observed))
    out = {f"dice_{data.class_names[c]}": float(np.mean(per_case[c])) if per_case[c] else
           float("nan") for c in fg}
    vals = [v for v in out.values() if not math.isnan(v)]
    out["dice_mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def class_weighting(cfg: ExperimentConfig, data: PreparedData
                    ) -> tuple[AdaptiveClassWeights | None, torch.Tensor | None]:
    """CE class weights for imbalance (L4) as configured by ``loss.class_weighting``.

    Returns:
        ``(adaptive state or None, fixed (C,) weights or None)``. Class fractions ``alpha_c``
        come from the training set's label statistics over observed voxels.
    """
    mode = cfg.loss.class_weighting
    if mode == "none":
        return None, None
    fr = data.summary.get("class_fractions", {})
    alpha = torch.tensor([float(fr.get(c, fr.get(str(c), 0.0)))
                          for c in range(data.num_classes)], dtype=torch.float64)
    alpha = alpha / alpha.sum().clamp_min(1e-12)  # over observed voxels (ignore label out)
    if mode == "fixed":
        c = data.num_classes
        w = gradient_balance_weights(alpha, [cfg.loss.balance_p_own] * c,
                                     [cfg.loss.balance_p_rest] * c, w_min=cfg.loss.weight_min,
                                     w_max=cfg.loss.weight_max)
        return None, w.float()
    return AdaptiveClassWeights(data.num_classes, momentum=cfg.loss.adaptive_momentum,
                                w_min=cfg.loss.weight_min, w_max=cfg.loss.weight_max,
                                class_fractions=alpha), None


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
    if resume and not last_path.exists():
        raise InputError("nothing to resume: no checkpoint_last.pt", out,
                         "start without --resume")
    if resume:
        # the saved config is the truth for a resumed run (same data, model, schedule)
        cfg = ExperimentConfig.load(out / CONFIG_NAME)
        cfg.output_dir = str(out)
    return cfg, out, last_path


def train(cfg: ExperimentConfig, resume: bool = False,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a segmentation model as configured; see the module docstring for the guarantees.

    Args:
        cfg: The experiment configuration (saved as ``config.yaml`` in ``cfg.output_dir``).
        resume: Continue from ``checkpoint_last.pt`` in ``cfg.output_dir``.
        log: Where progress lines go (default: stdout on rank 0).

    Returns:
        A :class:`TrainResult`. A Ctrl-C ends the run cleanly with ``interrupted=True`` and the
        last complete checkpoint untouched.
    """
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
    cfg, out, last_path = check_output_folder(cfg, resume)

    torch.manual_seed(cfg.train.seed)
    say(f"medseg train: preparing data from {cfg.data.dataset}")
    data = prepare_data(cfg, log=say)
    model = build_model(cfg, data.in_channels, data.num_classes, data.spatial_dims).to(device)
    data.patch_size = choose_patch_size(cfg, data, model, device)
    say(f"  {len(data.train_images)} training / {len(data.val_images)} validation cases, "
        f"{data.spatial_dims}D, {data.in_channels} channel(s), classes {data.class_names}, "
        f"patch {list(data.patch_size)}")
    optimizer = build_optimizer(cfg, model)
    acw, class_weights = class_weighting(cfg, data)
    loss_fn = DiceCELoss(
        w_dice=cfg.loss.dice_weight, w_ce=cfg.loss.ce_weight, eps=cfg.loss.eps,
        batch_dice=cfg.loss.batch_dice, include_background=cfg.loss.include_background,
        class_weights=class_weights,
    ).to(device)
    ds_weights = cfg.loss.deep_supervision_weights
    if ds_weights is None:
        ds_weights = getattr(model, "deep_supervision_weights", None)
    ds_loss_fn = DeepSupervisionLoss(loss_fn, ds_weights)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, history, train_seconds = 0, -1.0, [], 0.0
    planned_epochs = cfg.train.epochs
    if resume:
        ck = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if use_amp and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        start_epoch = int(ck["epoch"]) + 1
        best = float(ck["best_dice"])
        history = list(ck["history"])
        planned_epochs = int(ck["planned_epochs"])
        train_seconds = float(ck.get("train_seconds", 0.0))
        if acw is not None and "class_weights_state" in ck:
            acw.load_state_dict(ck["class_weights_state"])
        say(f"  resumed from {last_path} at epoch {start_epoch}/{planned_epochs}")

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / CONFIG_NAME)
        atomic_write_json(data.plan_dict(cfg), out / PLAN_NAME)

    ddp_model: torch.nn.Module = model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    steps = cfg.train.steps_per_epoch
    t_start = time.perf_counter()
    epoch = start_epoch
    interrupted = False
    model.train()
    try:
        while epoch < planned_epochs:
            t0 = time.perf_counter()
            es = epoch_seed(cfg.train.seed, epoch, info.rank)
            torch.manual_seed(es)
            loader = make_epoch_loader(data, cfg, epoch, seed=es, rank=info.rank,
                                       world_size=info.world_size)
            losses = []
            wait = 0.0
            try:
                for step in range(steps):
                    tw = time.perf_counter()
                    img, lab = next(loader)
                    wait += time.perf_counter() - tw
                    img = img.to(device, non_blocking=True)
                    lab = lab.to(device, non_blocking=True)
                    lr = lr_at(cfg, (epoch * steps + step) / max(1, planned_epochs * steps), epoch)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    mask = None
                    target = lab[:, 0]
                    if data.ignore_label is not None:
                        mask = target != data.ignore_label
                    if acw is not None:
                        loss_fn.class_weights = acw.weights.to(device)
                    with torch.autocast(device.type, enabled=use_amp):
                        logits = ddp_model(img)
                    if isinstance(logits, list | tuple):  # deep supervision (L6)
                        loss = ds_loss_fn([o.float() for o in logits], target, mask)
                    else:
                        loss = loss_fn(logits.float(), target, mask)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.optim.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if acw is not None:
                        full = logits[0] if isinstance(logits, list | tuple) else logits
                        acw.update(torch.softmax(full.detach().float(), 1), target, mask)
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FloatingPointError(
                            f"loss became {lv} at epoch {epoch} step {step}; lower optim.lr "
                            "or check the data for extreme intensities")
                    losses.append(lv)
                    if info.is_main and sys.stderr.isatty():
                        print(f"\r  epoch {epoch + 1}/{planned_epochs} step {step + 1}/{steps} "
                              f"loss {np.mean(losses):.4f}", end="", file=sys.stderr, flush=True)
            finally:
                loader.close()
            if info.is_main and sys.stderr.isatty():
                print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
            train_loss = all_reduce_mean(float(np.mean(losses)), info, device)
            t_train = time.perf_counter() - t0
            if cfg.train.max_minutes > 0:
                # refit before deciding whether this is the last (validated) epoch; rank 0's
                # decision holds for every rank so that all stop together
                planned_epochs = broadcast_int(
                    _fit_budget(cfg, epoch, planned_epochs, train_seconds + t_train, say),
                    info, device)

            last = epoch + 1 == planned_epochs
            do_val = bool(data.val_images) and (
                last or (cfg.train.val_every > 0 and (epoch + 1) % cfg.train.val_every == 0))
            val = {}
            if do_val and info.is_main:
                val = validate(model, data, cfg, device)
            barrier(info)
            weights = {}
            if acw is not None:
                acw.end_epoch()
                weights = {f"weight_{data.class_names[c]}": float(w)
                           for c, w in enumerate(acw.weights)}
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, **weights,
                   "data_wait_fraction": wait / max(t_train, 1e-9),
                   "epoch_seconds": time.perf_counter() - t0, "processes": info.world_size,
                   **val}
            history.append(row)

            train_seconds += time.perf_counter() - t0

            vd = val.get("dice_mean", float("nan"))
            is_best = do_val and not math.isnan(vd) and vd > best
            if is_best:
                best = vd
            if info.is_main:
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch, "planned_epochs": planned_epochs, "best_dice": best,
                    "train_seconds": train_seconds,
                    "history": history, "num_classes": data.num_classes,
                    "in_channels": data.in_channels, "spatial_dims": data.spatial_dims,
                }
                if use_amp:
                    state["scaler"] = scaler.state_dict()
                if acw is not None:
                    state["class_weights_state"] = acw.state_dict()
                atomic_torch_save(state, last_path)
                if is_best or not data.val_images:
                    atomic_torch_save(state, out / BEST_NAME)
                _write_log(out / LOG_NAME, history)
            elapsed = time.perf_counter() - t_start
            done_here = epoch + 1 - start_epoch
            eta = elapsed / done_here * (planned_epochs - epoch - 1)
            vtxt = "" if not val else "  val Dice " + " ".join(
                f"{k[5:]}={v:.3f}" for k, v in val.items())
            if weights:
                vtxt += "  CE weights " + " ".join(f"{w:.1f}" for w in weights.values())
            say(f"  epoch {epoch + 1}/{planned_epochs}  loss {train_loss:.4f}{vtxt}  "
                f"data-wait {row['data_wait_fraction']:.0%}  "
                f"{row['epoch_seconds']:.1f}s  left ~{_fmt_time(eta)}")
            epoch += 1
    except KeyboardInterrupt:
        interrupted = True
        say(f"\ninterrupted during epoch {epoch + 1}; the last complete checkpoint is kept at "
            f"{last_path} (epoch {epoch}). Continue with --resume.")
    finally:
        cleanup(info)
    return TrainResult(out, epoch, best, history, interrupted, info.is_main)


def _fit_budget(cfg: ExperimentConfig, epoch: int, planned: int, spent: float,
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


def _write_log(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in history:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())
