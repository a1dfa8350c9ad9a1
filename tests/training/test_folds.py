"""K-fold cross-validation through the engine: K models in one folder, out-of-fold predictions
covering every case once, an estimate with an interval, the fold ensemble at prediction, and a
fold resumed after an interrupt."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medseg.cli import _parser, main
from medseg.model_folder import ModelFolder
from medseg.tasks.classification import classifier_logits, preprocess_cls_images
from medseg.training.calibration import read_temperature
from medseg.training.device import resolve_precision
from medseg.training.engine import train
from medseg.workflows.commands import build_train_config

CLS = ["--task", "classification", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size",
       "8", "--device", "cpu", "--set", "model.options.channels=[4,8]",
       "--set", "model.options.blocks_per_stage=[1,1]"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 48)
    x = rng.integers(0, 60, (48, 16, 16)).astype(np.uint8)
    x[y == 1, 4:12, 4:12] = 200
    p = tmp_path_factory.mktemp("folds") / "toy.npz"
    np.savez(p, train_images=x[:36], train_labels=y[:36, None], val_images=x[36:],
             val_labels=y[36:, None], test_images=x[:4], test_labels=y[:4, None])
    return p, y


def test_classification_folds_oof_estimate_and_fold_ensemble(npz, tmp_path, capsys):
    p, y = npz
    out = tmp_path / "cv"
    assert main(["train", "--dataset", str(p), "--output", str(out), "--folds", "3", *CLS]) == 0
    folder = ModelFolder.open(out)
    assert folder.plan.members == ["fold_0", "fold_1", "fold_2"]
    assert folder.plan["ensemble"]["kind"] == "folds"
    rows = list(csv.DictReader(open(out / "oof_predictions.csv")))
    ids = [r["id"] for r in rows]
    assert len(ids) == 48 and len(set(ids)) == 48  # every train/val case exactly once
    assert not any(i.startswith("test") for i in ids)  # the test split is never pooled
    for k in range(3):  # each fold's rows are the validation ids of that fold's model
        val = set(ModelFolder.open(out / f"fold_{k}").plan.val_ids)
        assert {r["id"] for r in rows if r["fold"] == str(k)} == val
    labels = {r["id"]: int(r["label"]) for r in rows}
    per_fold = [sum(labels[i] for i in ModelFolder.open(out / f"fold_{k}").plan.val_ids)
                for k in range(3)]
    assert max(per_fold) - min(per_fold) <= 1  # stratified: positives spread evenly
    est = json.loads((out / "oof_metrics.json").read_text())
    assert est["estimate"] == "out-of-fold" and est["n_cases"] == 48
    lo, hi = est["ci"]["macro"]["auroc"]
    assert lo <= est["macro"]["auroc"] <= hi
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["fitted_on"].startswith("the out-of-fold predictions")
    assert cal["source"] == "out-of-fold"
    # the fold ensemble predicts the mean of its members (each at the folder's temperature)
    pred = tmp_path / "p"
    assert main(["predict", "--model", str(out), "--input", str(p), "--split", "test",
                 "--output", str(pred), "--device", "cpu"]) == 0
    got = torch.tensor([[float(r["p_0"]), float(r["p_1"])]
                        for r in csv.DictReader(open(pred / "predictions.csv"))])
    data = np.load(p)
    x = preprocess_cls_images(list(data["test_images"][:, None].astype(np.float32)), [16, 16],
                              ["a", "b", "c", "d"])
    t = read_temperature(out)
    nets, dev = folder.load_networks(device="cpu")
    # predicted in the model's inference.precision (auto: bf16 on a CPU with native bf16)
    auto = resolve_precision("auto", torch.device("cpu"))
    want = torch.stack([torch.softmax(classifier_logits(n, x, dev, precision=auto) / t, 1)
                        for n in nets]).mean(0)
    assert torch.allclose(got, want, atol=2e-6)
    # --precision fp32 runs the networks in fp32
    assert main(["predict", "--model", str(out), "--input", str(p), "--split", "test",
                 "--output", str(tmp_path / "p32"), "--device", "cpu", "--precision",
                 "fp32"]) == 0
    got32 = torch.tensor([[float(r["p_0"]), float(r["p_1"])]
                          for r in csv.DictReader(open(tmp_path / "p32" / "predictions.csv"))])
    want32 = torch.stack([torch.softmax(classifier_logits(n, x, dev) / t, 1)
                          for n in nets]).mean(0)
    assert torch.allclose(got32, want32, atol=2e-6)
    # a file holding only the test split (e.g. a held-out set) predicts the same; training
    # on it is a one-line error, since a test split is never trained on
    only = tmp_path / "test_only.npz"
    np.savez(only, test_images=data["test_images"], test_labels=data["test_labels"])
    assert main(["predict", "--model", str(out), "--input", str(only), "--split", "test",
                 "--output", str(tmp_path / "p_only"), "--device", "cpu", "--precision",
                 "fp32"]) == 0
    assert (tmp_path / "p_only" / "predictions.csv").read_text() == \
        (tmp_path / "p32" / "predictions.csv").read_text()
    bad = ["train", "--dataset", str(only), "--output", str(tmp_path / "bad"), *CLS]
    assert main(bad) == 2  # an input error
    # the operating point: Youden on the temperature-scaled out-of-fold probabilities
    from medseg.metrics.thresholds import choose_threshold

    decision = json.loads((out / "decision.json").read_text())
    assert decision["rule"] == "youden"
    oof_logits = {}
    for k in range(3):
        for r in json.loads((out / f"fold_{k}" / "oof.json").read_text())["rows"]:
            oof_logits[r["id"]] = r["logits"]
    z = torch.tensor([oof_logits[r["id"]] for r in rows], dtype=torch.float64)
    p1 = torch.softmax(z / t, 1)[:, 1].numpy()
    y1 = np.array([int(r["label"]) for r in rows])
    assert decision["thresholds"]["1"] == pytest.approx(choose_threshold(p1, y1)["threshold"])
    preds = list(csv.DictReader(open(pred / "predictions.csv")))
    th = decision["thresholds"]["1"]
    assert [r["prediction"] for r in preds] == ["1" if float(r["p_1"]) >= th else "0"
                                                for r in preds]
    assert decision["temperature"] == pytest.approx(t)
    # medseg calibrate on other labelled images fits another temperature: decision.json keeps
    # the threshold as chosen, and predict uses the same operating point on the logits
    from medseg.metrics.thresholds import threshold_at_temperature

    capsys.readouterr()
    yv = data["val_labels"].copy()
    yv[::2] = 1 - yv[::2]  # half relabelled: the fit lands on another temperature
    other = tmp_path / "other.npz"
    np.savez(other, val_images=data["val_images"], val_labels=yv)
    assert main(["calibrate", "--model", str(out), "--data", str(other), "--split", "val",
                 "--device", "cpu", "--force"]) == 0
    t2 = read_temperature(out)
    assert t2 != pytest.approx(t)
    moved = threshold_at_temperature(th, t, t2)
    assert f"1 {th:.4f} -> {moved:.4f}" in capsys.readouterr().out
    assert json.loads((out / "decision.json").read_text()) == decision
    pred2 = tmp_path / "p_recal"
    assert main(["predict", "--model", str(out), "--input", str(p), "--split", "test",
                 "--output", str(pred2), "--device", "cpu"]) == 0
    copy = json.loads((pred2 / "decision.json").read_text())
    assert copy["thresholds"]["1"] == pytest.approx(moved, abs=1e-12)
    assert copy["temperature"] == pytest.approx(t2)
    assert copy["moved_from"] == {**copy["moved_from"], "temperature": t, "thresholds": {"1": th}}
    preds2 = list(csv.DictReader(open(pred2 / "predictions.csv")))
    assert [r["prediction"] for r in preds2] == ["1" if float(r["p_1"]) >= moved else "0"
                                                 for r in preds2]


def test_a_fold_resumes_after_an_interrupt(npz, tmp_path):
    p, _ = npz

    def cfg(out):
        return build_train_config(_parser().parse_args(
            ["train", "--dataset", str(p), "--output", str(out), "--folds", "2", *CLS]))

    straight = tmp_path / "a"
    train(cfg(straight), log=lambda _m: None)

    def stop_in_fold_1(msg: str) -> None:
        stop_in_fold_1.fold += msg.startswith("fold ")
        if stop_in_fold_1.fold == 2 and msg.startswith("  epoch 1/2"):
            raise KeyboardInterrupt

    stop_in_fold_1.fold = 0
    cut = tmp_path / "b"
    assert train(cfg(cut), log=stop_in_fold_1).interrupted
    assert not (cut / "plan.json").exists()  # incomplete: no top plan yet
    train(cfg(cut), resume=True, log=lambda _m: None)
    for k in range(2):
        a = torch.load(straight / f"fold_{k}" / "checkpoint_last.pt", weights_only=True)
        b = torch.load(cut / f"fold_{k}" / "checkpoint_last.pt", weights_only=True)
        assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    assert (cut / "oof_predictions.csv").read_text() == \
        (straight / "oof_predictions.csv").read_text()


def test_repeated_folds_average_the_models_that_never_saw_a_case(npz, tmp_path):
    """--folds K --ensemble R: every fold trained R times (seeds seed..seed+R-1), each case's
    out-of-fold probabilities the mean of its R unseen models, one temperature shared by them,
    the first repeat the plain K-fold run, prediction averaging all K R models."""
    from medseg.training.engine import train_ensemble
    from medseg.uncertainty.calibration import fit_ensemble_temperature

    p, _ = npz

    def cfg(out, *extra):
        return build_train_config(_parser().parse_args(
            ["train", "--dataset", str(p), "--output", str(out), "--folds", "2", *CLS, *extra]))

    out = tmp_path / "rep"
    train(cfg(out, "--ensemble", "2"), log=lambda _m: None)
    folder = ModelFolder.open(out)
    assert folder.plan.members == ["fold_0", "fold_1", "fold_0_seed_1", "fold_1_seed_1"]
    kind = folder.plan["ensemble"]
    assert (kind["kind"], kind["folds"], kind["repeats"], kind["seeds"]) == ("folds", 2, 2,
                                                                             [0, 1])
    for k in range(2):
        a, b = ModelFolder.open(out / f"fold_{k}"), ModelFolder.open(out / f"fold_{k}_seed_1")
        assert a.plan.val_ids == b.plan.val_ids  # the same fold ...
        assert (a.config().train.seed, b.config().train.seed) == (0, 1)  # ... another seed
    # the first repeat is the plain 2-fold run, bit for bit
    plain = tmp_path / "plain"
    train(cfg(plain), log=lambda _m: None)
    for k in range(2):
        a = torch.load(plain / f"fold_{k}" / "checkpoint_last.pt", weights_only=True)
        b = torch.load(out / f"fold_{k}" / "checkpoint_last.pt", weights_only=True)
        assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    # out-of-fold: each case once, the mean of its two models' probabilities
    logits: dict[str, list] = {}
    for name in folder.plan.members:
        for r in json.loads((out / name / "oof.json").read_text())["rows"]:
            logits.setdefault(r["id"], []).append(r["logits"])
    assert len(logits) == 48 and all(len(v) == 2 for v in logits.values())
    rows = list(csv.DictReader(open(out / "oof_predictions.csv")))
    assert sorted(r["id"] for r in rows) == sorted(logits)
    z = torch.tensor([logits[r["id"]] for r in rows], dtype=torch.float64).transpose(0, 1)
    mean_p1 = torch.softmax(z, -1).mean(0)[:, 1].numpy()
    got = np.array([float(r["p_1"]) for r in rows])
    assert np.allclose(got, mean_p1, atol=1e-6)
    single_p1 = torch.softmax(z[0], -1)[:, 1].numpy()
    assert not np.allclose(got, single_p1, atol=1e-3)  # not one model's
    y = torch.tensor([int(r["label"]) for r in rows])
    t = read_temperature(out)
    assert t == pytest.approx(fit_ensemble_temperature(z, y), rel=1e-6)
    est = json.loads((out / "oof_metrics.json").read_text())
    assert est["n_cases"] == 48 and est["folds"] == 2
    # the threshold is chosen on the averaged tempered probabilities
    from medseg.metrics.thresholds import choose_threshold

    p1 = torch.softmax(z / t, -1).mean(0)[:, 1].numpy()
    th = json.loads((out / "decision.json").read_text())["thresholds"]["1"]
    assert th == pytest.approx(choose_threshold(p1, y.numpy())["threshold"])
    # prediction averages the four models
    assert len(folder.load_networks(device="cpu")[0]) == 4
    assert main(["predict", "--model", str(out), "--input", str(p), "--split", "test",
                 "--output", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    # --member k is fold k mod K of repeat k div K
    one = tmp_path / "one"
    train_ensemble(cfg(one, "--ensemble", "2"), members=[3], log=lambda _m: None)
    assert sorted(q.name for q in one.iterdir() if q.is_dir()) == ["fold_1_seed_1"]
    a = torch.load(out / "fold_1_seed_1" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(one / "fold_1_seed_1" / "checkpoint_last.pt", weights_only=True)
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])


def test_segmentation_folds_give_a_dice_estimate_with_an_interval(tmp_path, monkeypatch):
    import medseg.tasks.segmentation as seg
    from medseg.training import engine

    # the end of each fold (out-of-fold rows + calibration set) predicts each of its
    # validation cases once, not once for each
    calls = {"finish": 0, "in_finish": False}
    real_predict, real_finish = seg.predict_probs, engine._Run.finish

    def counting_predict(*args, **kwargs):
        calls["finish"] += calls["in_finish"]
        return real_predict(*args, **kwargs)

    def flagged_finish(self):
        calls["in_finish"] = True
        try:
            return real_finish(self)
        finally:
            calls["in_finish"] = False

    monkeypatch.setattr(seg, "predict_probs", counting_predict)
    monkeypatch.setattr(engine._Run, "finish", flagged_finish)
    ds, out = tmp_path / "ds", tmp_path / "cv"
    assert main(["phantoms", "--output", str(ds), "--dims", "2", "--size", "32", "--n-train",
                 "6", "--n-test", "0"]) == 0
    assert main(["train", "--dataset", str(ds), "--output", str(out), "--folds", "3",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--patch-size", "32", "32", "--device", "cpu",
                 "--set", "model.options.channels=[4,8]",
                 "--set", "data.group_regex=^case_\\d\\d(\\d)"]) == 0
    assert calls["finish"] == 6  # 3 folds x 2 validation cases, each predicted once
    est = json.loads((out / "oof_metrics.json").read_text())
    # the engine hands data.group_regex to the estimate: its interval resamples subjects
    assert est["interval"].startswith("95% percentile bootstrap over subjects (6,")
    assert est["n_cases"] == 6 and set(est["per_class"]) == {"dice_organ", "dice_lesion"}
    rows = list(csv.DictReader(open(out / "oof_metrics.csv")))
    organ = np.array([float(r["dice_organ"]) for r in rows])
    assert est["per_class"]["dice_organ"]["mean"] == pytest.approx(organ.mean())
    lo, hi = est["per_class"]["dice_organ"]["ci95"]
    assert lo <= organ.mean() <= hi
