"""``medseg train --task instance`` -> ``predict`` -> ``evaluate`` on a tiny DSB-layout set."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.io import read_label
from medseg.training.config import ExperimentConfig


def _hash_tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_disc_dataset(root, n=5, size=64, seed=0):
    """DSB layout: bright discs (some touching) on a dark noisy background, one mask each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cid = f"img{i}"
        (root / cid / "images").mkdir(parents=True)
        (root / cid / "masks").mkdir()
        lab = np.zeros((size, size), dtype=np.int32)
        centres = [(16, 16), (16, 29), (44, 44), (46, 14)]  # the first two touch
        for k, (cy, cx) in enumerate(centres, start=1):
            cy, cx = cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3))
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 7 ** 2) & (lab == 0)
            lab[disc] = k
            Image.fromarray((disc * 255).astype(np.uint8)).save(
                root / cid / "masks" / f"{cid}_m{k}.png")
        img = np.clip(rng.normal(20, 5, (size, size)) + 150 * (lab > 0), 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([img] * 3 + [np.full_like(img, 255)], -1), "RGBA").save(
            root / cid / "images" / f"{cid}.png")
    return root


def test_instance_train_predict_evaluate(tmp_path, capsys):
    data = write_disc_dataset(tmp_path / "dsb")
    before = _hash_tree(data)
    model = tmp_path / "model"
    assert main(["train", "--task", "instance", "--dataset", str(data), "--output", str(model),
                 "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "4",
                 "--patch-size", "64", "64", "--device", "cpu",
                 "--set", "model.options.channels=[8,16,32]", "--set", "data.val_fraction=0.2",
                 "--set", "instance.boundary_width=1", "--set", "optim.lr=0.01"]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["task"] == "instance" and plan["num_classes"] == 3
    assert plan["class_names"] == ["background", "interior", "boundary"]
    assert plan["instance"]["boundary_width"] == 1
    assert set(plan["instance"]["postprocess"]) == {"seed_threshold", "fg_threshold",
                                                    "min_seed_size", "min_size", "flood"}
    assert ExperimentConfig.load(model / "config.yaml").task == "instance"

    preds = tmp_path / "preds"
    assert main(["predict", "--model", str(model), "--input", str(data), "--output", str(preds),
                 "--device", "cpu"]) == 0
    maps = sorted(preds.glob("*_instances.png"))
    assert [m.name for m in maps] == [f"img{i}_instances.png" for i in range(5)]
    lab, meta = read_label(maps[0])
    assert lab.shape == (64, 64) and meta.dtype == "uint16"
    with open(preds / "img0_instances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (preds / "img0_instances.csv").read_text().splitlines()[0] == \
        "id,class,score,area_voxels,area_mm2,volume_mm3"
    assert len(rows) == int(lab.max())
    for r in rows:
        assert int(r["area_voxels"]) == int(np.sum(lab == int(r["id"])))
        assert 0.0 <= float(r["score"]) <= 1.0 and r["area_mm2"] == ""
    doc = json.loads((preds / "img0_instances.json").read_text())
    assert doc["n_instances"] == len(rows) and doc["postprocess"] == plan["instance"]["postprocess"]

    ev = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(preds), "--ref", str(data), "--output", str(ev)]) == 0
    res = json.loads((ev / "metrics.json").read_text())
    assert len(res["cases"]) == 5 and all(c["n_ref"] == 4 for c in res["cases"])
    header = (ev / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("case", "f1@0.5", "ap@0.5", "map", "pq@0.5"):
        assert col in header
    for k in ("f1@0.5", "ap@0.5", "map", "pq@0.5"):
        assert 0.0 <= res["summary"]["mean"][k] <= 1.0
    assert "map" in capsys.readouterr().out
    assert _hash_tree(data) == before, "inputs must not change"


def test_instance_cli_errors(tmp_path, capsys):
    data = write_disc_dataset(tmp_path / "dsb", n=2)
    bad = data / "img1" / "masks" / "img1_m1.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(bad)
    rc = main(["train", "--task", "instance", "--dataset", str(data), "--output",
               str(tmp_path / "m"), "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "img1_m1.png" in err and "shape" in err
    # evaluating predictions against a folder that lacks the case names the prediction
    preds = tmp_path / "p"
    preds.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(preds / "other_instances.png")
    rc = main(["evaluate", "--pred", str(preds), "--ref", str(data), "--output",
               str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "other_instances.png" in err


@pytest.mark.parametrize("bad", ["task: instancee", "instance:\n  flood: nearest"])
def test_instance_config_validation(tmp_path, bad):
    from medseg.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(bad + "\n")
    with pytest.raises(ConfigError):
        ExperimentConfig.load(p)
