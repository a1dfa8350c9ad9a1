"""Instance segmentation (T4 / A8): the task module the engine drives.

Training reuses the segmentation task unchanged on 3-class targets (background / interior /
boundary, :mod:`medseg.instance.targets`) written into ``<model>/instance_targets/`` from a
DSB2018 folder or an ``images/`` + ``masks/`` folder of instance label maps; ``plan.json``
records the post-processing parameters (``instance`` block).

* :func:`predict_instances` — a model trained with ``task: instance`` predicts background /
  interior / boundary probabilities with sliding windows; the seeded watershed of
  :mod:`medseg.instance.postprocess` turns them into instances. Per case it writes
  ``<case>_instances.<ext>`` (an instance label map with the input's format and geometry: 16-bit
  PNG / TIFF for 2D raster images, NIfTI for NIfTI / DICOM, NRRD for NRRD), plus
  ``<case>_instances.csv`` and ``<case>_instances.json`` listing each instance's id, class,
  score, area in voxels and, when the input has a physical voxel size (NIfTI, NRRD, DICOM),
  its area in mm^2 (2D) or volume in mm^3 (3D).
* :func:`evaluate_instance_folders` — scores ``*_instances.*`` predictions against a DSB2018
  folder or a folder of instance label maps: per case and mean F1@0.5, AP@0.5, mAP 0.5:0.95,
  PQ (:mod:`medseg.metrics.instance`), written atomically as ``metrics.json`` and
  ``metrics.csv``.

Colour inputs to a single-channel instance model are converted to grey (mean of the colour
channels), as the DSB2018 loader does in training.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.instance import (
    InstanceCase,
    is_dsb_layout,
    load_dsb2018,
    read_instance_map,
    to_grey,
)
from medseg.errors import InputError
from medseg.instance import PostprocessParams, probs_to_instances
from medseg.instance.tuning import (
    choose_postprocess,
    load_postprocess,
    write_postprocess,
)
from medseg.io import list_image_files, read_image, read_label, write_image
from medseg.io.atomic import atomic_write_text
from medseg.metrics.instance import (
    INSTANCE_SUMMARY_KEYS,
    evaluate_instances,
    summarize_instances,
    write_instance_metrics,
)
from medseg.model_folder import ModelFolder, Plan
from medseg.tasks import register_task
from medseg.tasks.base import (
    TABLE_SETTINGS,
    EvaluateRequest,
    Log,
    PredictRequest,
    output_label,
    plan_entry,
)
from medseg.tasks.segmentation import (
    PreparedData,
    SegmentationModel,
    SegmentationTask,
    case_seed,
    collect_inputs,
    output_suffix,
    write_uncertainty_maps,
)
from medseg.training.config import ExperimentConfig
from medseg.uncertainty.maps import uncertainty_maps

INSTANCE_SUFFIX = "_instances"
_RASTER = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
INSTANCE_TABLE_COLUMNS = ("id", "class", "score", "area_voxels", "area_mm2", "volume_mm3",
                          "uncertainty")


def _instance_inputs(path: Path, in_channels: int) -> list[tuple[str, Any]]:
    if is_dsb_layout(path) or is_dsb_layout(path / "train"):
        return [(c.case_id, c.image) for c in load_dsb2018(path).cases]
    if (path / "images").is_dir():
        path = path / "images"
    return collect_inputs(path, in_channels)


def instance_table(labels: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                   spacing: tuple[float, ...] | None,
                   uncertainty: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per instance ``1..N`` of ``labels`` (areas in voxels and, with spacing, mm).

    With an ``uncertainty`` map (e.g. the mutual information, ``labels``' shape) each row gets
    its mean inside the instance (``uncertainty``), beside the confidence ``score``.
    """
    n = int(classes.size)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1]
    unc = None
    if uncertainty is not None:
        sums = np.bincount(labels.ravel(), weights=uncertainty.ravel().astype(np.float64),
                           minlength=n + 1)[1:n + 1]
        unc = sums / np.maximum(areas, 1)
    vox = float(np.prod(spacing)) if spacing is not None else math.nan
    rows = []
    for i in range(n):
        mm = float(areas[i]) * vox if spacing is not None else None
        rows.append({"id": i + 1, "class": int(classes[i]), "score": round(float(scores[i]), 6),
                     "area_voxels": int(areas[i]),
                     "area_mm2": mm if labels.ndim == 2 else None,
                     "volume_mm3": mm if labels.ndim == 3 else None})
        if unc is not None:
            rows[-1]["uncertainty"] = round(float(unc[i]), 6)
    return rows


def _table_csv(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in INSTANCE_TABLE_COLUMNS
            if c != "uncertainty" or any("uncertainty" in r for r in rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})
    return buf.getvalue()


def predict_instances(model: SegmentationModel, input_path: str | Path, output_dir: str | Path,
                      fmt: str = "auto", tta: bool | None = None, overlap: float | None = None,
                      params: PostprocessParams | None = None,
                      log: Log = print, request: PredictRequest | None = None) -> list[Path]:
    """Predict the instances of every case under ``input_path``.

    Args:
        model: A model folder trained with ``task: instance``.
        input_path: An image file, a folder of images, an ``images/`` + ``masks/`` folder or a
            DSB2018 folder.
        output_dir: Where ``<case>_instances.*`` files go.
        fmt: Output format (``auto``: the input's; ``png`` / ``nii.gz`` / ``nrrd``).
        tta: Flip test-time augmentation (default: the model's setting).
        overlap: Sliding-window overlap (default: the model's setting).
        params: Post-processing (default: the parameters chosen on out-of-fold predictions,
            ``postprocess.json`` in the model folder, else the ``instance.postprocess`` block
            of ``plan.json``).

    Returns:
        The written instance label maps, in case order.

    Raises:
        InputError: the model is not an instance model, or a bad input (named).
    """
    if model.info.task != "instance" or model.num_classes != 3:
        raise InputError("not an instance segmentation model (plan.json task is "
                         f"{model.info.task!r})", model.folder,
                         "train one with medseg train --task instance")
    record = None if params else load_postprocess(model.folder)
    prm = params or (record[0] if record else
                     PostprocessParams(**model.info["instance"]["postprocess"]))
    chosen_tta = record[1] if record else None
    if chosen_tta is not None and chosen_tta != bool(
            model.info["inference"]["tta"] if tta is None else tta):
        how = "with" if chosen_tta else "without"
        log(f"note: the post-processing in postprocess.json was chosen on out-of-fold "
            f"predictions {how} test-time flips, these are not (predict {how} --tta to "
            f"match)")
    out = Path(output_dir)
    cin = int(model.info.in_channels)
    cases = _instance_inputs(Path(input_path), cin)
    written = []
    for i, (name, src) in enumerate(cases):
        image, meta = read_image(src if not isinstance(src, list) else list(src))
        if cin == 1 and image.shape[0] > 1:
            image = to_grey(image)
        maps = None
        if request is not None and request.uncertainty:
            samples, var = model.predict_samples(image, meta, request.uncertainty,
                                                 request.samples,
                                                 case_seed(request.seed, name), overlap)
            maps = uncertainty_maps(samples, var)
            inst = probs_to_instances(maps["mean"], prm)
        else:
            probs = model.predict(image, meta, tta=tta, overlap=overlap)
            inst = probs_to_instances(probs.probs, prm)
        labels = inst.to_label_map().numpy()
        suffix = output_suffix(src, fmt)
        if suffix in _RASTER and labels.ndim == 3 and fmt == "png":
            suffix = ".nii.gz"
        dest = out / f"{name}{INSTANCE_SUFFIX}{suffix}"
        if suffix in (".png", ".tif", ".tiff"):
            if labels.max(initial=0) > 65535:
                raise InputError(f"{int(labels.max())} instances do not fit a 16-bit image",
                                 dest, "write NIfTI instead: --format nii.gz")
            write_image(dest, labels.astype(np.uint16), meta, dtype=np.uint16)
        else:
            write_image(dest, labels.astype(np.int32), meta, dtype=np.int32)
        physical = not dest.name.lower().endswith(_RASTER)
        spacing = tuple(meta.spacing[: labels.ndim]) if physical else None
        rows = instance_table(labels, inst.classes.numpy(), inst.scores.numpy(), spacing,
                              None if maps is None else maps["mutual_information"].numpy())
        if maps is not None:
            write_uncertainty_maps(out, name, maps, meta, request.per_class)
        base = out / f"{name}{INSTANCE_SUFFIX}"
        atomic_write_text(base.with_name(base.name + ".csv"), _table_csv(rows))
        doc = {"format": "medseg-instances/1", "case": name, "label_map": dest.name,
               "n_instances": len(rows), "spacing_mm": list(spacing) if spacing else None,
               "postprocess": prm.to_dict(), "instances": rows}
        atomic_write_text(base.with_name(base.name + ".json"), json.dumps(doc, indent=2))
        written.append(dest)
        log(f"  [{i + 1}/{len(cases)}] {name}: {len(rows)} instance(s) -> {dest}")
    return written


def tune_postprocess_on_folds(folder: str | Path, grid: dict[str, Any] | None = None,
                              device: str = "auto", log: Log = print,
                              tta: bool | None = None) -> dict[str, Any]:
    """Choose the watershed parameters on the out-of-fold predictions of a K-fold model.

    Every fold's best model predicts the probabilities of its own validation cases (images
    it never trained on; with repeated folds the repeats' probabilities are averaged, as
    prediction averages the members); :func:`medseg.instance.tuning.choose_postprocess` picks
    the grid point with the highest mean F1@0.5 over all of them, and ``postprocess.json`` in the
    model folder records it, so that :func:`predict_instances` uses it.

    Args:
        folder: A model folder written by ``medseg train --task instance --folds K``.
        grid: Values per parameter (default :data:`medseg.instance.tuning.DEFAULT_GRID`).
        device: Where the folds predict.
        log: Progress lines.
        tta: Flip test-time augmentation of the out-of-fold predictions (default: the
            model's ``inference.tta``, which ``medseg predict`` uses without ``--tta``); the
            report records it, and prediction with the other setting says so.

    Returns:
        The report written to ``postprocess.json``.

    Raises:
        InputError: not a K-fold instance model folder, or its dataset cannot be read.
    """
    from medseg.data.instance import open_instance_dataset

    mf = ModelFolder.open(folder)
    if mf.task != "instance" or mf.plan.get("ensemble", {}).get("kind") != "folds":
        raise InputError("not a K-fold instance model folder", mf.path,
                         "train one with medseg train --task instance --folds K")
    # case id -> [sum of the probabilities of the models that never saw it, their count, ref]
    seen: dict[str, list[Any]] = {}
    used_tta = False
    for member in mf.members:
        cfg = member.config()
        ds = open_instance_dataset(cfg.data.dataset, cfg.data.masks, cfg.data.mask_suffix)
        model = SegmentationModel.load(member, "best", device)
        cin = int(model.info.in_channels)
        used_tta = bool(model.info["inference"]["tta"] if tta is None else tta)
        for cid in member.plan.val_ids:
            case = ds.case(cid)
            image, meta = read_image(case.image)
            if cin == 1 and image.shape[0] > 1:
                image = to_grey(image)
            probs = model.predict(image, meta, tta=used_tta).probs.numpy()
            if cid in seen:  # another repeat of the fold (train.ensemble with --folds)
                seen[cid][0] = seen[cid][0] + probs
                seen[cid][1] += 1
            else:
                seen[cid] = [probs, 1, read_instance_map(case, tuple(image.shape[1:]),
                                                         cfg.instance.mask_threshold)]
        log(f"  {member.path.name}: {len(member.plan.val_ids)} out-of-fold case(s)")
    cases = [(total / n, ref) for total, n, ref in seen.values()]
    base = PostprocessParams(**mf.plan["instance"]["postprocess"])
    best, report = choose_postprocess(cases, grid, base)
    report = {**report, "tta": used_tta}
    write_postprocess(mf.path, report)
    log(f"post-processing chosen on {len(cases)} out-of-fold case(s): mean F1@0.5 "
        f"{report['configured']['f1']:.4f} (configured) -> {report['f1']:.4f} with "
        + ", ".join(f"{k} {v}" for k, v in best.to_dict().items()))
    return report


def is_instance_prediction_folder(path: str | Path) -> bool:
    """True when ``path`` is (or holds) ``*_instances.*`` label maps."""
    p = Path(path)
    files = [p] if p.is_file() else (
        [e for e in list_image_files(p) if isinstance(e, Path)] if p.is_dir() else [])
    return any(output_label(f).endswith(INSTANCE_SUFFIX) for f in files)


def _reference_maps(ref: Path, ref_suffix: str) -> dict[str, InstanceCase]:
    if is_dsb_layout(ref) or is_dsb_layout(ref / "train"):
        return {c.case_id: c for c in load_dsb2018(ref).cases}
    folder = ref / "masks" if (ref / "masks").is_dir() else (
        ref / "labels" if (ref / "labels").is_dir() else ref)
    if ref.is_file():
        files = [ref]
    else:
        files = [e for e in list_image_files(folder) if isinstance(e, Path) and e.is_file()]
    out = {}
    for f in files:
        n = output_label(f)
        if ref_suffix and n.endswith(ref_suffix):
            n = n[: -len(ref_suffix)]
        out[n] = InstanceCase(n, f, [], f)
    if not out:
        raise InputError("no instance label maps in the reference folder", folder,
                         "give a DSB2018 folder or a folder of instance label maps")
    return out


def evaluate_instance_folders(pred: str | Path, ref: str | Path, output: str | Path,
                              ref_suffix: str = "", mask_threshold: float | None = None,
                              log: Log = print) -> dict[str, Any]:
    """Score ``*_instances.*`` predictions against reference instances.

    Args:
        pred: Folder (or one file) of ``<case>_instances.<ext>`` label maps; scores are read
            from the ``<case>_instances.json`` beside them when present (adds COCO AP).
        ref: A DSB2018 folder, or a folder (or ``masks/`` / ``labels/`` parent) of instance
            label maps named ``<case>{ref_suffix}.<ext>``.
        output: Folder for ``metrics.json`` and ``metrics.csv``.
        ref_suffix: Suffix of reference names.
        mask_threshold: DSB2018 references: binarisation of soft masks (see
            :func:`medseg.data.instance.read_dsb_masks`).

    Returns:
        ``{"cases": [...], "summary": {...}, "files": [json, csv, report.html]}`` (and
        ``report.md`` beside them).

    Raises:
        InputError: a prediction without reference, or shapes that differ (named).
    """
    pred, ref = Path(pred), Path(ref)
    if not pred.exists():
        raise InputError("prediction folder not found", pred, "check the --pred path")
    if not ref.exists():
        raise InputError("reference not found", ref, "check the --ref path")
    files = [pred] if pred.is_file() else [
        e for e in list_image_files(pred) if isinstance(e, Path) and e.is_file()]
    files = [f for f in files if output_label(f).endswith(INSTANCE_SUFFIX)]
    if not files:
        raise InputError("no *_instances.* label maps in the prediction folder", pred,
                         "give the --output folder of medseg predict with an instance model")
    refs = _reference_maps(ref, ref_suffix)
    cases = []
    for f in files:
        name = output_label(f)[: -len(INSTANCE_SUFFIX)]
        if name not in refs:
            raise InputError(f"prediction has no reference case {name!r} in {ref}", f,
                             "evaluate against the folder holding this case (or pass "
                             "--ref-suffix)")
        pmap, _ = read_label(f)
        rmap = read_instance_map(refs[name], None, mask_threshold)
        if rmap.shape != pmap.shape:
            raise InputError(f"prediction shape {pmap.shape} differs from the reference "
                             f"{rmap.shape} ({refs[name].reference})", f,
                             "predict on the same images as the references")
        scores = None
        side = f.with_name(output_label(f) + ".json")
        if side.is_file():
            try:
                doc = json.loads(side.read_text())
                by_id = {int(r["id"]): float(r["score"]) for r in doc.get("instances", [])}
                ids = np.unique(pmap)
                ids = ids[ids > 0]
                if all(int(i) in by_id for i in ids):
                    scores = [by_id[int(i)] for i in ids]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                scores = None
        cases.append(evaluate_instances(rmap, pmap, (0.5, 0.75), scores, case_id=name))
    summary = summarize_instances(cases)
    jp, cp = write_instance_metrics(output, cases, summary)
    log(format_instance_summary(summary))
    from medseg.reports import write_report
    from medseg.reports.evaluation import instance_report

    html = write_report(output, instance_report(cases, summary, pred, ref))
    return {"cases": cases, "summary": summary, "files": [jp, cp, html]}


def format_instance_summary(summary: dict[str, Any]) -> str:
    """A short terminal table of the mean scores."""
    lines = [f"instance metrics over {summary['n_cases']} case(s) (mean per image)"]
    for k in (*INSTANCE_SUMMARY_KEYS, "coco_ap@0.5", "coco_map"):
        if k in summary["mean"]:
            lines.append(f"  {k:14s} {summary['mean'][k]:.4f}")
    p = summary["pooled@0.5"]
    lines.append(f"  pooled@0.5     TP {p['tp']} FP {p['fp']} FN {p['fn']}  F1 {p['f1']:.4f}  "
                 f"AP {p['ap']:.4f}")
    return "\n".join(lines)


@register_task
class InstanceTask(SegmentationTask):
    """Instance segmentation (T4): the segmentation task on interior / boundary targets, with a
    seeded watershed at prediction and matched F1 / AP / PQ at evaluation."""

    name = "instance"
    description = "instance segmentation (nuclei, cells): interior/boundary targets + watershed"
    # instance datasets are folders of images and masks, not path tables
    uses = (SegmentationTask.uses - TABLE_SETTINGS) | {"instance"}
    predict_options = frozenset({"checkpoint", "device", "format", "tta", "overlap",
                                 "uncertainty", "samples", "seed", "per_class", "precision"})

    def open_dataset(self, cfg: ExperimentConfig) -> Any:
        from medseg.data.instance import build_semantic_dataset, open_instance_dataset

        if not cfg.data.dataset:
            raise InputError("no dataset given", hint="pass --dataset DIR or set data.dataset")
        inst = open_instance_dataset(cfg.data.dataset, cfg.data.masks, cfg.data.mask_suffix)
        return build_semantic_dataset(inst, Path(cfg.output_dir) / "instance_targets",
                                      cfg.instance.boundary_width, cfg.instance.mask_threshold)

    def prepare(self, cfg: ExperimentConfig, log: Log) -> PreparedData:
        # The interior/boundary targets are written anew into the output folder by every run,
        # so an on-disk preprocessed cache (keyed by the inputs' paths and times) would never
        # be hit again and would only fill the disk: instance data stay in memory.
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache=False))
        return super().prepare(cfg, log)

    def after_folds(self, folder: Path, cfg: ExperimentConfig, log: Log) -> None:
        """Choose the watershed parameters on the folds' out-of-fold predictions
        (:func:`tune_postprocess_on_folds`; ``postprocess.json``, used by predict)."""
        tune_postprocess_on_folds(folder, device=cfg.train.device, log=log)

    def plan_entries(self, cfg: ExperimentConfig, data: PreparedData) -> dict[str, Any]:
        return {**super().plan_entries(cfg, data),
                "instance": {"boundary_width": cfg.instance.boundary_width,
                             "mask_threshold": cfg.instance.mask_threshold,
                             "postprocess": cfg.instance.postprocess_dict()}}

    def check_plan(self, plan: Plan, source: Path) -> None:
        super().check_plan(plan, source)
        block = plan_entry(plan, "instance", dict, source)
        try:
            PostprocessParams(**block.get("postprocess", {}))
        except (TypeError, ValueError) as e:
            raise InputError(f"plan.json entry 'instance.postprocess' is invalid ({e})", source,
                             "give the plan.json that medseg train wrote") from None
        if plan.num_classes != 3:
            raise InputError(f"an instance model has 3 outputs, plan.json says "
                             f"{plan.num_classes}", source,
                             "give the plan.json that medseg train wrote")

    def predict(self, folder: ModelFolder, request: PredictRequest, log: Log) -> list[Path]:
        model = SegmentationModel.load(folder, request.checkpoint, request.device)
        model.precision = request.precision
        files = predict_instances(model, request.input, request.output, fmt=request.format,
                                  tta=request.tta, overlap=request.overlap, log=log,
                                  request=request)
        log(f"{len(files)} instance prediction(s) written to {request.output}")
        return files

    def evaluate(self, request: EvaluateRequest, log: Log) -> dict[str, Any]:
        return evaluate_instance_folders(request.pred, request.ref, request.output,
                                         ref_suffix=request.ref_suffix,
                                         mask_threshold=request.mask_threshold, log=log)

    def calibration_set_from(self, folder: ModelFolder, data: Path, labels: Path | None,
                             split: str | None, device: str, log: Log) -> Any:
        raise InputError("instance models are calibrated on their validation split at the end "
                         "of training (their targets are derived from instance masks)",
                         folder.path, "retrain with train.calibrate=true")

    def recognises(self, pred: Path) -> bool:
        return is_instance_prediction_folder(pred)
