"""Derive a multi-label classification set from a real CT: organ presence per sagittal slice.

Source: TotalSegmentator's example CT (``example_ct_sm.nii.gz``, 122x101x30 at 3 mm, HU) and its
segmentation (``example_seg.nii.gz``; model outputs, not manual labels). Each sagittal slice
(index along the first axis) becomes one 2D NIfTI image (HU kept, affine kept for the plane), and
its labels say whether liver (5), spleen (1), a kidney (2 or 3) and the stomach (6) cover at
least ``--min-voxels`` voxels of the slice. These are **derived labels**.

To show T5 (missing labels are unobserved, not negative), a fixed share of the label entries is
written as ``-1``. Slices are split into train/val in interleaved blocks of 8 (block index
mod 4 == 3 -> val), so both sides of the body appear in both splits; neighbouring slices at block
borders are correlated, which makes the validation figures optimistic.

    python examples/ct_organ_presence/make_dataset.py \
        --data ../shared/data/ct_totalseg --out runs/ct_presence
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from medseg.io import read_image, read_label, write_image
from medseg.io.meta import ImageMeta

ORGANS = {"liver": (5,), "spleen": (1,), "kidney": (2, 3), "stomach": (6,)}


def make(data: Path, out: Path, missing: float = 0.2, min_voxels: int = 20,
         seed: int = 0) -> Path:
    """Write ``out/images/*.nii.gz`` and ``out/labels.csv``; returns the CSV path."""
    img, meta = read_image(data / "example_ct_sm.nii.gz")
    seg, _ = read_label(data / "example_seg.nii.gz")
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for x in range(seg.shape[0]):
        plane = img[:, x]  # (1, 101, 30)
        aff = meta.affine.copy()
        aff[:3, 3] = meta.affine[:3, 3] + meta.affine[:3, 0] * x
        aff[:3, :2] = meta.affine[:3, 1:3]
        aff[:3, 2] = meta.affine[:3, 0]
        pm = ImageMeta(affine=aff, spatial_shape=plane.shape[1:], modality="CT")
        name = f"sag_{x:03d}.nii.gz"
        write_image(out / "images" / name, plane[0].astype(np.int16), pm)
        labels = [int(np.isin(seg[x], v).sum() >= min_voxels) for v in ORGANS.values()]
        labels = [-1 if rng.random() < missing else v for v in labels]
        split = "val" if (x // 8) % 4 == 3 else "train"
        rows.append([f"images/{name}", *labels, split])
    table = out / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *ORGANS, "split"])
        w.writerows(rows)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with example_ct_sm / example_seg")
    ap.add_argument("--out", required=True)
    ap.add_argument("--missing", type=float, default=0.2, help="share of labels written as -1")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    table = make(Path(a.data), Path(a.out), a.missing, seed=a.seed)
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
