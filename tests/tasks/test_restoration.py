"""Restoration task (P4): loss minimisers, gradients, PSNR/SSIM, data, CLI round trip, bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import special, stats

from medseg.cli import main as cli_main
from medseg.errors import ConfigError, InputError
from medseg.io import read_image, write_image
from medseg.losses.restoration import (
    RestorationLoss,
    from_network,
    observation,
    restoration_loss,
    restoration_nll,
    to_network,
)
from medseg.metrics.image_quality import psnr, ssim
from medseg.physics.noise import log_compress, mr_rician_noise, us_speckle
from medseg.physics.restoration_data import (
    NoiseParams,
    grey_to_intensity,
    hu_to_counts_rate,
    read_restoration_json,
    write_restoration_dataset,
)
from medseg.tasks.restoration import load_restoration_pairs
from medseg.training.config import ExperimentConfig

MR = NoiseParams("MR", 1.0, sigma=1.0)
US2 = NoiseParams("US", 255.0, looks=2.0, dynamic_range_db=60.0, reference=1.0)
CT = NoiseParams("CT", 1000.0, photons=2000.0, path_mm=200.0, mu_water=0.0192)


def _fit_constant(y: torch.Tensor, noise: NoiseParams, kind: str, start: float) -> float:
    """The constant prediction minimising the mean loss over ``y`` (LBFGS, float64)."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=60, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = restoration_loss(p.expand_as(y), y, noise, kind)
        loss.backward()
        return loss

    opt.step(closure)
    return float(p.detach())


def test_rician_nll_recovers_nu_and_l2_converges_to_the_rician_mean():
    rng = np.random.default_rng(0)
    nu, sigma = 1.0, 1.0  # SNR 1: strong Rician bias
    y = torch.from_numpy(mr_rician_noise(np.full(20000, nu), sigma, rng).astype(np.float64))
    nu_nll = _fit_constant(y, MR, "likelihood", 1.5)
    nu_l2 = _fit_constant(y, MR, "l2", 0.5)
    assert abs(nu_nll - nu) / nu < 0.03
    rice_mean = stats.rice.mean(nu / sigma, scale=sigma)  # 1.5486 at SNR 1
    assert abs(nu_l2 - rice_mean) < 0.015
    assert nu_l2 - nu > 0.5  # L2 is biased by more than half a sigma


def test_gamma_nll_is_unbiased_and_log_l2_is_biased_by_digamma():
    rng = np.random.default_rng(1)
    L = 2.0
    x = 10.0 ** (-20.0 / 10.0)  # -20 dB -> grey 170
    grey = log_compress(us_speckle(np.full(40000, x), L, rng), 60.0, reference=1.0)
    y = torch.from_numpy(grey.astype(np.float64))
    g_true = 255.0 * (1.0 - 20.0 / 60.0)
    g_nll = _fit_constant(y, US2, "likelihood", 150.0)
    g_l2 = _fit_constant(y, US2, "l2", 150.0)
    bias_grey = 255.0 / 60.0 * 10.0 / math.log(10.0) * (special.digamma(L) - math.log(L))
    assert abs(g_nll - g_true) < 0.5  # 0.5 grey = 0.12 dB
    assert abs(g_l2 - (g_true + bias_grey)) < 0.5
    assert bias_grey < -4.0  # -1.0 dB at L = 2


def test_poisson_nll_minimiser_is_the_sample_mean_of_counts():
    rng = np.random.default_rng(2)
    hu_true = 40.0
    lam = float(hu_to_counts_rate(np.array(hu_true), CT))
    counts = rng.poisson(lam, 20000).astype(np.float64)
    hu_noisy = 1000.0 * (-np.log(counts / CT.photons) / CT.path_mm / CT.mu_water - 1.0)
    y = torch.from_numpy(hu_noisy)
    obs = observation(y, CT)
    assert torch.allclose(obs, torch.from_numpy(counts), atol=1e-6)  # counts recovered exactly
    hu_nll = _fit_constant(y, CT, "likelihood", 0.0)
    rate = float(hu_to_counts_rate(np.array(hu_nll), CT))
    assert rate == pytest.approx(counts.mean(), rel=1e-6)
    hu_ans = _fit_constant(y, CT, "anscombe_l2", 0.0)
    hu_l2 = _fit_constant(y, CT, "l2", 0.0)
    assert hu_l2 == pytest.approx(hu_noisy.mean(), abs=1e-6)
    # log-domain estimate is biased by 1000 / (mu_w L) / (2 lambda) HU (delta method)
    bias = 1000.0 / (CT.mu_water * CT.path_mm) / (2.0 * lam)
    assert abs(hu_nll - hu_true) < 1.0 and abs(hu_ans - hu_true) < 1.0
    assert hu_l2 - hu_true == pytest.approx(bias, rel=0.25)


@pytest.mark.parametrize("noise,kind", [(MR, "l2"), (MR, "likelihood"), (US2, "likelihood"),
                                        (CT, "likelihood"), (CT, "anscombe_l2")])
def test_losses_gradcheck_float64(noise: NoiseParams, kind: str):
    g = torch.Generator().manual_seed(0)
    if noise.modality == "MR":
        x = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64) + 0.2
        y = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64) + 0.1
    elif noise.modality == "US":
        x = 100 + 100 * torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64)
        y = 100 + 100 * torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64)
    else:
        x = 100 * torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)
        y = 100 * torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)
    t = (0.1 * torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda tt: restoration_loss(from_network(tt, x, noise), y, noise, kind), (t,))
    module = RestorationLoss(noise, kind)
    pred = from_network(t, x, noise).detach()
    assert float(module(pred, y)) == pytest.approx(float(restoration_loss(pred, y, noise, kind)))


def test_parameterisation_and_domains():
    x = torch.tensor([[[[0.0, 0.5, 1.0]]]], dtype=torch.float64)
    # a zero correction returns the input (MR softplus(20 s)/20 within 1e-9 above s = 0.5)
    assert torch.allclose(from_network(torch.zeros_like(x), x, MR)[..., 1:], x[..., 1:])
    assert float(from_network(torch.full_like(x, -5.0), x, MR).min()) > 0
    grey = torch.tensor([255.0, 170.0], dtype=torch.float64)
    assert torch.allclose(observation(grey, US2), torch.tensor([1.0, 0.01], dtype=torch.float64))
    assert grey_to_intensity(np.array([85.0]), US2)[0] == pytest.approx(1e-4)
    assert torch.allclose(to_network(grey, US2), grey / 255.0)
    with pytest.raises(ValueError, match="anscombe_l2"):
        restoration_loss(grey, grey, US2, "anscombe_l2")
    with pytest.raises(ValueError, match="shape"):
        restoration_loss(grey, grey[:1], US2, "l2")


def test_nll_values_by_hand():
    # Poisson full NLL at rate 2, count 3: 2 - 3 log 2 + log 3!
    hu = torch.tensor([1000.0 * (math.log(CT.photons / 2.0) / (CT.mu_water * CT.path_mm) - 1)],
                      dtype=torch.float64)
    hu_obs = torch.tensor([1000.0 * (math.log(CT.photons / 3.0) / (CT.mu_water * CT.path_mm)
                                     - 1)], dtype=torch.float64)
    want = 2.0 - 3.0 * math.log(2.0) + math.log(6.0)
    assert float(restoration_nll(hu, hu_obs, CT)) == pytest.approx(want, rel=1e-9)
    # Gamma with L = 2, mean 1, y = 1: lgamma(2) - 2 log 2 + 0 - 0 + 2
    one = torch.tensor([255.0], dtype=torch.float64)
    assert float(restoration_nll(one, one, US2)) == pytest.approx(2.0 - 2.0 * math.log(2.0))


def test_psnr_hand_value_and_policy():
    ref = torch.zeros(4, 4)
    assert psnr(ref + 0.1, ref, 1.0) == pytest.approx(20.0, abs=1e-5)
    assert psnr(ref + 2.0, ref, 255.0) == pytest.approx(10 * math.log10(255.0**2 / 4.0))
    assert psnr(ref, ref, 1.0) == math.inf
    with pytest.raises(ValueError):
        psnr(ref, ref, 0.0)


@pytest.mark.parametrize("shape", [(48, 40), (20, 18, 16)])
def test_ssim_matches_skimage(shape: tuple[int, ...]):
    from scipy import ndimage as ndi
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    a = ndi.gaussian_filter(rng.random(shape), 2.0)
    b = a + 0.05 * rng.standard_normal(shape)
    want = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    got = ssim(torch.from_numpy(b), torch.from_numpy(a), 1.0)
    assert got == pytest.approx(want, abs=1e-3)
    assert ssim(torch.from_numpy(a), torch.from_numpy(a), 1.0) == pytest.approx(1.0)


def test_dataset_is_deterministic_and_has_independent_realisations(tmp_path: Path):
    a = write_restoration_dataset(tmp_path / "a", "mr", 2, 1, size=16, level=3, seed=5)
    b = write_restoration_dataset(tmp_path / "b", "mr", 2, 1, size=16, level=3, seed=5)
    c = write_restoration_dataset(tmp_path / "c", "mr", 2, 1, size=16, level=3, seed=5,
                                  target="clean")
    d, noise = read_restoration_json(a)
    assert d["task"] == "restoration" and noise.sigma == pytest.approx(0.15)
    xa, xb = (read_image(p / "imagesTr" / "case_000_0000.nii.gz")[0] for p in (a, b))
    np.testing.assert_array_equal(xa, xb)
    ta = read_image(a / "targetsTr" / "case_000.nii.gz")[0]
    clean = read_image(a / "cleanTr" / "case_000.nii.gz")[0]
    assert np.abs(ta - xa).mean() > 0.05  # two independent realisations
    np.testing.assert_array_equal(read_image(c / "targetsTr" / "case_000.nii.gz")[0], clean)
    # held-out targets stay noisy with clean training targets
    assert np.abs(read_image(c / "targetsTs" / "case_002.nii.gz")[0]
                  - read_image(c / "cleanTs" / "case_002.nii.gz")[0]).mean() > 0.05
    with pytest.raises(InputError, match="not empty"):
        write_restoration_dataset(a, "mr", 2, 1, size=16)


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ds, model, pred, ev = (tmp_path / n for n in ("ds", "model", "pred", "ev"))
    assert cli_main(["restoration-data", "--output", str(ds), "--modality", "us", "--n-train", "4",
                     "--n-test", "2", "--size", "32", "--level", "2", "--seed", "1"]) == 0
    assert cli_main(["train", "--task", "restoration", "--dataset", str(ds), "--output",
                     str(model), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                     "--device", "cpu", "--set", "model.options.channels=[8,16]",
                     "--set", "loss.restoration=likelihood"]) == 0
    plan = json.loads((model / "plan.json").read_text())
    assert plan["task"] == "restoration" and plan["loss"] == "likelihood"
    assert plan["noise"]["looks"] == pytest.approx(1.0)
    assert cli_main(["predict", "--model", str(model), "--input", str(ds / "imagesTs"),
                     "--output", str(pred), "--device", "cpu"]) == 0
    p_arr, p_meta = read_image(pred / "case_004.nii.gz")
    i_arr, i_meta = read_image(ds / "imagesTs" / "case_004_0000.nii.gz")
    assert p_arr.shape == i_arr.shape and np.allclose(p_meta.affine, i_meta.affine)
    assert cli_main(["evaluate", "--pred", str(pred), "--ref", str(ds), "--output",
                     str(ev)]) == 0
    res = json.loads((ev / "metrics.json").read_text())
    data_range = json.loads((ds / "dataset.json").read_text())["noise"]["data_range"]
    assert res["n_cases"] == 2 and res["data_range"] == data_range
    assert all(math.isfinite(res["mean"][k]) for k in ("psnr", "ssim", "nll"))
    lines = (ev / "metrics.csv").read_text().splitlines()
    assert lines[0] == "id,psnr,ssim,nll" and len(lines) == 3
    # the mean of the CSV rows is the JSON mean
    assert np.mean([float(r.split(",")[1]) for r in lines[1:]]) == pytest.approx(
        res["mean"]["psnr"])


def test_bad_inputs_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ds = write_restoration_dataset(tmp_path / "ds", "us", 2, 0, size=16, level=2)
    tgt = ds / "targetsTr" / "case_001.nii.gz"
    arr, meta = read_image(tgt)
    # negative grey value -> negative intensity for the Gamma likelihood
    bad = arr.copy()
    bad[0, 0, 0] = -3.0
    write_image(tgt, bad, replace(meta, source=()))
    with pytest.raises(InputError, match="Gamma") as e:
        load_restoration_pairs(ds)
    assert e.value.path == tgt
    # target on another grid
    from medseg.io.meta import ImageMeta

    write_image(tgt, np.zeros((1, 8, 8), np.float32), ImageMeta.from_spacing((1.0, 1.0), (8, 8)))
    with pytest.raises(InputError, match="differs") as e:
        load_restoration_pairs(ds)
    assert e.value.path == tgt
    # sigma <= 0 in dataset.json, through the CLI: exit 2 and the file named
    mr = write_restoration_dataset(tmp_path / "mr", "mr", 2, 0, size=16, level=1)
    js = mr / "dataset.json"
    d = json.loads(js.read_text())
    d["noise"]["sigma"] = 0.0
    js.write_text(json.dumps(d))
    with pytest.raises(InputError, match="sigma") as e:
        read_restoration_json(mr)
    assert e.value.path == js
    assert cli_main(["train", "--task", "restoration", "--dataset", str(mr), "--output",
                     str(tmp_path / "m")]) == 2
    assert str(js) in capsys.readouterr().err
    with pytest.raises(ConfigError, match="loss.restoration"):
        ExperimentConfig.from_dict({"loss": {"restoration": "l1"}})


def test_sample_pairs_crops_and_mirrors_input_and_target_alike():
    from medseg.tasks.restoration import sample_pairs

    x = np.arange(2 * 36, dtype=np.float32).reshape(2, 1, 6, 6)
    y = x + 1000.0
    rng = np.random.default_rng(0)
    xb, yb = sample_pairs(x, y, (4, 3), rng, p_flip=0.5, swap=False)
    assert xb.shape == (2, 1, 4, 3)
    np.testing.assert_array_equal(yb - xb, 1000.0)  # same crop and flips for both
    # every crop is a (possibly mirrored) block of its own image
    for i in range(2):
        assert set(xb[i].ravel()) <= set(x[i].ravel())
    xs, ys = sample_pairs(x, y, None, np.random.default_rng(1), swap=True)
    diffs = {float(v) for v in np.unique(ys - xs)}
    assert diffs <= {1000.0, -1000.0}
    # over many draws both directions occur (exchangeable Noise2Noise pairs)
    signs = [float(np.sign((b - a).mean())) for a, b in
             (sample_pairs(x[:1], y[:1], None, np.random.default_rng(k), swap=True)
              for k in range(20))]
    assert 1.0 in signs and -1.0 in signs


def test_restoration_record_entries_stay_in_the_prediction_folder(tmp_path: Path):
    """``restoration.json`` is data a user may be sent: its paths and ids are checked."""
    from medseg.tasks.restoration import RECORD_NAME, evaluate_restoration

    ds = write_restoration_dataset(tmp_path / "ds", "mr", 1, 1, size=16, level=1, seed=2)
    _, noise = read_restoration_json(ds)
    pred = tmp_path / "pred"
    pred.mkdir()
    clean, meta = read_image(ds / "cleanTs" / "case_001.nii.gz")
    write_image(pred / "case_001.nii.gz", clean, replace(meta, source=()))
    outside = tmp_path / "elsewhere.nii.gz"
    write_image(outside, clean, replace(meta, source=()))
    rec_path = pred / RECORD_NAME

    def record(cases: object) -> None:
        rec_path.write_text(json.dumps({"noise": noise.to_dict(), "cases": cases}))

    record([{"id": "case_001", "prediction": "case_001.nii.gz"}])
    res = evaluate_restoration(pred, ds, tmp_path / "ev0", log=lambda s: None)
    assert res["result"]["mean"]["psnr"] == math.inf  # the prediction equals the truth
    assert res["result"]["mean"]["ssim"] == pytest.approx(1.0)
    hint = "allow_outside_root=True (setting data.allow_outside_root: true)"
    for k, (cases, problem) in enumerate([
            ([{"id": "case_001", "prediction": str(outside)}], "is an absolute path"),
            ([{"id": "case_001", "prediction": "../elsewhere.nii.gz"}],
             "climbs out of the folder with '..'"),
            ([{"id": "../ds/cleanTs/case_001", "prediction": "case_001.nii.gz"}],
             "is not a plain case name"),
            ([{"id": "case_001"}], "must be a non-empty file path (a string), got None"),
            ({"id": "case_001"}, 'has no list of "cases"'),
            (["case_001"], "cases[0] is not an object")]):
        record(cases)
        with pytest.raises(InputError) as e:
            evaluate_restoration(pred, ds, tmp_path / f"ev{k + 1}", log=lambda s: None)
        assert e.value.path == rec_path and problem in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
        if k < 2:
            assert hint in str(e.value)
    record([{"id": "case_001", "prediction": str(outside)}])  # the user opts in
    res = evaluate_restoration(pred, ds, tmp_path / "ev9", log=lambda s: None,
                               allow_outside_root=True)
    assert res["result"]["mean"]["ssim"] == pytest.approx(1.0)
    rec_path.write_text("[]")
    with pytest.raises(InputError, match="must hold a JSON object, not a list"):
        evaluate_restoration(pred, ds, tmp_path / "ev10", log=lambda s: None)
