"""Temperature scaling of a model folder (U5), written once for every task.

At the end of training the engine fits one temperature ``T`` on the validation split (the
checkpoint prediction uses by default, ``checkpoint_best.pt``), reports the expected calibration
error before and after (equal-width and equal-mass bins) and writes ``calibration.json`` into the
model folder; ``medseg calibrate`` does the same on other labelled data. Prediction divides the
logits by ``T``.

A task hands over its calibration set as logits: a classifier's own logits; for segmentation the
log of the stitched sliding-window probabilities (``softmax(log p / T)`` is the tempered field;
for a softmax, ``log p`` and the logits differ by a per-voxel constant, which the softmax
ignores). Only observed elements count (ignore label, missing labels), and large voxel sets are
subsampled deterministically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.metrics.calibration import bins_json, expected_calibration_error, reliability_bins
from medseg.uncertainty.calibration import (
    ensemble_nll,
    fit_ensemble_temperature,
    fit_temperature,
    temperature_nll,
)

CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = "medseg-calibration/1"


@dataclass
class CalibrationSet:
    """Observed elements to calibrate on.

    Attributes:
        logits: softmax ``(M, C)``, sigmoid ``(M,)`` float64.
        targets: ``(M,)`` int64 class indices (softmax) or 0/1 (sigmoid).
        kind: ``"softmax"`` or ``"sigmoid"``.
        source: What the elements are (e.g. ``"validation split, 12 cases"``).
        n_cases: Cases (images / volumes) they come from.
        member_logits: An ensemble's members' logits of the same elements, softmax
            ``(K, M, C)``, sigmoid ``(K, M)`` (``None`` for one model); then ``logits`` is the
            members' averaged prediction as logits, and the fit is one temperature shared by
            the members (:func:`~medseg.uncertainty.calibration.fit_ensemble_temperature`),
            the way prediction applies it: each member tempered, then averaged.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    kind: str
    source: str
    n_cases: int
    member_logits: torch.Tensor | None = None

    @classmethod
    def from_members(cls, member_logits: torch.Tensor, targets: torch.Tensor, kind: str,
                     source: str, n_cases: int) -> CalibrationSet:
        """An ensemble's calibration set from its members' logits (``(K, M, C)`` / ``(K, M)``)."""
        act = torch.softmax(member_logits.double(), -1) if kind == "softmax" else \
            torch.sigmoid(member_logits.double())
        return cls(log_probs_as_logits(act.mean(0), kind), targets, kind, source, n_cases,
                   member_logits.double() if member_logits.shape[0] > 1 else None)

    @classmethod
    def concat(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], kind: str, source: str
               ) -> CalibrationSet:
        """Join per-case ``(logits, targets)`` pairs."""
        return cls(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), kind,
                   source, len(parts))


def log_probs_as_logits(probs: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """Logits whose softmax (sigmoid) gives ``probs``: ``log p`` (``log p - log(1 - p)``)."""
    p = probs.double().clamp(1e-12, 1.0)
    if kind == "softmax":
        return p.log()
    return p.log() - (1.0 - p).clamp_min(1e-12).log()


def temper(probs: torch.Tensor, temperature: float, kind: str = "softmax",
           class_dim: int = 0) -> torch.Tensor:
    """Probabilities after temperature scaling: ``softmax(log p / T)`` or ``sigmoid(z / T)``.

    The arg-max is unchanged. ``T = 1`` returns ``probs`` itself.
    """
    if temperature == 1.0:
        return probs
    z = log_probs_as_logits(probs, kind) / temperature
    out = torch.softmax(z, dim=class_dim) if kind == "softmax" else torch.sigmoid(z)
    return out.to(probs.dtype)


def _confidence(cs: CalibrationSet, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness (softmax), or each label's probability and
    outcome (sigmoid), after dividing the logits by ``temperature``."""
    z = cs.logits / temperature
    if cs.kind == "softmax":
        conf, pred = torch.softmax(z, dim=1).max(1)
        return conf.numpy(), (pred == cs.targets).numpy()
    return torch.sigmoid(z).numpy(), cs.targets.numpy()


def _ece(cs: CalibrationSet, temperature: float, binning: str, n_bins: int) -> float:
    conf, outcome = _confidence(cs, temperature)
    return expected_calibration_error(conf, outcome, n_bins, binning=binning)[0]


def calibrate(cs: CalibrationSet, n_bins: int = 15) -> dict[str, Any]:
    """Fit ``T`` on ``cs`` and report ECE / NLL before and after (JSON-able).

    Equal-width ECE uses ``n_bins`` bins; equal-mass ECE uses ``min(n_bins, n // 10)`` bins (at
    least 1) so that every bin holds at least ten elements (with one element per bin the
    equal-mass ECE is the mean of ``|outcome - confidence|``, not a calibration error).
    """
    if cs.targets.numel() == 0:
        raise InputError("no observed element to calibrate on",
                         hint="give labelled data with observed labels")
    members = cs.member_logits
    if members is None:
        t = fit_temperature(cs.logits, cs.targets, kind=cs.kind)

        def nll(temp: float) -> float:
            return temperature_nll(cs.logits, cs.targets, temp, kind=cs.kind)
    else:
        t = fit_ensemble_temperature(members, cs.targets, kind=cs.kind)

        def nll(temp: float) -> float:
            return ensemble_nll(members, cs.targets, temp, kind=cs.kind)
    n = int(cs.targets.numel())
    bins = {"width": n_bins, "mass": max(1, min(n_bins, n // 10))}
    return {
        "format": CALIBRATION_FORMAT, "method": "temperature", "temperature": t,
        "kind": cs.kind, "fitted_on": cs.source, "n_cases": cs.n_cases,
        "n_elements": n, "n_bins": bins,
        "ece_before": {b: _ece(cs, 1.0, b, k) for b, k in bins.items()},
        "ece_after": {b: _ece(cs, t, b, k) for b, k in bins.items()},
        "reliability_before": bins_json(reliability_bins(*_confidence(cs, 1.0), n_bins)),
        "reliability_after": bins_json(reliability_bins(*_confidence(cs, t), n_bins)),
        "nll_before": nll(1.0), "nll_after": nll(t),
        "level": ("one model" if members is None else
                  f"ensemble of {members.shape[0]} members: one temperature shared by the "
                  "members, fitted on their averaged prediction"),
    }


def describe(doc: dict[str, Any]) -> str:
    """One line: the temperature and the ECE before -> after."""
    b, a = doc["ece_before"], doc["ece_after"]
    return (f"temperature {doc['temperature']:.3f}: ECE {b['width']:.4f} -> {a['width']:.4f} "
            f"(equal-mass {b['mass']:.4f} -> {a['mass']:.4f}) on {doc['fitted_on']}")


def write_calibration(folder: str | Path, doc: dict[str, Any], overwrite: bool = False) -> Path:
    """``calibration.json`` in the model folder, atomically; an existing one only if asked.
    With reliability bins in ``doc``, ``reliability_before.png`` / ``reliability_after.png``
    beside it.

    Raises:
        InputError: it exists and ``overwrite`` is false.
    """
    from medseg.reports import save_reliability_diagram

    path = Path(folder) / CALIBRATION_NAME
    if path.exists() and not overwrite:
        raise InputError("the model folder is calibrated already", path,
                         "pass --force to replace its calibration")
    for when in ("before", "after"):
        if f"reliability_{when}" in doc:
            t = 1.0 if when == "before" else doc["temperature"]
            save_reliability_diagram(Path(folder) / f"reliability_{when}.png",
                                     doc[f"reliability_{when}"], doc[f"ece_{when}"]["width"],
                                     title=f"{when} temperature scaling (T = {t:.3g})")
    return atomic_write_text(path, json.dumps(doc, indent=2))


def read_calibration(folder: str | Path) -> dict[str, Any]:
    """The folder's ``calibration.json`` (``{}`` without one).

    Raises:
        InputError: unreadable or not a JSON object.
    """
    path = Path(folder) / CALIBRATION_NAME
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"calibration.json is invalid ({type(e).__name__})", path,
                         "recalibrate with medseg calibrate --force, or delete it") from None
    if not isinstance(doc, dict):
        raise InputError("calibration.json must hold a JSON object", path,
                         "recalibrate with medseg calibrate --force, or delete it")
    return doc


def read_temperature(folder: str | Path) -> float:
    """The folder's temperature (1 without ``calibration.json``).

    Raises:
        InputError: an unreadable or invalid ``calibration.json``.
    """
    path = Path(folder) / CALIBRATION_NAME
    if not path.is_file():
        return 1.0
    doc = read_calibration(folder)
    if "temperature" not in doc:
        return 1.0
    try:
        t = float(doc["temperature"])
    except (ValueError, TypeError) as e:
        raise InputError(f"calibration.json is invalid ({type(e).__name__})", path,
                         "recalibrate with medseg calibrate --force, or delete it") from None
    if not (math.isfinite(t) and 0.0 < t < 1e3):
        raise InputError(f"calibration.json has temperature {t}", path,
                         "recalibrate with medseg calibrate --force, or delete it")
    return t


def subsample(n: int, max_elements: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_elements`` of ``range(n)`` (deterministic by seed)."""
    if n <= max_elements:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_elements, replace=False))
