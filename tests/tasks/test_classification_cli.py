"""Classification end to end through the ``medseg`` command (T1, T2, T5, E5)."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from medseg.cli import main

FLAGS = ["--epochs", "3", "--steps-per-epoch", "6", "--batch-size", "16", "--device", "cpu",
         "--set", "model.options.channels=[8,16,32]",
         "--set", "model.options.blocks_per_stage=[1,1,1]"]


def _toy(n, rng):
    """Label 1 = a bright square somewhere; label 0 = noise only."""
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, 18, 2)
        x[i, r:r + 8, c:c + 8] = 220
    return x, y


def test_npz_single_label_train_predict_evaluate(tmp_path, capsys):
    rng = np.random.default_rng(0)
    xt, yt = _toy(160, rng)
    xv, yv = _toy(60, rng)
    npz = tmp_path / "toy.npz"
    np.savez(npz, train_images=xt, train_labels=yt[:, None], val_images=xv,
             val_labels=yv[:, None])
    model = tmp_path / "m"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), *FLAGS]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["task"] == "classification" and plan["label_task"] == "single"
    assert plan["model"]["name"] == "resnet_classifier" and len(plan["val_ids"]) == 60
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--output", str(pred),
                 "--split", "val", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(pred / "predictions.csv")))
    assert len(rows) == 60 and abs(float(rows[0]["p_0"]) + float(rows[0]["p_1"]) - 1) < 1e-5
    ev = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(pred / "predictions.csv"), "--ref", str(npz),
                 "--split", "val", "--output", str(ev), "--bootstrap", "200"]) == 0
    doc = json.loads((ev / "metrics.json").read_text())
    macro = doc["summary"]["macro"]
    assert macro["auroc"] > 0.9, macro  # an easy toy problem
    lo, hi = doc["summary"]["ci"]["macro"]["auroc"]
    assert lo <= macro["auroc"] <= hi
    assert (ev / "roc.png").is_file() and (ev / "report.html").is_file()
    cal = doc["summary"]["calibration"]
    assert 0 <= cal["ece"] <= cal["mce"] <= 1 and sum(cal["reliability"]["count"]) == 60
    assert (ev / "reliability.png").is_file()
    out = capsys.readouterr().out
    assert "auroc" in out and "ECE=" in out


def test_csv_multilabel_with_missing_labels(tmp_path):
    rng = np.random.default_rng(1)
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = []
    for i in range(80):
        a, b = rng.integers(0, 2, 2)
        x = rng.integers(0, 50, (32, 32)).astype(np.uint8)
        if a:
            x[2:12, 2:12] = 230          # label "a": a square top-left
        if b:
            x[20:30, 20:30] = 230        # label "b": a square bottom-right
        Image.fromarray(x).save(img_dir / f"i{i:03d}.png")
        # a third of label b is missing (-1): unobserved, not negative
        rows.append([f"imgs/i{i:03d}.png", int(a), -1 if i % 3 == 0 else int(b)])
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "a", "b"])
        w.writerows(rows)
    model = tmp_path / "m"
    assert main(["train", "--task", "classification", "--dataset", str(table), "--output",
                 str(model), "--set", "data.val_fraction=0.25", *FLAGS]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["label_task"] == "multi" and plan["class_names"] == ["a", "b"]
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(table), "--output",
                 str(pred), "--device", "cpu"]) == 0
    ev = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(table), "--output", str(ev),
                 "--bootstrap", "0"]) == 0
    doc = json.loads((ev / "metrics.json").read_text())
    # label b's missing entries are excluded, not counted as negatives
    per_b, per_a = doc["summary"]["per_class"]["b"], doc["summary"]["per_class"]["a"]
    n_missing_b = sum(1 for r in rows if r[2] == -1)
    assert per_b["n_missing"] == n_missing_b > 0 and per_a["n_missing"] == 0
    assert per_b["n_positive"] + per_b["n_negative"] == len(rows) - n_missing_b
    tn_fp_b = doc["summary"]["confusion"]["b"]
    assert sum(tn_fp_b[k] for k in ("tp", "fp", "tn", "fn")) == len(rows) - n_missing_b
    assert doc["summary"]["macro"]["auroc"] > 0.8


def test_classification_bad_table_is_a_clear_error(tmp_path, capsys):
    table = tmp_path / "labels.csv"
    table.write_text("image,label\nmissing.png,1\n")
    assert main(["train", "--task", "classification", "--dataset", str(table), "--output",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "Traceback" not in err


def test_vit_classifier_by_name(tmp_path):
    """The Transformer classifier (A7) through the same CLI, chosen by name."""
    rng = np.random.default_rng(1)
    xt, yt = _toy(64, rng)
    xv, yv = _toy(16, rng)
    npz = tmp_path / "toy.npz"
    np.savez(npz, train_images=xt, train_labels=yt[:, None], val_images=xv,
             val_labels=yv[:, None])
    model = tmp_path / "vit"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                 "--device", "cpu", "--set", "model.name=vit_classifier"]) == 0
    assert json.loads((model / "plan.json").read_text())["model"]["name"] == "vit_classifier"
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--output", str(pred),
                 "--split", "val", "--device", "cpu"]) == 0
    assert len(list(csv.DictReader(open(pred / "predictions.csv")))) == 16
