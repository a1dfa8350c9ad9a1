"""Image-level classification (T1 single-label, T2 multi-label): the task module.

Data: a CSV label table (``image,label`` or one 0/1/-1 column per label; -1 = missing, T5) with
images or NIfTI volumes, or a MedMNIST ``.npz`` (its own train/val splits). Images are resized
(``data.image_size``) and z-scored per image. Losses: single-label -> cross-entropy on logits (L1,
optionally class-weighted by ``loss.class_weighting``, L4); multi-label -> BCE on logits (L2)
where a missing label is unobserved: it contributes neither to the loss nor to the metrics.

``medseg predict`` writes ``predictions.csv`` (``id, p_<class>..., prediction``);
``medseg evaluate`` joins it with a label table by id and writes ``metrics.json``,
``metrics.csv``, ``roc.png``, ``reliability.png`` and ``report.html`` (accuracy, balanced
accuracy, AUROC, sensitivity, specificity, F1, confusion matrix, ECE, bootstrap 95% intervals).
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
from medseg.io import list_image_files, read_image
from medseg.io.atomic import atomic_write_text
from medseg.losses import masked_bce_with_logits, masked_cross_entropy
from medseg.metrics.classification import (
    classification_case_rows,
    evaluate_classification,
    roc_curve,
    write_classification_metrics,
)
from medseg.model_folder import ModelFolder, Plan
from medseg.reports import save_reliability_diagram, save_roc_curve, write_report
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
from medseg.training.calibration import CalibrationSet, temper
from medseg.training.config import ExperimentConfig
from medseg.transforms.augment import Augmenter
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


@torch.inference_mode()
def classifier_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device,
                      batch_size: int = 64) -> torch.Tensor:
    """``(N, K)`` float32 logits of ``x`` ``(N, C, *spatial)`` on CPU (eval mode)."""
    was = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device))
            if isinstance(logits, tuple):  # a variance head's (logits, log_var)
                logits = logits[0]
            out.append(logits.float().cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros((0, 0))


def predict_classifier(model: torch.nn.Module, x: np.ndarray, task: str, device: torch.device,
                       batch_size: int = 64, temperature: float = 1.0
                       ) -> ClassProbs | MultiLabel:
    """Probabilities of ``x`` ``(N, C, *spatial)``: :class:`ClassProbs` (softmax, single-label)
    or :class:`MultiLabel` (a sigmoid per label), ``(N, K)`` on CPU; logits divided by
    ``temperature`` (U5)."""
    logits = classifier_logits(model, x, device, batch_size) / temperature
    return ClassProbs.from_logits(logits) if task == "single" else MultiLabel.from_logits(logits)


def probabilities(p: ClassProbs | MultiLabel) -> np.ndarray:
    """``(N, K)`` float numpy probabilities of either output type."""
    return (p.probs if isinstance(p, ClassProbs) else p.scores).numpy()


class ClassificationTrainer(TaskTrainer):
    """Whole images by index, augmented per batch; CE or masked BCE."""

    def __init__(self, cfg: ExperimentConfig, data: ClsArrays, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.n_val = len(data.val_x)
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
        aug = Augmenter(cfg.augment, data.spatial_dims, seed=seed) if cfg.augment.enabled \
            else None
        for idx in index_batches(len(data.train_x), cfg.train.batch_size,
                                 cfg.train.steps_per_epoch, rng):
            x = torch.from_numpy(data.train_x[idx])
            if aug is not None:
                x, _ = aug(x)
            yield x, torch.from_numpy(data.train_y[idx])

    def loss(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        x, y = batch
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
                                                 self.device))
        res = evaluate_classification(probs, self.data.val_y, self.data.task,
                                      self.data.class_names, n_boot=0)
        return {"val_auroc": float(res["macro"]["auroc"]),
                "val_accuracy": float(res["macro"].get("accuracy", float("nan")))}

    def out_of_fold(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        logits = classifier_logits(model, self.data.val_x, self.device)
        return [{"id": i, "label": np.asarray(y).tolist(), "logits": z.tolist()}
                for i, y, z in zip(self.data.val_ids, self.data.val_y, logits, strict=True)]

    def calibration_set(self, model: torch.nn.Module) -> CalibrationSet:
        """The validation images' logits and labels (missing labels left out)."""
        d = self.data
        kind = "softmax" if d.task == "single" else "sigmoid"
        z, y = observed_elements(classifier_logits(model, d.val_x, self.device),
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
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``T`` probability samples of every image: ``(T, N, K)`` (and logit variances or None).

    See :func:`medseg.uncertainty.samplers.sample_probs` for the methods.
    """
    from medseg.uncertainty.samplers import sample_probs

    act = "softmax" if task == "single" else "sigmoid"
    probs, variances = [], []
    for k, i in enumerate(range(0, len(x), batch_size)):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
        try:
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
    import json

    path = folder / "decision.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not all(isinstance(v, int | float) for v in
                                                doc["thresholds"].values()):
            raise ValueError("thresholds")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise InputError(f"decision.json is invalid ({type(e).__name__})", path,
                         "delete it (predictions then use 0.5 / the most probable class)"
                         ) from None
    return doc


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
    maps = None
    if method:
        samples, var = sample_classifier(models, x, task, dev, method, request.samples,
                                         request.seed)
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
        parts = [predict_classifier(m, x, task, dev, temperature=tk)
                 for m, tk in zip(models, temps, strict=True)]
        mean = torch.stack([torch.from_numpy(probabilities(p)) for p in parts]).mean(0)
        out_probs = ClassProbs(mean) if task == "single" else MultiLabel(mean)
    probs = probabilities(out_probs)
    names = plan.class_names
    hard = out_probs.hard().numpy()
    decision = read_decision(folder.path)
    if decision:  # the operating point chosen on out-of-fold predictions
        th = decision["thresholds"]
        if task == "single":
            hard = (probs[:, 1] >= th[names[1]]).astype(np.int64)
        else:
            hard = (probs >= np.array([th[n] for n in names])[None]).astype(np.int64)
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
    log(f"{len(ids)} prediction(s) written to {out}")
    return out


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


def evaluate_classification_files(pred: str | Path, ref: str | Path, output: str | Path,
                                  split: str | None = None, n_boot: int = 1000, seed: int = 0,
                                  log: Log = print) -> dict:
    """Score ``predictions.csv`` against a label table (CSV / npz), by id."""
    ids, names, probs = read_predictions(pred)
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
    res = evaluate_classification(probs, labels, ds.task, names, n_boot=n_boot, seed=seed)
    rows = classification_case_rows(ids, probs, labels, ds.task, names)
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
    summary = {"all": {k: {"mean": v, "n": res["n_cases"]} for k, v in res["macro"].items()
                       if v is not None}}
    for k in ("ece", "brier"):
        if cal[k] is not None:
            summary["all"][k] = {"mean": cal[k], "n": res["n_cases"]}
    files.append(write_report(out, "medseg classification evaluation", summary,
                              [f for f in files if str(f).endswith(".png")],
                              notes=[f"predictions: {pred}", f"labels: {ref}",
                                     "95% bootstrap intervals in metrics.json"]))
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
        parts.append(f"ECE={cal['ece']:.4f} Brier={cal['brier']:.4f}")
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
                                 "samples", "seed"})
    uses = SPLIT_SETTINGS | CLASS_WEIGHTING_SETTINGS | TABLE_SETTINGS | {
        "data.modality", "data.image_size",
                                                        "augment", "train.threshold"}

    def prepare(self, cfg: ExperimentConfig, log: Log) -> tuple[ClsArrays, dict]:
        if not cfg.data.dataset:
            raise ConfigError("no dataset given", hint="pass --dataset TABLE or set data.dataset")
        return prepare_classification(cfg, log)

    def build_model(self, cfg: ExperimentConfig, data: Any) -> torch.nn.Module:
        arrays, _ = data
        if arrays.task == "multi" and cfg.loss.class_weighting != "none":
            raise ConfigError("loss.class_weighting applies to single-label classification",
                              hint="remove it for a multi-label table")
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
                                             log=log)

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

    def recognises(self, pred: Path) -> bool:
        return pred.suffix.lower() == ".csv" or (pred / "predictions.csv").is_file()
