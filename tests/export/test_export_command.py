"""``medseg export``: the JSON beside the file, refusals (overwrite, ensembles, dynamic axes a
network cannot have, bad folders: one line and exit 2), the TorchScript and torch.export
formats, and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from export_helpers import INFERENCE, SIZES, write_model_folder

import medseg.export.deploy as deploy
from medseg.cli import main
from medseg.export import export_model, load_for_export, sidecar_path
from medseg.model_folder import Plan, write_plan

pytest.importorskip("onnxruntime")

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"
CT = {"spatial_dims": 2, "target_spacing": [0.8, 0.8],
      "normalization": [{"scheme": "ct", "clip_low": -100.0, "clip_high": 250.0, "mean": 60.0,
                         "std": 40.0, "modality": "CT", "path_mm": 200.0}],
      "label_interpolation": "nearest", "ignore_label": None}


def _run(capsys, *args: str) -> tuple[int, str]:
    rc = main(["export", *args])
    return rc, capsys.readouterr().err


def test_segmentation_sidecar_holds_what_a_deployment_needs(tmp_path, capsys) -> None:
    inference = {**INFERENCE, "overlap": 0.25, "tta": True}
    folder = write_model_folder(tmp_path / "m", "unet", 2, [32, 32], temperature=0.8,
                                preprocess=CT, inference=inference)
    out = tmp_path / "deploy" / "net.onnx"
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out))
    assert rc == 0, err
    info = json.loads((tmp_path / "deploy" / "net.onnx.json").read_text())
    assert info["format"] == "medseg-export/1" and info["file_format"] == "onnx"
    assert info["opset"] == 17 and info["task"] == "segmentation"
    assert info["inputs"] == [{"name": "image", "shape": ["batch", 1, 32, 32],
                               "dtype": "float32", "meaning": info["inputs"][0]["meaning"]}]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [
        ("logits", ["batch", 3, 32, 32])]
    assert info["output_names"] == ["logits"] and info["activation"] == "softmax"
    assert info["spatial_dims"] == 2 and info["in_channels"] == 1 and info["num_classes"] == 3
    assert info["preprocess"] == json.loads((folder / "plan.json").read_text())["preprocess"]
    assert info["preprocess"]["normalization"][0]["scheme"] == "ct"
    assert info["preprocess"]["target_spacing"] == [0.8, 0.8]
    assert info["patch_size"] == [32, 32] and info["inference"] == inference
    assert info["class_names"] == ["background", "organ", "lesion"]
    assert info["temperature"] == 0.8
    assert info["dynamic"] == {"batch": True, "spatial": False, "spatial_multiple_of": None}
    assert info["network"] == {"name": "unet", "options": {"channels": [4, 8]},
                               "variance_head": False}
    assert info["source"]["checkpoint"] == "best"
    assert 0 <= info["check"]["max_abs_diff"] <= 1e-4
    assert any("Gaussian" in step for step in info["pipeline"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.onnx", "net.onnx.json"]


def test_classification_sidecar_and_dynamic_axes(tmp_path) -> None:
    folder = write_model_folder(tmp_path / "m", "resnet_classifier", 2, [28, 28],
                                num_classes=4)
    r = export_model(folder, "onnx", tmp_path / "cls.onnx", dynamic=True, opset=18)
    info = r.info
    assert info["task"] == "classification" and info["opset"] == 18
    assert info["inputs"][0]["shape"] == ["batch", 1, "spatial_0", "spatial_1"]
    assert info["outputs"][0]["shape"] == ["batch", 4]
    assert info["image_size"] == [28, 28] and info["label_task"] == "single"
    assert info["class_names"] == ["0", "1", "2", "3"] and info["temperature"] == 1.0
    assert "preprocess" not in info and "patch_size" not in info
    assert info["dynamic"]["spatial"] is True
    assert json.loads(sidecar_path(r.path).read_text()) == info


def test_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    folder = write_model_folder(tmp_path / "m", "unet", 2, [32, 32])
    out = tmp_path / "net.onnx"
    assert _run(capsys, "--model", str(folder), "--output", str(out))[0] == 0
    before = out.read_bytes(), sidecar_path(out).read_text()
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out), "--dynamic")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "exists already" in err and "--force" in err
    assert (out.read_bytes(), sidecar_path(out).read_text()) == before
    out2 = tmp_path / "other.onnx"  # the JSON alone is protected too
    sidecar_path(out2).write_text("{}")
    assert _run(capsys, "--model", str(folder), "--output", str(out2))[0] == 2
    assert not out2.exists()
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out), "--dynamic", "--force")
    assert rc == 0, err
    assert json.loads(sidecar_path(out).read_text())["dynamic"]["spatial"] is True


def _corrupt_plan(p: Path) -> Path:
    p.mkdir()
    (p / "plan.json").write_text("{not json")
    return p


def _no_checkpoint(p: Path) -> Path:
    write_model_folder(p, "unet", 2, [32, 32])
    (p / "checkpoint_best.pt").unlink()
    return p


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p, "model folder not found"),
    (_corrupt_plan, "plan.json is not valid JSON"),
    (_no_checkpoint, "checkpoint not found"),
    (lambda p: LEGACY / "restoration" / "model", "restoration models do not export"),
])
def test_bad_model_folder_is_one_line_and_exit_2(tmp_path, capsys, make, words) -> None:
    folder = make(tmp_path / "bad")
    out = tmp_path / "x.onnx"
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert err.startswith("medseg export: error:")
    assert not out.exists() and not sidecar_path(out).exists()


def test_ensemble_is_refused_and_its_member_exports(tmp_path, capsys) -> None:
    top = tmp_path / "ens"
    for k in range(2):
        write_model_folder(top / f"member_{k}", "unet", 2, [32, 32], seed=k)
    member_plan = json.loads((top / "member_0" / "plan.json").read_text())
    plan = Plan.from_dict({**member_plan, "members": ["member_0", "member_1"]})
    write_plan(plan, top)
    rc, err = _run(capsys, "--model", str(top), "--output", str(tmp_path / "e.onnx"))
    assert rc == 2 and "ensemble of 2 models" in err and "member_0" in err
    rc, err = _run(capsys, "--model", str(top / "member_0"), "--output",
                   str(tmp_path / "e.onnx"))
    assert rc == 0, err


@pytest.mark.parametrize(("name", "fmt", "words"), [
    ("transunet", "onnx", "positional embeddings"),
    ("vit_classifier", "exported-program", "positional embeddings"),
    ("deeplabv3plus", "onnx", "padded output size with math.ceil"),
    ("deeplabv3plus", "exported-program", "cannot save as a symbolic expression"),
])
def test_dynamic_refused_where_the_network_cannot(tmp_path, capsys, name, fmt, words) -> None:
    folder = write_model_folder(tmp_path / "m", name, 2, [32, 32])
    out = tmp_path / "net.bin"
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out), "--format", fmt,
                   "--dynamic")
    assert rc == 2 and words in err and "without --dynamic" in err, err
    assert not out.exists()


def test_bad_options_are_refused(tmp_path, capsys) -> None:
    folder = write_model_folder(tmp_path / "m", "unet", 2, [32, 32])
    rc, err = _run(capsys, "--model", str(folder), "--output", str(tmp_path / "a.pt"),
                   "--format", "torchscript", "--opset", "17")
    assert rc == 2 and "--opset applies to --format onnx only" in err
    rc, err = _run(capsys, "--model", str(folder), "--output", str(tmp_path / "a.onnx"),
                   "--opset", "7")
    assert rc == 2 and "--opset 7 is not supported" in err
    rc, err = _run(capsys, "--model", str(folder), "--output", str(tmp_path))
    assert rc == 2 and "is a folder" in err


@pytest.mark.parametrize(("fmt", "name", "dims"), [
    ("torchscript", "unet", 3), ("exported-program", "unet", 3),
    ("exported-program", "resnet_classifier", 2), ("torchscript", "resnet_classifier", 2),
])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load's notice
def test_torch_formats_run_without_medseg_code(tmp_path, fmt, name, dims) -> None:
    first, second = SIZES[dims]
    folder = write_model_folder(tmp_path / "m", name, dims, first, variance_head=True)
    out = tmp_path / ("net.pt" if fmt == "torchscript" else "net.pt2")
    r = export_model(folder, fmt, out, dynamic=True, checkpoint="best")
    assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-5
    assert r.info["output_names"] == ["logits", "log_var"] and r.info["opset"] is None
    loaded = (torch.jit.load(str(out)) if fmt == "torchscript"
              else torch.export.load(str(out)).module())
    _, net = load_for_export(folder)
    x = torch.randn(3, 1, *second)
    with torch.no_grad():
        got, ref = loaded(x), net(x)
    for g, e in zip(got, ref, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_a_failed_check_leaves_nothing(tmp_path, capsys, monkeypatch) -> None:
    folder = write_model_folder(tmp_path / "m", "unet", 2, [32, 32])
    out = tmp_path / "out" / "net.onnx"
    out.parent.mkdir()
    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)
    rc, err = _run(capsys, "--model", str(folder), "--output", str(out))
    assert rc == 2 and "differs from PyTorch's" in err and str(out) in err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("task", ["segmentation", "instance", "classification"])
def test_legacy_folders_export(tmp_path, task) -> None:
    """Folders written by earlier versions (``medseg-plan/1``) export too."""
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY / task / "model", folder)
    r = export_model(folder, "onnx", tmp_path / "legacy.onnx", checkpoint="last")
    assert r.info["task"] == task and r.max_abs_diff <= 1e-4
    assert r.info["source"]["checkpoint_file"] == "checkpoint_last.pt"
    if task == "classification":
        assert r.info["image_size"] == [28, 28] and r.info["outputs"][0]["shape"] == ["batch", 2]
    else:
        assert r.info["patch_size"] == json.loads((folder / "plan.json").read_text())[
            "patch_size"]
    if task == "instance":
        assert r.info["instance"]["postprocess"]["seed_threshold"] == 0.5
        assert r.info["class_names"] == ["background", "interior", "boundary"]
