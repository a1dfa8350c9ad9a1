"""A K-fold instance model chooses its watershed parameters on out-of-fold predictions and
``medseg predict`` uses them (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.instance.tuning import read_postprocess
from medseg.model_folder import ModelFolder
from medseg.tasks.instance import predict_instances, tune_postprocess_on_folds
from medseg.tasks.segmentation import SegmentationModel


def _discs(root, n=4, size=48):
    """DSB layout: three bright discs per image (two touching), one mask PNG each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cid = f"img{i}"
        (root / cid / "images").mkdir(parents=True)
        (root / cid / "masks").mkdir()
        lab = np.zeros((size, size), np.int32)
        for k, (cy, cx) in enumerate([(14, 12), (14, 25), (34, 34)], start=1):
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 6 ** 2) & (lab == 0)
            lab[disc] = k
            Image.fromarray((disc * 255).astype(np.uint8)).save(
                root / cid / "masks" / f"{cid}_m{k}.png")
        img = np.clip(rng.normal(20, 5, (size, size)) + 150 * (lab > 0), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / cid / "images" / f"{cid}.png")
    return root


@pytest.mark.slow
def test_folds_choose_postprocess_and_predict_uses_it(tmp_path):
    data = _discs(tmp_path / "dsb")
    model = tmp_path / "m"
    assert main(["train", "--task", "instance", "--dataset", str(data), "--output", str(model),
                 "--folds", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--patch-size", "48", "48", "--device", "cpu",
                 "--set", "model.options.channels=[4,8]",
                 "--set", "instance.boundary_width=1"]) == 0
    # the end of train --folds chose the parameters on the out-of-fold predictions already
    auto = read_postprocess(model)
    assert auto is not None
    assert json.loads((model / "postprocess.json").read_text())["n_cases"] == 4
    grid = {"seed_threshold": (0.3, 0.5), "min_size": (0, 10)}
    lines: list[str] = []
    report = tune_postprocess_on_folds(model, grid, device="cpu", log=lines.append)
    assert report["n_cases"] == 4 and report["n_candidates"] == 4
    assert report["f1"] == max(t["f1"] for t in report["top"]) >= report["configured"]["f1"]
    chosen = read_postprocess(model)
    assert chosen is not None and chosen.to_dict() == report["params"]
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(data), "--output", str(pred),
                 "--device", "cpu"]) == 0
    doc = json.loads((pred / "img0_instances.json").read_text())
    assert doc["postprocess"] == report["params"]


def test_repeated_folds_score_each_case_once_on_the_averaged_models(tmp_path):
    """--folds 2 --ensemble 2: the watershed is chosen on each case once, on the averaged
    probabilities of its two unseen models; the Dice estimate averages them per case."""
    import csv

    data = _discs(tmp_path / "dsb")
    model = tmp_path / "m"
    assert main(["train", "--task", "instance", "--dataset", str(data), "--output", str(model),
                 "--folds", "2", "--ensemble", "2", "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "2", "--patch-size", "48", "48", "--device", "cpu",
                 "--set", "model.options.channels=[4,8]",
                 "--set", "instance.boundary_width=1"]) == 0
    assert json.loads((model / "postprocess.json").read_text())["n_cases"] == 4
    est = json.loads((model / "oof_metrics.json").read_text())
    assert est["n_cases"] == 4 and "averaged over the 2 models" in est["per_case"]
    dice: dict[str, list[float]] = {}
    for name in ("fold_0", "fold_1", "fold_0_seed_1", "fold_1_seed_1"):
        for r in json.loads((model / name / "oof.json").read_text())["rows"]:
            dice.setdefault(r["id"], []).append(float(r["dice_interior"]))
    rows = {r["id"]: float(r["dice_interior"]) for r in csv.DictReader(
        open(model / "oof_metrics.csv"))}
    assert rows == pytest.approx({k: float(np.mean(v)) for k, v in dice.items()})
    assert all(len(v) == 2 for v in dice.values())
    # the choice records whether its out-of-fold predictions used flips (the model's
    # inference.tta: off); chosen with flips, predict without them says so, with them not
    assert json.loads((model / "postprocess.json").read_text())["tta"] is False
    report = tune_postprocess_on_folds(model, {"seed_threshold": (0.5,)}, device="cpu",
                                       log=lambda _: None, tta=True)
    assert report["tta"] is True
    assert json.loads((model / "postprocess.json").read_text())["tta"] is True
    seg = SegmentationModel.load(ModelFolder.open(model), "best", "cpu")
    for tta, noted in ((None, True), (True, False)):
        lines: list[str] = []
        predict_instances(seg, data / "img0", tmp_path / f"pred_{tta}", tta=tta,
                          log=lines.append)
        assert any("chosen on out-of-fold predictions with test-time flips" in s
                   for s in lines) is noted, lines
