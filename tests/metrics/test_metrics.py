"""Segmentation metrics (E5, T5): hand-computed values, empty cases, brute force, files."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.metrics import (
    DEFAULT_POLICY,
    EmptyPolicy,
    assd,
    confusion_counts,
    describe_values,
    dice,
    evaluate_case,
    format_summary_table,
    hausdorff_distance,
    hd95,
    iou,
    read_metrics,
    summarize,
    surface_distances,
    surface_voxels,
    write_metrics,
)

NAN = math.nan


def _square(shape, lo, hi):
    a = np.zeros(shape, bool)
    a[tuple(slice(lo_i, hi_i) for lo_i, hi_i in zip(lo, hi, strict=True))] = True
    return a


def _same(a, b) -> bool:
    """Equality of nested results, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ----------------------------------------------------------------------------- overlap


def test_dice_iou_overlapping_squares():
    # Two 4x4 squares offset by (2, 2): overlap 2x2 = 4 voxels.
    # Dice = 2*4 / (16 + 16) = 0.25; IoU = 4 / (16 + 16 - 4) = 1/7.
    a = _square((8, 8), (0, 0), (4, 4))
    b = _square((8, 8), (2, 2), (6, 6))
    assert confusion_counts(a, b) == (4, 12, 12)
    assert dice(a, b) == pytest.approx(0.25, abs=1e-15)
    assert iou(a, b) == pytest.approx(1 / 7, abs=1e-15)
    assert dice(a.astype(np.uint8), b.astype(np.int64)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="binary"):
        dice(a * 2, b)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:4])


def test_mask_excludes_voxels_from_overlap():
    a = _square((8, 8), (0, 0), (4, 4))
    b = _square((8, 8), (2, 2), (6, 6))
    m = np.ones((8, 8), bool)
    m[0:2, :] = False  # drops 8 FP voxels (rows 0-1 of a); b unaffected
    # TP = 4, FP = 12 - 8 = 4, FN = 12: Dice = 8 / (8 + 4 + 12) = 1/3; IoU = 4/20
    assert confusion_counts(a, b, m) == (4, 4, 12)
    assert dice(a, b, m) == pytest.approx(1 / 3)
    assert iou(a, b, m) == pytest.approx(0.2)
    # Disagreement only where unobserved: perfect scores.
    c = a.copy()
    c[0, 0] = False
    assert dice(a, c, m) == 1.0 and hd95(a, c, mask=m) == 0.0


# ----------------------------------------------------------------------------- surface distances


def test_surface_voxels_of_a_square_is_its_outline():
    a = _square((6, 6), (1, 1), (5, 5))
    s = surface_voxels(a)
    assert s.sum() == 12 and not s[2:4, 2:4].any()
    # Objects touching the image border have surface there; a 1-voxel line is all surface.
    assert surface_voxels(np.ones((3, 3), bool)).sum() == 8
    assert surface_voxels(_square((5, 5), (0, 2), (5, 3))).sum() == 5


def test_hd95_assd_concentric_squares_hand_computed():
    # pred: 10x10 square (rows/cols 5..14); ref: 6x6 square (7..12); spacing 1.
    # Outlines: pred 36 voxels, ref 20 voxels.
    # pred -> ref: 24 edge voxels at 2, 8 voxels next to a corner at sqrt(5), 4 corners at
    #   2*sqrt(2). ref -> pred: all 20 at 2.
    # q95(pred -> ref): rank 0.95 * 35 = 33.25 -> sorted[33] = sorted[34] = 2*sqrt(2).
    # HD95 = max(2*sqrt(2), 2) = 2*sqrt(2); ASSD = (24*2 + 8*sqrt5 + 4*2*sqrt2 + 20*2) / 56.
    pred = _square((20, 20), (5, 5), (15, 15))
    ref = _square((20, 20), (7, 7), (13, 13))
    d_pr, d_rp = surface_distances(pred, ref, (1.0, 1.0))
    assert d_pr.size == 36 and d_rp.size == 20
    np.testing.assert_allclose(np.sort(d_pr), np.sort([2.0] * 24 + [math.sqrt(5)] * 8
                                                      + [2 * math.sqrt(2)] * 4))
    np.testing.assert_allclose(d_rp, 2.0)
    assert hd95(pred, ref, (1.0, 1.0)) == pytest.approx(2 * math.sqrt(2))
    assert hd95(ref, pred, (1.0, 1.0)) == pytest.approx(2 * math.sqrt(2))  # symmetric
    expected_assd = (24 * 2 + 8 * math.sqrt(5) + 8 * math.sqrt(2) + 40) / 56
    assert assd(pred, ref, (1.0, 1.0)) == pytest.approx(expected_assd)
    # Percentile 50 of pred -> ref is 2 (24 of 36 values): max(2, 2) = 2.
    assert hausdorff_distance(pred, ref, (1.0, 1.0), percentile=50) == pytest.approx(2.0)


def test_anisotropic_spacing():
    # Vertical 1-voxel lines one column apart: every surface voxel is 1 voxel away along axis 1.
    pred = _square((6, 8), (0, 2), (6, 3))
    ref = _square((6, 8), (0, 3), (6, 4))
    assert hd95(pred, ref, (1.0, 3.0)) == pytest.approx(3.0)
    assert assd(pred, ref, (1.0, 3.0)) == pytest.approx(3.0)
    assert hd95(pred, ref, (3.0, 1.0)) == pytest.approx(1.0)
    # Single voxels: shift (0, 1) -> 3 mm; shift (1, 1) -> sqrt(1 + 9) mm.
    p = _square((5, 5), (2, 2), (3, 3))
    assert hd95(p, _square((5, 5), (2, 3), (3, 4)), (1.0, 3.0)) == pytest.approx(3.0)
    assert hd95(p, _square((5, 5), (3, 3), (4, 4)), (1.0, 3.0)) == pytest.approx(math.sqrt(10))
    with pytest.raises(ValueError, match="spacing"):
        hd95(p, p, (1.0,))
    with pytest.raises(ValueError, match="spacing"):
        hd95(p, p, (1.0, 0.0))


def test_3d_planes_and_cubes():
    # Planes at axis-0 index 2 and 4, spacing 2.5 mm along axis 0: every distance is 5 mm.
    pred = _square((7, 5, 5), (2, 0, 0), (3, 5, 5))
    ref = _square((7, 5, 5), (4, 0, 0), (5, 5, 5))
    sp = (2.5, 0.7, 0.7)
    assert hd95(pred, ref, sp) == pytest.approx(5.0)
    assert assd(pred, ref, sp) == pytest.approx(5.0)
    # Cubes 4^3 shifted by one voxel along axis 0: overlap 3*4*4 = 48 -> Dice 96/128 = 0.75.
    a = _square((8, 8, 8), (2, 2, 2), (6, 6, 6))
    b = _square((8, 8, 8), (3, 2, 2), (7, 6, 6))
    res = evaluate_case(a.astype(np.int16), b.astype(np.int16), sp, [1])["classes"][1]
    assert res["dice"] == pytest.approx(0.75)
    assert res["iou"] == pytest.approx(48 / 80)
    # 64 voxels of 2.5 * 0.7 * 0.7 = 1.225 mm^3 -> 78.4 mm^3 = 0.0784 ml.
    assert res["volume_pred"] == pytest.approx(0.0784) and res["volume_unit"] == "ml"
    assert res["hd95"] == pytest.approx(hd95(a, b, sp))


def _brute_surface(a: np.ndarray) -> np.ndarray:
    """Voxels of ``a`` with a background voxel (or the image outside) among all 3^n neighbours."""
    pad = np.pad(a, 1)
    inner = np.ones_like(a)
    for off in itertools.product((-1, 0, 1), repeat=a.ndim):
        sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, a.shape, strict=True))
        inner &= pad[sl]
    return a & ~inner


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [((17, 21), (0.8, 1.7), 0), ((9, 11, 10), (2.0, 0.6, 1.1), 1), ((16, 16), (1.0, 1.0), 2)],
)
def test_hd95_assd_match_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)

    def blob():
        return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52

    pred, ref = blob(), blob()
    assert pred.any() and ref.any()
    sp_p, sp_r = _brute_surface(pred), _brute_surface(ref)
    np.testing.assert_array_equal(surface_voxels(pred), sp_p)
    pts_p = np.argwhere(sp_p) * np.asarray(spacing)
    pts_r = np.argwhere(sp_r) * np.asarray(spacing)
    dmat = np.sqrt(((pts_p[:, None, :] - pts_r[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = dmat.min(1), dmat.min(0)
    ours_pr, ours_rp = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(ours_pr, d_pr, atol=1e-12)
    np.testing.assert_allclose(ours_rp, d_rp, atol=1e-12)
    expected_hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert hd95(pred, ref, spacing) == pytest.approx(expected_hd95, abs=1e-12)
    expected_hd = max(d_pr.max(), d_rp.max())
    assert hausdorff_distance(pred, ref, spacing, 100) == pytest.approx(expected_hd, abs=1e-12)
    expected_assd = (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)
    assert assd(pred, ref, spacing) == pytest.approx(expected_assd, abs=1e-12)


def test_mask_restricts_surface_metrics():
    # Same square in both; pred has an extra blob far away in an unobserved region.
    ref = _square((20, 20), (2, 2), (6, 6))
    pred = ref | _square((20, 20), (15, 15), (18, 18))
    m = np.ones((20, 20), bool)
    m[12:, 12:] = False
    assert hd95(pred, ref) > 10
    assert hd95(pred, ref, mask=m) == 0.0 and assd(pred, ref, mask=m) == 0.0
    # Labels at unobserved voxels may be anything (ignore label 255).
    ref_lab = ref.astype(np.int64)
    ref_lab[~m] = 255
    res = evaluate_case(pred.astype(np.int64), ref_lab, (1.0, 1.0), [1], mask=m)
    assert res["classes"][1]["dice"] == 1.0 and res["n_observed"] == 400 - 64


# ----------------------------------------------------------------------------- empty cases


def test_all_four_empty_combinations_default_policy():
    shape, sp = (10, 20), (1.0, 2.0)
    full = _square(shape, (2, 2), (5, 6))
    empty = np.zeros(shape, bool)
    # (pred, ref) -> (dice, iou, hd95, assd)
    cases = {
        "both empty": (empty, empty, 1.0, 1.0, 0.0, 0.0),
        "pred empty": (empty, full, 0.0, 0.0, NAN, NAN),
        "ref empty": (full, empty, 0.0, 0.0, NAN, NAN),
        "neither": (full, full, 1.0, 1.0, 0.0, 0.0),
    }
    for name, (p, r, d, j, h, s) in cases.items():
        got = (dice(p, r), iou(p, r), hd95(p, r, sp), assd(p, r, sp))
        assert _same(list(got), [d, j, h, s]), name
        res = evaluate_case(p.astype(int), r.astype(int), sp, [1])["classes"][1]
        assert _same([res["dice"], res["iou"], res["hd95"], res["assd"]], [d, j, h, s]), name
        assert res["pred_empty"] == (not p.any()) and res["ref_empty"] == (not r.any())
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, full, sp)


def test_configurable_empty_policies():
    shape, sp = (10, 20), (1.0, 2.0)
    full = _square(shape, (2, 2), (5, 6))
    empty = np.zeros(shape, bool)
    strict = EmptyPolicy(overlap_both_empty="nan", distance_both_empty="nan",
                         distance_one_empty="diagonal")
    assert math.isnan(dice(empty, empty, policy=strict))
    assert math.isnan(iou(empty, empty, policy=strict))
    assert math.isnan(hd95(empty, empty, sp, policy=strict))
    # Diagonal of a 10 x 20 image with spacing (1, 2): sqrt(10^2 + 40^2) mm.
    assert hd95(empty, full, sp, policy=strict) == pytest.approx(math.sqrt(1700))
    fixed = EmptyPolicy(distance_one_empty=50.0)
    assert assd(full, empty, sp, policy=fixed) == 50.0
    assert dice(full, empty, policy=strict) == 0.0
    with pytest.raises(ValueError, match="overlap_both_empty"):
        EmptyPolicy(overlap_both_empty="zero")
    with pytest.raises(ValueError, match="distance_one_empty"):
        EmptyPolicy(distance_one_empty=-1.0)
    assert EmptyPolicy.from_dict(strict.to_dict()) == strict
    assert "one empty -> NaN" in DEFAULT_POLICY.describe()


# ----------------------------------------------------------------------------- evaluate / summary


def test_evaluate_case_multiclass_counts_and_volumes():
    ref = np.zeros((8, 8), np.int64)
    ref[0:4, 0:4] = 1
    ref[6:8, 6:8] = 2
    pred = np.zeros((8, 8), np.int64)
    pred[2:6, 2:6] = 1
    res = evaluate_case(pred, ref, (0.5, 2.0), [1, 2, 3], case_id="c0")
    c1, c2, c3 = (res["classes"][k] for k in (1, 2, 3))
    assert (c1["tp"], c1["fp"], c1["fn"], c1["dice"]) == (4, 12, 12, 0.25)
    assert c1["volume_pred"] == pytest.approx(16.0) and c1["volume_unit"] == "mm^2"
    assert c2["dice"] == 0.0 and math.isnan(c2["hd95"]) and c2["pred_empty"]
    assert c2["volume_ref"] == pytest.approx(4.0)
    assert c3["dice"] == 1.0 and c3["hd95"] == 0.0 and c3["pred_empty"] and c3["ref_empty"]
    assert res["policy"] == DEFAULT_POLICY.to_dict() and res["case"] == "c0"


def _fake_case(name: str, values: dict[int, dict[str, float]]) -> dict:
    classes = {}
    for cid, v in values.items():
        classes[cid] = {"dice": v["dice"], "iou": v["dice"] / (2 - v["dice"]),
                        "hd95": v["hd95"], "assd": v["hd95"] / 2, "tp": 1, "fp": 0, "fn": 0,
                        "n_pred": 1, "n_ref": 1, "volume_pred": 1.0, "volume_ref": 1.0,
                        "volume_unit": "ml", "pred_empty": False, "ref_empty": False}
    return {"case": name, "shape": [2, 2, 2], "spacing": [1.0, 1.0, 1.0], "n_observed": 8,
            "policy": DEFAULT_POLICY.to_dict(), "classes": classes}


def test_summarize_nan_aware_statistics():
    cases = [
        _fake_case("a", {1: {"dice": 0.5, "hd95": 2.0}, 2: {"dice": 0.2, "hd95": NAN}}),
        _fake_case("b", {1: {"dice": 1.0, "hd95": 4.0}, 2: {"dice": 0.4, "hd95": 1.0}}),
        _fake_case("c", {1: {"dice": 0.0, "hd95": NAN}, 2: {"dice": 0.9, "hd95": 3.0}}),
    ]
    s = summarize(cases)
    d1 = s["classes"][1]["dice"]
    # dice class 1: [0.5, 1, 0]: mean 0.5, median 0.5, sample std 0.5
    assert (d1["mean"], d1["median"], d1["min"], d1["max"], d1["n"], d1["n_nan"]) == (
        0.5, 0.5, 0.0, 1.0, 3, 0)
    assert d1["std"] == pytest.approx(0.5)
    h1 = s["classes"][1]["hd95"]
    # hd95 class 1: [2, 4, NaN]: mean 3, std sqrt(2), one NaN
    assert h1["mean"] == 3.0 and h1["std"] == pytest.approx(math.sqrt(2)) and h1["n_nan"] == 1
    hp = s["pooled"]["hd95"]
    # pooled hd95: [2, NaN, 4, 1, NaN, 3]: mean 2.5, median 2.5, n 4, 2 NaN
    assert (hp["mean"], hp["median"], hp["n"], hp["n_nan"]) == (2.5, 2.5, 4, 2)
    assert s["n_cases"] == 3 and s["policy"] == DEFAULT_POLICY.to_dict()
    allnan = describe_values([NAN, NAN])
    assert math.isnan(allnan["mean"]) and allnan["n"] == 0 and allnan["n_nan"] == 2
    mixed = [cases[0], {**cases[1], "policy": EmptyPolicy(overlap_both_empty="nan").to_dict()}]
    with pytest.raises(ValueError, match="policies"):
        summarize(mixed)
    table = format_summary_table(s)
    assert "empty-case policy" in table and "hd95 [mm]" in table
    row = next(line for line in table.splitlines() if line.startswith("1 ") and " dice " in line)
    assert row.split()[2:] == ["0.5000", "0.5000", "0.5000", "0.0000", "1.0000", "3", "0"]


def test_metrics_files_round_trip(tmp_path):
    a = _square((8, 8), (0, 0), (4, 4)).astype(np.int64)
    b = _square((8, 8), (2, 2), (6, 6)).astype(np.int64)
    cases = [
        evaluate_case(a, b, (1.0, 1.0), [1, 2], case_id="first"),
        evaluate_case(np.zeros_like(a), b, (1.0, 1.0), [1, 2], case_id="second"),
    ]
    summary = summarize(cases)
    out = tmp_path / "eval"
    json_path, csv_path = write_metrics(out, cases, summary, DEFAULT_POLICY)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    text = json_path.read_text()
    assert "NaN" not in text  # strict JSON: NaN -> null
    json.loads(text)
    back = read_metrics(out)
    assert back["policy"] == DEFAULT_POLICY.to_dict()
    assert _same(back["cases"], cases) and _same(back["summary"], summary)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and [r["case"] for r in rows] == ["first", "first", "second", "second"]
    r0 = rows[0]
    assert float(r0["dice"]) == 0.25 and int(r0["tp"]) == 4 and r0["volume_unit"] == "mm^2"
    assert float(r0["hd95"]) == cases[0]["classes"][1]["hd95"]
    assert math.isnan(float(rows[2]["hd95"])) and rows[2]["pred_empty"] == "true"
    # Overwriting goes through os.replace and leaves no temporary file behind.
    write_metrics(out, cases[:1], summarize(cases[:1]))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    assert len(read_metrics(json_path)["cases"]) == 1
