"""`medseg simulate`: a reproducible MSD-style dataset with noise physics and clean images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.data import load_msd_folder, validate_dataset
from medseg.io import read_image, read_label


def _arrays(root):
    out = {}
    for sub in ("imagesTr", "labelsTr", "cleanTr"):
        for p in sorted((root / sub).iterdir()):
            reader = read_label if sub == "labelsTr" else read_image
            out[f"{sub}/{p.name}"] = reader(p)[0]
    return out


def test_simulate_writes_a_trainable_dataset(tmp_path, capsys):
    out = tmp_path / "sim"
    args = ["simulate", "--modality", "ct", "--dims", "2", "--n-train", "3", "--size", "32",
            "--output", str(out), "--seed", "4", "--dose", "2e5"]
    assert main(args) == 0
    assert "written to" in capsys.readouterr().out
    js = json.loads((out / "dataset.json").read_text())
    assert js["channel_names"] == {"0": "CT"} and js["numTraining"] == 3
    assert js["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    params = js["medseg_phantom"]["params"]
    assert params["dose"] == 2e5 and params["write_clean"] is True
    case_noise = js["medseg_phantom"]["cases"]["case_000"]["noise"]
    assert case_noise["model"] == "sinogram_poisson_fbp"
    assert case_noise["photons_per_ray"] == 2e5
    for sub, names in (("imagesTr", "case_00{}_0000.nii.gz"), ("labelsTr", "case_00{}.nii.gz"),
                       ("cleanTr", "case_00{}_0000.nii.gz")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [names.format(i)
                                                                 for i in range(3)]
    ds = load_msd_folder(out)  # what `medseg train --dataset` opens
    assert len(ds.cases) == 3 and ds.modalities == ["CT"]
    validate_dataset(ds, spatial_dims=2)
    first = _arrays(out)
    assert first["imagesTr/case_000_0000.nii.gz"].shape == (1, 32, 32)
    assert not np.array_equal(first["imagesTr/case_000_0000.nii.gz"],
                              first["cleanTr/case_000_0000.nii.gz"])
    # same seed -> identical arrays (rewritten with --force); another seed -> different
    assert main(args + ["--force"]) == 0
    again = _arrays(out)
    assert again.keys() == first.keys()
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    other = tmp_path / "other"
    assert main(args[:-6] + ["--output", str(other), "--seed", "5", "--dose", "2e5"]) == 0
    assert not np.array_equal(_arrays(other)["labelsTr/case_000.nii.gz"],
                              first["labelsTr/case_000.nii.gz"])


def test_simulate_mr_and_us_options(tmp_path):
    mr = tmp_path / "mr"
    assert main(["simulate", "--modality", "mr", "--n-train", "1", "--n-test", "1", "--size", "32",
                 "--output", str(mr), "--snr", "6", "--acceleration", "3"]) == 0
    rec = json.loads((mr / "dataset.json").read_text())["medseg_phantom"]
    assert rec["params"]["mr_sigma"] == pytest.approx(0.1)
    assert rec["cases"]["case_000"]["noise"]["acceleration"] == 3.0
    assert (mr / "imagesTs" / "case_001_0000.nii.gz").is_file()
    assert (mr / "cleanTs" / "case_001_0000.nii.gz").is_file()
    us = tmp_path / "us"
    assert main(["simulate", "--modality", "us", "--dims", "3", "--n-train", "1", "--size", "16",
                 "--output", str(us), "--looks", "2", "--lesion-fraction", "0.005"]) == 0
    img, _ = read_image(us / "imagesTr" / "case_000_0000.nii.gz")
    assert img.shape == (1, 16, 16, 16) and 0.0 <= img.min() and img.max() <= 255.0
    rec = json.loads((us / "dataset.json").read_text())["medseg_phantom"]
    assert rec["cases"]["case_000"]["noise"]["looks"] == 2.0


@pytest.mark.parametrize("extra, message", [
    (["--modality", "ct", "--snr", "5"], "--snr applies to --modality mr"),
    (["--modality", "mr", "--dose", "1e5"], "--dose applies to --modality ct"),
    (["--modality", "mr", "--looks", "3"], "--looks applies to --modality us"),
    (["--modality", "us", "--acceleration", "2"], "--acceleration applies to --modality mr"),
    (["--modality", "ct", "--dose", "-3"], "--dose must be > 0"),
    (["--modality", "mr", "--acceleration", "0.5"], "--acceleration must be >= 1"),
    (["--modality", "us", "--looks", "0.5"], "--looks must be >= 1"),
    (["--modality", "ct", "--size", "4"], "--size must be >= 8"),
    (["--modality", "ct", "--lesion-fraction", "0.5"], "--lesion-fraction must lie"),
])
def test_simulate_bad_flags_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["simulate", "--n-train", "1", "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "medseg simulate: error" in err
    assert not out.exists()  # nothing written


def test_simulate_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "scan.nii.gz").write_bytes(b"precious")
    base = ["simulate", "--modality", "mr", "--n-train", "1", "--size", "16", "--output", str(out)]
    assert main(base) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(base + ["--force"]) == 2  # --force never replaces a user's files
    assert "not a medseg phantom" in capsys.readouterr().err
    assert (out / "scan.nii.gz").read_bytes() == b"precious"
    with pytest.raises(SystemExit) as exc:  # argparse: unknown modality
        main(["simulate", "--modality", "pet", "--n-train", "1", "--output", str(out)])
    assert exc.value.code == 2


@pytest.mark.parametrize("modality, extra", [("mr", ["--acceleration", "2"]),
                                             ("us", ["--looks", "1"])])
def test_medseg_train_runs_on_simulated_data_unchanged(tmp_path, modality, extra):
    """The simulator's folder goes straight into `medseg train` (its noise model picked by the
    modality), then `medseg predict` on its held-out images."""
    sim = tmp_path / "sim"
    assert main(["simulate", "--modality", modality, "--n-train", "4", "--n-test", "1",
                 "--size", "32", "--output", str(sim), *extra]) == 0
    model = tmp_path / "model"
    assert main(["train", "--dataset", str(sim), "--output", str(model), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "32", "32",
                 "--device", "cpu", "--set", "model.options.channels=[8,16,32]"]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["preprocess"]["normalization"][0]["modality"] == modality.upper()
    assert main(["predict", "--model", str(model), "--input", str(sim / "imagesTs"),
                 "--output", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
