"""One model folder type: the plan schema, its errors, and folders written by older versions.

``tests/fixtures/legacy_v1`` holds tiny model folders (one per task) written by medseg before
the engine existed (``medseg-plan/1``), each with an input and the prediction that version made
of it: today's code must load them and predict the same, bit for bit.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.io import read_image
from medseg.model_folder import ModelFolder, Plan

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v1"
CASES = {"segmentation": ("input", ["--save-probabilities"]),
         "classification": ("input.npz", ["--split", "val"]),
         "restoration": ("input", []), "instance": ("input", [])}


@pytest.mark.parametrize("task", sorted(CASES))
def test_legacy_folder_loads_and_predicts_the_same(task, tmp_path):
    folder = ModelFolder.open(LEGACY / task / "model")
    assert folder.task == task and folder.plan.format == "medseg-plan/2"
    assert json.loads((LEGACY / task / "model" / "plan.json").read_text())["format"] == \
        "medseg-plan/1"
    inp, extra = CASES[task]
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(LEGACY / task / "model"), "--input",
                 str(LEGACY / task / inp), "--output", str(out), "--device", "cpu",
                 *extra]) == 0
    expected = sorted((LEGACY / task / "expected").iterdir())
    assert expected
    for f in expected:
        g = out / f.name
        assert g.is_file(), f.name
        if f.name.endswith((".nii.gz", ".png")):
            a, ma = read_image(f)
            b, mb = read_image(g)
            if "probabilities" in f.name or task == "restoration":
                # float outputs: equal up to the summation order of the 1x1 head, which runs
                # as a matrix product since the fixtures were written (layers/pointwise.py)
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=f.name)
            else:  # label maps: identical
                assert np.array_equal(a, b), f.name
            assert np.allclose(ma.affine, mb.affine)
        elif f.name == "restoration.json":
            assert json.loads(g.read_text())["cases"][0]["prediction"] == \
                json.loads(f.read_text())["cases"][0]["prediction"]
        else:
            assert f.read_bytes() == g.read_bytes(), f.name


def test_legacy_segmentation_checkpoint_resumes_key(tmp_path):
    """Old checkpoints carry ``best_dice``; the engine reads it as ``best_metric``."""
    import torch

    ck = torch.load(LEGACY / "segmentation" / "model" / "checkpoint_last.pt", weights_only=True)
    assert "best_dice" in ck and "best_metric" not in ck


def test_plan_round_trip_and_item_access():
    p = Plan("segmentation", 2, 1, 3, "unet", {"channels": [4, 8]}, ["bg", "a", "b"],
             ["c1"], ["c2"], {"patch_size": [32, 32]})
    d = p.to_dict()
    assert d["model"] == {"name": "unet", "options": {"channels": [4, 8]}}
    q = Plan.from_dict(json.loads(json.dumps(d)))
    assert q == p and q["patch_size"] == [32, 32] and q["num_classes"] == 3
    assert q.get("missing", 7) == 7


def _copy(tmp_path: Path, task: str = "segmentation") -> Path:
    dst = tmp_path / "model"
    shutil.copytree(LEGACY / task / "model", dst)
    return dst


def _edit(folder: Path, change) -> None:
    p = folder / "plan.json"
    d = json.loads(p.read_text())
    change(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(spatial_dims="2"), "'spatial_dims' must be int"),
    (lambda d: d.update(spatial_dims=4), "must be 2 or 3"),
    (lambda d: d.update(task="segmentation3000"), "unknown task 'segmentation3000'"),
    (lambda d: d["model"].update(name="nonet"), "unknown network 'nonet'"),
    (lambda d: d.update(format="medseg-plan/99"), "unknown plan format"),
    (lambda d: d.pop("in_channels"), "no 'in_channels' entry"),
    (lambda d: d.update(patch_size=[32]), "'patch_size' must be 2 sizes"),
    (lambda d: d.update(preprocess=[]), "'preprocess' has the wrong type"),
    (lambda d: d["inference"].update(overlap=1.0), "'inference' is out of range"),
    (lambda d: d.update(class_names=[1, 2, 3]), "must be a list of text"),
])
def test_bad_plan_is_one_error_naming_plan_json(tmp_path, change, message):
    folder = _copy(tmp_path)
    _edit(folder, change)
    with pytest.raises(InputError, match=message) as e:
        ModelFolder.open(folder)
    assert e.value.path == folder / "plan.json"


def test_plan_that_is_not_json_or_not_an_object(tmp_path, capsys):
    folder = _copy(tmp_path)
    (folder / "plan.json").write_text("{not json")
    with pytest.raises(InputError, match="plan.json is not valid JSON"):
        ModelFolder.open(folder)
    (folder / "plan.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a JSON object, got list"):
        ModelFolder.open(folder)
    rc = main(["predict", "--model", str(folder), "--input", str(tmp_path), "--output",
               str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "plan.json" in err[0]
    assert not (tmp_path / "p").exists()


def test_options_that_do_not_build_or_do_not_match_the_weights(tmp_path):
    folder = _copy(tmp_path)
    _edit(folder, lambda d: d["model"]["options"].update(chanels=[4, 8]))
    with pytest.raises(InputError, match="do not build 'unet'") as e:
        ModelFolder.open(folder).load_network(device="cpu")
    assert e.value.path.name == "plan.json"
    _edit(folder, lambda d: d["model"].update(options={"channels": [8, 16]}))
    with pytest.raises(InputError, match="does not match the checkpoint's weights") as e:
        ModelFolder.open(folder).load_network(device="cpu")
    assert e.value.path.name == "plan.json"


def test_task_mismatch_and_not_a_folder(tmp_path):
    with pytest.raises(InputError, match="this is a classification model, not a segmentation"):
        ModelFolder.open(LEGACY / "classification" / "model", task="segmentation")
    with pytest.raises(InputError, match="no plan.json"):
        ModelFolder.open(tmp_path)
    with pytest.raises(InputError, match="model folder not found"):
        ModelFolder.open(tmp_path / "nothing")


def test_bad_device_is_named_not_reported_as_a_corrupt_checkpoint(tmp_path, capsys):
    rc = main(["predict", "--model", str(LEGACY / "segmentation" / "model"), "--input",
               str(LEGACY / "segmentation" / "input"), "--output", str(tmp_path / "p"),
               "--device", "gpu0"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown device 'gpu0'" in err and "checkpoint" not in err


def test_describe_names_task_network_and_classes():
    text = ModelFolder.open(LEGACY / "segmentation" / "model").describe()
    assert "task        segmentation" in text and "unet" in text
    assert "background, organ, lesion" in text and "1 epoch(s)" in text
    log = list(csv.DictReader(open(LEGACY / "segmentation" / "model" / "train_log.csv")))
    assert len(log) == 1


def test_medseg_info_describes_and_checks_a_folder(tmp_path, capsys):
    assert main(["info", "--model", str(LEGACY / "classification" / "model")]) == 0
    out = capsys.readouterr().out
    assert "task        classification" in out and "resnet_classifier" in out
    folder = _copy(tmp_path)
    _edit(folder, lambda d: d["model"]["options"].update(depth=-3))
    assert main(["info", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan.json" in err[0] and "do not build 'unet'" in err[0]


@pytest.mark.parametrize("task, extra, message", [
    ("restoration", ["--uncertainty", "mc"], "--uncertainty does not apply to restoration"),
    ("segmentation", ["--split", "val"], "--split does not apply to segmentation"),
    ("classification", ["--save-probabilities"],
     "--save-probabilities does not apply to classification"),
    ("segmentation", ["--samples", "4"], "--samples applies with --uncertainty only"),
])
def test_predict_refuses_options_the_task_ignores(task, extra, message, tmp_path, capsys):
    inp = LEGACY / task / CASES[task][0]
    rc = main(["predict", "--model", str(LEGACY / task / "model"), "--input", str(inp),
               "--output", str(tmp_path / "p"), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p").exists()


def test_a_plan_asking_for_a_huge_network_is_refused_before_allocating(tmp_path):
    import resource

    folder = _copy(tmp_path)
    _edit(folder, lambda d: d["model"]["options"].update(channels=[60000, 120000]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="parameters \\(more than") as e:
        ModelFolder.open(folder).load_network(device="cpu")
    assert e.value.path.name == "plan.json"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # the ~500 GB network was never allocated


def test_member_names_the_os_cannot_hold_or_links_out_are_one_line_errors(tmp_path):
    """A too-long member name is a missing member (no OSError escapes, found by the fuzz
    campaign); a member that is a link to a model elsewhere is refused."""
    m = tmp_path / "ens"
    shutil.copytree(LEGACY / "segmentation" / "model", m)
    plan = json.loads((m / "plan.json").read_text())
    plan["members"] = ["x" * 300]
    (m / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match=r"the ensemble member 'x{300}' is missing"):
        ModelFolder.open(m)
    other = tmp_path / "other"
    shutil.copytree(LEGACY / "segmentation" / "model", other)
    (m / "member_0").symlink_to(other, target_is_directory=True)
    plan["members"] = ["member_0"]
    (m / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match=r"members\[0\] 'member_0' is a link leading out"):
        ModelFolder.open(m)
