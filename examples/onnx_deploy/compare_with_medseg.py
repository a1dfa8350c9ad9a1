"""Check `predict_onnx.py` against `medseg predict`: differing voxels and time per case.

    python compare_with_medseg.py --model MODEL_FOLDER --images DIR --work OUT [--threads 1]

Exports MODEL_FOLDER to OUT/model.onnx (`medseg export`), predicts every NIfTI of DIR with
`medseg predict` (OUT/medseg/) and with the numpy + onnxruntime pipeline of predict_onnx.py
(OUT/onnx/), and prints per case the voxels whose labels differ and the times:

* process: the whole command, interpreter start and imports included (`medseg predict` over
  the folder; `predict_onnx.py` once per case);
* compute: one case in a warm process (model loaded, the image read, preprocessing, sliding
  window, stitching, arg-max), the median of --repeats runs.

This harness uses medseg and torch; `predict_onnx.py` itself uses neither.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _example():
    spec = importlib.util.spec_from_file_location("predict_onnx", HERE / "predict_onnx.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder (medseg train --output)")
    ap.add_argument("--images", required=True, help="folder of NIfTI images")
    ap.add_argument("--work", required=True, help="new folder for the outputs")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for torch and onnxruntime (0: their defaults)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    work, images = Path(a.work), Path(a.images)
    work.mkdir(parents=True, exist_ok=False)
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    medseg = [sys.executable, "-m", "medseg.cli"]
    onnx_file = work / "model.onnx"
    subprocess.run([*medseg, "export", "--model", a.model, "--output", str(onnx_file)],
                   check=True, env=env)
    cases = sorted(images.glob("*.nii.gz"))

    t = time.perf_counter()
    # the exported network computes in float32: compare with medseg predicting in float32 (a
    # model trained with precision auto predicts in bf16 on a CPU with native bf16)
    subprocess.run([*medseg, "predict", "--model", a.model, "--input", str(images), "--output",
                    str(work / "medseg"), "--device", "cpu", "--precision", "fp32"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    medseg_process = time.perf_counter() - t
    (work / "onnx").mkdir()
    t = time.perf_counter()
    for img in cases:
        out = work / "onnx" / img.name.replace("_0000", "")
        subprocess.run([sys.executable, str(HERE / "predict_onnx.py"), "--model",
                        str(onnx_file), "--input", str(img), "--output", str(out),
                        "--threads", str(a.threads)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    onnx_process = time.perf_counter() - t

    import torch

    from medseg.io import read_image, read_label
    from medseg.tasks.segmentation import SegmentationModel

    if a.threads:
        torch.set_num_threads(a.threads)
    ex = _example()
    model = SegmentationModel.load(a.model, device="cpu")
    model.precision = "fp32"
    net = ex.OnnxNetwork(onnx_file, ex.load_info(onnx_file), a.threads)
    print(f"{'case':<16}{'shape':<16}{'differing':>10}{'medseg s':>10}{'onnx s':>10}")
    rows = []
    for img in cases:
        ref, _ = read_label(work / "medseg" / img.name.replace("_0000", ""))
        got, _ = read_label(work / "onnx" / img.name.replace("_0000", ""))
        times = {"medseg": [], "onnx": []}
        for _ in range(a.repeats):
            t = time.perf_counter()
            image, meta = read_image(img)
            model.predict(image, meta).hard()
            times["medseg"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ex.predict(onnx_file, [str(img)], net)
            times["onnx"].append(time.perf_counter() - t)
        row = (img.name.replace("_0000.nii.gz", ""), "x".join(map(str, ref.shape)),
               int((ref != got).sum()), float(np.median(times["medseg"])),
               float(np.median(times["onnx"])))
        rows.append(row)
        print(f"{row[0]:<16}{row[1]:<16}{row[2]:>10}{row[3]:>10.3f}{row[4]:>10.3f}")
    print(f"differing voxels in all: {sum(r[2] for r in rows)} of "
          f"{sum(int(np.prod([int(s) for s in r[1].split('x')])) for r in rows)}")
    print(f"process time for {len(cases)} case(s): medseg predict {medseg_process:.1f} s, "
          f"predict_onnx.py {onnx_process:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
