"""Walks every registered task the way test_registry.py walks every network.

For each task: a tiny training run (2 epochs) straight; the same run interrupted after epoch 1
and resumed gives the same weights bit for bit; ``medseg predict`` on the model folder; the
prediction folder is recognised as the task's by the evaluate dispatch; ``medseg evaluate``
writes metrics; a setting the task does not use is refused, naming it. A task registered without
a dataset recipe below fails here: adding a task means adding its recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.cli import _parser, main
from medseg.errors import ConfigError
from medseg.model_folder import ModelFolder
from medseg.tasks import get_task, list_tasks
from medseg.tasks.base import ENGINE_SETTINGS, _flatten
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train
from medseg.workflows.commands import build_train_config, recognise_prediction

QUIET = {"log": lambda _m: None}
COMMON = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--device", "cpu"]


def _segmentation(root: Path) -> dict:
    assert main(["phantoms", "--output", str(root / "ds"), "--dims", "2", "--size", "32",
                 "--n-train", "5", "--n-test", "1", "--lesion-fraction", "0.03"]) == 0
    ds = root / "ds"
    return {"train": ["--dataset", str(ds), "--patch-size", "32", "32",
                      "--set", "model.options.channels=[4,8]", "--set", "data.val_fraction=0.2"],
            "input": ds / "imagesTs", "predict": [],
            "evaluate": ["--ref", str(ds / "labelsTs")], "metric": "dice_mean"}


def _instance(root: Path) -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for i in range(4):
        cid = f"img{i}"
        (root / "dsb" / cid / "images").mkdir(parents=True)
        (root / "dsb" / cid / "masks").mkdir()
        lab = np.zeros((48, 48), np.int32)
        for k, (cy, cx) in enumerate([(12, 12), (12, 24), (34, 34)], start=1):
            disc = ((yy - cy - rng.integers(-2, 3)) ** 2 + (xx - cx) ** 2 <= 36) & (lab == 0)
            lab[disc] = k
            Image.fromarray((disc * 255).astype(np.uint8)).save(
                root / "dsb" / cid / "masks" / f"m{k}.png")
        img = np.clip(rng.normal(20, 5, lab.shape) + 150 * (lab > 0), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "dsb" / cid / "images" / f"{cid}.png")
    ds = root / "dsb"
    return {"train": ["--task", "instance", "--dataset", str(ds), "--patch-size", "48", "48",
                      "--set", "model.options.channels=[4,8]", "--set", "data.val_fraction=0.25",
                      "--set", "instance.boundary_width=1"],
            "input": ds, "predict": [], "evaluate": ["--ref", str(ds)], "metric": "dice_mean"}


def _classification(root: Path) -> dict:
    rng = np.random.default_rng(0)

    def toy(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i in np.flatnonzero(y):
            r, c = rng.integers(2, 18, 2)
            x[i, r:r + 8, c:c + 8] = 220
        return x, y

    (xt, yt), (xv, yv) = toy(24), toy(8)
    npz = root / "toy.npz"
    np.savez(npz, train_images=xt, train_labels=yt[:, None], val_images=xv,
             val_labels=yv[:, None])
    return {"train": ["--task", "classification", "--dataset", str(npz),
                      "--set", "model.options.channels=[4,8]",
                      "--set", "model.options.blocks_per_stage=[1,1]"],
            "input": npz, "predict": ["--split", "val"],
            "evaluate": ["--ref", str(npz), "--split", "val", "--bootstrap", "50"],
            "pred_file": "predictions.csv", "metric": "val_auroc"}


def _restoration(root: Path) -> dict:
    ds = root / "den"
    assert main(["restoration-data", "--output", str(ds), "--modality", "mr", "--n-train", "4",
                 "--n-test", "1", "--size", "32", "--seed", "1"]) == 0
    return {"train": ["--task", "restoration", "--dataset", str(ds),
                      "--set", "model.options.channels=[4,8]",
                      "--set", "loss.restoration=likelihood"],
            "input": ds / "imagesTs", "predict": [], "evaluate": ["--ref", str(ds)],
            "metric": "val_loss"}


RECIPES = {"segmentation": _segmentation, "instance": _instance,
           "classification": _classification, "restoration": _restoration}


def test_every_registered_task_has_a_recipe():
    assert sorted(list_tasks()) == sorted(RECIPES), "add a recipe for each new task"


def _cfg(recipe: dict, out: Path) -> ExperimentConfig:
    args = _parser().parse_args(["train", *recipe["train"], *COMMON, "--output", str(out)])
    return build_train_config(args)


def _weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_task_train_resume_predict_evaluate_refuse(name, tmp_path):
    task = get_task(name)
    recipe = RECIPES[name](tmp_path)

    # straight 2 epochs
    straight = train(_cfg(recipe, tmp_path / "straight"), **QUIET)
    assert straight.epochs_done == 2 and not straight.interrupted
    assert straight.metric == task.key_metric == recipe["metric"]
    assert np.isfinite(straight.best_metric)
    folder = ModelFolder.open(tmp_path / "straight")
    assert folder.task == name and folder.plan.format == "medseg-plan/2"

    # interrupted after epoch 1, resumed: the same weights
    def stop_after_epoch_1(msg: str) -> None:
        if msg.startswith("  epoch 1/2"):  # printed after epoch 1's checkpoint is written
            raise KeyboardInterrupt

    cut = train(_cfg(recipe, tmp_path / "cut"), log=stop_after_epoch_1)
    assert cut.interrupted and cut.epochs_done == 1
    resumed = train(_cfg(recipe, tmp_path / "cut"), resume=True, **QUIET)
    assert resumed.epochs_done == 2 and len(resumed.history) == 2
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.best_metric == straight.best_metric

    # predict through the CLI, dispatch by the model folder's task
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(tmp_path / "straight"), "--input",
                 str(recipe["input"]), "--output", str(pred), "--device", "cpu",
                 *recipe["predict"]]) == 0
    target = pred / recipe.get("pred_file", "")
    assert recognise_prediction(target) == name
    assert task.recognises(target)

    # evaluate through the CLI, dispatch by recognises
    ev = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(target), "--output", str(ev),
                 *recipe["evaluate"]]) == 0
    assert json.loads((ev / "metrics.json").read_text())
    assert (ev / "metrics.csv").is_file()

    # a setting the task does not read is refused, naming it
    cfg = _cfg(recipe, tmp_path / "refused")
    allowed = ENGINE_SETTINGS | task.uses
    for key, value in _flatten(cfg.to_dict()).items():
        parts = key.split(".")
        if any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)):
            continue
        for new in _other_values(value):
            try:
                bad = cfg.override([f"{key}={json.dumps(new)}"])
            except ConfigError:
                continue
            with pytest.raises(ConfigError, match=f"does not use the setting {key}"):
                train(bad, **QUIET)
            assert not (tmp_path / "refused" / "checkpoint_last.pt").exists()
            return
    pytest.fail(f"no foreign setting found for {name}")


def _other_values(value: object) -> list[object]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int | float):
        return [value + 1, value / 2, 0.5]
    if isinstance(value, str):
        return ["likelihood", "adaptive", "distance", "zscore"]
    if value is None:
        return [0.5, 1, [1.0]]
    return []
