"""Small 2D and 3D evaluations with reports, shared by the report tests (phantom data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_label, write_image, write_label
from medseg.physics import PhantomSpec, write_phantom_dataset
from medseg.tasks.segmentation import evaluate_folders

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY_SEG_MODEL = FIXTURES / "legacy_v1" / "segmentation" / "model"
#: Uncertainty score per case of the 3D evaluation (most uncertain first: 001, 003, 002).
UNCERTAINTY_3D = {"case_001": 0.9, "case_002": 0.1, "case_003": 0.5}


def _spoil(ref: np.ndarray, k: int) -> np.ndarray:
    """A prediction that is worse for larger ``k``: the lesion shifted by k voxels, organ cut."""
    pred = ref.copy()
    if k:
        pred[pred == 2] = 1
        pred[np.roll(ref == 2, k, axis=0)] = 2
        pred[: k * 2][pred[: k * 2] == 1] = 0
    return pred


def build_evaluation(root: Path, dims: int, n: int, uncertainty: bool, model: Path | None
                     ) -> Path:
    """Phantom references, spoiled predictions (case i spoiled by i voxels), evaluate with
    images; with ``uncertainty`` an entropy map per case and ``uncertainty.csv``."""
    shape = (24, 24, 16) if dims == 3 else (32, 32)
    ds = root / "ds"
    write_phantom_dataset(ds, PhantomSpec(shape=shape, modality="mr"), n_train=1, n_test=n,
                          seed=0)
    pred = root / "pred"
    pred.mkdir()
    rows = []
    for i, f in enumerate(sorted((ds / "labelsTs").glob("*.nii.gz"))):
        ref, meta = read_label(f)
        case = f.name.removesuffix(".nii.gz")
        p = _spoil(ref, i)
        write_label(pred / f.name, p, meta)
        if uncertainty:
            ent = (p != ref).astype(np.float32) + 0.05 * (p > 0)
            write_image(pred / f"{case}_predictive_entropy.nii.gz", ent[None], meta,
                        dtype=np.float32)
            rows.append({"case": case, "class": "lesion",
                         "predictive_entropy_structure": UNCERTAINTY_3D[case]})
    if rows:
        with open(pred / "uncertainty.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    out = root / "evaluation"
    evaluate_folders(pred, ds / "labelsTs", out, dataset_json=ds / "dataset.json",
                     images=ds / "imagesTs", log=lambda s: None, model=model)
    return out


@pytest.fixture(scope="package")
def uncertainty_3d() -> dict[str, float]:
    """The uncertainty score per case written into the 3D evaluation's ``uncertainty.csv``."""
    return dict(UNCERTAINTY_3D)


@pytest.fixture(scope="package")
def eval_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2D evaluation of 4 cases with the legacy model's card; worst first."""
    return build_evaluation(tmp_path_factory.mktemp("eval2d"), 2, 4, False, LEGACY_SEG_MODEL)


@pytest.fixture(scope="package")
def eval_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3D evaluation of 3 cases with entropy maps and uncertainty.csv; most uncertain first."""
    return build_evaluation(tmp_path_factory.mktemp("eval3d"), 3, 3, True, None)
