"""Segment a NIfTI with a `medseg export` ONNX file, using numpy + nibabel + onnxruntime only.

    python predict_onnx.py --model model.onnx --input case.nii.gz --output case_label.nii.gz

No torch and no medseg: everything `medseg predict` does around the network is written here in
numpy, from the JSON that `medseg export` wrote beside the file (`model.onnx.json`):

1. read the image as (C, *spatial) in the file's index order (several --input files are the
   channels, in order); a 3D grid with exactly one axis of size 1 is a 2D image for a 2D model;
2. normalise each channel with its scheme (`preprocess.normalization`: none, zscore,
   minmax_zscore, ct, ct_vst, log_zscore; float64, then float32);
3. resample linearly (align_corners=False) to `preprocess.target_spacing` when the plan has one;
4. Gaussian-weighted sliding window of `patch_size` (window starts, importance map with
   `inference.sigma_scale`, softmax per window, optional flip TTA, weighted average);
5. the temperature: softmax(log p / T);
6. back to the input grid (linear) and arg-max: the label map, written with the input's affine.

Multi-member (ensemble) models are exported one member per file and are not handled here. The
instance task's watershed is not implemented here either (the probabilities are, see
--probabilities).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime as ort

SIDECAR_FORMAT = "medseg-export/1"
EPS = 1e-8  # medseg.data.preprocess._EPS
LOG_EPS = 1e-6  # floor before the log of "log_zscore"
MU_WATER_PER_MM = 0.0192  # the "ct_vst" transmission model's water attenuation
UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


# ---------------------------------------------------------------- reading and writing
def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(C, *spatial)`` in the stored dtype (scaling applied) and the affine in mm."""
    img = nib.load(str(path))
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    affine[:3, :] *= UNIT_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim in (2, 3):
        return np.ascontiguousarray(data[None]), affine
    if data.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(data, -1, 0)), affine
    raise SystemExit(f"{path}: a NIfTI of shape {data.shape} is not supported")


def read_channels(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Several single-channel files (or one multi-channel file) as ``(C, *spatial)``."""
    arrays, affine = [], None
    for p in paths:
        a, aff = read_nifti(p)
        affine = aff if affine is None else affine
        if arrays and a.shape[1:] != arrays[0].shape[1:]:
            raise SystemExit(f"{p}: shape {a.shape[1:]} differs from {arrays[0].shape[1:]}")
        arrays.append(a)
    return np.concatenate(arrays, axis=0), affine


def write_label(path: str | Path, labels: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(labels), affine)
    img.header.set_data_dtype(labels.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, str(path))


# ---------------------------------------------------------------- preprocessing
def phi(x: np.ndarray, norm: dict) -> np.ndarray:
    """The fixed monotone map of a scheme before its affine part (float64)."""
    if norm["scheme"] in ("ct", "ct_vst"):
        x = np.clip(x, norm["clip_low"], norm["clip_high"])
        if norm["scheme"] == "ct_vst":
            a = MU_WATER_PER_MM * norm.get("path_mm", 200.0) / 2000.0
            x = -np.expm1(-a * (x - norm["mean"])) / a
        return x
    if norm["scheme"] == "log_zscore":
        return np.log(np.maximum(x, LOG_EPS))
    return x


def normalize_channel(x: np.ndarray, norm: dict) -> np.ndarray:
    """One channel's normalisation, ``u = (phi(x) - offset) / scale``, as float32."""
    x = x.astype(np.float64, copy=False)
    scheme = norm["scheme"]
    if scheme == "none":
        return x.astype(np.float32)
    if scheme in ("ct", "ct_vst"):
        scale = max(float(norm["std"]), EPS)
        offset = float(norm["mean"]) if scheme == "ct" else 0.0
    elif scheme in ("zscore", "minmax_zscore", "log_zscore"):
        v = phi(x, norm)
        if scheme == "minmax_zscore":
            lo, hi = float(v.min()), float(v.max())
            span = max(hi - lo, EPS)
            m = (v - lo) / span
            scale, offset = max(float(m.std()), EPS) * span, float(m.mean()) * span + lo
        else:
            scale, offset = max(float(v.std()), EPS), float(v.mean())
    else:
        raise SystemExit(f"normalisation scheme {scheme!r} is not supported by this script")
    return ((phi(x, norm) - offset) / scale).astype(np.float32)


def resample_linear(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, *shape)``: (bi/tri)linear over the same field of view, outer
    edges aligned (torch's ``F.interpolate(..., align_corners=False)``), one axis at a time.

    Agrees with medseg's torch resampling to float32 rounding (~1e-7 relative), not bit for bit.
    """
    out = a.astype(np.float64)
    for axis, n_out in enumerate(shape, start=1):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        scale = n_in / n_out
        src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = np.clip(src - i0, 0.0, 1.0)
        bshape = [1] * out.ndim
        bshape[axis] = n_out
        w1 = w1.reshape(bshape)
        out = np.take(out, i0, axis=axis) * (1.0 - w1) + np.take(out, i1, axis=axis) * w1
    return out.astype(np.float32)


def shape_for_spacing(shape, spacing, target) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * float(o) / float(s))))
                 for n, o, s in zip(shape, spacing, target, strict=True))


def singleton_axis(spatial: tuple[int, ...]) -> int | None:
    ones = [i for i, s in enumerate(spatial) if s == 1]
    return ones[0] if len(spatial) == 3 and len(ones) == 1 else None


# ---------------------------------------------------------------- sliding window
def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Evenly spaced starts: the first at 0, the last ending at ``size``."""
    if size == roi:
        return [0]
    n = math.ceil((size - roi) / (roi * (1.0 - overlap))) + 1
    step = (size - roi) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def gaussian_importance_map(roi: tuple[int, ...], sigma_scale, min_weight: float = 1e-4
                            ) -> np.ndarray:
    """Separable Gaussian, sigma = sigma_scale * n per axis, maximum 1, floor ``min_weight``."""
    scales = [float(sigma_scale)] * len(roi) if np.isscalar(sigma_scale) else \
        [float(s) for s in sigma_scale]
    g = np.ones((), dtype=np.float64)
    for n, s in zip(roi, scales, strict=True):
        i = np.arange(n, dtype=np.float64)
        g = g[..., None] * np.exp(-0.5 * ((i - (n - 1) / 2.0) / (s * n)) ** 2)
    g = g / g.max()
    return np.maximum(g, min_weight).astype(np.float32)


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class OnnxNetwork:
    """The exported network: ``(n, C, *roi)`` float32 -> logits ``(n, K, *roi)``.

    A file with dynamic spatial axes takes sizes that are multiples of
    ``dynamic.spatial_multiple_of``: windows are zero-padded at the end of each axis and the
    logits cropped back, as the network does itself inside PyTorch.
    """

    def __init__(self, path: str | Path, info: dict, threads: int = 0):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = info["inputs"][0]["name"]
        shape = info["inputs"][0]["shape"]
        self.fixed = [s for s in shape[2:] if isinstance(s, int)]
        self.multiple = (info.get("dynamic") or {}).get("spatial_multiple_of")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        spatial = x.shape[2:]
        if self.multiple:
            pad = [(0, -s % m) for s, m in zip(spatial, self.multiple, strict=True)]
            x = np.pad(x, [(0, 0), (0, 0), *pad]) if any(p for _, p in pad) else x
        out = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]
        return out[(..., *(slice(0, s) for s in spatial))]


def window_probs(net: OnnxNetwork, x: np.ndarray, tta: bool) -> np.ndarray:
    """Softmax per window; with TTA the mean over every flip of the spatial axes."""
    if not tta:
        return softmax(net(x))
    axes = range(2, x.ndim)
    combos = [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]
    total = None
    for combo in combos:
        p = softmax(net(np.flip(x, combo) if combo else x))
        p = np.flip(p, combo) if combo else p
        total = p.copy() if total is None else total + p
    return total / np.float32(len(combos))


def sliding_window(image: np.ndarray, net: OnnxNetwork, roi: tuple[int, ...], overlap: float,
                   sw_batch_size: int, sigma_scale, tta: bool) -> np.ndarray:
    """``(C, *spatial)`` -> ``(K, *spatial)`` Gaussian-weighted average of window softmaxes."""
    spatial = image.shape[1:]
    before = [max(r - s, 0) // 2 for s, r in zip(spatial, roi, strict=True)]
    after = [max(r - s, 0) - b for s, r, b in zip(spatial, roi, before, strict=True)]
    if any(before) or any(after):
        image = np.pad(image, [(0, 0), *zip(before, after, strict=True)])
    padded = image.shape[1:]
    starts = [window_starts(n, r, overlap) for n, r in zip(padded, roi, strict=True)]
    windows = [tuple(slice(s, s + r) for s, r in zip(pos, roi, strict=True))
               for pos in itertools.product(*starts)]
    importance = gaussian_importance_map(roi, sigma_scale)
    acc, weight = None, np.zeros(padded, dtype=np.float32)
    for w in windows:
        weight[w] += importance
    for first in range(0, len(windows), sw_batch_size):
        chunk = windows[first:first + sw_batch_size]
        x = np.stack([image[(slice(None), *w)] for w in chunk])
        pred = window_probs(net, x, tta)
        if acc is None:
            acc = np.zeros((pred.shape[1], *padded), dtype=np.float32)
        weighted = pred * importance
        for i, w in enumerate(chunk):
            acc[(slice(None), *w)] += weighted[i]
    acc /= weight
    if any(before) or any(after):
        acc = acc[(slice(None), *(slice(b, b + s) for b, s in zip(before, spatial,
                                                                   strict=True)))]
    return acc


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the classes (axis 0); T = 1 returns ``probs``."""
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    return softmax(z, axis=0).astype(probs.dtype)


# ---------------------------------------------------------------- the pipeline
def load_info(model: str | Path) -> dict:
    side = Path(str(model) + ".json")
    if not side.is_file():
        raise SystemExit(f"{side}: not found (medseg export writes it beside the model)")
    info = json.loads(side.read_text())
    if info.get("format") != SIDECAR_FORMAT or info.get("file_format") != "onnx":
        raise SystemExit(f"{side}: not the JSON of a medseg ONNX export")
    if info["task"] not in ("segmentation", "instance"):
        raise SystemExit(f"{side}: a {info['task']} model; this script segments")
    return info


def predict(model: str | Path, inputs: list[str], net: OnnxNetwork | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label map on the input grid, the probabilities ``(K, *spatial)`` and the affine."""
    info = load_info(model)
    net = net or OnnxNetwork(model, info)
    plan, inf = info["preprocess"], info["inference"]
    image, affine = read_channels(inputs)
    if not np.isfinite(image).all():
        raise SystemExit(f"{inputs[0]}: NaN/inf voxels")
    if image.shape[0] != len(plan["normalization"]):
        raise SystemExit(f"{inputs[0]}: {image.shape[0]} channel(s), the model expects "
                         f"{len(plan['normalization'])}")
    spatial = tuple(image.shape[1:])
    axis = singleton_axis(spatial)
    dims = 2 if axis is not None else len(spatial)
    if dims != info["spatial_dims"]:
        raise SystemExit(f"{inputs[0]}: a {dims}D image for a {info['spatial_dims']}D model")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[: len(spatial)])
    if axis is not None and len(spatial) == 3:  # a 2D image stored with one slice
        image = np.squeeze(image, axis=axis + 1)
        spacing = tuple(s for i, s in enumerate(spacing) if i != axis)
    x = np.stack([normalize_channel(image[c], n) for c, n in enumerate(plan["normalization"])])
    grid = tuple(x.shape[1:])
    if plan.get("target_spacing"):
        target = shape_for_spacing(grid, spacing, plan["target_spacing"])
        if target != grid:
            x = resample_linear(x, target)
    roi = tuple(info["patch_size"])
    if net.fixed and tuple(net.fixed) != roi:
        raise SystemExit(f"{model}: the file's spatial size {net.fixed} is not the patch size")
    probs = sliding_window(x, net, roi, float(inf["overlap"]), int(inf["sw_batch_size"]),
                           inf.get("sigma_scale", 0.125), bool(inf["tta"]))
    probs = temper(probs, float(info.get("temperature", 1.0)))
    if tuple(probs.shape[1:]) != grid:
        probs = resample_linear(probs, grid)
    if axis is not None and len(spatial) == 3:
        probs = np.expand_dims(probs, axis + 1)
    labels = probs.argmax(0).astype(np.uint8 if info["num_classes"] < 256 else np.uint16)
    return labels, probs, affine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the .onnx file (its .json beside it)")
    ap.add_argument("--input", required=True, nargs="+",
                    help="NIfTI file(s): one per channel, in the model's channel order")
    ap.add_argument("--output", required=True, help="label map to write (.nii.gz)")
    ap.add_argument("--probabilities", default=None, help="also write the probabilities here")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = load_info(a.model)
    labels, probs, affine = predict(a.model, a.input, OnnxNetwork(a.model, info, a.threads))
    write_label(a.output, labels, affine)
    if a.probabilities:
        img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(probs, 0, -1)), affine)
        nib.save(img, a.probabilities)
    print(f"{a.output}: {labels.shape} labels {np.unique(labels).tolist()} "
          f"({time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
