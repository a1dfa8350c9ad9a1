"""Assembling the :class:`~medseg.reports.report.Report` of an evaluation (E5).

:func:`segmentation_report` and :func:`classification_report` turn what ``medseg evaluate``
computed (per-case results, the summary, the figures already written) into the report; the
caller (the task's evaluate) finds the files and, when the prediction folder has an uncertainty
table, the ranking of :func:`medseg.uncertainty.ranking.rank_cases`. Nothing is recomputed here but
the bootstrap intervals of the segmentation means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

from medseg.io import read_image, read_label
from medseg.reports.model_card import ModelCard
from medseg.reports.report import (
    SEGMENTATION_KEYS,
    Report,
    Table,
    extra_sections,
    policy_note,
    segmentation_case_table,
    segmentation_metric_table,
)
from medseg.reports.slices import CaseImages, case_images
from medseg.uncertainty.maps import SCALAR_TERMS

#: Cases with embedded pictures at most (the first ones of the table's default order: the
#: worst or most uncertain); about 2-3 MB per 3D case of 256^2 x 25 voxels.
MAX_CASES_WITH_IMAGES = 12
#: Summary keys of a classification result shown in dedicated tables.
CLASSIFICATION_KEYS = frozenset({"task", "class_names", "n_cases", "per_class", "macro", "ci",
                                 "calibration"})

ImageSource = Path | Sequence[Path]


def uncertainty_map_file(pred_dir: Path, case: str) -> Path | None:
    """The case's uncertainty map written by ``medseg predict --uncertainty``
    (``<case>_predictive_entropy.nii.gz`` first, else the first scalar term found)."""
    for term in SCALAR_TERMS:
        f = pred_dir / f"{case}_{term}.nii.gz"
        if f.is_file():
            return f
    return None


def read_case_images(
    case: str,
    image: ImageSource,
    prediction: Path,
    reference: Path | None,
    uncertainty: Path | None = None,
    max_slices: int = 32,
    max_slices_other: int = 12,
) -> CaseImages:
    """Read one case's files and render its panels (:func:`medseg.reports.slices.case_images`).

    Args:
        case: Case id.
        image: Its image file (or one file per channel; the first channel is shown).
        prediction: Predicted label map.
        reference: Reference label map, or ``None``.
        uncertainty: Uncertainty map (float NIfTI), or ``None``.
        max_slices: Axial slices embedded at most.
        max_slices_other: Coronal / sagittal slices embedded at most.
    """
    img, meta = read_image(image if isinstance(image, Path) else list(image))
    pred, _ = read_label(prediction)
    ref = None if reference is None else read_label(reference)[0]
    first = img[0].reshape(pred.shape) if img[0].size == pred.size else img[0]
    unc = None
    name = "uncertainty"
    if uncertainty is not None:
        u, _ = read_image(uncertainty)
        if u[0].size == pred.size:
            unc = u[0].reshape(pred.shape).astype(np.float64)
            name = uncertainty.name.removeprefix(f"{case}_").split(".")[0]
    ornt = None
    if pred.ndim == 3 and np.asarray(meta.affine).shape == (4, 4):
        ornt = io_orientation(np.asarray(meta.affine, dtype=float))
        ornt = None if np.isnan(ornt).any() else ornt  # a degenerate affine: file axes
    return case_images(case, first, pred, ref, unc, name, spacing=meta.spacing,
                       max_slices=max_slices, max_slices_other=max_slices_other,
                       orientation=ornt)


def segmentation_report(
    out: Path,
    results: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    cases: Mapping[str, tuple[Path, Path, ImageSource | None]],
    pred: Path,
    ref: Path,
    images: Path | None = None,
    model: Path | None = None,
    card: ModelCard | None = None,
    ranking: Sequence[Mapping[str, Any]] | None = None,
    figures: Sequence[tuple[str, Path]] = (),
    max_cases: int = MAX_CASES_WITH_IMAGES,
) -> Report:
    """The report of a segmentation evaluation.

    Args:
        out: The evaluation's output folder (``overlays/<case>.png`` there feed the Markdown).
        results: Per-case results of :func:`medseg.metrics.evaluate_case`.
        summary: The summary of ``metrics.json`` (every key not shown in a dedicated table
            becomes a section).
        cases: Case id -> ``(prediction file, reference file, image source or None)``.
        pred: Prediction folder (its uncertainty maps are shown when present).
        ref: Reference folder.
        images: Image folder, or ``None`` (no pictures).
        model: Model folder, or ``None``.
        card: The model's card, or ``None``.
        ranking: Most-uncertain-first ranking (``rank_cases``), or ``None``.
        figures: ``(caption, PNG)`` to embed (the voxel reliability diagram).
        max_cases: Cases with pictures at most, in the table's order.
    """
    metrics = list(summary.get("metrics") or ["dice", "iou", "hd95", "assd", "nsd"])
    names = {str(k): str(v) for k, v in (summary.get("class_names") or {}).items()}
    table = segmentation_case_table(results, metrics, names, ranking)
    info = [("predictions", str(pred)), ("references", str(ref)),
            ("images", str(images) if images is not None else "not given (no pictures)"),
            ("model", str(model) if model is not None else "not given"),
            ("cases", str(len(results)))]
    rep = Report("medseg evaluation", info=info,
                 notes=[policy_note(summary.get("policy"))],
                 metrics=segmentation_metric_table(results, metrics, names,
                                                   intervals=summary.get("ci95")),
                 cases=table, figures=list(figures),
                 sections=extra_sections(summary, SEGMENTATION_KEYS), model_card=card,
                 key_names=names)
    pred_dir = pred if pred.is_dir() else pred.parent
    for row in table.rows:
        if len(rep.images) >= max_cases:
            break
        case = row[0]
        if case not in cases or cases[case][2] is None:
            continue
        p, r, src = cases[case]
        try:
            ci = read_case_images(case, src, p, r, uncertainty_map_file(pred_dir, case))
        except ValueError as e:  # e.g. an image on another grid than its label maps
            rep.notes.append(f"no picture of {case}: {e}")
            continue
        png = out / "overlays" / f"{case}.png"
        ci.file = png if png.is_file() else None
        rep.images.append(ci)
    return rep


def _ci(ci: Mapping[str, Any], key: str) -> tuple[float, float]:
    iv = ci.get(key) or [None, None]
    return (math.nan if iv[0] is None else float(iv[0]),
            math.nan if iv[1] is None else float(iv[1]))


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def classification_report(
    result: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    pred: Path,
    ref: Path,
    model: Path | None = None,
    card: ModelCard | None = None,
    ranking: Sequence[Mapping[str, Any]] | None = None,
    figures: Sequence[tuple[str, Path]] = (),
) -> Report:
    """The report of a classification evaluation.

    Args:
        result: :func:`medseg.metrics.classification.evaluate_classification` output.
        rows: :func:`medseg.metrics.classification.classification_case_rows` output.
        pred: ``predictions.csv``.
        ref: Label table.
        model: Model folder, or ``None``.
        card: Its model card (calibration before / after temperature scaling is there).
        ranking: Most uncertain first (``rank_cases`` on the uncertainty columns), or ``None``.
        figures: ``(caption, PNG)``: ROC curves, reliability diagram.
    """
    ci = result.get("ci") or {}
    header = ["scope", "metric", "value", "ci_low", "ci_high"]
    mrows: list[list[Any]] = []
    for k, v in (result.get("macro") or {}).items():
        mrows.append(["macro", k, _num(v), *_ci(ci.get("macro") or {}, k)])
    for name, stats in (result.get("per_class") or {}).items():
        for k, v in stats.items():
            if k.startswith("n_"):
                continue
            mrows.append([name, k, _num(v), *_ci((ci.get("per_class") or {}).get(name) or {},
                                                 k)])
    cal = result.get("calibration") or {}
    for k in ("ece", "mce", "brier"):
        if k in cal:
            mrows.append(["calibration", k, _num(cal.get(k)), math.nan, math.nan])
    floor = cal.get("ece_if_calibrated") or {}
    if floor:  # the ECE's own noise at this sample size (consistency resampling)
        lo, hi = floor.get("interval95") or (math.nan, math.nan)
        mrows.append(["calibration", "ece of a calibrated model", _num(floor.get("mean")),
                      _num(lo), _num(hi)])
    level = ci.get("level", 0.95)
    metrics = Table(header, mrows, caption=(
        f"{100 * float(level):g}% percentile bootstrap intervals over "
        f"{ci.get('resampled', 'cases')} "
        f"({ci.get('n_boot', 'n/a')} resamples, seed {ci.get('seed', 'n/a')}"
        + (", stratified by class" if ci.get("stratified") else "") + ")"
        if ci else "no bootstrap intervals (--bootstrap 0)"))
    task = result.get("task")
    names = [str(n) for n in result.get("class_names") or []]
    cols = list(rows[0]) if rows else ["id"]
    score_name = "p(true label)" if task == "single" else "mean |p - label|"
    table_rows = []
    for r in rows:
        if task == "single":
            score = _num(r.get(f"p_{r.get('label')}"))
        else:
            errs = [abs(_num(r.get(f"p_{n}")) - int(r.get(n, -1))) for n in names
                    if int(r.get(n, -1)) >= 0]
            score = sum(errs) / len(errs) if errs else math.nan
        table_rows.append([r.get(c) for c in cols] + [score])
    case_header = cols + [score_name]
    if ranking:
        column = str(ranking[0].get("column", "uncertainty"))
        score_of = {str(x["case"]): _num(x.get("score")) for x in ranking}
        case_header.insert(1, column)
        for t in table_rows:
            t.insert(1, score_of.get(str(t[0]), math.nan))
        order = {str(x["case"]): i for i, x in enumerate(ranking)}
        table_rows.sort(key=lambda t: order.get(str(t[0]), len(order)))
        caption = f"most uncertain first ({column}); click a header to sort"
    else:
        sign = 1.0 if task == "single" else -1.0
        table_rows.sort(key=lambda t: (math.isnan(t[-1]), sign * t[-1]
                                       if not math.isnan(t[-1]) else 0.0))
        worst = ("lowest probability of the true label" if task == "single"
                 else "largest mean |p - label| over observed labels")
        caption = f"worst first ({worst}); click a header to sort"
    info = [("predictions", str(pred)), ("labels", str(ref)),
            ("model", str(model) if model is not None else "not given"),
            ("cases", str(result.get("n_cases", len(rows)))), ("task", f"{task}-label")]
    notes = []
    if "ece" in cal:
        notes.append("calibration of these predictions: ECE "
                     f"{_num(cal.get('ece')):.4f} (equal-width bins); the model's ECE before / "
                     "after temperature scaling is in the model card" if card is not None else
                     "calibration of these predictions: ECE "
                     f"{_num(cal.get('ece')):.4f} (equal-width bins); pass --model for the "
                     "ECE before / after temperature scaling")
    if floor and "p_value" in floor:
        notes.append("a perfectly calibrated model with these confidences would show ECE "
                     f"{_num(floor.get('mean')):.4f} on this many cases (95% of draws "
                     f"{_num(lo):.4f}-{_num(hi):.4f}; p = {_num(floor['p_value']):.3f} for the "
                     "observed ECE): below that, the ECE cannot tell calibrated from not")
    if card is not None:  # the model's own calibration, next to this evaluation's ECE
        model_cal = [f"model calibration: {k} {v}" for k, v in card.section(
            "Validation results").rows if k.startswith(("ECE", "temperature"))]
        notes += model_cal
    sections = [(k, v) for k, v in result.items() if k not in CLASSIFICATION_KEYS]
    return Report("medseg classification evaluation", info=info, notes=notes, metrics=metrics,
                  cases=Table(case_header, table_rows, caption), figures=list(figures),
                  sections=sections, model_card=card)


#: Per-image instance metrics shown in the report, in this order.
INSTANCE_METRICS = ("f1@0.5", "ap@0.5", "map", "pq@0.5", "sq@0.5", "precision@0.5",
                    "recall@0.5")


def instance_report(
    cases: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    pred: Path,
    ref: Path,
    n_boot: int = 1000,
    seed: int = 0,
) -> Report:
    """The report of an instance evaluation: per-image means with bootstrap 95% intervals over
    images, the pooled counts, and the per-image table, worst F1@0.5 first.

    Args:
        cases: Outputs of :func:`medseg.metrics.instance.evaluate_instances`.
        summary: Their :func:`~medseg.metrics.instance.summarize_instances`.
        pred: Prediction folder (shown).
        ref: Reference folder (shown).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    from medseg.metrics.aggregate import bootstrap_ci

    vals = np.array([[_num(c.get(m)) for m in INSTANCE_METRICS] for c in cases], dtype=float)

    def stat(v: np.ndarray) -> np.ndarray:
        return np.nanmean(v, axis=0)

    lo, hi = bootstrap_ci(stat, vals, n_boot=n_boot, seed=seed)
    mean = stat(vals)
    metrics = Table(["metric", "mean", "ci_low", "ci_high", "n"],
                    [[m, float(mean[j]), float(np.asarray(lo)[j]), float(np.asarray(hi)[j]),
                      int(np.isfinite(vals[:, j]).sum())]
                     for j, m in enumerate(INSTANCE_METRICS)],
                    f"mean over images with a 95% percentile bootstrap interval ({n_boot} "
                    f"resamples of the {len(cases)} image(s), seed {seed})")
    order = sorted(cases, key=lambda c: (_num(c.get("f1@0.5")), str(c.get("case"))))
    rows = [[c.get("case"), c.get("n_ref"), c.get("n_pred"),
             *[_num(c.get(m)) for m in INSTANCE_METRICS]] for c in order]
    table = Table(["case", "reference instances", "predicted instances", *INSTANCE_METRICS],
                  rows, "worst F1@0.5 first; click a header to sort")
    return Report(
        title="medseg instance evaluation",
        info=[("predictions", str(pred)), ("references", str(ref)),
              ("images", str(len(cases)))],
        notes=[f"empty-image policy: {summary.get('policy', '')}"],
        metrics=metrics, cases=table,
        sections=[("pooled over all instances at IoU 0.5", dict(summary.get("pooled@0.5", {})))])
