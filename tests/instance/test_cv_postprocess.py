"""Watershed parameters chosen on out-of-fold predictions (issue 13, instances)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk

from medseg.errors import InputError
from medseg.instance import PostprocessParams, probs_to_instance_map
from medseg.instance.tuning import (
    choose_postprocess,
    f1_at_05,
    grid_params,
    read_postprocess,
    write_postprocess,
)

GRID = {"seed_threshold": (0.5, 0.6, 0.7), "boundary_weight": (0.0, 1.0),
        "min_size": (0, 10)}


def _touching_discs(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two touching discs (radius 8) joined by a neck where p_interior is 0.55 and
    p_boundary 0.45, plus a 3x3 false blob of interior 0.9 away from both."""
    ref = np.zeros((40, 60), np.int64)
    probs = np.zeros((3, 40, 60), np.float32)
    probs[0] = 1.0
    for k, c in enumerate((20 + shift, 36 + shift)):
        rr, cc = disk((20, c), 8, shape=ref.shape)
        ref[rr, cc] = np.where(ref[rr, cc] == 0, k + 1, ref[rr, cc])
        probs[:, rr, cc] = np.array([0.0, 0.9, 0.1], np.float32)[:, None]
    neck = (slice(14, 27), slice(27 + shift, 30 + shift))
    probs[:, neck[0], neck[1]] = np.array([0.0, 0.55, 0.45], np.float32)[:, None, None]
    probs[:, 3:6, 3:6] = np.array([0.1, 0.9, 0.0], np.float32)[:, None, None]
    return probs, ref


def test_chosen_parameters_maximise_the_out_of_fold_f1():
    cases = [_touching_discs(0), _touching_discs(4)]
    base = PostprocessParams()  # seed 0.5, no boundary weight, min_size 10
    # the configured parameters merge the discs: one prediction matching neither at IoU 0.5
    assert f1_at_05(cases[0][1], probs_to_instance_map(cases[0][0], base)) == 0.0
    best, report = choose_postprocess(cases, GRID, base)
    # brute force over the same grid, independently
    f1 = {}
    for prm in grid_params(GRID, base):
        f1[json.dumps(prm.to_dict(), sort_keys=True)] = np.mean(
            [f1_at_05(r, probs_to_instance_map(p, prm)) for p, r in cases])
    assert report["f1"] == pytest.approx(max(f1.values())) == pytest.approx(1.0)
    assert report["configured"]["f1"] == pytest.approx(0.0)
    assert report["n_candidates"] == 12  # the base (a grid point here) first, then the rest
    # both the seed split and a clean-up of the 9-voxel blob are needed for F1 1
    assert best.min_size == 10 and (best.seed_threshold >= 0.6 or best.boundary_weight == 1.0)
    # ties keep the first best in grid order after the base: seed 0.5 + boundary weight 1
    assert (best.seed_threshold, best.boundary_weight) == (0.5, 1.0)
    lab = probs_to_instance_map(cases[0][0], best)
    assert lab.max() == 2


def test_postprocess_json_round_trip_and_bad_file(tmp_path):
    _, report = choose_postprocess([_touching_discs()], GRID)
    write_postprocess(tmp_path, report)
    prm = read_postprocess(tmp_path)
    assert prm == PostprocessParams(**report["params"])
    assert read_postprocess(tmp_path / "nothing") is None
    (tmp_path / "postprocess.json").write_text('{"params": {"seed_threshold": 7}}')
    with pytest.raises(InputError, match="postprocess.json is invalid"):
        read_postprocess(tmp_path)


def test_boundary_weight_cuts_seeds_and_is_checked():
    probs, ref = _touching_discs()
    merged = probs_to_instance_map(probs, PostprocessParams(min_size=10))
    split = probs_to_instance_map(probs, PostprocessParams(min_size=10, boundary_weight=1.0))
    assert merged.max() == 1 and split.max() == 2  # 0.55 - 1.0 * 0.45 = 0.10 < 0.5
    assert f1_at_05(ref, split) == 1.0
    with pytest.raises(ValueError, match="boundary_weight"):
        PostprocessParams(boundary_weight=-1.0)
    with pytest.raises(ValueError, match="unknown post-processing"):
        grid_params({"seed": (0.5,)}, PostprocessParams())


def _speckled_disc() -> tuple[np.ndarray, np.ndarray]:
    """One disc (radius 10) of interior 0.9 crossed by a one-pixel line of boundary
    probability 0.6 (speckle inside a faint object), so seeds with boundary weight 1 are cut
    in two along the line; reference: the one disc."""
    ref = np.zeros((40, 40), np.int64)
    probs = np.zeros((3, 40, 40), np.float32)
    probs[0] = 1.0
    rr, cc = disk((20, 20), 10, shape=ref.shape)
    ref[rr, cc] = 1
    probs[:, rr, cc] = np.array([0.0, 0.9, 0.1], np.float32)[:, None]
    line = (ref == 1) & (np.arange(40)[None, :] == 20)
    probs[:, line] = np.array([0.0, 0.4, 0.6], np.float32)[:, None]
    return probs, ref


def test_smoothing_joins_a_speckle_split_and_is_checked():
    from scipy import ndimage as ndi

    from medseg.instance.postprocess import smooth_probs

    probs, ref = _speckled_disc()
    prm = PostprocessParams(seed_threshold=0.5, boundary_weight=1.0, min_size=0)
    split = probs_to_instance_map(probs, prm)
    assert split.max() == 2 and f1_at_05(ref, split) == pytest.approx(2 / 3)  # one half
    # matches at IoU > 0.5, the other is a false positive. Sigma 2 spreads the line (weight
    # 1 / (2 sqrt(2 pi)) = 0.20 of it stays on it): interior 0.9 - 0.5 * 0.20 = 0.80,
    # boundary 0.1 + 0.5 * 0.20 = 0.20, seed map 0.60 > 0.5, so one seed floods the disc
    joined = probs_to_instance_map(probs, PostprocessParams(
        seed_threshold=0.5, boundary_weight=1.0, min_size=0, smooth_sigma=2.0))
    assert joined.max() == 1 and f1_at_05(ref, joined) == 1.0
    sm = smooth_probs(probs, 2.0)
    assert np.array_equal(sm[0], probs[0])
    for c in (1, 2):
        assert np.allclose(sm[c], ndi.gaussian_filter(probs[c], 2.0, mode="nearest"))
    assert smooth_probs(probs, 0.0) is probs
    assert "smooth_sigma" not in PostprocessParams().to_dict()
    assert PostprocessParams(smooth_sigma=1.0).to_dict()["smooth_sigma"] == 1.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="smooth_sigma"):
            PostprocessParams(smooth_sigma=bad)


def test_grouped_search_equals_one_watershed_per_candidate():
    """mean_f1 shares smoothing and watersheds between candidates; it must give exactly the
    mean F1 of running every candidate on its own."""
    from medseg.instance.tuning import mean_f1

    cases = [_touching_discs(0), _touching_discs(4), _speckled_disc()]
    grid = {"seed_threshold": (0.4, 0.6), "boundary_weight": (0.0, 1.0),
            "min_size": (0, 10, 30), "min_seed_size": (1, 16), "smooth_sigma": (0.0, 2.0),
            "flood": ("probability", "distance")}
    candidates = grid_params(grid, PostprocessParams())
    assert len(candidates) == 2 * 2 * 3 * 2 * 2 * 2 + 1
    naive = np.array([np.mean([f1_at_05(r, probs_to_instance_map(p, prm)) for p, r in cases])
                      for prm in candidates])
    got = mean_f1(cases, candidates)
    assert np.array_equal(got, naive)
    assert len(set(np.round(naive, 6))) >= 4  # the grid does separate the candidates
