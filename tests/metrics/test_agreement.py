"""Volume differences and Bland-Altman (issue 12): hand-computed values, numpy references,
2D and 3D with anisotropic spacing, the empty-case policy, and ``medseg evaluate``'s files."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from medseg.io import write_label
from medseg.io.meta import ImageMeta
from medseg.metrics import evaluate_case, read_metrics
from medseg.metrics.agreement import (
    VOLUME_EMPTY_POLICY,
    bland_altman,
    bland_altman_pairs,
    bland_altman_points,
    percent_volume_difference,
    volume_agreement,
    volume_difference,
)
from medseg.reports.bland_altman import save_bland_altman
from medseg.tasks.segmentation import evaluate_folders


def _first_k(shape: tuple[int, ...], k: int, value: int = 1) -> np.ndarray:
    """A label map whose first ``k`` voxels (C order) hold ``value``."""
    a = np.zeros(int(np.prod(shape)), dtype=np.int64)
    a[:k] = value
    return a.reshape(shape)


def test_differences_and_the_empty_case_policy():
    assert volume_difference(12.0, 8.0) == 4.0
    assert percent_volume_difference(12.0, 8.0) == pytest.approx(40.0)  # 100 * 4 / 10
    assert percent_volume_difference(8.0, 12.0) == pytest.approx(-40.0)
    # prediction empty / reference empty: the whole volume, -200 % / +200 %
    assert (volume_difference(0.0, 5.0), percent_volume_difference(0.0, 5.0)) == (-5.0, -200.0)
    assert (volume_difference(3.0, 0.0), percent_volume_difference(3.0, 0.0)) == (3.0, 200.0)
    # both empty: exact agreement in the absolute form, undefined in the percentage form
    assert volume_difference(0.0, 0.0) == 0.0
    assert math.isnan(percent_volume_difference(0.0, 0.0))
    assert math.isnan(percent_volume_difference(math.nan, 1.0))
    assert "both empty" in VOLUME_EMPTY_POLICY


def test_bland_altman_hand_values():
    # d = [1, 2, 3, 6]: bias 3, squared deviations 4 + 1 + 0 + 9 = 14, SD sqrt(14 / 3)
    ba = bland_altman([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(14.0 / 3.0)
    assert ba.bias == 3.0 and ba.sd == pytest.approx(sd, abs=1e-12) and ba.n == 4
    assert ba.loa_low == pytest.approx(3.0 - 1.96 * 2.160246899, abs=1e-8)  # -1.23408392
    assert ba.loa_high == pytest.approx(7.23408392, abs=1e-8)
    # 95% CI of the bias: t(0.975, 3) = 3.182446305 times SD / sqrt(4)
    assert ba.bias_ci_high - ba.bias == pytest.approx(3.182446305 * sd / 2.0, abs=1e-8)
    assert ba.bias_ci_low == pytest.approx(3.0 - 3.4374349, abs=1e-6)  # 3.1824 * 1.0801
    # NaN skipped and counted; one value: bias only; none: all NaN
    one = bland_altman([math.nan, 2.5])
    assert (one.bias, one.n, one.n_nan) == (2.5, 1, 1) and math.isnan(one.sd)
    assert math.isnan(one.loa_low) and math.isnan(one.bias_ci_high)
    none = bland_altman([])
    assert none.n == 0 and math.isnan(none.bias)


def test_bland_altman_matches_numpy_ddof1():
    rng = np.random.default_rng(3)
    ref = rng.uniform(10, 100, 40)
    pred = ref * rng.normal(1.05, 0.1, 40) + rng.normal(0, 2, 40)
    d = pred - ref
    ba = bland_altman_pairs(pred, ref)
    assert ba.bias == pytest.approx(float(np.mean(d)), abs=1e-12)
    assert ba.sd == pytest.approx(float(np.std(d, ddof=1)), abs=1e-12)
    assert ba.loa_high - ba.loa_low == pytest.approx(2 * 1.96 * np.std(d, ddof=1), abs=1e-10)
    half = stats.t.ppf(0.975, 39) * np.std(d, ddof=1) / math.sqrt(40)
    assert ba.bias_ci_low == pytest.approx(np.mean(d) - half, abs=1e-10)
    pct = 100.0 * d / ((pred + ref) / 2.0)
    bp = bland_altman_pairs(pred, ref, percent=True)
    assert bp.bias == pytest.approx(float(pct.mean()), abs=1e-10)
    assert bp.sd == pytest.approx(float(pct.std(ddof=1)), abs=1e-10)
    with pytest.raises(ValueError, match="length"):
        bland_altman_pairs([1.0], [1.0, 2.0])


def test_per_case_volume_difference_3d_anisotropic():
    # voxel 0.5 x 0.8 x 2.0 mm = 0.8 mm^3 = 0.0008 ml; 10 predicted and 6 reference voxels
    shape = (4, 5, 3)
    res = evaluate_case(_first_k(shape, 10), _first_k(shape, 6), (0.5, 0.8, 2.0), [1, 2])
    c1, c2 = res["classes"][1], res["classes"][2]
    assert c1["volume_unit"] == "ml"
    assert c1["volume_pred"] == pytest.approx(0.008) and c1["volume_ref"] == pytest.approx(0.0048)
    assert c1["volume_diff"] == pytest.approx(0.0032)
    assert c1["volume_diff_pct"] == pytest.approx(50.0)  # 0.0032 / 0.0064
    assert c2["volume_diff"] == 0.0 and math.isnan(c2["volume_diff_pct"])  # both empty


def test_per_case_volume_difference_2d_anisotropic():
    # pixel 0.5 x 0.25 mm = 0.125 mm^2; 8 predicted and 16 reference pixels: 1 vs 2 mm^2
    res = evaluate_case(_first_k((6, 8), 8), _first_k((6, 8), 16), (0.5, 0.25), [1])
    c = res["classes"][1]
    assert c["volume_unit"] == "mm^2" and c["volume_diff"] == pytest.approx(-1.0)
    assert c["volume_diff_pct"] == pytest.approx(-200.0 / 3.0)  # -1 / 1.5
    # an empty prediction: the whole reference volume, -200 %
    e = evaluate_case(np.zeros((6, 8), np.int64), _first_k((6, 8), 16), (0.5, 0.25), [1])
    assert e["classes"][1]["volume_diff"] == pytest.approx(-2.0)
    assert e["classes"][1]["volume_diff_pct"] == -200.0


def test_volume_agreement_over_cases():
    sp, shape = (2.0, 2.5, 4.0), (6, 5, 4)  # 20 mm^3 = 0.02 ml per voxel
    # class 1: (pred, ref) voxels (50, 40), (30, 40), (60, 45) -> d = 0.2, -0.2, 0.3 ml
    # class 2: both empty in the first case, then (0, 5) and (5, 5) voxels
    counts = [((50, 40), (0, 0)), ((30, 40), (0, 5)), ((60, 45), (5, 5))]
    cases = []
    for (p1, r1), (p2, r2) in counts:
        pred = _first_k(shape, p1) + np.flip(_first_k(shape, p2, 2))
        ref = _first_k(shape, r1) + np.flip(_first_k(shape, r2, 2))
        cases.append(evaluate_case(pred, ref, sp, [1, 2]))
    va = volume_agreement(cases)
    a = va[1]
    # d = [0.2, -0.2, 0.3]: bias 0.1, squared deviations 0.01 + 0.09 + 0.04, SD sqrt(0.07)
    assert a["unit"] == "ml" and a["n"] == 3 and a["n_both_empty"] == 0
    assert a["bias"] == pytest.approx(0.1) and a["sd"] == pytest.approx(math.sqrt(0.07))
    assert a["loa_low"] == pytest.approx(0.1 - 1.96 * math.sqrt(0.07))  # -0.41857
    assert a["loa_high"] == pytest.approx(0.618567, abs=1e-6)
    pct = [100 * 0.2 / 0.9, -100 * 0.2 / 0.7, 100 * 0.3 / 1.05]  # 22.22, -28.57, 28.57
    assert a["bias_pct"] == pytest.approx(np.mean(pct))
    assert a["sd_pct"] == pytest.approx(np.std(pct, ddof=1))
    b = va[2]
    # d = [0, -0.1, 0] ml (both-empty counted as 0); percentage: [-200, 0], both-empty left out
    assert b["n"] == 3 and b["bias"] == pytest.approx(-0.1 / 3)
    assert b["n_pct"] == 2 and b["n_nan_pct"] == 1 and b["bias_pct"] == pytest.approx(-100.0)
    assert b["n_both_empty"] == 1 and b["policy"] == VOLUME_EMPTY_POLICY
    means, diffs = bland_altman_points(cases, 1)
    np.testing.assert_allclose(means, [0.9, 0.7, 1.05])
    np.testing.assert_allclose(diffs, [0.2, -0.2, 0.3], atol=1e-12)
    two_d = evaluate_case(_first_k((4, 4), 3), _first_k((4, 4), 2), (1.0, 1.0), [1, 2])
    with pytest.raises(ValueError, match="several units"):
        volume_agreement([*cases, two_d])


def test_evaluate_writes_volume_numbers_and_plot(tmp_path):
    sp, shape = (2.0, 2.5, 4.0), (6, 5, 4)
    meta = ImageMeta.from_spacing(sp, shape)
    for name, (p, r) in {"a": (50, 40), "b": (30, 40), "c": (60, 45)}.items():
        write_label(tmp_path / "pred" / f"{name}.nii.gz", _first_k(shape, p), meta)
        write_label(tmp_path / "ref" / f"{name}.nii.gz", _first_k(shape, r), meta)
    lines: list[str] = []
    res = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "ev",
                           labels=[1], log=lines.append)
    out = tmp_path / "ev"
    doc = read_metrics(out)
    va = doc["summary"]["volume_agreement"][1]
    assert va["bias"] == pytest.approx(0.1) and va["sd"] == pytest.approx(math.sqrt(0.07))
    assert va["n"] == 3 and va["unit"] == "ml"
    assert va["loa_high"] == pytest.approx(res["summary"]["volume_agreement"][1]["loa_high"])
    assert [c["classes"][1]["volume_diff"] for c in doc["cases"]] == pytest.approx(
        [0.2, -0.2, 0.3])
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["volume_diff"]) for r in rows] == pytest.approx([0.2, -0.2, 0.3])
    assert [float(r["volume_diff_pct"]) for r in rows] == pytest.approx(
        [100 * 0.2 / 0.9, -100 * 0.2 / 0.7, 100 * 0.3 / 1.05])
    png = out / "bland_altman.png"
    assert png in res["files"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert any("bias 0.1 ml" in line and "[-0.4186, 0.6186]" in line for line in lines)


def test_bland_altman_plot_with_undefined_limits(tmp_path):
    # one case only: no SD, no limits; the plot still shows the point and the bias
    path = save_bland_altman(tmp_path / "ba.png", {"liver": (np.array([1.0]), np.array([0.2]),
                                                             {"bias": 0.2, "loa_low": math.nan,
                                                              "loa_high": math.nan, "n": 1})})
    with Image.open(path) as im:
        assert im.size == (420, 360)
    with pytest.raises(ValueError, match="at least one"):
        save_bland_altman(tmp_path / "none.png", {})
