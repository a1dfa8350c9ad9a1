"""U5 in use: the review ranking, active-learning selection and conformal volume intervals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.workflows.review import rank_cases

FLAGS = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4", "--patch-size", "32",
         "32", "--device", "cpu", "--set", "model.options.channels=[4,8]",
         "--set", "model.options.dropout=0.3", "--set", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rev")
    ds = root / "ds"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "5", "--n-test", "10", "--lesion-fraction", "0.03"]) == 0
    model = root / "m"
    assert main(["train", "--dataset", str(ds), "--output", str(model), *FLAGS]) == 0
    return ds, model


def test_review_ranks_cases_by_the_chosen_column(trained, tmp_path):
    ds, model = trained
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"), "--output",
                 str(out), "--uncertainty", "mc", "--samples", "4", "--device", "cpu"]) == 0
    assert main(["review", "--pred", str(out), "--by", "mutual_information_image"]) == 0
    # the maps beside the label maps are not taken for predictions
    assert main(["evaluate", "--pred", str(out), "--ref", str(ds / "labelsTs"), "--output",
                 str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(doc["cases"]) == 10
    review = list(csv.DictReader(open(out / "review.csv")))
    table = list(csv.DictReader(open(out / "uncertainty.csv")))
    per_case: dict[str, list[float]] = {}
    for r in table:
        per_case.setdefault(r["case"], []).append(float(r["mutual_information_image"]))
    want = sorted(per_case, key=lambda c: -np.mean(per_case[c]))
    assert [r["case"] for r in review] == want and [r["rank"] for r in review] == \
        [str(i) for i in range(1, 11)]
    assert float(review[0]["score"]) == pytest.approx(np.mean(per_case[want[0]]))
    with pytest.raises(Exception, match="no column 'nonsense'"):
        rank_cases(out, "nonsense")


def test_select_picks_the_n_highest_acquisition_scores(trained, tmp_path):
    ds, model = trained
    out = tmp_path / "sel"
    assert main(["select", "--model", str(model), "--pool", str(ds / "imagesTs"), "--n", "3",
                 "--output", str(out), "--samples", "4", "--device", "cpu"]) == 0
    chosen = list(csv.DictReader(open(out / "selection.csv")))
    everything = rank_cases(out / "predictions", "mutual_information_image")
    assert [r["case"] for r in chosen] == [r["case"] for r in everything[:3]]
    assert float(chosen[0]["score"]) >= float(chosen[-1]["score"])


def test_conformal_volume_interval_from_the_model_folder(trained, tmp_path):
    ds, model = trained
    folder = tmp_path / "m"
    import shutil

    shutil.copytree(model, folder)
    assert main(["calibrate", "--model", str(folder), "--data", str(ds), "--conformal",
                 "--uncertainty", "mc", "--samples", "4", "--alpha", "0.2", "--device",
                 "cpu"]) == 0
    doc = json.loads((folder / "calibration.json").read_text())
    assert "temperature" in doc  # the temperature fitted at training is kept
    conf = doc["conformal"]
    assert conf["method"] == "mc" and conf["n_cases"] == 10
    assert set(conf["classes"]) == {"organ", "lesion"}
    assert all(c["score"] == "normalized" and c["n"] == 10 for c in conf["classes"].values())
    out = tmp_path / "p"
    assert main(["predict", "--model", str(folder), "--input", str(ds / "imagesTs"), "--output",
                 str(out), "--uncertainty", "mc", "--samples", "4", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out / "uncertainty.csv")))
    for r in rows:
        q = conf["classes"][r["class"]]
        width = float(q["quantile"]) * (float(r["volume_sample_std"]) + q["eps"])
        assert float(r["volume_conformal_high"]) == pytest.approx(float(r["volume"]) + width)
        assert float(r["conformal_coverage"]) == pytest.approx(0.8)
    # the calibration cases themselves: the interval covers at least ceil(11 * 0.8) = 9 of 10
    refs = {f.name.split(".")[0]: f for f in (ds / "labelsTs").iterdir()}
    from medseg.io import read_label

    covered = {"organ": 0, "lesion": 0}
    for r in rows:
        lab, meta = read_label(refs[r["case"]])
        vol = float((lab == {"organ": 1, "lesion": 2}[r["class"]]).sum()) * float(
            np.prod(meta.spacing[:2]))
        covered[r["class"]] += float(r["volume_conformal_low"]) <= vol <= float(
            r["volume_conformal_high"])
    assert all(v >= 9 for v in covered.values()), covered
