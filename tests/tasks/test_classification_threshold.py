"""``medseg evaluate`` scores classification at the stored operating point (issue 13).

Hand-made scores where the most probable class and the stored threshold give different,
hand-computed accuracies.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.tasks.classification import evaluate_classification_files

# p(class 1) and the labels of eight cases
P1 = [0.10, 0.20, 0.35, 0.40, 0.45, 0.60, 0.80, 0.90]
Y = [0, 0, 1, 1, 0, 1, 1, 1]
# argmax: predictions 0 0 0 0 0 1 1 1 -> 6/8 right; sensitivity 3/5, specificity 3/3
# p1 >= 0.3: predictions 0 0 1 1 1 1 1 1 -> 7/8 right; sensitivity 5/5, specificity 2/3


def _write(tmp_path, threshold: float | None, column: str | None = "threshold") -> tuple:
    npz = tmp_path / "labels.npz"
    x = np.zeros((8, 28, 28), np.uint8)
    np.savez(npz, train_images=x[:2], train_labels=np.array([[0], [1]]), val_images=x,
             val_labels=np.array(Y)[:, None])
    pred = tmp_path / "pred"
    pred.mkdir()
    cut = threshold if column == "threshold" else 0.5
    with open(pred / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "p_0", "p_1", "prediction"])
        for i, p in enumerate(P1):
            w.writerow([f"val_{i:05d}", f"{1 - p:.6f}", f"{p:.6f}", str(int(p >= cut))])
    if threshold is not None:
        (pred / "decision.json").write_text(json.dumps(
            {"rule": "youden", "thresholds": {"1": threshold}, "model": "m"}))
    return npz, pred


def test_evaluate_scores_at_the_stored_threshold(tmp_path):
    npz, pred = _write(tmp_path, 0.3)
    out = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(npz), "--split", "val",
                 "--output", str(out), "--bootstrap", "50"]) == 0
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert s["macro"]["accuracy"] == pytest.approx(7 / 8)
    assert s["per_class"]["1"]["sensitivity"] == pytest.approx(1.0)
    assert s["per_class"]["1"]["specificity"] == pytest.approx(2 / 3)
    assert s["macro"]["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["confusion"]["matrix"] == [[2, 1], [0, 5]]
    assert s["thresholds"] == [0.3]
    assert s["decision"]["rule"] == "youden" and s["decision"]["thresholds"] == {"1": 0.3}
    assert s["decision"]["source"].endswith("decision.json")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["prediction"] for r in rows] == ["0", "0", "1", "1", "1", "1", "1", "1"]


def test_evaluate_without_decision_uses_argmax(tmp_path, capsys):
    npz, pred = _write(tmp_path, None, column="argmax")
    res = evaluate_classification_files(pred, npz, tmp_path / "ev", split="val", n_boot=0)
    s = res["result"]
    assert s["macro"]["accuracy"] == pytest.approx(6 / 8)
    assert s["per_class"]["1"]["sensitivity"] == pytest.approx(3 / 5)
    assert s["per_class"]["1"]["specificity"] == pytest.approx(1.0)
    assert s["macro"]["balanced_accuracy"] == pytest.approx((3 / 5 + 1) / 2)
    assert s["thresholds"] is None and s["decision"]["rule"] == "argmax"
    assert "hard labels by argmax" in capsys.readouterr().out


def test_a_decision_that_does_not_give_the_predictions_is_refused(tmp_path):
    # decision.json says 0.3 but the prediction column was thresholded at 0.5 (argmax)
    npz, pred = _write(tmp_path, 0.3, column="argmax")
    with pytest.raises(InputError, match="does not give their 'prediction' column"):
        evaluate_classification_files(pred, npz, tmp_path / "ev", split="val", n_boot=0)
    (pred / "decision.json").write_text(json.dumps({"thresholds": {"0": 0.3}}))
    with pytest.raises(InputError, match="the predictions need"):
        evaluate_classification_files(pred, npz, tmp_path / "ev2", split="val", n_boot=0)


@pytest.mark.slow
def test_predict_copies_the_model_decision_and_evaluate_uses_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 2, 40)
    npz = tmp_path / "toy.npz"
    np.savez(npz, train_images=x[:24], train_labels=y[:24, None], val_images=x[24:],
             val_labels=y[24:, None])
    model = tmp_path / "m"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                 "--device", "cpu", "--set", "model.options.channels=[8,16]",
                 "--set", "model.options.blocks_per_stage=[1,1]"]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "val",
                 "--output", str(pred), "--device", "cpu"]) == 0
    p1 = np.array([float(r["p_1"]) for r in csv.DictReader(open(pred / "predictions.csv"))])
    assert not (pred / "decision.json").exists()
    t = float(np.median(p1))  # a threshold that splits the scores in two halves
    (model / "decision.json").write_text(json.dumps({"rule": "youden",
                                                     "thresholds": {"1": t}}))
    pred2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "val",
                 "--output", str(pred2), "--device", "cpu"]) == 0
    copied = json.loads((pred2 / "decision.json").read_text())
    assert copied["thresholds"] == {"1": t} and copied["model"] == str(model)
    rows = list(csv.DictReader(open(pred2 / "predictions.csv")))
    assert [r["prediction"] for r in rows] == [str(int(float(r["p_1"]) >= t)) for r in rows]
    res = evaluate_classification_files(pred2, npz, tmp_path / "ev", split="val", n_boot=0)
    want = np.mean((np.array([float(r["p_1"]) for r in rows]) >= t).astype(int) == y[24:])
    assert res["result"]["macro"]["accuracy"] == pytest.approx(want)
    assert res["result"]["decision"]["thresholds"] == {"1": t}
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "train",
                 "--output", str(tmp_path / "p3"), "--device", "cpu"]) == 0
    assert "24 of the 24 input id(s) are ids the model trained on" in capsys.readouterr().out
