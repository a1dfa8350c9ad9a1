"""The embedded default job: phantoms -> train -> predict -> evaluate -> report."""

from __future__ import annotations

import pytest

from medseg.errors import InputError
from medseg.workflows.demo import DemoSettings, run_demo


def test_tiny_demo_end_to_end(tmp_path):
    lines = []
    s = DemoSettings(out=str(tmp_path / "demo"), size=32, n_train=6, n_test=2, epochs=2,
                     device="cpu")
    res = run_demo(s, log=lines.append)
    out = tmp_path / "demo"
    assert (out / "evaluation" / "report.html").is_file()
    assert (out / "evaluation" / "metrics.json").is_file()
    assert len(list((out / "evaluation" / "overlays").glob("*.png"))) == 2
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2
    assert 0.0 <= res["dice"] <= 1.0
    assert any("held-out mean foreground Dice" in ln for ln in lines)
    # a second run refuses without --force, and replaces with it
    with pytest.raises(InputError, match="--force"):
        run_demo(s, log=lines.append)
    s.force = True
    run_demo(s, log=lines.append)


def test_demo_never_overwrites_user_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.nii.gz").write_bytes(b"data")
    with pytest.raises(InputError, match="not written by medseg demo"):
        run_demo(DemoSettings(out=str(mine), force=True), log=lambda s: None)
    assert (mine / "precious.nii.gz").read_bytes() == b"data"


@pytest.mark.slow
def test_default_2d_demo_reaches_dice_080(tmp_path):
    res = run_demo(DemoSettings(out=str(tmp_path / "demo"), device="cpu"), log=print)
    assert res["dice"] >= 0.80
    assert res["minutes"] < 10
