"""Uncertainty end to end (U1-U4): samplers, the decomposition, maps and tables from
``medseg predict --uncertainty``, deep ensembles from ``medseg train --ensemble``, the variance
head, and the one-line errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from helpers import write_toy_npz
from medseg.cli import main
from medseg.io import read_image, read_label, write_image
from medseg.io.meta import ImageMeta
from medseg.networks import create_model
from medseg.tasks.classification import heteroscedastic_bce
from medseg.tasks.segmentation import UNCERTAINTY_COLUMNS
from medseg.uncertainty.maps import SCALAR_TERMS, uncertainty_maps
from medseg.uncertainty.samplers import sample_probs

SEG = ["--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4", "--patch-size", "32",
       "32", "--device", "cpu", "--set", "model.options.channels=[4,8]",
       "--set", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("unc")
    ds = root / "ds"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "5", "--n-test", "2", "--lesion-fraction", "0.03"]) == 0
    model = root / "m"
    assert main(["train", "--dataset", str(ds), "--output", str(model), *SEG,
                 "--set", "model.options.dropout=0.3"]) == 0
    return ds, model


# ---------------------------------------------------------------- the decomposition
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_decomposition_identities(activation):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, 5, 6, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(z, 1) if activation == "softmax" else torch.sigmoid(z)
    m = uncertainty_maps(p, activation=activation)
    pbar = p.mean(0)
    tot = m["aleatoric_variance_c"].double() + m["epistemic_variance_c"].double()
    assert torch.allclose(tot, m["total_variance_c"].double(), atol=1e-6)
    assert torch.allclose(m["total_variance_c"].double(), pbar * (1 - pbar), atol=1e-6)
    assert torch.allclose(m["predictive_entropy"].double(),
                          (m["expected_entropy"] + m["mutual_information"]).double(), atol=1e-6)
    assert torch.allclose(m["epistemic_variance_c"].double(), p.var(0, correction=0), atol=1e-6)
    if activation == "softmax":
        pred = pbar.argmax(0)
        assert torch.equal(m["predicted"], pred)
        h = -(pbar * pbar.log()).sum(0)
        assert torch.allclose(m["predictive_entropy"].double(), h, atol=1e-6)
        sel = m["total_variance_c"].gather(0, pred[None])[0]
        assert torch.equal(m["total_variance"], sel)


def test_identical_samples_have_no_epistemic_part():
    p = torch.softmax(torch.randn(1, 3, 8, 8), 1).repeat(5, 1, 1, 1)
    m = uncertainty_maps(p)
    assert float(m["epistemic_variance_c"].abs().max()) == 0.0
    assert float(m["mutual_information"].max()) <= 1e-6


# ---------------------------------------------------------------- samplers
def test_mc_dropout_sampling_leaves_norm_statistics_and_modes_untouched():
    net = create_model("unet", spatial_dims=2, in_channels=1, num_classes=3, channels=(4, 8),
                       dropout=0.3, norm="batch")
    net.train()
    net(torch.randn(4, 1, 32, 32))  # populate running statistics
    net.eval()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    before = net(x)
    p, var = sample_probs([net], x, "mc", n_samples=6, seed=3)
    assert p.shape == (6, 2, 3, 32, 32) and var is None
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items())
    assert not any(m.training for m in net.modules())
    assert torch.equal(net(x), before)
    assert not torch.allclose(p[0], p[1])  # dropout masks differ between samples
    p2, _ = sample_probs([net], x, "mc", n_samples=6, seed=3)
    assert torch.equal(p, p2)  # reproducible by seed
    with pytest.raises(ValueError, match="no dropout"):
        sample_probs([create_model("unet", spatial_dims=2, channels=(4, 8))], x, "mc")


def test_tta_of_a_flip_equivariant_model_has_no_epistemic_part():
    net = torch.nn.Conv2d(1, 3, 1)  # pointwise: flips commute with it
    p, _ = sample_probs([net], torch.randn(1, 1, 9, 7), "tta")
    assert p.shape[0] == 4
    m = uncertainty_maps(p[:, 0])
    assert float(m["mutual_information"].max()) <= 1e-6


# ---------------------------------------------------------------- predict --uncertainty
def test_predict_with_mc_writes_maps_with_the_input_geometry_and_a_table(seg, tmp_path):
    ds, model = seg
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                 "--output", str(out), "--uncertainty", "mc", "--samples", "5",
                 "--per-class", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out / "uncertainty.csv")))
    assert tuple(rows[0]) == UNCERTAINTY_COLUMNS
    assert [(r["case"], r["class"]) for r in rows] == [
        ("case_005", "organ"), ("case_005", "lesion"), ("case_006", "organ"),
        ("case_006", "lesion")]
    for case in ("case_005", "case_006"):
        img, imeta = read_image(ds / "imagesTs" / f"{case}_0000.nii.gz")
        lab, _ = read_label(out / f"{case}.nii.gz")
        for term in SCALAR_TERMS:
            arr, meta = read_image(out / f"{case}_{term}.nii.gz")
            assert arr.shape == (1, *imeta.spatial_shape) and arr.dtype == np.float32
            assert np.allclose(meta.affine, imeta.affine)
        tot, _ = read_image(out / f"{case}_total_variance_per_class.nii.gz")
        ale, _ = read_image(out / f"{case}_aleatoric_variance_per_class.nii.gz")
        epi, _ = read_image(out / f"{case}_epistemic_variance_per_class.nii.gz")
        assert tot.shape[0] == 3 and tot[0].size == np.prod(imeta.spatial_shape)
        assert np.allclose(tot, ale + epi, atol=1e-6)
        vox = float(np.prod(imeta.spacing[:2]))
        for r in rows:
            if r["case"] == case:
                c = {"organ": 1, "lesion": 2}[r["class"]]
                assert float(r["volume"]) == pytest.approx((lab == c).sum() * vox)
                assert r["volume_unit"] == "mm^2" and r["samples"] == "5"
                assert float(r["volume_low"]) <= float(r["volume_high"])


def test_uncertainty_errors_are_one_line(seg, tmp_path, capsys):
    ds, model = seg
    cases = [
        (["--model", str(model), "--uncertainty", "mc", "--samples", "0"], "--samples must be"),
        (["--model", str(model), "--uncertainty", "ensemble"], "needs an ensemble model folder"),
    ]
    plain = tmp_path / "plain"
    assert main(["train", "--dataset", str(ds), "--output", str(plain), *SEG]) == 0
    cases.append((["--model", str(plain), "--uncertainty", "mc"], "no dropout layer"))
    for args, message in cases:
        rc = main(["predict", "--input", str(ds / "imagesTs"), "--output",
                   str(tmp_path / "x"), "--device", "cpu", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (args, err)


# ---------------------------------------------------------------- ensembles
def test_ensemble_folder_members_and_identical_members(seg, tmp_path, capsys):
    ds, _ = seg
    ens = tmp_path / "ens"
    # two separate jobs, as on two GPUs, then the folder is complete
    for k in ("1", "0"):
        assert main(["train", "--dataset", str(ds), "--output", str(ens), "--ensemble", "2",
                     "--member", k, *SEG]) == 0
    plan = json.loads((ens / "plan.json").read_text())
    assert plan["members"] == ["member_0", "member_1"]
    assert plan["ensemble"]["seeds"] == [0, 1]
    w0 = torch.load(ens / "member_0" / "checkpoint_last.pt", weights_only=True)["model"]
    w1 = torch.load(ens / "member_1" / "checkpoint_last.pt", weights_only=True)["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # different seeds
    # each member fitted its own temperature; the complete ensemble fits one shared T on the
    # members' averaged prediction of their shared validation split, and it wins at prediction
    from medseg.model_folder import ModelFolder
    from medseg.tasks import get_task
    from medseg.uncertainty.calibration import ensemble_nll

    temps = [json.loads((ens / f"member_{k}" / "calibration.json").read_text())["temperature"]
             for k in range(2)]
    doc = json.loads((ens / "calibration.json").read_text())
    assert doc["level"].startswith("ensemble of 2 members")
    folder = ModelFolder.open(ens)
    assert folder.temperatures() == [doc["temperature"]] * 2
    cs = get_task("segmentation").calibration_set_from(
        folder, ds, None, "Tr", "cpu", lambda _: None, ids=folder.members[0].plan.val_ids)
    assert cs.member_logits.shape[0] == 2 and cs.n_cases == doc["n_cases"]
    best = ensemble_nll(cs.member_logits, cs.targets, doc["temperature"])
    assert best == pytest.approx(doc["nll_after"], rel=1e-9)
    for t in [1.0, *temps, doc["temperature"] * 1.05, doc["temperature"] / 1.05]:
        assert best <= ensemble_nll(cs.member_logits, cs.targets, t) + 1e-12
    out = tmp_path / "p"
    assert main(["predict", "--model", str(ens), "--input", str(ds / "imagesTs"),
                 "--output", str(out), "--uncertainty", "ensemble", "--device", "cpu"]) == 0
    mi, _ = read_image(out / "case_005_mutual_information.nii.gz")
    assert float(mi.max()) > 1e-4
    # identical members: zero epistemic variance and mutual information
    same = tmp_path / "same"
    shutil.copytree(ens, same)
    for name in ("checkpoint_best.pt", "calibration.json"):  # weights and temperature
        shutil.copy(same / "member_0" / name, same / "member_1" / name)
    out2 = tmp_path / "p2"
    assert main(["predict", "--model", str(same), "--input", str(ds / "imagesTs"),
                 "--output", str(out2), "--uncertainty", "ensemble", "--device", "cpu"]) == 0
    epi, _ = read_image(out2 / "case_005_epistemic_variance.nii.gz")
    mi, _ = read_image(out2 / "case_005_mutual_information.nii.gz")
    assert float(np.abs(epi).max()) <= 1e-7 and float(mi.max()) <= 1e-6
    # a missing member is a one-line error
    shutil.rmtree(same / "member_1")
    capsys.readouterr()
    rc = main(["predict", "--model", str(same), "--input", str(ds / "imagesTs"),
               "--output", str(tmp_path / "p3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ensemble member 'member_1' is missing" in err[0]
    # a member that is a link to a model folder elsewhere is refused (model folders are data)
    (same / "member_1").symlink_to(ens / "member_1", target_is_directory=True)
    rc = main(["predict", "--model", str(same), "--input", str(ds / "imagesTs"),
               "--output", str(tmp_path / "p4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0] == (
        f"medseg predict: error: {same / 'plan.json'}: plan.json members[1] 'member_1' is a link "
        "leading out of the model folder -> copy the member's folder into the model folder")


# ---------------------------------------------------------------- variance head (U1)
def test_variance_head_learns_more_variance_where_labels_are_noise(tmp_path):
    """Left half: the label is the image's sign (learnable); right half, marked by an intensity
    offset the network can see: coin flips (pure aleatoric noise)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = ImageMeta(affine=np.eye(4), spatial_shape=(32, 32))
    for i in range(8):
        img = rng.normal(size=(32, 32)).astype(np.float32)
        lab = (img > 0).astype(np.uint8)
        lab[:, 16:] = rng.integers(0, 2, (32, 16))
        img[:, 16:] += 4.0
        write_image(root / "imagesTr" / f"c{i}_0000.nii.gz", img[None], meta)
        write_image(root / "labelsTr" / f"c{i}.nii.gz", lab, meta, dtype=np.uint8)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1},
        "numTraining": 8, "file_ending": ".nii.gz"}))
    model = tmp_path / "m"
    assert main(["train", "--dataset", str(root), "--output", str(model), "--epochs", "8",
                 "--steps-per-epoch", "8", "--batch-size", "4", "--patch-size", "32", "32",
                 "--device", "cpu", "--set", "model.options.channels=[8,16]",
                 "--set", "model.variance_head=true", "--set", "loss.dice_weight=0",
                 "--set", "data.val_fraction=0", "--set", "optim.lr=0.01",
                 "--set", "augment.enabled=false"]) == 0
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(root / "imagesTr" /
                                                                   "c0_0000.nii.gz"),
                 "--output", str(out), "--uncertainty", "none", "--device", "cpu"]) == 0
    lv, _ = read_image(out / "c0_logit_variance.nii.gz")
    left, right = float(lv[0, :, 2:14].mean()), float(lv[0, :, 18:30].mean())
    assert right > 1.5 * left, (left, right)


def test_heteroscedastic_bce_reduces_to_bce_and_ignores_missing_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([[1, 0, -1], [0, 1, 1], [1, 1, 0], [-1, 0, 1], [0, 0, 0]],
                     dtype=torch.float64)
    tiny = torch.full_like(logits, -40.0)  # sigma = exp(-20): no noise
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[y >= 0], y[y >= 0])
    assert float(heteroscedastic_bce(logits, tiny, y, 4)) == pytest.approx(float(ref), rel=1e-9)
    lv = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    a = heteroscedastic_bce(logits, lv, y, 8)
    changed = logits.clone()
    changed[y < 0] += 5.0
    torch.manual_seed(1)
    assert float(heteroscedastic_bce(changed, lv, y, 8)) == float(a)

    def f(z, v):
        torch.manual_seed(2)
        return heteroscedastic_bce(z, v, y, 4)

    assert torch.autograd.gradcheck(f, (logits.clone().requires_grad_(),
                                        lv.clone().requires_grad_()))


def test_classification_predictions_gain_the_decomposition(tmp_path):
    npz, y = write_toy_npz(tmp_path / "toy.npz")
    model = tmp_path / "m"
    assert main(["train", "--task", "classification", "--dataset", str(npz), "--output",
                 str(model), "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8",
                 "--device", "cpu", "--set", "model.options.channels=[4,8]",
                 "--set", "model.options.blocks_per_stage=[1,1]",
                 "--set", "model.options.dropout=0.3"]) == 0
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(npz), "--split", "val",
                 "--output", str(out), "--uncertainty", "mc", "--samples", "8",
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 10 and set(SCALAR_TERMS) <= set(rows[0])
    for r in rows:
        p1 = float(r["p_1"])
        pmax = max(p1, 1 - p1)
        assert float(r["total_variance"]) == pytest.approx(pmax * (1 - pmax), abs=1e-5)
        assert float(r["total_variance"]) == pytest.approx(
            float(r["aleatoric_variance"]) + float(r["epistemic_variance"]), abs=1e-5)
        assert float(r["predictive_entropy"]) == pytest.approx(
            float(r["expected_entropy"]) + float(r["mutual_information"]), abs=1e-5)
    assert max(float(r["mutual_information"]) for r in rows) > 0  # dropout masks differ


def test_instances_get_an_uncertainty_score(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for i in range(3):
        (tmp_path / "dsb" / f"i{i}" / "images").mkdir(parents=True)
        (tmp_path / "dsb" / f"i{i}" / "masks").mkdir()
        lab = np.zeros((48, 48), bool)
        for k, (cy, cx) in enumerate([(12, 12), (34, 30)]):
            d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
            lab |= d
            Image.fromarray((d * 255).astype(np.uint8)).save(
                tmp_path / "dsb" / f"i{i}" / "masks" / f"m{k}.png")
        img = np.clip(rng.normal(20, 5, lab.shape) + 150 * lab, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "dsb" / f"i{i}" / "images" / f"i{i}.png")
    model = tmp_path / "m"
    assert main(["train", "--task", "instance", "--dataset", str(tmp_path / "dsb"),
                 "--output", str(model), "--epochs", "2", "--steps-per-epoch", "3",
                 "--batch-size", "2", "--patch-size", "48", "48", "--device", "cpu",
                 "--set", "model.options.channels=[4,8]", "--set", "data.val_fraction=0",
                 "--set", "instance.min_size=1", "--set", "instance.seed_threshold=0.3",
                 "--set", "instance.fg_threshold=0.3"]) == 0
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(tmp_path / "dsb"),
                 "--output", str(out), "--uncertainty", "tta", "--device", "cpu"]) == 0
    doc = json.loads((out / "i0_instances.json").read_text())
    header = (out / "i0_instances.csv").read_text().splitlines()[0]
    assert header.endswith(",uncertainty") and doc["instances"]
    mi, _ = read_image(out / "i0_mutual_information.nii.gz")
    lab, _ = read_label(out / "i0_instances.png")
    for r in doc["instances"]:
        assert r["uncertainty"] == pytest.approx(float(mi[0][lab == r["id"]].mean()), abs=1e-5)


def test_every_case_gets_its_own_dropout_masks(seg, tmp_path):
    """Two copies of one image under two names: other masks, so other MC samples; the same
    name and seed again: the same samples."""
    import shutil as sh

    ds, model = seg
    inp = tmp_path / "in"
    inp.mkdir()
    src = ds / "imagesTs" / "case_005_0000.nii.gz"
    sh.copy(src, inp / "a_0000.nii.gz")
    sh.copy(src, inp / "b_0000.nii.gz")
    outs = []
    for run in ("p1", "p2"):
        out = tmp_path / run
        assert main(["predict", "--model", str(model), "--input", str(inp), "--output",
                     str(out), "--uncertainty", "mc", "--samples", "4", "--device", "cpu"]) == 0
        outs.append(out)
    a, _ = read_image(outs[0] / "a_mutual_information.nii.gz")
    b, _ = read_image(outs[0] / "b_mutual_information.nii.gz")
    a2, _ = read_image(outs[1] / "a_mutual_information.nii.gz")
    assert not np.array_equal(a, b) and np.array_equal(a, a2)


def test_samples_in_channels_last_equal_the_contiguous_ones(seg):
    """``inference.channels_last`` applies to the sampled prediction as to the plain one (same
    dropout masks, same samples within float32 rounding), and the weights are given back."""
    from medseg.tasks.segmentation import SegmentationModel

    ds, folder = seg
    model = SegmentationModel.load(folder, device="cpu")
    model.precision = "fp32"
    image, meta = read_image(ds / "imagesTs" / "case_005_0000.nii.gz")
    net = model.models[0]
    weights = {id(p): (p.data_ptr(), p.stride()) for p in net.parameters()}
    conv = next(m for m in net.modules()
                if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    seen: list[bool] = []
    conv.register_forward_pre_hook(
        lambda m, args: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)
                                    and not m.weight.is_contiguous()))
    out = {}
    for cl in (False, True):
        seen.clear()
        model.info["inference"]["channels_last"] = cl
        out[cl], _ = model.predict_samples(image, meta, "mc", 3, seed=1)
        assert seen and all(s is cl for s in seen)
    torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-5)
    assert not torch.equal(out[False][0], out[False][1])  # the samples do differ
    # the very storage and strides the weights had (put back, not converted back)
    assert all((p.data_ptr(), p.stride()) == weights[id(p)] for p in net.parameters())
