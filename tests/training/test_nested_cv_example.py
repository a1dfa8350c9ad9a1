"""``examples/medmnist/nested_cv.py``: every image scored once by a fold ensemble that never saw
it, the pooled figures equal to a recomputation from the written predictions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.metrics.classification import auroc
from medseg.tasks.classification import read_predictions

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "medmnist" / "nested_cv.py"


def _load():
    spec = importlib.util.spec_from_file_location("nested_cv", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_nested_cv_scores_every_image_once_with_an_unseen_ensemble(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    x = rng.integers(0, 60, (40, 16, 16)).astype(np.uint8)
    x[y == 1, 4:12, 4:12] = 200
    data = tmp_path / "toy.npz"
    np.savez(data, train_images=x[:30], train_labels=y[:30, None], val_images=x[30:],
             val_labels=y[30:, None])
    work = tmp_path / "nested"
    flags = ["--folds", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
             "--device", "cpu", "--set", "model.options.channels=[4,8]",
             "--set", "model.options.blocks_per_stage=[1,1]"]
    args = ["--data", str(data), "--work", str(work), "--outer", "2", "--", *flags]
    assert _load().main(args) == 0
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
