"""One flag name per meaning across subcommands: ``--output`` for the output folder and
``--n-train`` for the number of training cases; the old ``--out`` / ``--n`` still work for one
release, hidden from ``--help``, with a note on stderr."""

from __future__ import annotations

import hashlib
import re
import sys
import types

import pytest

from medseg.cli import _parser, main

#: Subcommand -> {new flag: old spelling}.
RENAMED = {
    "demo": {"--output": "--out"},
    "phantoms": {"--output": "--out"},
    "simulate": {"--output": "--out", "--n-train": "--n"},
    "restoration-data": {"--output": "--out", "--n-train": "--n"},
}


def _tree_hash(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _args(cmd: str, out, n: str, spelling: str) -> list[str]:
    """A small run of ``cmd`` writing to ``out`` with ``n`` training cases."""
    o, t = ("--output", "--n-train") if spelling == "new" else ("--out", "--n")
    if cmd == "phantoms":
        return ["phantoms", o, str(out), "--size", "16", "--n-train", n, "--n-test", "1"]
    if cmd == "simulate":
        return ["simulate", "--modality", "mr", "--size", "16", t, n, o, str(out),
                "--acceleration", "2"]
    return ["restoration-data", "--modality", "us", "--size", "16", t, n, "--n-test", "1",
            o, str(out)]


def _help(cmd: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["phantoms", "simulate", "restoration-data"])
def test_new_and_old_spellings_write_the_same_dataset(cmd, tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    assert main(_args(cmd, new, "2", "new")) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(_args(cmd, old, "2", "old")) == 0
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "use --output" in err
    if cmd != "phantoms":
        assert "--n is deprecated" in err and "use --n-train" in err
    assert _tree_hash(new) == _tree_hash(old)
    assert len(list((new / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize("cmd", sorted(RENAMED))
def test_both_spellings_fill_the_same_dest(cmd):
    required = ["--modality", "mr"] if cmd == "simulate" else []
    for spellings in ({"new"}, {"old"}):
        argv = [cmd, *required]
        for new, old in RENAMED[cmd].items():
            argv += [new if "new" in spellings else old, "7" if new == "--n-train" else "dir"]
        a = _parser().parse_args(argv)
        assert a.output == "dir"
        if "--n-train" in RENAMED[cmd]:
            assert a.n_train == 7


def test_defaults_stay_when_no_spelling_is_given():
    assert _parser().parse_args(["demo"]).output == "medseg_demo_output"
    a = _parser().parse_args(["restoration-data", "--output", "x"])
    assert a.n_train == 40


def test_one_spelling_at_a_time_and_required_flags_stay_required(capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["phantoms", "--output", "a", "--out", "b"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["simulate", "--modality", "mr", "--output", "a"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--n-train" in err and not re.search(r"--n\b(?!-)", err)


@pytest.mark.parametrize("cmd", sorted(RENAMED))
def test_old_spellings_are_not_in_help(cmd, capsys):
    text = _help(cmd, capsys)
    for new, old in RENAMED[cmd].items():
        assert new in text
        assert not re.search(re.escape(old) + r"(?![\w-])", text), f"{old} shown in {cmd} --help"


@pytest.mark.parametrize("cmd", [*sorted(RENAMED), "convert-outlines", "train", "predict",
                                 "evaluate"])
def test_every_output_folder_flag_is_called_output(cmd, capsys):
    text = _help(cmd, capsys)
    assert re.search(r"--output\b", text)
    assert not re.search(r"--out(?![\w-])", text)


def test_demo_passes_the_output_folder_to_run_demo(monkeypatch, capsys):
    """``medseg demo --output`` (and the old ``--out``) reach the demo's settings."""
    seen = []
    fake = types.ModuleType("medseg.workflows.demo")
    fake.DemoSettings = lambda **kw: kw
    fake.run_demo = seen.append
    monkeypatch.setitem(sys.modules, "medseg.workflows.demo", fake)
    assert main(["demo", "--output", "d1", "--size", "16"]) == 0
    assert main(["demo", "--out", "d1", "--size", "16"]) == 0
    assert "--out is deprecated" in capsys.readouterr().err
    assert seen[0]["out"] == "d1" and seen[0] == seen[1]
