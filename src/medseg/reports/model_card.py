"""The model card: what a trained model folder says about itself, for a person (E5).

:func:`model_card` reads a model folder (the object :meth:`medseg.model_folder.ModelFolder.open`
returns: anything with ``path`` and a checked ``plan``) and the files ``medseg train`` leaves
beside it: ``config.yaml``, ``train_log.csv`` (final and best epoch), ``oof_metrics.json`` (the
K-fold out-of-fold estimate with its 95% bootstrap interval) and ``calibration.json`` (ECE
before / after temperature scaling). Intended use and known limits are a fixed, honest text per
task plus what the folder records (few cases, no calibration, no out-of-fold estimate...).
Nothing is invented: a file that is absent is said to be absent.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

#: The largest ``config.yaml`` shown in full (longer ones are cut, saying so).
MAX_CONFIG_CHARS = 20_000

INTENDED_USE = {
    "segmentation": (
        "Research use: delineating the listed structures on images like the training data "
        "(same modality, acquisition, field of view and label protocol). Outputs are label maps "
        "to be reviewed by a qualified reader; this is not a medical device and it has not been "
        "validated for clinical decisions."),
    "classification": (
        "Research use: scoring images like the training data for the listed classes. The "
        "probabilities rank cases and need a threshold chosen on the intended population; this "
        "is not a medical device and it has not been validated for clinical decisions."),
    "instance": (
        "Research use: separating and counting object instances (e.g. nuclei) on images like "
        "the training data. Counts and masks need review; not a medical device."),
    "restoration": (
        "Research use: reducing noise of the recorded physics (noise law and level as in the "
        "plan) on images like the training data. A denoised image can hide or invent small "
        "structures: never read it instead of the original; not a medical device."),
}
KNOWN_LIMITS = {
    "segmentation": [
        "Validated only on the cases of the validation results below; performance on other "
        "scanners, protocols, populations or pathologies is unknown.",
        "Dice hides boundary errors on large structures and is unstable on small ones: read HD95 "
        "and NSD too, and the empty-case policy of each evaluation.",
        "Uncertainty maps flag some errors, not all; a confident wrong prediction is possible.",
    ],
    "classification": [
        "Validated only on the cases of the validation results below; prevalence and image "
        "quality elsewhere change the predictive values.",
        "Calibration holds on data like the calibration set only; recalibrate on a shift.",
    ],
    "instance": [
        "Touching objects can merge or split; validated only on the cases of the validation "
        "results below.",
    ],
    "restoration": [
        "Trained for one noise law and level; other noise, doses or scanners are out of scope.",
    ],
}


class FolderLike(Protocol):
    """What the card needs of a model folder (:class:`medseg.model_folder.ModelFolder`)."""

    path: Path
    plan: Any


@dataclass
class CardSection:
    """One section of a model card.

    Attributes:
        heading: Section title.
        rows: ``(field, value)`` pairs shown as a two-column table.
        text: Paragraphs (one per entry).
        pre: Preformatted text (the configuration), or ``""``.
        table: A small table ``(header, rows)`` (e.g. out-of-fold results), or ``None``.
    """

    heading: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    pre: str = ""
    table: tuple[list[str], list[list[str]]] | None = None


@dataclass
class ModelCard:
    """A model card: a title and its sections, rendered by :mod:`medseg.reports.report`."""

    title: str
    sections: list[CardSection] = field(default_factory=list)

    def section(self, heading: str) -> CardSection:
        """The section called ``heading`` (``KeyError`` when absent)."""
        for s in self.sections:
            if s.heading == heading:
                return s
        raise KeyError(heading)


def fmt(v: Any) -> str:
    """A number with four significant digits (``n/a`` for NaN / ``None``), anything else as
    text."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def train_log_summary(path: Path, key_metric: str | None, higher_is_better: bool = True
                      ) -> list[tuple[str, str]]:
    """Rows for the final epoch and the best epoch (by ``key_metric``) of ``train_log.csv``.

    Args:
        path: ``train_log.csv``.
        key_metric: The column that selects the best checkpoint (the task's key metric); when
            ``None`` or absent only the final epoch is shown.
        higher_is_better: Direction of ``key_metric``.

    Returns:
        ``[(field, value)]``; ``[("train_log.csv", "absent")]`` without the file.
    """
    if not path.is_file():
        return [("train_log.csv", "absent (the model was not trained by this medseg)")]
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [("train_log.csv", "no epoch recorded")]
    skip = {"epoch", "lr", "data_wait_fraction", "epoch_seconds", "processes"}
    out = [("epochs", str(len(rows)))]
    last = rows[-1]
    out.append((f"final epoch ({last.get('epoch', len(rows))})",
                ", ".join(f"{k} {fmt(_float(v))}" for k, v in last.items()
                          if k not in skip and k is not None)))
    if key_metric and key_metric in last:
        vals = [_float(r.get(key_metric)) for r in rows]
        good = [(v, i) for i, v in enumerate(vals) if not math.isnan(v)]
        if good:
            v, i = max(good) if higher_is_better else min(good)
            out.append((f"best {key_metric}", f"{fmt(v)} at epoch {rows[i].get('epoch', i + 1)}"
                        " (checkpoint_best.pt)"))
    return out


def oof_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``oof_metrics.json`` as a table: segmentation ``per_class`` means with ``ci95``,
    classification ``macro`` values with ``ci.macro`` intervals."""
    header = ["metric", "mean", "95% CI", "n"]
    rows: list[list[str]] = []
    for name, s in (doc.get("per_class") or {}).items():
        if isinstance(s, dict) and "mean" in s:
            ci = s.get("ci95") or [None, None]
            rows.append([str(name), fmt(s.get("mean")), f"[{fmt(ci[0])}, {fmt(ci[1])}]",
                         fmt(s.get("n", ""))])
    macro = doc.get("macro") if isinstance(doc.get("macro"), dict) else {}
    ci_macro = (doc.get("ci") or {}).get("macro") or {}
    for name, v in macro.items():
        if isinstance(v, (int, float)) or v is None:
            ci = ci_macro.get(name) or [None, None]
            rows.append([f"macro {name}", fmt(v), f"[{fmt(ci[0])}, {fmt(ci[1])}]",
                         fmt(doc.get("n_cases", ""))])
    return header, rows


def calibration_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Temperature and ECE before -> after (equal width and equal mass) of ``calibration.json``."""
    rows = [("temperature", fmt(doc.get("temperature"))),
            ("fitted on", str(doc.get("fitted_on", "n/a")))]
    before, after = doc.get("ece_before") or {}, doc.get("ece_after") or {}
    for b, name in (("width", "ECE (equal-width bins)"), ("mass", "ECE (equal-mass bins)")):
        if b in before or b in after:
            rows.append((name, f"{fmt(before.get(b))} before -> {fmt(after.get(b))} after "
                               "temperature scaling"))
    if "nll_before" in doc:
        rows.append(("NLL", f"{fmt(doc.get('nll_before'))} -> {fmt(doc.get('nll_after'))}"))
    return rows


def model_card(folder: FolderLike, key_metric: str | None = None,
               higher_is_better: bool = True) -> ModelCard:
    """The card of a model folder.

    Args:
        folder: An opened model folder (``ModelFolder.open(path)``: its plan is checked).
        key_metric: The ``train_log.csv`` column selecting the best checkpoint.
        higher_is_better: Direction of ``key_metric``.

    Returns:
        Sections ``Model``, ``Training data``, ``Intended use``, ``Known limits``,
        ``Validation results``, ``Configuration``.
    """
    path, p = Path(folder.path), folder.plan
    task = p.task
    members = list(getattr(p, "members", []) or [])
    model_rows = [("folder", str(path)), ("task", task),
                  ("network", f"{p.model_name} {json.dumps(p.model_options, sort_keys=True)}"
                   if p.model_options else p.model_name),
                  ("input", f"{p.spatial_dims}D, {p.in_channels} channel(s)"),
                  ("outputs", f"{p.num_classes}" + (f" ({', '.join(p.class_names)})"
                                                    if p.class_names else ""))]
    if getattr(p, "variance_head", False):
        model_rows.append(("variance head", "logit log-variance (aleatoric uncertainty, U1)"))
    if members:
        model_rows.append(("ensemble", f"{len(members)} members: {', '.join(members)}"))
    cfg_path = path / "config.yaml"
    cfg_text = ""
    dataset = "not recorded (no config.yaml)"
    if cfg_path.is_file():
        cfg_text = cfg_path.read_text(encoding="utf-8", errors="replace")
        try:
            cfg = yaml.safe_load(cfg_text)
        except yaml.YAMLError:
            cfg = None
        data = cfg.get("data") if isinstance(cfg, dict) else None
        recorded = data.get("dataset") if isinstance(data, dict) else None
        dataset = str(recorded) if recorded else "not recorded in config.yaml"
    n_train, n_val = len(p.train_ids), len(p.val_ids)
    modalities = p.get("modalities") or p.get("channel_names")
    data_rows = [("dataset", dataset),
                 ("cases", f"{n_train + n_val} ({n_train} training, {n_val} validation)"),
                 ("classes", ", ".join(p.class_names) if p.class_names else "n/a")]
    if modalities:
        data_rows.append(("channels / modality", ", ".join(str(m) for m in modalities)))
    if p.get("patch_size"):
        data_rows.append(("patch size", " x ".join(str(s) for s in p.get("patch_size"))))
    limits = list(KNOWN_LIMITS.get(
        task, ["Validated only on the cases of the validation results below."]))
    if n_train + n_val < 50:
        limits.append(f"Trained on {n_train + n_val} case(s) only: expect a wide spread of "
                      "performance on new data.")
    if n_val == 0:
        limits.append("No validation split is recorded: the validation results below are not "
                      "an independent estimate.")
    val_rows = train_log_summary(path / "train_log.csv", key_metric, higher_is_better)
    val = CardSection("Validation results", rows=val_rows)
    oof = _read_json(path / "oof_metrics.json")
    if oof is not None:
        val.rows.append(("out-of-fold estimate",
                         f"{oof.get('folds', '?')} folds, {oof.get('n_cases', '?')} cases; "
                         f"{oof.get('interval', '95% bootstrap intervals')}"))
        val.table = oof_table(oof)
    else:
        val.rows.append(("out-of-fold estimate", "absent (no oof_metrics.json: train with "
                                                  "--folds K for one)"))
    cal = _read_json(path / "calibration.json")
    if cal is not None and "temperature" in cal:
        val.rows += calibration_rows(cal)
        oof_fit = cal.get("source") == "out-of-fold" or (  # files before 2026-12-06: the text
            "source" not in cal and str(cal.get("fitted_on", "")).startswith("the out-of-fold"))
        if oof is not None and oof_fit:
            limits.append(
                "The temperature was fitted on single fold models' out-of-fold predictions; "
                "the fold ensemble that predicts averages the folds and is less confident than "
                "each of them (under-confident at this temperature; nested cross-validation "
                "in examples/medmnist/README.md). For calibrated ensemble probabilities run "
                "medseg calibrate on labelled images that no fold trained on.")
    elif task in ("segmentation", "classification", "instance"):
        val.rows.append(("calibration", "absent (no calibration.json)"))
        limits.append("Not calibrated: probabilities may be over- or under-confident (run "
                      "medseg calibrate).")
    cfg_shown = cfg_text[:MAX_CONFIG_CHARS] + (
        f"\n... ({len(cfg_text) - MAX_CONFIG_CHARS} more characters in config.yaml)"
        if len(cfg_text) > MAX_CONFIG_CHARS else "")
    return ModelCard(
        title=f"Model card: {path.name or path}",
        sections=[
            CardSection("Model", rows=model_rows),
            CardSection("Training data", rows=data_rows),
            CardSection("Intended use", text=[INTENDED_USE.get(
                task, "Research use on data like the training data; not a medical device.")]),
            CardSection("Known limits", text=limits),
            val,
            CardSection("Configuration", pre=cfg_shown or "absent (no config.yaml)"),
        ])
