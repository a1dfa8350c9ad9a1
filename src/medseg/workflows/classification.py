"""Classification prediction and evaluation with a trained model folder (T1, T2, E5).

``predict_classification`` writes ``predictions.csv`` (``id, p_<class>..., prediction``);
``evaluate_classification_files`` joins it with a label table by id and writes ``metrics.json``,
``metrics.csv`` (per case), ``roc.png`` and ``report.html`` (accuracy, balanced accuracy, AUROC,
sensitivity, specificity, F1 per class, confusion matrix, bootstrap 95% intervals).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medseg.data.classification import ClsDataset, load_images, open_classification
from medseg.errors import InputError
from medseg.io import list_image_files, read_image
from medseg.io.atomic import atomic_write_text
from medseg.metrics.classification import (
    classification_case_rows,
    evaluate_classification,
    roc_curve,
    write_classification_metrics,
)
from medseg.reports import save_reliability_diagram, save_roc_curve, write_report
from medseg.training.checkpoint import (
    PLAN_NAME,
    load_trained_network,
)
from medseg.training.classify import predict_classifier, preprocess_cls_images


def load_classifier(folder: str | Path, checkpoint: str = "best", device: str = "auto"
                    ) -> tuple[torch.nn.Module, dict, torch.device]:
    """The network, ``plan.json`` and device of a classification model folder."""
    folder = Path(folder)
    plan = json.loads((folder / PLAN_NAME).read_text())
    if plan.get("task") != "classification":
        raise InputError("not a classification model folder", folder,
                         "use it with segmentation inputs, or train a classifier")
    model, dev = load_trained_network(folder, plan, checkpoint, device)
    return model, plan, dev


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


def predict_classification(model_dir: str | Path, input_path: str | Path,
                           output_dir: str | Path, split: str | None = None,
                           checkpoint: str = "best", device: str = "auto",
                           log: Callable[[str], None] = print) -> Path:
    """Write ``predictions.csv`` for every case of ``input_path``; returns its path."""
    model, plan, dev = load_classifier(model_dir, checkpoint, device)
    ids, imgs, _ = _inputs(Path(input_path), split)
    x = preprocess_cls_images(list(imgs), plan["image_size"], ids)
    if x.shape[1] != plan["in_channels"]:
        raise InputError(f"images have {x.shape[1]} channel(s), the model expects "
                         f"{plan['in_channels']}", input_path)
    probs = predict_classifier(model, x, plan["label_task"], dev)
    names = plan["class_names"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *[f"p_{n}" for n in names], "prediction"])
    for i, cid in enumerate(ids):
        if plan["label_task"] == "single":
            pred = names[int(probs[i].argmax())]
        else:
            pred = ";".join(n for n, p in zip(names, probs[i], strict=True) if p >= 0.5)
        w.writerow([cid, *[f"{p:.6f}" for p in probs[i]], pred])
    out = Path(output_dir) / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    log(f"{len(ids)} prediction(s) written to {out}")
    return out


def read_predictions(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(ids, class names, (N, K) probabilities)`` from a ``predictions.csv``."""
    p = Path(path)
    if p.is_dir():
        p = p / "predictions.csv"
    if not p.is_file():
        raise InputError("predictions.csv not found", p, "run medseg predict first")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError("no predictions in the file", p)
    names = [k[2:] for k in rows[0] if k.startswith("p_")]
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows], dtype=np.float64)
    return [r["id"] for r in rows], names, probs


def evaluate_classification_files(pred: str | Path, ref: str | Path, output: str | Path,
                                  split: str | None = None, n_boot: int = 1000, seed: int = 0,
                                  log: Callable[[str], None] = print) -> dict:
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
