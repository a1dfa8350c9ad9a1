"""``medseg evaluate`` writes the report: classification (ROC, reliability, worst first, model
card with the calibration) and segmentation with ``--model`` through the command line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from medseg.cli import main
from medseg.io import read_label, write_label
from medseg.physics import PhantomSpec, write_phantom_dataset

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"


def _case_rows(html: str) -> list[str]:
    body = html.split("id='case-table'", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr data-case='([^']*)'>", body)


def test_classification_report(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    p1 = np.array([0.1, 0.8, 0.35, 0.6, 0.95, 0.2, 0.55, 0.05])
    npz = tmp_path / "t.npz"
    np.savez(npz, train_images=rng.integers(0, 9, (2, 8, 8)).astype(np.uint8),
             train_labels=np.array([[0], [1]]),
             test_images=rng.integers(0, 9, (8, 8, 8)).astype(np.uint8), test_labels=y[:, None])
    pred = tmp_path / "pred"
    pred.mkdir()
    lines = ["id,p_0,p_1"] + [f"test_{i:05d},{1 - p:.6f},{p:.6f}" for i, p in enumerate(p1)]
    (pred / "predictions.csv").write_text("\n".join(lines) + "\n")
    model = tmp_path / "model"
    shutil.copytree(LEGACY / "classification" / "model", model)
    (model / "calibration.json").write_text(json.dumps({
        "temperature": 2.0, "fitted_on": "val", "ece_before": {"width": 0.25, "mass": 0.125},
        "ece_after": {"width": 0.0625, "mass": 0.03125}}))
    ev = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(pred / "predictions.csv"), "--ref", str(npz),
                 "--split", "test", "--output", str(ev), "--bootstrap", "100", "--model",
                 str(model)]) == 0
    html = (ev / "report.html").read_text()
    # worst first: the probability of the true label, lowest first
    p_true = np.where(y == 1, p1, 1 - p1)
    assert _case_rows(html) == [f"test_{i:05d}" for i in np.argsort(p_true, kind="stable")]
    assert "<h2>ROC curves</h2><img src='data:image/png;base64," in html
    assert "<h2>Reliability diagram</h2><img src='data:image/png;base64," in html
    assert "id='model-card'" in html
    assert ("<li>model calibration: ECE (equal-width bins) 0.25 before -&gt; 0.0625 after "
            "temperature scaling</li>") in html
    assert "http://" not in html and "https://" not in html
    md = (ev / "report.md").read_text()
    assert "![ROC curves](roc.png)" in md and "## Model card: model" in md
    assert md.count("| test_0") == 8


def test_evaluate_with_model_flag(tmp_path: Path):
    ds = tmp_path / "ds"
    write_phantom_dataset(ds, PhantomSpec(shape=(24, 24), modality="mr"), n_train=1, n_test=2,
                          seed=1)
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in sorted((ds / "labelsTs").glob("*.nii.gz")):
        lab, meta = read_label(f)
        write_label(pred / f.name, lab, meta)
    ev = tmp_path / "ev"
    # no --images: the report is still written (tables and the model card, no pictures)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ds / "labelsTs"), "--output",
                 str(ev), "--model", str(LEGACY / "segmentation" / "model")]) == 0
    html = (ev / "report.html").read_text()
    assert _case_rows(html) == ["case_001", "case_002"] and "<figure class='case'" not in html
    assert "id='model-card'" in html and "not given (no pictures)" in html
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ds / "labelsTs"), "--output",
                 str(tmp_path / "ev2"), "--model", str(tmp_path)]) == 2
    assert not (tmp_path / "ev2").exists()  # a bad --model is refused before any work
