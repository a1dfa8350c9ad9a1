"""Restoration prediction and evaluation with a trained model folder (P4).

``predict_restoration`` writes one denoised image per input (NIfTI by default, with the input's
geometry) and a ``restoration.json`` record (model, noise law, cases) that marks the folder for
``medseg evaluate``. ``evaluate_restoration`` scores the predictions against the clean truth
(PSNR with the dataset's stated ``data_range``, SSIM with a Gaussian window) and, when a held-out
noisy realisation is available (``targetsTs``), the modality's NLL of it given the prediction —
the proper scoring rule, which needs no clean truth. ``metrics.csv`` (per case) and
``metrics.json`` (per case + mean) are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medseg.errors import InputError
from medseg.io import list_image_files, read_image, write_image
from medseg.io.atomic import atomic_write_text
from medseg.losses.restoration import restoration_nll
from medseg.metrics.image_quality import psnr, ssim
from medseg.physics.restoration_data import NoiseParams, read_restoration_json
from medseg.training.checkpoint import (
    PLAN_NAME,
    load_trained_network,
)
from medseg.training.restore import check_domain, predict_clean

RECORD_NAME = "restoration.json"


def load_restoration_model(folder: str | Path, checkpoint: str = "best", device: str = "auto"
                           ) -> tuple[torch.nn.Module, dict, NoiseParams, torch.device]:
    """The network, ``plan.json``, noise record and device of a restoration model folder.

    Raises:
        InputError: not a restoration model folder, or an unreadable checkpoint.
    """
    folder = Path(folder)
    plan_path = folder / PLAN_NAME
    if not plan_path.is_file():
        raise InputError("no plan.json in the model folder", folder,
                         "give a folder written by medseg train")
    plan = json.loads(plan_path.read_text())
    if plan.get("task") != "restoration":
        raise InputError("not a restoration model folder", folder,
                         "train one with medseg train --task restoration")
    noise = NoiseParams.from_dict(plan.get("noise"), plan_path)
    model, dev = load_trained_network(folder, plan, checkpoint, device, in_channels=1,
                                      num_classes=1)
    return model, plan, noise, dev


def _case_id(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".png", ".tif", ".tiff"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[:-5] if name.endswith("_0000") else name


def predict_restoration(model_dir: str | Path, input_path: str | Path, output_dir: str | Path,
                        checkpoint: str = "best", device: str = "auto",
                        log: Callable[[str], None] = print) -> list[Path]:
    """Denoise every image of ``input_path`` (a file or a folder) into ``output_dir``.

    Each prediction is ``<case>.nii.gz`` (``_0000`` channel suffix dropped) with the input's
    geometry, float32, in the image's units. ``restoration.json`` lists the cases.

    Returns:
        The written image paths.

    Raises:
        InputError: no images, a multi-channel image, or values outside the noise law's support.
    """
    model, plan, noise, dev = load_restoration_model(model_dir, checkpoint, device)
    src = Path(input_path)
    entries = [src] if src.is_file() else list_image_files(src) if src.is_dir() else []
    if not entries:
        raise InputError("no images to denoise", src, "give an image file or a folder of images")
    out = Path(output_dir)
    written, cases = [], []
    for e in entries:
        arr, meta = read_image(e)
        first = Path(e[0] if isinstance(e, tuple) else e)
        if arr.shape[0] != 1:
            raise InputError(f"restoration models take single-channel images, got "
                             f"{arr.shape[0]} channels", first)
        check_domain(arr, noise, first)
        pred = predict_clean(model, arr[None].astype(np.float32), noise, dev)[0]
        cid = _case_id(first)
        dest = out / f"{cid}.nii.gz"
        write_image(dest, pred.astype(np.float32), meta, dtype="float32")
        written.append(dest)
        cases.append({"id": cid, "input": str(first), "prediction": dest.name})
    atomic_write_text(out / RECORD_NAME, json.dumps({
        "format": "medseg-restoration/1", "model": str(Path(model_dir)),
        "loss": plan.get("loss"), "noise": noise.to_dict(), "cases": cases}, indent=2))
    log(f"{len(written)} denoised image(s) written to {out}")
    return written


def _ref_folders(ref: Path) -> tuple[Path, Path | None, NoiseParams | None]:
    """``(clean folder, held-out noisy folder or None, noise from dataset.json or None)``."""
    if (ref / "dataset.json").is_file():
        _, noise = read_restoration_json(ref)
        noisy = ref / "targetsTs"
        return ref / "cleanTs", noisy if noisy.is_dir() else None, noise
    noisy = ref.parent / "targetsTs"
    return ref, noisy if noisy.is_dir() else None, None


def _finite(o: object) -> object:
    """Non-finite floats -> ``None`` (strict JSON; PSNR of identical images is infinite)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return None if isinstance(o, float) and not math.isfinite(o) else o


def evaluate_restoration(pred: str | Path, ref: str | Path, output: str | Path,
                         log: Callable[[str], None] = print) -> dict:
    """Score denoised images against the clean truth, and a held-out noisy realisation's NLL.

    Args:
        pred: Folder written by :func:`predict_restoration` (holds ``restoration.json``).
        ref: A restoration dataset folder (uses ``cleanTs`` and ``targetsTs``), or a folder of
            clean images (then ``../targetsTs`` is used for the NLL when it exists).
        output: Folder for ``metrics.json`` and ``metrics.csv``.

    Returns:
        ``{"result": {...per case and mean...}, "files": [json, csv]}``. PSNR uses the noise
        record's ``data_range`` (stated in the JSON); NLL is the mean per voxel (nats). A
        prediction equal to the truth has PSNR ``inf`` (``null`` in ``metrics.json``).

    Raises:
        InputError: missing record, reference or shape mismatch (naming the file).
    """
    pred_dir, ref = Path(pred), Path(ref)
    rec_path = pred_dir / RECORD_NAME
    if not rec_path.is_file():
        raise InputError(f"no {RECORD_NAME} in the prediction folder", pred_dir,
                         "run medseg predict with a restoration model first")
    rec = json.loads(rec_path.read_text())
    noise = NoiseParams.from_dict(rec.get("noise"), rec_path)
    clean_dir, noisy_dir, ds_noise = _ref_folders(ref)
    if ds_noise is not None and ds_noise.modality != noise.modality:
        raise InputError(f"the model is for {noise.modality}, the dataset is "
                         f"{ds_noise.modality}", ref)
    rows = []
    for c in rec["cases"]:
        cid = c["id"]
        p_arr, _ = read_image(pred_dir / c["prediction"])
        cf = clean_dir / f"{cid}.nii.gz"
        if not cf.is_file():
            raise InputError(f"no clean reference for case {cid}", cf,
                             "give the dataset folder or its cleanTs folder as --ref")
        c_arr, _ = read_image(cf)
        if c_arr.shape != p_arr.shape:
            raise InputError(f"reference shape {c_arr.shape} differs from the prediction's "
                             f"{p_arr.shape}", cf)
        pt, ct = torch.from_numpy(p_arr), torch.from_numpy(c_arr)
        row = {"id": cid, "psnr": psnr(pt, ct, noise.data_range),
               "ssim": ssim(pt[None], ct[None], noise.data_range)}
        nf = noisy_dir / f"{cid}.nii.gz" if noisy_dir is not None else None
        if nf is not None and nf.is_file():
            n_arr, _ = read_image(nf)
            if n_arr.shape != p_arr.shape:
                raise InputError(f"noisy reference shape {n_arr.shape} differs from the "
                                 f"prediction's {p_arr.shape}", nf)
            check_domain(n_arr, noise, nf)
            row["nll"] = float(restoration_nll(pt.double(), torch.from_numpy(n_arr).double(),
                                               noise))
        rows.append(row)
    keys = ["psnr", "ssim"] + (["nll"] if rows and all("nll" in r for r in rows) else [])
    mean = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in keys}
    result = {"task": "restoration", "modality": noise.modality, "loss": rec.get("loss"),
              "data_range": noise.data_range,
              "nll": "mean per voxel of -log p(held-out noisy realisation | prediction): "
                     + {"CT": "Poisson, counts", "MR": "Rician, magnitude",
                        "US": "Gamma, linear intensity"}[noise.modality],
              "ssim_settings": "Gaussian window sigma 1.5 (11 voxels), K1 0.01, K2 0.03",
              "n_cases": len(rows), "mean": mean, "per_case": rows}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", *keys], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in ["id", *keys]})
    csv_path = atomic_write_text(out / "metrics.csv", buf.getvalue())
    json_path = atomic_write_text(out / "metrics.json", json.dumps(_finite(result), indent=2))
    log("  ".join(f"{k}={v:.4f}" for k, v in mean.items()) + f"  ({len(rows)} cases)")
    return {"result": result, "files": [json_path, csv_path]}
