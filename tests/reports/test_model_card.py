"""The model card (``medseg.reports.model_card``) and ``medseg report --model M``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from medseg.cli import main
from medseg.model_folder import ModelFolder
from medseg.reports import model_card
from medseg.reports.model_card import train_log_summary

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"


@pytest.fixture()
def seg_model(tmp_path: Path) -> Path:
    """The legacy segmentation model with a calibration and an out-of-fold estimate added."""
    m = tmp_path / "seg_model"
    shutil.copytree(LEGACY / "segmentation" / "model", m)
    (m / "calibration.json").write_text(json.dumps({
        "temperature": 1.75, "fitted_on": "the validation split (6 case(s))",
        "ece_before": {"width": 0.125, "mass": 0.0625},
        "ece_after": {"width": 0.03125, "mass": 0.015625},
        "nll_before": 0.5, "nll_after": 0.25}))
    (m / "oof_metrics.json").write_text(json.dumps({
        "estimate": "out-of-fold", "folds": 5, "n_cases": 40,
        "interval": "95% percentile bootstrap over cases (1000)",
        "per_class": {"dice_organ": {"mean": 0.875, "ci95": [0.8125, 0.9375], "n": 40}}}))
    return m


def test_train_log_final_and_best(tmp_path: Path):
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,train_loss,lr,dice_mean,val_loss\n1,0.9,0.01,0.25,0.7\n"
                   "2,0.5,0.01,0.5,0.4\n3,0.4,0.01,0.375,0.5\n")
    rows = dict(train_log_summary(log, "dice_mean", True))
    assert rows["epochs"] == "3"
    assert rows["final epoch (3)"] == "train_loss 0.4, dice_mean 0.375, val_loss 0.5"
    assert rows["best dice_mean"] == "0.5 at epoch 2 (checkpoint_best.pt)"
    assert dict(train_log_summary(log, "val_loss", False))["best val_loss"].startswith(
        "0.4 at epoch 2")
    assert train_log_summary(tmp_path / "none.csv", "x")[0][1].startswith("absent")


def test_card_from_model_folder(seg_model: Path):
    folder = ModelFolder.open(seg_model)
    card = model_card(folder, "dice_mean", True)
    p = folder.plan
    data = dict(card.section("Training data").rows)
    n = len(p.train_ids) + len(p.val_ids)
    assert data["cases"] == f"{n} ({len(p.train_ids)} training, {len(p.val_ids)} validation)"
    assert data["classes"] == "background, organ, lesion" and data["dataset"] == "/tmp/legacy/seg"
    model = dict(card.section("Model").rows)
    assert model["task"] == "segmentation" and model["network"].startswith("unet ")
    val = dict(card.section("Validation results").rows)
    with open(seg_model / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    best = max(log, key=lambda r: float(r["dice_mean"]))
    assert val["best dice_mean"] == (f"{float(best['dice_mean']):.4g} at epoch {best['epoch']}"
                                     " (checkpoint_best.pt)")
    assert val["temperature"] == "1.75"
    assert val["ECE (equal-width bins)"] == "0.125 before -> 0.03125 after temperature scaling"
    assert val["ECE (equal-mass bins)"] == "0.0625 before -> 0.01562 after temperature scaling"
    header, rows = card.section("Validation results").table
    assert rows == [["dice_organ", "0.875", "[0.8125, 0.9375]", "40"]]
    assert "not a medical device" in card.section("Intended use").text[0]
    limits = " ".join(card.section("Known limits").text)
    assert f"Trained on {n} case(s) only" in limits and "Not calibrated" not in limits
    assert "fold ensemble" not in limits  # calibrated on a validation split, not out of fold
    assert card.section("Configuration").pre.startswith("task: segmentation")
    # a K-fold folder calibrated on its out-of-fold logits says what that temperature is for
    cal = json.loads((seg_model / "calibration.json").read_text())
    cal["fitted_on"] = "the out-of-fold predictions (40 image(s))"
    (seg_model / "calibration.json").write_text(json.dumps(cal))
    limits = " ".join(model_card(ModelFolder.open(seg_model), "dice_mean", True)
                      .section("Known limits").text)
    assert "the fold ensemble that predicts" in limits and "medseg calibrate" in limits
    # the structured field written since 2026-12-06 decides when present, whatever the text
    for source, said in (("out-of-fold", True), ("validation split", False)):
        cal.update(source=source, fitted_on="anything")
        (seg_model / "calibration.json").write_text(json.dumps(cal))
        limits = " ".join(model_card(ModelFolder.open(seg_model), "dice_mean", True)
                          .section("Known limits").text)
        assert ("the fold ensemble that predicts" in limits) is said


def test_card_says_what_is_absent(tmp_path: Path):
    m = tmp_path / "cls"
    shutil.copytree(LEGACY / "classification" / "model", m)
    (m / "config.yaml").unlink()
    card = model_card(ModelFolder.open(m), "val_auroc", True)
    val = dict(card.section("Validation results").rows)
    assert val["calibration"] == "absent (no calibration.json)"
    assert val["out-of-fold estimate"].startswith("absent")
    assert dict(card.section("Training data").rows)["dataset"] == "not recorded (no config.yaml)"
    assert "Not calibrated" in " ".join(card.section("Known limits").text)


def test_report_command(seg_model: Path, tmp_path: Path, capsys):
    out = tmp_path / "cards"
    assert main(["report", "--model", str(seg_model), "--output", str(out)]) == 0
    page = (out / "model_card.html").read_text()
    assert page.count("<h1>") == 1 and "Validation results" in page
    assert "http://" not in page and "https://" not in page and "<img" not in page
    assert main(["report", "--model", str(seg_model), "--output", str(out / "card.md")]) == 0
    md = (out / "card.md").read_text()
    assert md.startswith("# Model card: seg_model\n") and "| temperature | 1.75 |" in md
    assert "```yaml\ntask: segmentation" in md
    capsys.readouterr()
    # never over an existing file unless asked; a format that contradicts the name; not a model
    assert main(["report", "--model", str(seg_model), "--output", str(out / "card.md")]) == 2
    err = capsys.readouterr().err
    assert "exists already" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert main(["report", "--model", str(seg_model), "--output", str(out / "card.md"),
                 "--force"]) == 0
    assert main(["report", "--model", str(seg_model), "--format", "html", "--output",
                 str(out / "x.md")]) == 2
    assert main(["report", "--model", str(tmp_path), "--output", str(out / "y.md")]) == 2
    assert "no plan.json" in capsys.readouterr().err
