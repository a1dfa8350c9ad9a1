"""Decoder-only against full MC Dropout on one window (not a test): median of repeated runs.

Both go through :func:`medseg.uncertainty.samplers.sample_probs`, the sampler of
``medseg predict --uncertainty mc|mc_decoder``; a U-Net with channel dropout after each decoder
stage (``dropout_where="decoder"``, the default) or on the last decoder features before the 1x1
head only (``"head"``: decoder-only MC then runs the whole trunk once), fp32 and bf16 autocast.

    python benchmarks/bench_decoder_mc.py [--dims 2] [--size 128] [--samples 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from medseg.inference.precision import autocast  # noqa: E402
from medseg.networks import create_model  # noqa: E402
from medseg.uncertainty.samplers import sample_probs  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--where", nargs="+", default=["decoder", "head"],
                    help="dropout placements (dropout_where) to measure")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(1, 1, *(a.size,) * a.dims)
    print(f"| dropout_where | precision | plain ms | MC ms (T={a.samples}) | decoder-only ms | "
          "decoder-only / MC |")
    print("|---|---|---|---|---|---|")
    for where in a.where:
        torch.manual_seed(0)
        net = create_model("unet", spatial_dims=a.dims, in_channels=1, num_classes=3,
                           channels=[16, 32, 64, 128], dropout=0.2, dropout_where=where).eval()
        for precision in ("fp32", "bf16"):
            with autocast(precision, torch.device("cpu")):
                plain, full, dec = (
                    median_time(lambda n=net, m=method, t=t: sample_probs([n], x, m, t),
                                a.repeats)
                    for method, t in (("none", 1), ("mc", a.samples),
                                      ("mc_decoder", a.samples)))
            print(f"| {where} | {precision} | {plain * 1e3:.1f} | {full * 1e3:.1f} | "
                  f"{dec * 1e3:.1f} | {dec / full:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
