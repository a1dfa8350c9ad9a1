"""Instance matching metrics against hand-computed values (F1, AP, mAP, PQ, COCO AP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.metrics.instance import (
    MAP_THRESHOLDS,
    coco_average_precision,
    evaluate_instances,
    iou_matrix,
    match_instances,
    scores_at,
    summarize_instances,
    write_instance_metrics,
)


def three_plus_fp():
    """3 references (rows of 10 px) and 4 predictions with IoUs 0.9, 0.6, 0.3 and one FP."""
    ref = np.zeros((6, 12), dtype=np.int64)
    pred = np.zeros((6, 12), dtype=np.int64)
    ref[0, :10], pred[0, :9] = 1, 7      # IoU 9/10
    ref[1, :10], pred[1, :6] = 2, 3      # IoU 6/10
    ref[2, :10], pred[2, :3] = 5, 4      # IoU 3/10
    pred[4, :5] = 9                      # false positive
    return ref, pred


def test_iou_matrix_values_and_ids():
    ref, pred = three_plus_fp()
    iou, rids, pids = iou_matrix(ref, pred)
    assert rids.tolist() == [1, 2, 5] and pids.tolist() == [3, 4, 7, 9]
    expect = np.zeros((3, 4))
    expect[0, 2], expect[1, 0], expect[2, 1] = 0.9, 0.6, 0.3
    assert np.allclose(iou, expect)
    # agreement with the per-pair mask loop on a random pair of maps
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(20, 20))
    b = rng.integers(0, 4, size=(20, 20))
    iou, ra, pb = iou_matrix(a, b)
    for i, r in enumerate(ra):
        for j, p in enumerate(pb):
            inter = np.sum((a == r) & (b == p))
            union = np.sum((a == r) | (b == p))
            assert iou[i, j] == pytest.approx(inter / union)



@pytest.mark.parametrize("kind", ["dense", "sparse_ids", "no_background", "negative", "float",
                                  "uint16"])
def test_iou_matrix_both_id_paths_match_the_mask_loop(kind):
    """Label maps are indexed by counting when their ids are small non-negative integers and
    by sorting otherwise; both paths give the per-pair mask loop's IoU and the sorted ids."""
    rng = np.random.default_rng(7)
    values = {"dense": [0, 1, 2, 3, 4], "sparse_ids": [0, 3, 10_000, 7],
              "no_background": [2, 5, 9], "negative": [0, -3, 4, 1], "float": [0.0, 1.0, 2.0],
              "uint16": [0, 1, 65535, 3]}[kind]
    a = rng.choice(values, size=(15, 17))
    b = rng.choice([0, 1, 2, 6], size=(15, 17))
    if kind == "uint16":
        a = a.astype(np.uint16)
    iou, ra, pb = iou_matrix(a, b)
    assert ra.tolist() == sorted(v for v in set(a.ravel().tolist()) if v != 0)
    assert pb.tolist() == sorted(v for v in set(b.ravel().tolist()) if v != 0)
    for i, r in enumerate(ra):
        for j, p in enumerate(pb):
            inter = np.sum((a == r) & (b == p))
            union = np.sum((a == r) | (b == p))
            assert iou[i, j] == pytest.approx(inter / union)


def test_hand_computed_scores():
    ref, pred = three_plus_fp()
    r = evaluate_instances(ref, pred, thresholds=(0.5, 0.75))
    t5, t75 = r["thresholds"]["0.5"], r["thresholds"]["0.75"]
    # t = 0.5: matches 0.9 and 0.6 -> TP 2, FP 2 (the 0.3 prediction and the FP), FN 1
    assert (t5["tp"], t5["fp"], t5["fn"]) == (2, 2, 1)
    assert t5["precision"] == pytest.approx(2 / 4) and t5["recall"] == pytest.approx(2 / 3)
    assert t5["f1"] == pytest.approx(4 / 7) and t5["ap"] == pytest.approx(2 / 5)
    assert t5["sq"] == pytest.approx(0.75) and t5["pq"] == pytest.approx(0.75 * 4 / 7)
    # t = 0.75: only 0.9 -> TP 1, FP 3, FN 2
    assert (t75["tp"], t75["fp"], t75["fn"]) == (1, 3, 2)
    assert t75["f1"] == pytest.approx(2 / 7) and t75["ap"] == pytest.approx(1 / 6)
    assert t75["pq"] == pytest.approx(0.9 * 2 / 7)
    # mAP: t in {0.5, 0.55, 0.6} -> 2/5 (IoU 0.6 passes t = 0.6), {0.65..0.9} -> 1/6, 0.95 -> 0
    assert r["map"] == pytest.approx((3 * 0.4 + 6 / 6 + 0.0) / 10)
    assert r["n_ref"] == 3 and r["n_pred"] == 4
    assert MAP_THRESHOLDS[2] == 0.6 and len(MAP_THRESHOLDS) == 10


def test_hungarian_beats_greedy():
    # refs A, B; preds X, Y. Greedy takes the largest IoU first (A-X 0.45) and leaves B-Y
    # (IoU 0) unmatched: 1 match. Hungarian pairs A-Y (0.35) and B-X (0.40): 2 matches.
    iou = np.array([[0.45, 0.35], [0.40, 0.0]])
    ri, pi = match_instances(iou, 0.3)
    assert sorted(zip(ri.tolist(), pi.tolist(), strict=True)) == [(0, 1), (1, 0)]
    s = scores_at(iou, 0.3)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert s["sq"] == pytest.approx((0.35 + 0.40) / 2)
    # among equally many matches the larger summed IoU wins
    iou2 = np.array([[0.9, 0.6], [0.6, 0.4]])
    ri, pi = match_instances(iou2, 0.3)
    assert sorted(zip(ri.tolist(), pi.tolist(), strict=True)) == [(0, 0), (1, 1)]


def _greedy_matches(iou, t):
    """Largest IoU first, each instance used once (what Hungarian must beat)."""
    pairs = sorted(((iou[i, j], i, j) for i in range(iou.shape[0])
                    for j in range(iou.shape[1]) if iou[i, j] >= t), reverse=True)
    used_r, used_p, n = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
            n += 1
    return n


def test_hungarian_on_label_maps():
    # A = cols 0..9, B = cols 10..19 of one row; X = cols 2..13, Y = cols 0..1
    ref = np.zeros((1, 40), dtype=np.int64)
    pred = np.zeros((1, 40), dtype=np.int64)
    ref[0, 0:10], ref[0, 10:20] = 1, 2
    pred[0, 2:14] = 1     # X: IoU with A 8/14, with B 4/18
    pred[0, 0:2] = 2      # Y: IoU with A 2/10
    iou, _, _ = iou_matrix(ref, pred)
    assert np.allclose(iou, [[8 / 14, 2 / 10], [4 / 18, 0.0]])
    assert _greedy_matches(iou, 0.2) == 1  # greedy takes A-X and strands B and Y
    r = evaluate_instances(ref, pred, thresholds=(0.2,))
    assert r["thresholds"]["0.2"]["tp"] == 2  # Hungarian: A-Y and B-X


def test_empty_cases_policy():
    z = np.zeros((5, 5), dtype=np.int64)
    one = z.copy()
    one[1:3, 1:3] = 1
    both = evaluate_instances(z, z)
    assert both["f1@0.5"] == both["ap@0.5"] == both["map"] == both["pq@0.5"] == 1.0
    for ref, pred in ((one, z), (z, one)):
        r = evaluate_instances(ref, pred)
        assert r["f1@0.5"] == r["ap@0.5"] == r["map"] == r["pq@0.5"] == 0.0
        assert r["precision@0.5"] == r["recall@0.5"] == 0.0
    assert coco_average_precision(np.zeros((0, 0)), [], 0.5) == 1.0
    assert coco_average_precision(np.zeros((2, 0)), [], 0.5) == 0.0


def test_coco_ap_ranked_by_score():
    ref, pred = three_plus_fp()
    # preds in id order 3, 4, 7, 9 -> IoU 0.6, 0.3, 0.9, FP. Ranked TP, TP, FP, FP: precision 1
    # up to recall 2/3, so 67 of the 101 recall points have precision 1.
    r = evaluate_instances(ref, pred, pred_scores=[0.8, 0.6, 0.9, 0.5])
    assert r["coco_ap@0.5"] == pytest.approx(67 / 101)
    # ranked FP first: precision 1/2 then 2/3 at recall 2/3 -> envelope 2/3 for 67 points
    r2 = evaluate_instances(ref, pred, pred_scores=[0.8, 0.6, 0.7, 0.95])
    assert r2["coco_ap@0.5"] == pytest.approx(67 / 101 * 2 / 3)


def test_summary_and_files(tmp_path):
    ref, pred = three_plus_fp()
    z = np.zeros_like(ref)
    cases = [evaluate_instances(ref, pred, case_id="a"), evaluate_instances(z, z, case_id="b")]
    s = summarize_instances(cases)
    assert s["mean"]["f1@0.5"] == pytest.approx((4 / 7 + 1.0) / 2)
    assert s["pooled@0.5"]["tp"] == 2 and s["pooled@0.5"]["ap"] == pytest.approx(2 / 5)
    jp, cp = write_instance_metrics(tmp_path / "out", cases, s)
    doc = json.loads(jp.read_text())
    assert [c["case"] for c in doc["cases"]] == ["a", "b"]
    lines = cp.read_text().splitlines()
    assert lines[0].split(",")[:9] == ["case", "n_ref", "n_pred", "tp@0.5", "fp@0.5", "fn@0.5",
                                       "f1@0.5", "ap@0.5", "map"]
    assert len(lines) == 3 and lines[1].startswith("a,3,4,2,2,1,0.571429,0.400000,0.220000")
