"""End to end through the ``medseg`` command: phantoms -> train -> predict -> evaluate, and the
errors a user sees for bad input (one line naming the file, exit status 2, nothing modified)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.io import read_image, read_label, write_dicom_series
from medseg.io.meta import ImageMeta
from medseg.networks import list_models, model_spatial_dims, model_task


def _hash_tree(root):
    h = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


TRAIN_FLAGS = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4",
               "--patch-size", "32", "32", "--device", "cpu",
               "--set", "model.options.channels=[8,16,32]", "--set", "data.val_fraction=0.3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = root / "ds"
    assert main(["phantoms", "--out", str(ds), "--dims", "2", "--size", "32", "--n-train", "6",
                 "--n-test", "2", "--lesion-fraction", "0.03"]) == 0
    model = root / "model"
    assert main(["train", "--dataset", str(ds), "--output", str(model), *TRAIN_FLAGS]) == 0
    return ds, model


@pytest.mark.parametrize("cmd", ["demo", "train", "predict", "evaluate", "phantoms",
                                 "convert-outlines", "models"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: medseg" in capsys.readouterr().out


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "medseg.cli", "models"], capture_output=True,
                       text=True, check=True)
    assert "unet" in r.stdout


def test_train_predict_evaluate(trained, tmp_path, capsys):
    ds, model = trained
    before = _hash_tree(ds)
    preds = tmp_path / "preds"
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                 "--output", str(preds), "--device", "cpu"]) == 0
    files = sorted(preds.glob("*.nii.gz"))
    assert [f.name for f in files] == ["case_006.nii.gz", "case_007.nii.gz"]
    for f in files:
        lab, meta = read_label(f)
        _, imeta = read_image(ds / "imagesTs" / f.name.replace(".nii.gz", "_0000.nii.gz"))
        assert lab.shape == imeta.spatial_shape and set(np.unique(lab)) <= {0, 1, 2}
        assert np.allclose(meta.affine, imeta.affine)
    ev = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(preds), "--ref", str(ds / "labelsTs"),
                 "--output", str(ev), "--dataset-json", str(ds / "dataset.json"),
                 "--images", str(ds / "imagesTs")]) == 0
    doc = json.loads((ev / "metrics.json").read_text())
    assert len(doc["cases"]) == 2 and set(doc["cases"][0]["classes"]) == {"1", "2"}
    assert (ev / "metrics.csv").read_text().count("\n") == 1 + 2 * 2
    assert (ev / "report.html").is_file() and len(list((ev / "overlays").glob("*.png"))) == 2
    assert "dice" in capsys.readouterr().out
    assert _hash_tree(ds) == before, "inputs must not change"


def test_predict_keeps_oblique_geometry_and_reads_dicom(trained, tmp_path):
    _, model = trained
    rng = np.random.default_rng(0)
    # an oblique 2D NIfTI with one slice: output must carry the same affine
    aff = np.array([[0.0, -0.9, 0.1, 12.0], [1.1, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0],
                    [0, 0, 0, 1]])
    img = rng.normal(size=(40, 36, 1)).astype(np.float32)
    src = tmp_path / "in" / "obl.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(img, aff), src)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--input", str(src), "--output", str(out),
                 "--device", "cpu", "--tta"]) == 0
    pred = nib.load(out / "obl.nii.gz")
    assert pred.shape == (40, 36, 1) and np.allclose(pred.affine, aff, atol=1e-5)

    # a single-slice DICOM series as input: NIfTI output with the DICOM geometry
    dcm_dir = tmp_path / "dicom"
    meta = ImageMeta.from_spacing((0.8, 0.8, 3.0), (36, 40, 1), modality="MR")
    write_dicom_series(dcm_dir, (rng.normal(size=(36, 40, 1)) * 100 + 500).round(), meta,
                       modality="MR", rescale_intercept=0.0)
    out2 = tmp_path / "out2"
    assert main(["predict", "--model", str(model), "--input", str(dcm_dir), "--output",
                 str(out2), "--device", "cpu"]) == 0
    _, dmeta = read_image(dcm_dir)
    pred2 = nib.load(out2 / "dicom.nii.gz")
    assert pred2.shape == dmeta.spatial_shape and np.allclose(pred2.affine, dmeta.affine)


def test_predict_refuses_another_modality(trained, tmp_path, capsys):
    """The MR phantom model is given a CT series: exit 2 naming the series, nothing written."""
    _, model = trained
    dcm_dir = tmp_path / "ct"
    meta = ImageMeta.from_spacing((0.8, 0.8, 3.0), (36, 40, 1), modality="CT")
    write_dicom_series(dcm_dir, np.full((36, 40, 1), 40.0), meta, modality="CT")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--input", str(dcm_dir), "--output",
                 str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "wrong modality" in err and "trained on MR" in err and "input is CT" in err
    assert str(dcm_dir) in err and not list(out.glob("*.nii.gz"))


def _err(capsys):
    return capsys.readouterr().err


def _msd(tmp_path, images, labels, label_table=None):
    root = tmp_path / "bad"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        nib.save(nib.Nifti1Image(x, np.eye(4)), root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(y, np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": label_table or {"background": 0, "a": 1},
        "numTraining": len(images), "file_ending": ".nii.gz"}))
    return root


def _img(shape=(16, 16, 8)):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _lab(shape=(16, 16, 8), v=1):
    y = np.zeros(shape, np.uint8)
    y[4:8, 4:8, 2:5] = v
    return y


@pytest.mark.parametrize(
    "make, fragment, culprit",
    [
        (lambda t: _msd(t, [_img(), _img()], [_lab(), _lab((16, 16, 9))]), "shape", "c1.nii.gz"),
        (lambda t: _msd(t, [_img(), _img()], [_lab(), _lab(v=5)]), "5", "c1.nii.gz"),
        (lambda t: _msd(t, [_img(), np.where(_lab() > 0, np.nan, _img()).astype(np.float32)],
                        [_lab(), _lab()]), "NaN", "c1_0000.nii.gz"),
    ],
    ids=["shape-mismatch", "undeclared-label", "nan"],
)
def test_bad_dataset_errors(tmp_path, capsys, make, fragment, culprit):
    root = make(tmp_path)
    before = _hash_tree(root)
    code = main(["train", "--dataset", str(root), "--output", str(tmp_path / "m"),
                 *TRAIN_FLAGS[:2]])
    err = _err(capsys)
    assert code == 2, err
    assert culprit in err and fragment in err and "Traceback" not in err
    assert _hash_tree(root) == before
    assert not (tmp_path / "m").exists(), "nothing is written before the data is validated"


def test_missing_empty_corrupt_and_dims(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path / "nope"), "--output",
                 str(tmp_path / "m")]) == 2
    assert "nope" in _err(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["train", "--dataset", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "m")]) == 2
    assert "empty" in _err(capsys)
    root = _msd(tmp_path, [_img(), _img()], [_lab(), _lab()])
    (root / "imagesTr" / "c1_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")
    assert main(["train", "--dataset", str(root), "--output", str(tmp_path / "m")]) == 2
    assert "c1_0000.nii.gz" in _err(capsys)
    root2 = _msd(tmp_path / "x", [_img(), _img()], [_lab(), _lab()])
    assert main(["train", "--dataset", str(root2), "--output", str(tmp_path / "m"),
                 "--set", "data.spatial_dims=2"]) == 2
    err = _err(capsys)
    assert "c0_0000.nii.gz" in err and "3D" in err


def test_bad_model_options_fail_before_training(trained, tmp_path, capsys):
    ds, _ = trained
    for opt, frag in (("model.options.chanels=[8,16]", "chanels"),
                      ("model.options.strides=[2,2,2,2,2,2]", "strides"),
                      ("model.name=nonet", "nonet")):
        assert main(["train", "--dataset", str(ds), "--output", str(tmp_path / "m"),
                     "--set", opt]) == 2
        err = _err(capsys)
        assert frag in err and "model" in err and "Traceback" not in err
        assert not (tmp_path / "m").exists()


def test_predict_bad_inputs(trained, tmp_path, capsys):
    _, model = trained
    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    assert "plan.json" in _err(capsys)
    bad = tmp_path / "nan.nii.gz"
    arr = _img((20, 20, 1))
    arr[3, 3, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
    assert main(["predict", "--model", str(model), "--input", str(bad), "--output",
                 str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = _err(capsys)
    assert "nan.nii.gz" in err and "NaN" in err
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([_img((20, 20, 1))] * 2, -1), np.eye(4)), two)
    assert main(["predict", "--model", str(model), "--input", str(two), "--output",
                 str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "2 channel(s), the model expects 1" in _err(capsys)
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(_img((20, 20, 6)), np.eye(4)), vol)
    assert main(["predict", "--model", str(model), "--input", str(vol), "--output",
                 str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "segments 2D images but the input is 3D" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_3d_and_multichannel_msd(tmp_path):
    """A 3D nnU-Net folder with two channels per case (``case_0000``, ``case_0001``)."""
    from medseg.physics import PhantomSpec, make_phantom

    root = tmp_path / "mc"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(5):
        spec = PhantomSpec(shape=(24, 24, 12), modality="mr", lesion_fraction=0.02)
        x, y, _ = make_phantom(spec, seed=i)
        second = np.sqrt(np.abs(x)).astype(np.float32)  # a second "contrast"
        d = root / ("imagesTs" if i == 4 else "imagesTr")
        nib.save(nib.Nifti1Image(x.astype(np.float32), aff), d / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(second, aff), d / f"c{i}_0001.nii.gz")
        if i < 4:
            nib.save(nib.Nifti1Image(y.astype(np.uint8), aff), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1,
                                                            "lesion": 2},
        "numTraining": 4, "file_ending": ".nii.gz"}))
    model = tmp_path / "m3"
    assert main(["train", "--dataset", str(root), "--output", str(model), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "16", "16", "8",
                 "--device", "cpu", "--set", "model.options.channels=[8,16,32]",
                 "--set", "model.options.strides=[[2,2,1],[2,2,2]]"]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["in_channels"] == 2 and plan["spatial_dims"] == 3
    out = tmp_path / "p3"
    assert main(["predict", "--model", str(model), "--input", str(root), "--output", str(out),
                 "--device", "cpu"]) == 0
    pred = nib.load(out / "c4.nii.gz")  # the two channel files became one case
    assert pred.shape == (24, 24, 12) and np.allclose(pred.affine, aff)


def test_ctrl_c_keeps_last_checkpoint_and_resume_finishes(trained, tmp_path):
    """A real SIGINT to ``medseg train``: exit 130, last checkpoint intact, --resume completes."""
    import signal
    import time

    import torch

    ds, _ = trained
    model = tmp_path / "m"
    cmd = [sys.executable, "-m", "medseg.cli", "train", "--dataset", str(ds), "--output",
           str(model), *TRAIN_FLAGS]
    cmd[cmd.index("--epochs") + 1] = "40"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ck = model / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ck.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Continue with --resume" in out and "Traceback" not in out
    state = torch.load(ck, weights_only=True)  # intact and loadable
    assert state["epoch"] >= 0 and not [p for p in model.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--output", str(model), "--resume"]) == 0
    assert torch.load(ck, weights_only=True)["epoch"] == 39


@pytest.mark.parametrize("name", sorted(n for n in list_models() if model_task(n) == "segmentation"
                                        and 2 in model_spatial_dims(n)))
def test_every_segmentation_network_trains_and_predicts_by_name(trained, tmp_path, name):
    """`--set model.name=...` is all a user needs: one step of training, then prediction."""
    ds, _ = trained
    model = tmp_path / name
    assert main(["train", "--dataset", str(ds), "--output", str(model), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "32", "32",
                 "--device", "cpu", "--set", f"model.name={name}"]) == 0
    assert json.loads((model / "plan.json").read_text())["model"]["name"] == name
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"), "--output",
                 str(out), "--device", "cpu"]) == 0
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == 2 and nib.load(preds[0]).shape[:2] == (32, 32)
