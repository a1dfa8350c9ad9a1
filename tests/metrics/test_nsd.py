"""Normalised surface Dice (NSD) and the selectable surface definition: hand values, a
brute-force reference, anisotropic spacing, empty cases, and MONAI agreement when installed."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from medseg.metrics import evaluate_case
from medseg.metrics.surface import (
    assd,
    hd95,
    normalized_surface_dice,
    surface_voxels,
)


def _brute_nsd(p, r, sp, tau, connectivity):
    """Independent reference: explicit surface points and all pairwise distances."""
    sp_ = np.argwhere(surface_voxels(p, connectivity)) * np.asarray(sp)
    sr_ = np.argwhere(surface_voxels(r, connectivity)) * np.asarray(sp)
    d = np.sqrt(((sp_[:, None, :] - sr_[None, :, :]) ** 2).sum(-1))
    return ((d.min(1) <= tau).sum() + (d.min(0) <= tau).sum()) / (len(sp_) + len(sr_))


def test_hand_values_2d():
    p = np.zeros((8, 8), bool)
    p[2:6, 2:6] = True
    assert normalized_surface_dice(p, p, 0.0) == 1.0
    r = np.roll(p, 1, axis=1)  # shifted by one column
    # full-connectivity surfaces: rings of 12 voxels; the shared top and bottom rows hold 3
    # voxels of each ring on the other ring (distance 0): 6 + 6 of 24; every other surface
    # voxel is 1 mm from the other ring
    assert normalized_surface_dice(p, r, 0.0) == pytest.approx(12 / 24)
    assert normalized_surface_dice(p, r, 1.0) == 1.0
    far = np.zeros((8, 8), bool)
    far[7, 7] = True
    q = np.zeros((8, 8), bool)
    q[0, 0] = True
    assert normalized_surface_dice(q, far, 9.0) == 0.0  # sqrt(98) > 9
    assert normalized_surface_dice(q, far, 9.9) == 1.0


def test_anisotropic_spacing_and_brute_force_3d():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = np.zeros((12, 10, 8), bool)
        r = np.zeros_like(p)
        for a in (p, r):
            c = rng.integers(3, 7, 3)
            h = rng.integers(1, 3, 3)
            a[tuple(slice(int(ci - hi), int(ci + hi + 1)) for ci, hi in zip(c, h,
                                                                             strict=True))] = True
        sp = (0.7, 1.3, 2.5)
        for conn, tau in itertools.product(("full", "face"), (0.0, 1.05, 2.55)):
            assert normalized_surface_dice(p, r, tau, sp, connectivity=conn) == pytest.approx(
                _brute_nsd(p, r, sp, tau, conn), abs=1e-12)
    # two parallel planes one voxel apart along an axis of 2 mm
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[:, :, 1] = True
    b[:, :, 2] = True
    assert normalized_surface_dice(a, b, 1.9, (1, 1, 2)) == 0.0
    assert normalized_surface_dice(a, b, 2.0, (1, 1, 2)) == 1.0


def test_empty_cases_follow_the_dice_policy():
    z = np.zeros((5, 5), bool)
    o = z.copy()
    o[2, 2] = True
    assert normalized_surface_dice(z, z, 1.0) == 1.0
    assert normalized_surface_dice(o, z, 1.0) == 0.0
    assert normalized_surface_dice(z, o, 1.0) == 0.0


def test_face_connected_surface_is_thinner():
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    assert surface_voxels(plus, "full").sum() == 5  # the centre has outside diagonals
    assert surface_voxels(plus, "face").sum() == 4  # its four face neighbours are inside
    with pytest.raises(ValueError, match="connectivity"):
        surface_voxels(plus, "edge")


def test_evaluate_case_and_cli_record_nsd_and_surface(tmp_path):
    from medseg.cli import main
    from medseg.io import write_image
    from medseg.io.meta import ImageMeta

    p = np.zeros((16, 16, 6), np.uint8)
    p[4:10, 4:10, 1:4] = 1
    r = np.roll(p, 2, axis=0)
    res = evaluate_case(p, r, (1.0, 1.0, 3.0), [1], nsd_tolerance=2.0, connectivity="face")
    assert res["surface"] == {"connectivity": "face", "nsd_tolerance_mm": 2.0}
    assert res["classes"][1]["nsd"] == pytest.approx(
        _brute_nsd(p == 1, r == 1, (1, 1, 3), 2.0, "face"))
    meta = ImageMeta(affine=np.diag([1.0, 1.0, 3.0, 1.0]), spatial_shape=p.shape)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write_image(tmp_path / "pred" / "c.nii.gz", p, meta, dtype=np.uint8)
    write_image(tmp_path / "ref" / "c.nii.gz", r, meta, dtype=np.uint8)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--output", str(tmp_path / "ev"), "--nsd-tolerance", "2",
                 "--surface", "face"]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["summary"]["surface"] == {"connectivity": "face", "nsd_tolerance_mm": 2.0}
    assert doc["cases"][0]["classes"]["1"]["nsd"] == pytest.approx(res["classes"][1]["nsd"])
    assert "nsd" in (tmp_path / "ev" / "metrics.csv").read_text().splitlines()[0]


def test_face_surface_agrees_with_monai():
    monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI (the bench extra) is "
                                        "not installed")
    import torch

    rng = np.random.default_rng(1)
    for _ in range(10):
        shape = (20, 18, 12)
        grid = np.indices(shape).astype(float)
        p = ((grid - rng.uniform(6, 12, 3)[:, None, None, None]) ** 2).sum(0) < 25
        r = ((grid - rng.uniform(6, 12, 3)[:, None, None, None]) ** 2).sum(0) < 30
        sp = tuple(rng.uniform(0.5, 2.5, 3))
        tp = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
        tr = torch.from_numpy(np.stack([~r, r])[None].astype(np.float32))
        m_hd = float(monai_metrics.compute_hausdorff_distance(
            tp, tr, include_background=False, percentile=95, spacing=sp))
        m_assd = float(monai_metrics.compute_average_surface_distance(
            tp, tr, include_background=False, symmetric=True, spacing=sp))
        assert hd95(p, r, sp, connectivity="face") == pytest.approx(m_hd, abs=1e-5)
        assert assd(p, r, sp, connectivity="face") == pytest.approx(m_assd, abs=1e-5)
