"""Training loop for restoration (denoising, P4): L2 or the modality's likelihood.

The same guarantees as the segmentation and classification loops (helpers reused from
:mod:`medseg.training.loop`): configuration saved beside every checkpoint, atomic checkpoints
loadable with ``weights_only=True``, per-epoch seeding from ``(seed, epoch)`` so ``--resume``
replays exactly, Ctrl-C keeps the last good checkpoint, a wall-clock budget refitted every epoch.

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

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.losses.restoration import from_network, restoration_loss, to_network
from medseg.physics.restoration_data import NoiseParams, read_restoration_json
from medseg.training.config import ExperimentConfig
from medseg.training.fit import fit_epochs
from medseg.training.loop import (
    TrainResult,
    check_output_folder,
    resolve_device,
)
from medseg.training.prepare import build_model, split_cases


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
    from medseg.io import read_image

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


def prepare_restoration(cfg: ExperimentConfig, log: Callable[[str], None] = print
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
    tr_ids, va_ids = split_cases(ids, cfg.data.val_fraction, cfg.data.split_seed,
                                 cfg.data.group_regex) if len(ids) > 1 else (ids, [])
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


def _val_loss(model: torch.nn.Module, data: RestorationArrays, kind: str,
              device: torch.device) -> float:
    pred = predict_clean(model, data.val_x, data.noise, device)
    return float(restoration_loss(torch.from_numpy(pred), torch.from_numpy(data.val_y),
                                  data.noise, kind))


def train_restoration(cfg: ExperimentConfig, data: RestorationArrays, resume: bool = False,
                      log: Callable[[str], None] | None = None,
                      plan: dict | None = None) -> TrainResult:
    """Train a registered single-output network (``unet`` by default) to denoise ``data``.

    Args:
        cfg: Configuration (``loss.restoration`` picks the loss; ``train.patch_size`` crops).
        data: Pairs in image units.
        resume: Continue from ``checkpoint_last.pt`` in ``cfg.output_dir``.
        log: Progress lines (default ``print``).
        plan: Extra entries for ``plan.json``.

    Returns:
        A :class:`~medseg.training.loop.TrainResult` whose ``best_dice`` holds the best (lowest)
        validation loss.

    Raises:
        InputError: a patch size that does not fit the images.
    """
    say = log or print
    device = resolve_device(cfg.train.device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    cfg, out, last_path = check_output_folder(cfg, resume)
    kind = cfg.loss.restoration
    if kind == "anscombe_l2" and data.noise.modality != "CT":
        raise InputError(f"loss.restoration=anscombe_l2 is for CT counts, the data is "
                         f"{data.noise.modality}", cfg.data.dataset, "use l2 or likelihood")
    patch = tuple(int(p) for p in cfg.train.patch_size) if cfg.train.patch_size else None
    if patch is not None and (len(patch) != data.spatial_dims or any(
            p > n for p, n in zip(patch, data.train_x.shape[2:], strict=True))):
        raise InputError(f"train.patch_size {list(patch)} does not fit images "
                         f"{list(data.train_x.shape[2:])}", cfg.data.dataset,
                         "give a smaller patch with one size per axis, or none (whole images)")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, 1, 1, data.spatial_dims).to(device)
    zero_output_layer(model)
    plan_json = {
        "format": "medseg-plan/1", "task": "restoration", "spatial_dims": data.spatial_dims,
        "in_channels": 1, "num_classes": 1, "modality": data.noise.modality,
        "noise": data.noise.to_dict(), "loss": kind,
        "model": {"name": cfg.model_name(), "options": dict(cfg.model.options)},
        **(plan or {}),
    }
    p_flip = cfg.augment.p_flip if cfg.augment.enabled else 0.0
    swap = data.target == "noisy"

    def make_epoch(es: int, rng: np.random.Generator) -> Callable[[np.ndarray], torch.Tensor]:
        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            xb, yb = sample_pairs(data.train_x[idx], data.train_y[idx], patch, rng, p_flip,
                                  cfg.augment.flip_axes, swap)
            x = torch.from_numpy(np.ascontiguousarray(xb)).to(device)
            y = torch.from_numpy(np.ascontiguousarray(yb)).to(device)
            pred = from_network(model(to_network(x, data.noise)).float(), x, data.noise)
            return restoration_loss(pred, y, data.noise, kind)

        return batch_loss

    return fit_epochs(
        cfg, model, device, out, last_path, resume, plan_json, len(data.train_x), make_epoch,
        validate=(lambda: {"val_loss": _val_loss(model, data, kind, device)})
        if len(data.val_x) else None,
        metric="val_loss", higher_is_better=False, initial_best=math.inf,
        state_extra={"num_classes": 1, "in_channels": 1, "spatial_dims": data.spatial_dims},
        describe_val=lambda val: f"  val loss {val['val_loss']:.4f}", say=say)
