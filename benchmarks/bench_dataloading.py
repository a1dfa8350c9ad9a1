"""Does data loading starve the model? Data-wait fraction of real training steps (not a test).

Runs the training loop's own pieces on in-memory phantoms: ``PatchSampler`` (foreground
oversampling) -> ``Augmenter`` (default config: rotation/scale via one grid_sample per batch,
flips, intensity ops) -> ``PatchBatchLoader`` (prefetch thread) -> U-Net forward/backward/AdamW
with Dice + CE. For each case it reports the median step time, the time per batch spent
preparing data when done synchronously, and the fraction of wall time the model waited for data
with and without prefetching.

Cases (the foundation benchmark sizes):

* ``2d``  batch 8 of 256^2 patches from 24 phantoms of 320^2, U-Net (16, 32, 64, 128, 256);
* ``3d``  batch 2 of 64^3 patches from 6 phantoms of 96^3, the same channels.

    python benchmarks/bench_dataloading.py --steps 30
    python benchmarks/bench_dataloading.py --cases 2d --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medseg.data import PatchBatchLoader, PatchSampler  # noqa: E402
from medseg.losses import DiceCELoss  # noqa: E402
from medseg.networks import create_model  # noqa: E402
from medseg.physics import PhantomSpec, make_phantom  # noqa: E402
from medseg.transforms import AugmentConfig, Augmenter  # noqa: E402

CASES = {
    "2d": {"dims": 2, "n": 24, "size": 320, "patch": 256, "batch": 8},
    "3d": {"dims": 3, "n": 6, "size": 96, "patch": 64, "batch": 2},
}


def _cases(c: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    imgs, labs = [], []
    for i in range(c["n"]):
        spec = PhantomSpec(shape=(c["size"],) * c["dims"], modality="mr", lesion_fraction=0.01)
        x, y, _ = make_phantom(spec, seed=i)
        x = (x - x.mean()) / (x.std() + 1e-8)
        imgs.append(x[None].astype(np.float32))
        labs.append(y.astype(np.int64))
    return imgs, labs


def run_case(name: str, steps: int, warmup: int, device: str) -> dict:
    c = CASES[name]
    imgs, labs = _cases(c)
    patch = (c["patch"],) * c["dims"]
    model = create_model("unet", spatial_dims=c["dims"], in_channels=1, num_classes=3,
                         channels=(16, 32, 64, 128, 256)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss()
    out: dict = {"case": name, "batch": c["batch"], "patch": list(patch), "steps": steps}

    # data preparation alone, synchronously (sampling + augmentation per batch)
    sampler = PatchSampler(imgs, labs, patch, c["batch"], seed=0)
    aug = Augmenter(AugmentConfig(), c["dims"], seed=0)
    prep = []
    for _ in range(max(5, steps // 3)):
        t = time.perf_counter()
        aug(*sampler.sample_batch())
        prep.append(time.perf_counter() - t)
    out["prepare_batch_s"] = statistics.median(prep)

    for prefetch in (0, 2):
        sampler = PatchSampler(imgs, labs, patch, c["batch"], seed=0)
        loader = PatchBatchLoader(sampler, Augmenter(AugmentConfig(), c["dims"], seed=0),
                                  prefetch=prefetch)
        times = []
        try:
            for i in range(warmup + steps):
                if i == warmup:
                    loader.wait_time = 0.0
                    t_start = time.perf_counter()
                t = time.perf_counter()
                x, y = next(loader)
                x, y = x.to(device), y.to(device)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if device == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t)
            total = time.perf_counter() - t_start
        finally:
            loader.close()
        key = "prefetch" if prefetch else "sync"
        out[f"{key}_step_median_s"] = statistics.median(times)
        out[f"{key}_data_wait_fraction"] = loader.wait_time / total
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [run_case(n, a.steps, a.warmup, a.device) for n in a.cases]
    print(f"device {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    hdr = ("case", "batch x patch", "prepare/batch s", "step s (sync)", "wait (sync)",
           "step s (prefetch)", "wait (prefetch)")
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join([
            r["case"], f"{r['batch']} x {'x'.join(map(str, r['patch']))}",
            f"{r['prepare_batch_s']:.3f}", f"{r['sync_step_median_s']:.3f}",
            f"{r['sync_data_wait_fraction']:.1%}", f"{r['prefetch_step_median_s']:.3f}",
            f"{r['prefetch_data_wait_fraction']:.1%}"]))
    if a.json:
        Path(a.json).write_text(json.dumps({"device": a.device, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
