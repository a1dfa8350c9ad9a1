"""``examples/medmnist/nested_cv.py``: every image scored once by a fold ensemble that never saw
it, the pooled figures equal to a recomputation from the written predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import load_example, write_toy_npz
from medseg.metrics.classification import auroc
from medseg.tasks.classification import read_predictions


def test_nested_cv_scores_every_image_once_with_an_unseen_ensemble(tmp_path):
    data, _ = write_toy_npz(tmp_path / "toy.npz", seed=1)
    work = tmp_path / "nested"
    flags = ["--folds", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
             "--device", "cpu", "--set", "model.options.channels=[4,8]",
             "--set", "model.options.blocks_per_stage=[1,1]"]
    args = ["--data", str(data), "--work", str(work), "--outer", "2", "--", *flags]
    assert load_example("medmnist/nested_cv.py", "nested_cv").main(args) == 0
    outer = []
    for k in range(2):
        held = np.load(work / f"outer_{k}" / "outer.npz")["test_images"]
        inner = np.load(work / f"outer_{k}" / "inner.npz")["train_images"]
        assert len(held) + len(inner) == 40
        # no held-out image among the images its ensemble trained on
        assert not {h.tobytes() for h in held} & {i.tobytes() for i in inner}
        outer.append(held)
    assert sum(len(o) for o in outer) == 40  # every image held out exactly once
    summary = json.loads((work / "nested_summary.json").read_text())
    labels = np.concatenate([np.load(work / f"outer_{k}" / "outer.npz")["test_labels"]
                             .reshape(-1) for k in range(2)])
    probs = np.concatenate([read_predictions(work / f"outer_{k}" / "pred")[2]
                            for k in range(2)])
    assert summary["pred"]["n"] == 40
    assert summary["pred"]["auroc"] == pytest.approx(auroc(probs[:, 1], labels))
    assert summary["pred"]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))

    # class_balance.py on the same folder: the pool's row recomputed from the written files,
    # and every draw holding the asked share of class 1
    cb = load_example("medmnist/class_balance.py", "class_balance")
    assert cb.main(["--work", str(work), "--positive", "0.5", "--draws", "5"]) == 0
    doc = json.loads((work / "class_balance.json").read_text())
    stored = np.concatenate([[int(r) for r in np.loadtxt(
        work / f"outer_{k}" / "pred" / "predictions.csv", delimiter=",", skiprows=1,
        usecols=3, dtype=str)] for k in range(2)])
    assert doc["pool"]["accuracy_stored"] == pytest.approx(float((stored == labels).mean()))
    assert doc["pool"]["accuracy_argmax"] == pytest.approx(summary["pred"]["accuracy"])
    n = doc["n_per_draw"]
    assert n == 2 * min(int(labels.sum()), int((1 - labels).sum()))
    p1, d, y = cb.load(work)
    assert (y == labels).all() and (d == stored).all()
