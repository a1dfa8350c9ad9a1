"""Time and peak memory of prediction with uncertainty vs plain prediction (not a test).

Cases, each on a 3D volume (default 160^3, 64^3 windows, overlap 0.5) and a 2D image (default
256^2, 128^2 windows), through the same code as ``medseg predict``
(:meth:`medseg.tasks.segmentation.SegmentationModel.predict` / ``predict_samples``):

* ``plain``          one deterministic sliding-window prediction;
* ``mc``             MC Dropout, T passes batched in each window;
* ``mc_decoder``     MC Dropout of the decoder only (encoder once per window);
* ``ensemble``       a deep ensemble of M members (one pass each);
* ``tta``            every flip of the spatial axes (8 in 3D, 4 in 2D).

The model folders are written first by ``medseg train`` (one step on phantoms: the weights do
not matter for speed): a U-Net with dropout (in the decoder, the default placement) and an
ensemble of M such members. Every case runs in a fresh process: ``--warmup`` untimed runs, then
``--repeats`` timed runs (median and minimum); peak memory is the process's peak resident set
minus its resident set just before loading the model (CPU).

    python benchmarks/bench_uncertainty.py                    # full sizes, 3 repeats
    python benchmarks/bench_uncertainty.py --quick --repeats 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

METHODS = ("plain", "mc", "mc_decoder", "ensemble", "tta")


def _prepare(root: Path, dims: int, size: int, roi: int, members: int, channels: str) -> Path:
    from medseg.cli import main

    ds = root / f"ds{dims}"
    assert main(["phantoms", "--output", str(ds), "--dims", str(dims), "--size", str(roi),
                 "--n-train", "3", "--n-test", "0"]) == 0
    model = root / f"m{dims}"
    assert main(["train", "--dataset", str(ds), "--output", str(model), "--ensemble",
                 str(members), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
                 "--patch-size", *[str(roi)] * dims, "--device", "cpu",
                 "--set", f"model.options.channels={channels}",
                 "--set", "model.options.dropout=0.2", "--set", "data.val_fraction=0",
                 "--set", "train.calibrate=false"]) == 0
    from medseg.io import write_image
    from medseg.io.meta import ImageMeta

    rng = np.random.default_rng(0)
    shape = (size,) * dims
    img = rng.normal(100.0, 20.0, shape).astype(np.float32)
    write_image(root / f"img{dims}.nii.gz", img[None],
                ImageMeta(affine=np.eye(4), spatial_shape=shape))
    return model


def _current_rss_kib() -> int:
    """The process's resident set now (not its peak), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run(args: tuple) -> tuple[list[float], float]:
    folder, image, method, samples, warmup, repeats, threads = args
    torch.set_num_threads(threads)
    from medseg.io import read_image
    from medseg.model_folder import ModelFolder
    from medseg.tasks.segmentation import SegmentationModel

    base = _current_rss_kib()
    mf = ModelFolder.open(folder)
    sm = SegmentationModel.load(mf if method == "ensemble" else mf.members[0], device="cpu")
    arr, meta = read_image(image)

    def once() -> None:
        if method == "plain":
            sm.predict(arr, meta)
        else:
            sm.predict_samples(arr, meta, method, samples)

    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0
    return times, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="96^3 / 128^2 volumes, small nets")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--samples", type=int, default=10, help="T of MC Dropout")
    ap.add_argument("--members", type=int, default=5, help="M of the ensemble")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    a = ap.parse_args()
    sizes = {3: (96 if a.quick else 160, 48 if a.quick else 64),
             2: (128 if a.quick else 256, 64 if a.quick else 128)}
    channels = "[8,16,32]" if a.quick else "[16,32,64,128]"
    print(f"# bench_uncertainty: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {a.threads} threads, U-Net channels {channels}, "
          f"T = {a.samples}, M = {a.members}, median (min) of {a.repeats} run(s)")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for dims in a.dims:
            size, roi = sizes[dims]
            folder = _prepare(root, dims, size, roi, a.members, channels)
            image = root / f"img{dims}.nii.gz"
            print(f"\n## {dims}D, {size}^{dims} image, {roi}^{dims} windows, overlap 0.5\n")
            print("| method | samples | seconds | x plain | peak MiB |")
            print("|---|---|---|---|---|")
            plain = None
            for method in METHODS:
                with ctx.Pool(1) as pool:
                    times, peak = pool.map(_run, [(folder, image, method, a.samples, a.warmup,
                                                   a.repeats, a.threads)])[0]
                med = statistics.median(times)
                plain = med if method == "plain" else plain
                n = {"plain": 1, "mc": a.samples, "mc_decoder": a.samples,
                     "ensemble": a.members, "tta": 2 ** dims}[method]
                print(f"| {method} | {n} | {med:.2f} ({min(times):.2f}) | "
                      f"{med / plain:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
