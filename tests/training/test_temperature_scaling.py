"""Temperature scaling written once in the engine (U5): fitted on the validation split at the
end of training, saved in the model folder, used by predict; ``medseg calibrate`` on other data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.io import read_image
from medseg.model_folder import ModelFolder
from medseg.tasks.classification import classifier_logits, preprocess_cls_images
from medseg.training.calibration import read_temperature, temper


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory):
    """A classifier trained far too long on 24 noisy images: over-confident on new ones."""
    root = tmp_path_factory.mktemp("cal")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 224)
    x = rng.integers(0, 120, (224, 16, 16)).astype(np.uint8)
    x[y == 1, 6:10, 6:10] += 40  # a faint cue: the classes overlap
    npz = root / "toy.npz"
    np.savez(npz, train_images=x[:24], train_labels=y[:24, None], val_images=x[24:124],
             val_labels=y[24:124, None], test_images=x[124:], test_labels=y[124:, None])
    model = root / "m"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), "--epochs", "30", "--steps-per-epoch", "3", "--batch-size", "8",
                 "--device", "cpu", "--set", "model.options.channels=[8,16]",
                 "--set", "model.options.blocks_per_stage=[1,1]", "--set", "optim.lr=0.01",
                 "--set", "augment.enabled=false", "--set", "optim.schedule=constant"]) == 0
    return npz, model


def test_training_ends_with_a_temperature_that_lowers_the_ece(overconfident):
    _, model = overconfident
    doc = json.loads((model / "calibration.json").read_text())
    assert doc["method"] == "temperature" and doc["kind"] == "softmax"
    assert doc["n_elements"] == 100 and doc["fitted_on"].startswith("the validation split")
    assert doc["temperature"] > 1.2  # over-confident: the fit softens it
    for b in ("width", "mass"):
        assert doc["ece_after"][b] < doc["ece_before"][b]
    assert doc["nll_after"] < doc["nll_before"]
    assert sum(doc["reliability_before"]["count"]) == 100
    assert (model / "reliability_before.png").is_file()
    assert (model / "reliability_after.png").is_file()


def test_predict_uses_the_folder_temperature(overconfident, tmp_path):
    npz, model = overconfident
    out = tmp_path / "p"
    # fp32: bf16 would round the two pipelines' inputs (equal to ~1e-7) differently
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "val",
                 "--output", str(out), "--device", "cpu", "--precision", "fp32"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    folder = ModelFolder.open(model)
    net, dev = folder.load_network(device="cpu")
    data = np.load(npz)
    x = preprocess_cls_images(list(data["val_images"][:, None].astype(np.float32)), [16, 16],
                              [str(i) for i in range(100)])
    t = read_temperature(model)
    want = torch.softmax(classifier_logits(net, x, dev) / t, 1)
    got = torch.tensor([[float(r["p_0"]), float(r["p_1"])] for r in rows])
    assert torch.allclose(got, want, atol=2e-6)


def test_medseg_calibrate_refuses_to_overwrite_then_refits(overconfident, tmp_path, capsys):
    npz, model = overconfident
    before = (model / "calibration.json").read_bytes()
    assert main(["calibrate", "--model", str(model), "--data", str(npz), "--split", "test",
                 "--device", "cpu"]) == 2
    assert "calibrated already" in capsys.readouterr().err
    assert (model / "calibration.json").read_bytes() == before
    assert main(["calibrate", "--model", str(model), "--data", str(npz), "--split", "test",
                 "--device", "cpu", "--force"]) == 0
    doc = json.loads((model / "calibration.json").read_text())
    assert doc["n_elements"] == 100 and "split test" in doc["fitted_on"]
    assert doc["ece_after"]["width"] < doc["ece_before"]["width"]
    (model / "calibration.json").write_bytes(before)


def test_segmentation_probabilities_are_tempered(tmp_path):
    ds, model = tmp_path / "ds", tmp_path / "m"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "5", "--n-test", "1"]) == 0
    assert main(["train", "--dataset", str(ds), "--output", str(model), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "32",
                 "--device", "cpu", "--set", "model.options.channels=[4,8]",
                 "--set", "data.val_fraction=0.2"]) == 0
    assert (model / "calibration.json").is_file()
    doc = json.loads((model / "calibration.json").read_text())

    def probs(t: float) -> np.ndarray:
        doc["temperature"] = t
        (model / "calibration.json").write_text(json.dumps(doc))
        out = tmp_path / f"p{t}"
        assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                     "--output", str(out), "--save-probabilities", "--device", "cpu"]) == 0
        return read_image(out / "case_005_probabilities.nii.gz")[0]

    p1, p2 = probs(1.0), probs(2.0)
    assert np.allclose(p2, temper(torch.from_numpy(p1), 2.0).numpy(), atol=1e-5)
    assert not np.allclose(p1, p2, atol=1e-3)
    (model / "calibration.json").write_text("{not json")
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                 "--output", str(tmp_path / "bad"), "--device", "cpu"]) == 2


def test_segmentation_evaluate_reports_voxel_calibration(tmp_path):
    from medseg.metrics.calibration import voxel_confidence

    ds, model = tmp_path / "ds", tmp_path / "m"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "5", "--n-test", "2"]) == 0
    assert main(["train", "--dataset", str(ds), "--output", str(model), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "32",
                 "--device", "cpu", "--set", "model.options.channels=[4,8]",
                 "--set", "data.val_fraction=0.2"]) == 0
    pred, ev = tmp_path / "p", tmp_path / "ev"
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                 "--output", str(pred), "--save-probabilities", "--device", "cpu"]) == 0
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ds / "labelsTs"), "--output",
                 str(ev)]) == 0
    cal = json.loads((ev / "metrics.json").read_text())["summary"]["calibration"]
    confs, oks = [], []
    for case in ("case_005", "case_006"):
        p, _ = read_image(pred / f"{case}_probabilities.nii.gz")
        lab, _ = read_image(ds / "labelsTs" / f"{case}.nii.gz")
        c, k = voxel_confidence(p.reshape(p.shape[0], 32, 32), lab.reshape(32, 32))
        confs.append(c)
        oks.append(k)
    from medseg.metrics.calibration import expected_calibration_error

    ece, _ = expected_calibration_error(np.concatenate(confs), np.concatenate(oks), 15)
    assert cal["n"] == 2 * 32 * 32 and cal["cases"] == 2
    assert cal["ece"] == pytest.approx(ece, abs=1e-9)
    assert (ev / "reliability.png").is_file()
