"""Evaluate folders of predicted label maps against references (E5).

Files are matched by case name (extension and an optional reference suffix removed). Each pair
must share its grid; the spacing comes from the reference file's geometry, so HD95 / ASSD are in
millimetres. Writes ``metrics.json`` (per case, per class, and the summary) and ``metrics.csv``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io import list_image_files, read_image, read_label
from medseg.io.files import file_suffix
from medseg.metrics import evaluate_case, format_summary_table, summarize, write_metrics
from medseg.reports import save_overlay, write_report


def _stem(p: Path) -> str:
    suf = file_suffix(p)
    return p.name[: -len(suf)] if suf and p.name.lower().endswith(suf) else p.stem


def _label_files(path: Path, what: str) -> list[Path]:
    if not path.exists():
        raise InputError(f"{what} not found", path, "check the path")
    if path.is_file():
        return [path]
    files = [e for e in list_image_files(path) if isinstance(e, Path) and e.is_file()]
    files = [f for f in files if not _stem(f).endswith("_probabilities")]
    if not files:
        raise InputError(f"no label files in the {what} folder", path,
                         "give NIfTI/NRRD/PNG/TIFF label maps")
    return files


def match_cases(pred: Path, ref: Path, ref_suffix: str = "") -> list[tuple[str, Path, Path]]:
    """Pair prediction and reference files by case name.

    Raises:
        InputError: a prediction has no reference (named), or nothing matches.
    """
    preds = _label_files(pred, "prediction")
    refs = _label_files(ref, "reference")
    if pred.is_file() and ref.is_file():
        return [(_stem(pred), pred, ref)]
    by_name = {}
    for r in refs:
        n = _stem(r)
        if ref_suffix and n.endswith(ref_suffix):
            n = n[: -len(ref_suffix)]
        by_name[n] = r
    pairs, missing = [], []
    for p in preds:
        n = _stem(p)
        if n in by_name:
            pairs.append((n, p, by_name[n]))
        else:
            missing.append(p)
    if missing:
        raise InputError(
            f"{len(missing)} prediction(s) have no reference (e.g. {missing[0].name})", missing[0],
            "put the matching reference in --ref, or pass --ref-suffix if references are named "
            "with a suffix")
    return pairs


def evaluate_folders(
    pred: str | Path,
    ref: str | Path,
    output: str | Path,
    labels: Sequence[int] | None = None,
    ignore_label: int | None = None,
    dataset_json: str | Path | None = None,
    ref_suffix: str = "",
    images: str | Path | None = None,
    log: Callable[[str], None] = print,
    max_overlays: int = 6,
) -> dict[str, Any]:
    """Score every matched case and write ``metrics.json`` / ``metrics.csv`` (and a report).

    Args:
        pred: Folder (or file) of predicted label maps.
        ref: Folder (or file) of reference label maps.
        output: Folder for the metric files (and ``report.html`` when ``images`` is given).
        labels: Foreground labels to score; default: from ``dataset_json``, else every non-zero
            value found in the references.
        ignore_label: Reference value marking unlabelled voxels (T5), excluded everywhere.
        dataset_json: A ``dataset.json`` giving label names and the ignore label.
        ref_suffix: Suffix of reference names (``case_Annotation.png`` -> ``case``).
        images: Folder of input images; when given, overlays and a report are written.
        log: Where the summary table goes.

    Returns:
        ``{"cases": [...], "summary": {...}, "files": [json, csv(, report)]}``.
    """
    pred, ref, out = Path(pred), Path(ref), Path(output)
    names: dict[int, str] = {}
    if dataset_json is not None:
        dj = Path(dataset_json)
        try:
            table = json.loads(dj.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read dataset.json ({e})", dj) from None
        lab = table.get("labels", {})
        if lab and all(isinstance(v, int) for v in lab.values()):
            names = {int(v): k for k, v in lab.items()}
        else:
            names = {int(k): v for k, v in lab.items()}
        if ignore_label is None:
            ignore_label = table.get("ignore_label", names and next(
                (v for v, k in names.items() if k == "ignore"), None))
        if labels is None:
            labels = sorted(v for v in names if v not in (0, ignore_label))
    pairs = match_cases(pred, ref, ref_suffix)
    refs = {}
    if labels is None:
        found: set[int] = set()
        for name, _, r in pairs:
            arr, meta = read_label(r)
            refs[name] = (arr, meta)
            found |= set(np.unique(arr).tolist())
        labels = sorted(v for v in found if v not in (0, ignore_label))
    results = []
    overlays = []
    for name, p, r in pairs:
        ref_arr, ref_meta = refs.pop(name, None) or read_label(r)
        pred_arr, pred_meta = read_label(p)
        if pred_arr.shape != ref_arr.shape:
            raise InputError(
                f"prediction shape {pred_arr.shape} differs from reference {ref_arr.shape} "
                f"({r})", p, "predict on the same images as the references")
        if ref_meta.ndim == pred_meta.ndim and not np.allclose(
                pred_meta.affine, ref_meta.affine, atol=1e-2):
            raise InputError(f"prediction geometry (affine) differs from the reference {r}", p,
                             "predictions must keep the input's geometry (medseg predict does)")
        mask = None if ignore_label is None else ref_arr != ignore_label
        res = evaluate_case(pred_arr, ref_arr, ref_meta.spacing, labels, mask=mask, case_id=name)
        results.append(res)
        if images is not None and len(overlays) < max_overlays:
            srcs = [e for e in list_image_files(Path(images))
                    if _stem(e if isinstance(e, Path) else e[0]) in (name, f"{name}_0000")]
            if srcs:
                img, _ = read_image(srcs[0])
                overlays.append(save_overlay(out / "overlays" / f"{name}.png", img[0], pred_arr,
                                             ref_arr, title=name))
    summary = summarize(results)
    if names:
        summary["class_names"] = {int(c): names.get(int(c), str(c)) for c in labels}
    json_path, csv_path = write_metrics(out, results, summary)
    log(format_summary_table(summary))
    files = [json_path, csv_path]
    if images is not None:
        files.append(write_report(out, "medseg evaluation", _report_summary(summary, names),
                                  overlays, notes=[f"predictions: {pred}", f"references: {ref}"]))
    return {"cases": results, "summary": summary, "files": files}


def _report_summary(summary: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """``{class name: {metric: stats}}`` for the report table."""
    out: dict[str, Any] = {}
    for cid, stats in summary.get("classes", {}).items():
        out[names.get(int(cid), f"class {cid}")] = stats
    out["all classes"] = summary.get("pooled", {})
    return out
