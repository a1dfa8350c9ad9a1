"""Nothing is lost: predict, train and demo never destroy inputs, references or user files;
an internal error is one line, never a traceback (unless asked for)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from folder_state import folder_state
from medseg.cli import main

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v1" / "segmentation"


@pytest.fixture()
def data(tmp_path):
    ds = tmp_path / "ds"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "2", "--n-test", "2"]) == 0
    return ds


def _predict(inp: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(LEGACY / "model"), "--input", str(inp), "--output",
                 str(out), "--device", "cpu", *extra])


def test_predict_never_replaces_references_unless_asked(data, capsys):
    before = folder_state(data)
    assert _predict(data / "imagesTs", data / "labelsTs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labelsTs: the output folder is not empty" in err[0]
    assert "--overwrite" in err[0] and folder_state(data) == before
    assert _predict(data / "imagesTs", data / "labelsTs", "--overwrite") == 0  # asked for


@pytest.mark.parametrize("where", ["input", "below", "above"])
def test_predict_never_writes_where_its_inputs_are(data, where, capsys):
    out = {"input": data / "imagesTs", "below": data / "imagesTs" / "pred",
           "above": data}[where]
    before = folder_state(data)
    for extra in ([], ["--overwrite"]):
        assert _predict(data / "imagesTs", out, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("holds" in err[0] or "inputs" in err[0]), err
    assert folder_state(data) == before


def test_predict_a_single_file_into_its_own_folder_is_refused(data, capsys):
    before = folder_state(data)
    f = data / "imagesTs" / "case_002_0000.nii.gz"
    assert _predict(f, data / "imagesTs", "--overwrite") == 2
    assert "holds input files" in capsys.readouterr().err
    assert folder_state(data) == before


def test_train_refuses_a_folder_of_other_files(data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "config.yaml").write_text("my own config")
    before = folder_state(mine)
    rc = main(["train", "--dataset", str(data), "--output", str(mine), "--epochs", "1",
               "--steps-per-epoch", "1", "--batch-size", "1", "--patch-size", "32", "32",
               "--device", "cpu", "--set", "model.options.channels=[4,8]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a medseg model folder" in err[0]
    assert "notes.txt" in err[0] and folder_state(mine) == before


def test_demo_force_removes_only_what_the_demo_wrote(tmp_path, monkeypatch):
    from medseg.workflows import demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / ".medseg_demo").write_text("written by medseg demo")
    for name in demo.DEMO_ITEMS[:-1]:
        (out / name).mkdir()
        (out / name / "old.txt").write_text("old")
    (out / "my_notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("mine too")
    monkeypatch.setattr(demo, "write_phantom_dataset", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))  # stop right after the clean-up
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(demo.DemoSettings(out=str(out), force=True), log=lambda _m: None)
    assert (out / "my_notes.txt").read_text() == "mine"
    assert (out / "mine" / "x.txt").read_text() == "mine too"
    assert not any((out / n / "old.txt").exists() for n in demo.DEMO_ITEMS[:-1])


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from medseg.workflows import commands

    def boom(_a):
        raise TypeError("something nobody expected")

    monkeypatch.setattr(commands, "cmd_models", boom)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (TypeError at test_data_safety.py" in err[0]
    assert "this is a bug" in err[0] and "--debug" in err[0]
    assert main(["--debug", "models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "something nobody expected" in err
    monkeypatch.setenv("MEDSEG_DEBUG", "1")
    assert main(["models"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("err, message", [
    (28, "no space left on the device writing m.json"),   # ENOSPC
    (30, "the folder is read-only or not yours"),           # EROFS
])
def test_a_full_disk_or_read_only_folder_is_one_line_and_keeps_the_old_file(
        tmp_path, monkeypatch, err, message):
    import os

    from medseg.errors import InputError
    from medseg.io import atomic

    path = tmp_path / "m.json"
    atomic.atomic_write_text(path, "old")

    def fail(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(InputError, match=message) as e:
        atomic.atomic_write_text(path, "new")
    assert e.value.path == tmp_path and "previous file is kept" in str(e.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_metrics_json_and_csv_never_disagree_after_a_crash(tmp_path, monkeypatch):
    import json

    from medseg.metrics import aggregate

    out = tmp_path / "ev"
    aggregate.write_metrics_pair(out, {"v": 1}, "a,b\n1,2\n")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["metrics_csv_sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    real = aggregate.atomic_write_text

    def crash_on_json(path, text):
        if path.name == "metrics.json":
            raise KeyboardInterrupt  # the process dies between the two writes
        return real(path, text)

    monkeypatch.setattr(aggregate, "atomic_write_text", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        aggregate.write_metrics_pair(out, {"v": 2}, "a,b\n3,4\n")
    # the new CSV is there, and no metrics.json describes another CSV
    assert (out / "metrics.csv").read_text() == "a,b\n3,4\n"
    assert not (out / "metrics.json").exists()


def test_dataset_json_given_as_a_list_is_one_line(tmp_path, capsys):
    ref = tmp_path / "ref"
    ref.mkdir()
    dj = tmp_path / "dataset.json"
    dj.write_text("[1, 2]")
    rc = main(["evaluate", "--pred", str(ref), "--ref", str(ref), "--output",
               str(tmp_path / "ev"), "--dataset-json", str(dj)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "dataset.json" in err[0]
