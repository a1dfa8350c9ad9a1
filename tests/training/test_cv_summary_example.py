"""``examples/medmnist/cv_summary.py``: one table row per K-fold run, its figures recomputed
from the folds' ``oof.json``, repeated folds averaged per image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import load_example, write_toy_npz
from medseg.cli import main
from medseg.errors import InputError
from medseg.metrics.classification import auroc


def test_row_of_repeated_folds_averages_the_unseen_models(tmp_path):
    data, _ = write_toy_npz(tmp_path / "toy.npz", seed=2)
    run = tmp_path / "cv"
    assert main(["train", "--task", "classification", "--dataset", str(data), "--output",
                 str(run), "--folds", "2", "--ensemble", "2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu",
                 "--set", "model.options.channels=[4,8]",
                 "--set", "model.options.blocks_per_stage=[1,1]"]) == 0
    (tmp_path / "cv.out").write_text("\tUser time (seconds): 10.5\n\tSystem time (seconds): "
                                     "1.5\n\tElapsed (wall clock) time (h:mm:ss or m:ss): "
                                     "1:02.4\n")
    cvs = load_example("medmnist/cv_summary.py", "cv_summary")
    logits, labels, folds, _, ids = cvs.fold_rows(run, None, False)
    assert logits.shape[:2] == (2, 40) and len(set(ids)) == 40 and ids == sorted(ids)
    rows: dict[str, list] = {}
    for name in ("fold_0", "fold_1", "fold_0_seed_1", "fold_1_seed_1"):
        doc = json.loads((run / name / "oof.json").read_text())
        for r in doc["rows"]:
            rows.setdefault(r["id"], []).append((doc["fold"], r["logits"], r["label"]))
    for i, cid in enumerate(ids):  # repeat r of the image's fold, in member order
        assert [f for f, _, _ in rows[cid]] == [folds[i]] * 2
        assert np.allclose(logits[:, i], [z for _, z, _ in rows[cid]])
        assert labels[i] == rows[cid][0][2]
    text, (probs, _) = cvs.row(run, None, False, None)
    want = torch.softmax(torch.from_numpy(logits), -1).mean(0).numpy()
    assert np.allclose(probs, want)
    assert f"| cv | {auroc(want[:, 1], labels):.3f} [" in text
    assert text.endswith("| - | 12 / 62 |")
    p_t, hard = cvs.cross_fitted(logits, labels, folds)
    assert p_t.shape == (40, 2) and set(np.unique(hard)) <= {0, 1}
    assert np.allclose(p_t.sum(1), 1.0)
    with pytest.raises(InputError, match="model folder not found"):
        cvs.fold_rows(tmp_path / "missing", None, False)
