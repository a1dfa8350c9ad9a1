"""Intervals of the mean in every evaluation: resampling cases or subjects (issue 13's honest
intervals), in ``metrics.json``, the printed table and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.metrics.aggregate import mean_intervals


def _case(name: str, d1: float, d2: float | None) -> dict:
    return {"case": name, "classes": {1: {"dice": d1}, 2: {"dice": d2}}}


def test_subjects_resampled_whole():
    # three copies of every subject's case: resampling subjects gives exactly the interval of
    # one case per subject (the same draws), resampling the copies one by one a narrower one
    rng = np.random.default_rng(4)
    d = rng.uniform(0.5, 1.0, (8, 2))
    single = [_case(f"s{i}", *d[i]) for i in range(8)]
    copies = [_case(f"s{i}_{j}", *d[i]) for i in range(8) for j in range(3)]
    subjects = [f"s{i}" for i in range(8) for _ in range(3)]
    one = mean_intervals(single, ["dice"], n_boot=400, seed=2)
    grouped = mean_intervals(copies, ["dice"], n_boot=400, seed=2, subjects=subjects)
    naive = mean_intervals(copies, ["dice"], n_boot=400, seed=2)
    assert grouped["over"] == "subjects" and grouped["n_groups"] == 8
    assert naive["over"] == "cases" and naive["n_groups"] == 24
    for cls in (1, 2):
        np.testing.assert_allclose(grouped["classes"][cls]["dice"], one["classes"][cls]["dice"],
                                   rtol=1e-12)
        width = np.diff(grouped["classes"][cls]["dice"])[0]
        assert np.diff(naive["classes"][cls]["dice"])[0] < 0.8 * width
    np.testing.assert_allclose(grouped["pooled"]["dice"], one["pooled"]["dice"], rtol=1e-12)
    # a plain loop: cases drawn with replacement, the mean of each class's finite values
    res = [_case("a", 0.2, 1.0), _case("b", 0.6, None), _case("c", 1.0, 0.5)]
    got = mean_intervals(res, ["dice"], n_boot=300, seed=5)
    draws = np.random.default_rng(5)
    v1, v2 = np.array([0.2, 0.6, 1.0]), np.array([1.0, np.nan, 0.5])
    m1, m2 = [], []
    for _ in range(300):
        i = draws.integers(0, 3, 3)
        m1.append(v1[i].mean())
        if not np.isnan(v2[i]).all():
            m2.append(np.nanmean(v2[i]))
    np.testing.assert_allclose(got["classes"][1]["dice"], np.quantile(m1, [0.025, 0.975]),
                               rtol=1e-12)
    np.testing.assert_allclose(got["classes"][2]["dice"], np.quantile(m2, [0.025, 0.975]),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="clusters"):
        mean_intervals(res, ["dice"], subjects=["a", "b"])


def _masks(folder, shift: int) -> None:
    folder.mkdir()
    for s in range(4):
        for v in range(2):
            m = np.zeros((24, 24), np.uint8)
            m[4 + shift * (s % 2) * v:14, 4:14 + s] = 1
            Image.fromarray(m).save(folder / f"{s:03d}_{v}HC.png")


def test_evaluate_group_regex_segmentation_and_classification(tmp_path, capsys):
    _masks(tmp_path / "ref", 0)
    _masks(tmp_path / "pred", 3)
    out = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--output", str(out), "--group-regex", r"^(\d+)_", "--bootstrap", "200"]) == 0
    text = capsys.readouterr().out
    assert "mean 95% CI" in text and "over subjects (4; 200 resamples)" in text
    doc = json.loads((out / "metrics.json").read_text())
    ci = doc["summary"]["ci95"]
    assert ci["over"] == "subjects" and ci["n_groups"] == 4 and ci["n_boot"] == 200
    cases = [{"case": c["case"], "classes": {int(k): v for k, v in c["classes"].items()}}
             for c in doc["cases"]]
    want = mean_intervals(cases, n_boot=200, subjects=[c["case"][:3] for c in cases])
    np.testing.assert_allclose(ci["classes"]["1"]["dice"], want["classes"][1]["dice"],
                               rtol=1e-12)
    lo, hi = ci["classes"]["1"]["dice"]
    assert lo <= doc["summary"]["classes"]["1"]["dice"]["mean"] <= hi
    # without the regex the cases are resampled; --bootstrap 0 writes no interval
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--output", str(tmp_path / "ev2"), "--bootstrap", "0"]) == 0
    assert "ci95" not in json.loads((tmp_path / "ev2" / "metrics.json").read_text())["summary"]
    # a regex that misses a case name is a one-line input error
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--output", str(tmp_path / "ev3"), "--group-regex", r"^(\d+)x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--group-regex" in err[0] and "does not match" in err[0]
    # classification: the intervals resample subjects and say so
    from helpers import write_toy_npz

    npz, _ = write_toy_npz(tmp_path / "toy.npz", seed=0)
    data = np.load(npz)
    pred = tmp_path / "cls"
    pred.mkdir()
    ids = [f"val_{i:05d}" for i in range(len(data["val_labels"]))]
    p1 = np.linspace(0.05, 0.95, len(ids))
    (pred / "predictions.csv").write_text("id,p_0,p_1,prediction\n" + "".join(
        f"{i},{1 - p:.6f},{p:.6f},{int(p >= 0.5)}\n" for i, p in zip(ids, p1, strict=True)))
    assert main(["evaluate", "--pred", str(pred), "--ref", str(npz), "--split", "val",
                 "--output", str(tmp_path / "evc"), "--group-regex", r"(\d)$",
                 "--bootstrap", "100"]) == 0
    s = json.loads((tmp_path / "evc" / "metrics.json").read_text())["summary"]
    assert s["ci"]["resampled"] == "subjects"
