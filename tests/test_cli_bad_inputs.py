"""Every bad input of the hostile-input issue through the ``medseg`` command line, as a table.

Each row builds one bad input in a fresh folder and runs the command a user would type. The
promise checked for every row: exit code 2, exactly one line on stderr, that line names the
culprit (the file, or the flag when the fault is a flag), no traceback, and every file of the
folder the command was given is unchanged (its bytes and its names).

The default suite calls :func:`medseg.cli.main` in-process (the console script's own entry
point); the ``slow`` twin runs the installed ``medseg`` executable in a subprocess for each row.
With ``MEDSEG_BAD_INPUT_TABLE=FILE`` the rows and their messages are written to ``FILE`` as a
Markdown table (how the issue's closing note lists them).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from folder_state import folder_state
from medseg.cli import main
from medseg.io import ImageMeta, write_dicom_series

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v1"


@dataclass
class Case:
    """A bad input: the command to run, the text its line must name, the folder to watch."""

    argv: list[str]
    names: str
    watch: Path


def _model(t: Path) -> Path:
    m = t / "model"
    shutil.copytree(LEGACY / "segmentation" / "model", m)
    return m


def _predict(t: Path, model: Path | None = None, inp: Path | None = None, *extra: str) -> list[str]:
    model = model or _model(t)
    if inp is None:
        inp = t / "input"
        shutil.copytree(LEGACY / "segmentation" / "input", inp)
    return ["predict", "--model", str(model), "--input", str(inp), "--output", str(t / "out"),
            "--device", "cpu", *extra]


def _plan(t: Path, edit: Callable[[dict], object]) -> Case:
    m = _model(t)
    plan = json.loads((m / "plan.json").read_text())
    new = edit(plan)
    (m / "plan.json").write_text(new if isinstance(new, str) else json.dumps(new))
    return Case(_predict(t, m), str(m / "plan.json"), t)


def _set_model(plan: dict, **options) -> dict:
    plan["model"]["options"].update(options)
    return plan


def _image(t: Path, spacing: tuple[float, float]) -> Case:
    """A 2D NIfTI whose header (pixdim, qform only) states ``spacing``, written field by field."""
    inp = t / "input"
    inp.mkdir()
    f = inp / "case_0000.nii.gz"
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((32, 32))
    hdr["pixdim"] = [1, *spacing, 1, 1, 1, 1, 1]
    hdr["qform_code"], hdr["sform_code"], hdr["vox_offset"] = 1, 0, 352
    f.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock))
                                + b"\0" * (32 * 32 * 4)))
    return Case(_predict(t, inp=inp), str(f), t)


def _msd(t: Path, **changes) -> Case:
    root = t / "ds"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    lab = nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4))
    for i in range(2):
        nib.save(img, root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(lab, root / "labelsTr" / f"c{i}.nii.gz")
    nib.save(img, root / "imagesTs" / "t0.nii.gz")
    table = {"name": "x", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
             "numTraining": 2,
             "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                          for i in range(2)],
             "test": ["./imagesTs/t0.nii.gz"]}
    table.update(changes)
    text = json.dumps(table).replace('"@INF@"', "Infinity").replace('"@NAN@"', "NaN")
    (root / "dataset.json").write_text(text)
    return Case(["train", "--dataset", str(root), "--output", str(t / "m"), "--epochs", "1"],
                str(root / "dataset.json"), t)


def _dicom(t: Path, attr: str, value: object) -> Case:
    folder = t / "series"
    meta = ImageMeta.from_spacing((0.5, 0.5, 2.0), (6, 5, 3))
    files = write_dicom_series(folder, np.arange(90, dtype=np.float32).reshape(6, 5, 3), meta)
    for f in files:
        ds = pydicom.dcmread(f)
        setattr(ds, attr, value)
        ds.save_as(f)
    m = t / "model"
    shutil.copytree(LEGACY / "segmentation" / "model", m)
    return Case(_predict(t, m, folder), str(folder / "IM0001.dcm"), t)


def _csv(t: Path, text: bytes) -> Case:
    root = t / "cls"
    root.mkdir()
    (root / "labels.csv").write_bytes(text)
    return Case(["train", "--task", "classification", "--dataset", str(root / "labels.csv"),
                 "--output", str(t / "m")], str(root / "labels.csv"), t)


def _predictions_csv(t: Path) -> Case:
    d = t / "cls"
    d.mkdir()
    shutil.copy(LEGACY / "classification" / "input.npz", d / "input.npz")
    (d / "predictions.csv").write_text("id,p_0,p_1,prediction\nval_00000,0.2,abc,1\n")
    return Case(["evaluate", "--pred", str(d / "predictions.csv"), "--ref", str(d / "input.npz"),
                 "--output", str(t / "ev")], str(d / "predictions.csv"), t)


def _config(t: Path, text: bytes, *sets: str) -> Case:
    t.joinpath("ds").mkdir()
    cfg = t / "config.yaml"
    cfg.write_bytes(text)
    return Case(["train", "--config", str(cfg), "--dataset", str(t / "ds"), "--output",
                 str(t / "m"), *sets], str(cfg), t)


def _pickle_checkpoint(t: Path) -> Case:
    m = _model(t)
    torch.save({"model": {}, "note": object()}, m / "checkpoint_best.pt")  # needs pickle
    return Case(_predict(t, m), str(m / "checkpoint_best.pt"), t)


def _demo_out_file(t: Path) -> Case:
    f = t / "a_file.txt"
    f.write_text("keep me")
    return Case(["demo", "--output", str(f)], str(f), t)


def _demo_out_link(t: Path) -> Case:
    (t / "real").mkdir()
    (t / "real" / "mine.txt").write_text("keep me")
    (t / "link").symlink_to(t / "real", target_is_directory=True)
    return Case(["demo", "--output", str(t / "link")], str(t / "link"), t)


def _huge_nifti(t: Path) -> Case:
    inp = t / "input"
    inp.mkdir()
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((60000, 60000, 60000))
    hdr["vox_offset"] = 544
    f = inp / "case_0000.nii"
    f.write_bytes(hdr.binaryblock + b"\0" * (544 - len(hdr.binaryblock)) + b"\0" * 64)
    return Case(_predict(t, inp=inp), str(f), t)


def _dev_zero(t: Path) -> Case:
    inp = t / "input"
    inp.mkdir()
    (inp / "case_0000.nrrd").symlink_to("/dev/zero")
    return Case(_predict(t, inp=inp), str(inp / "case_0000.nrrd"), t)


def _outside_root(t: Path) -> Case:
    secret = t / "secret.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), secret)
    return _msd(t, test=[str(secret)])


#: name -> (builder, the fragment the one line must hold)
CASES: dict[str, tuple[Callable[[Path], Case], str]] = {
    "plan.json invalid JSON": (lambda t: _plan(t, lambda p: "{not json"), "not valid JSON"),
    "plan.json a list": (lambda t: _plan(t, lambda p: [p]), "must hold a JSON object"),
    "plan.json unknown network": (
        lambda t: _plan(t, lambda p: {**p, "model": {"name": "resnet9000", "options": {}}}),
        "resnet9000"),
    "plan.json options that do not match the checkpoint": (
        lambda t: _plan(t, lambda p: _set_model(p, channels=[8, 16, 32])), "checkpoint"),
    "plan.json asking for a huge network": (
        lambda t: _plan(t, lambda p: _set_model(p, channels=[4096, 8192, 16384, 32768])),
        "parameters"),
    "--overlap 1": (lambda t: Case(_predict(t, None, None, "--overlap", "1"), "--overlap", t),
                    "overlap"),
    "a bad --device": (
        lambda t: Case(_predict(t)[:-1] + ["cuda:7"], "--device", t), "cuda:7"),
    "dataset.json label Infinity": (
        lambda t: _msd(t, labels={"0": "background", "1": "@INF@"}), "Infinity"),
    "dataset.json label NaN": (lambda t: _msd(t, labels={"0": "background", "1": "@NAN@"}),
                               "NaN"),
    'dataset.json "test": 5': (lambda t: _msd(t, test=5), "test"),
    "dataset.json test entry without image": (lambda t: _msd(t, test=[{"label": "x"}]),
                                              "image"),
    "dataset.json path outside the dataset folder": (_outside_root, "is an absolute path"),
    "--dataset-json that is a list": (
        lambda t: _with_dataset_json_list(t), "must hold a JSON object, not a list"),
    "non-UTF-8 CSV": (lambda t: _csv(t, b"image,label\n\xff\xfe.png,1\n"), "UTF-8"),
    "CSV field over the csv module's limit": (
        lambda t: _csv(t, b"image,label\n" + b"a" * 200_000 + b".png,1\n"), "field"),
    "predictions.csv with a non-numeric probability": (_predictions_csv, "abc"),
    "--set with a YAML syntax error": (
        lambda t: _with_set(t, "train.epochs=[1, 2"), "--set"),
    "--set with a !!python tag": (
        lambda t: _with_set(t, "train.epochs=!!python/object/apply:os.system [ls]"), "--set"),
    "a binary --config": (lambda t: _config(t, b"\x00\x01\xff\xfe" * 64), "config"),
    "a YAML alias bomb --config": (
        lambda t: _config(t, b"a: &a [x, x, x, x, x, x, x, x, x]\n"
                             + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, "
                                        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
                                        .encode() for i in range(8))), "aliases"),
    "a pickle (not weights-only) checkpoint": (
        _pickle_checkpoint, "not a weights-only checkpoint"),
    "DICOM with a two-valued RescaleSlope": (
        lambda t: _dicom(t, "RescaleSlope", ["1", "2"]), "RescaleSlope"),
    "DICOM with a single-valued PixelSpacing": (
        lambda t: _dicom(t, "PixelSpacing", ["0.5"]), "PixelSpacing"),
    "image with zero spacing": (lambda t: _image(t, (0.0, 1.0)), "spacing"),
    "image with negative spacing": (lambda t: _image(t, (-1.0, 1.0)), "spacing"),
    "image with NaN spacing": (lambda t: _image(t, (float("nan"), 1.0)), "spacing"),
    "image with 5000 mm spacing": (lambda t: _image(t, (5000.0, 1.0)), "spacing"),
    "NIfTI-2 header declaring 60000^3 voxels": (_huge_nifti, "MEDSEG_MAX_IMAGE_BYTES"),
    "a .nrrd that is a link to /dev/zero": (_dev_zero, "not a regular file"),
    "demo --output pointing at a file": (_demo_out_file, "not a folder"),
    "demo --output a symbolically linked folder": (_demo_out_link, "symbolic link"),
}


def _with_set(t: Path, assignment: str) -> Case:
    t.joinpath("ds").mkdir()
    return Case(["train", "--dataset", str(t / "ds"), "--output", str(t / "m"), "--set",
                 assignment], "--set", t)


def _with_dataset_json_list(t: Path) -> Case:
    c = _predict(t)
    js = t / "dataset.json"
    js.write_text("[1, 2]")
    ref = LEGACY / "segmentation" / "expected"
    shutil.copytree(ref, t / "ref")
    return Case(["evaluate", "--pred", str(t / "ref"), "--ref", str(t / "ref"), "--output",
                 str(t / "ev"), "--dataset-json", str(js)], str(js), Path(c[4]).parent)


def _check(name: str, code: int, err: str, case: Case, before: dict, fragment: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{name}: exit {code}, stderr {err!r}"
    assert len(lines) == 1, f"{name}: {len(lines)} lines on stderr: {err!r}"
    line = lines[0]
    assert "Traceback" not in line and "internal error" not in line, f"{name}: {line}"
    assert case.names in line, f"{name}: the line does not name {case.names}: {line}"
    assert fragment.lower() in line.lower(), f"{name}: {fragment!r} not in {line}"
    assert folder_state(case.watch) == before, f"{name}: the input folder changed"
    return line


def _record(name: str, line: str) -> None:
    table = os.environ.get("MEDSEG_BAD_INPUT_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as f:
            f.write(f"| {name} | `{line.replace('|', '/')}` |\n")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_changes(name, tmp_path, capsys):
    build, fragment = CASES[name]
    case = build(tmp_path)
    before = folder_state(case.watch)
    capsys.readouterr()
    code = main(case.argv)
    out = capsys.readouterr()
    _record(name, _check(name, code, out.err, case, before, fragment))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_through_the_installed_command(name, tmp_path):
    exe = Path(sys.executable).with_name("medseg")
    if not exe.is_file():
        pytest.skip(f"no medseg console script beside {sys.executable} (pip install -e .)")
    build, fragment = CASES[name]
    case = build(tmp_path)
    before = folder_state(case.watch)
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSEG_DEBUG",)}
    res = subprocess.run([str(exe), *case.argv], capture_output=True, text=True, timeout=300,
                         env=env)
    _check(name, res.returncode, res.stderr, case, before, fragment)
