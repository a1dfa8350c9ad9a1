"""``examples/onnx_deploy/predict_onnx.py`` (numpy + nibabel + onnxruntime, no torch, no medseg)
reproduces ``medseg predict``'s label map exactly on ``medseg phantoms`` images.

Its pieces are checked against medseg's own (window starts, Gaussian map, every normalisation
scheme, linear resampling), then the whole pipeline: 2D with 9 windows per image, flip TTA and a
temperature, 3D with 8 windows, a dynamic-axes file with windows that are not a multiple of the
network's stride, and a plan that resamples to another spacing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_helpers import INFERENCE, PREPROCESS_ZSCORE, write_model_folder

from helpers import EXAMPLES, load_example
from medseg.cli import main
from medseg.data.preprocess import ChannelNorm, normalize_channel
from medseg.inference.sliding_window import gaussian_importance_map, window_starts
from medseg.io import read_image, read_label
from medseg.transforms.resample import resample_to_shape

pytest.importorskip("onnxruntime")

EXAMPLE = EXAMPLES / "onnx_deploy" / "predict_onnx.py"
ex = load_example("onnx_deploy/predict_onnx.py", "predict_onnx")


def test_window_starts_and_gaussian_match_medseg() -> None:
    for size, roi, ov in [(64, 32, 0.5), (160, 64, 0.5), (33, 16, 0.25), (16, 16, 0.5),
                          (97, 24, 0.7)]:
        assert ex.window_starts(size, roi, ov) == window_starts(size, roi, ov)
    for roi, s in [((32, 32), 0.125), ((16, 24, 8), 0.125), ((20, 30), (0.1, 0.2))]:
        ref = gaussian_importance_map(roi, s).numpy()
        assert np.array_equal(ex.gaussian_importance_map(roi, s), ref)


@pytest.mark.parametrize("norm", [
    {"scheme": "none"}, {"scheme": "zscore"}, {"scheme": "minmax_zscore"},
    {"scheme": "log_zscore"},
    {"scheme": "ct", "clip_low": -200.0, "clip_high": 300.0, "mean": 40.0, "std": 80.0},
    {"scheme": "ct_vst", "clip_low": -200.0, "clip_high": 300.0, "mean": 40.0, "std": 80.0,
     "path_mm": 150.0},
])
def test_normalisation_matches_medseg(norm: dict) -> None:
    x = np.random.default_rng(0).normal(50, 120, size=(20, 17)).astype(np.float32)
    if norm["scheme"] == "log_zscore":
        x = np.abs(x)
    ref = normalize_channel(x, ChannelNorm(**norm))
    got = ex.normalize_channel(x, {"path_mm": 200.0, **norm})
    assert got.dtype == np.float32 and np.array_equal(got, ref)


@pytest.mark.parametrize(("shape", "new"), [((2, 10, 7), (15, 4)), ((1, 6, 9, 5), (4, 12, 7)),
                                            ((3, 8, 8), (8, 8))])
def test_linear_resampling_matches_medseg(shape, new) -> None:
    a = np.random.default_rng(1).random(shape).astype(np.float32)
    ref = resample_to_shape(a, new, order="linear")
    got = ex.resample_linear(a, new)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for dims, size in ((2, 64), (3, 32)):
        out[dims] = root / f"{dims}d"
        assert main(["phantoms", "--output", str(out[dims]), "--dims", str(dims), "--size",
                     str(size), "--n-train", "1", "--n-test", "2"]) == 0
    return out


def _differing_voxels(folder: Path, images: Path, tmp: Path, *export_args: str
                      ) -> tuple[int, int]:
    onnx_file = tmp / "model.onnx"
    assert main(["export", "--model", str(folder), "--output", str(onnx_file),
                 *export_args]) == 0
    pred = tmp / "pred"
    assert main(["predict", "--model", str(folder), "--input", str(images), "--output",
                 str(pred), "--device", "cpu"]) == 0
    differing = total = 0
    for img in sorted(images.glob("*.nii.gz")):
        labels, _, affine = ex.predict(onnx_file, [str(img)])
        ref, meta = read_label(pred / img.name.replace("_0000", ""))
        assert labels.shape == ref.shape and np.allclose(affine, meta.affine)
        assert len(np.unique(ref)) > 1  # a real segmentation, not one class everywhere
        differing += int((labels != ref).sum())
        total += labels.size
    return differing, total


@pytest.mark.parametrize(("dims", "patch", "extra", "export_args"), [
    (2, [32, 32], {"temperature": 0.7, "inference": {**INFERENCE, "tta": True}}, []),
    (3, [16, 16, 16], {"temperature": 1.3}, []),
    # dynamic axes and a patch that is not a multiple of the network's stride (4): the script
    # pads each window to 32 x 28 and crops the logits, as the network does in PyTorch
    (2, [30, 27], {"inference": {**INFERENCE, "sw_batch_size": 3}}, ["--dynamic"]),
])
def test_example_reproduces_medseg_predict(phantoms, tmp_path, dims, patch, extra,
                                           export_args) -> None:
    folder = write_model_folder(tmp_path / "model", "unet", dims, patch, logit_scale=8.0,
                                options={"channels": [4, 8, 16]}, **extra)
    differing, total = _differing_voxels(folder, phantoms[dims] / "imagesTs", tmp_path,
                                         *export_args)
    assert differing == 0, f"{differing} of {total} voxels differ"


def test_example_resamples_like_medseg(phantoms, tmp_path) -> None:
    """A plan with another spacing: resampled in, predicted, resampled back (linear)."""
    pre = {**PREPROCESS_ZSCORE, "target_spacing": [1.6, 1.3]}
    folder = write_model_folder(tmp_path / "model", "unet", 2, [32, 32], logit_scale=8.0,
                                options={"channels": [4, 8, 16]}, preprocess=pre)
    differing, total = _differing_voxels(folder, phantoms[2] / "imagesTs", tmp_path)
    # numpy's linear resampling agrees with torch's to float32 rounding, not bit for bit: a
    # voxel whose two best classes tie to ~1e-7 could flip (0 of 8192 here).
    assert differing <= total * 1e-3, f"{differing} of {total} voxels differ"


def test_example_runs_without_torch_and_medseg(phantoms, tmp_path) -> None:
    folder = write_model_folder(tmp_path / "model", "unet", 2, [32, 32])
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--model", str(folder), "--output", str(onnx_file)]) == 0
    img = sorted((phantoms[2] / "imagesTs").glob("*.nii.gz"))[0]
    out = tmp_path / "label.nii.gz"
    block = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['medseg'] = None; "
             f"sys.argv = ['predict_onnx.py', '--model', {str(onnx_file)!r}, '--input', "
             f"{str(img)!r}, '--output', {str(out)!r}]; "
             f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    labels, meta = read_image(out)
    assert labels.shape[1:] == (64, 64) and meta.spacing == (1.0, 1.0)
