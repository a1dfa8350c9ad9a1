"""Benchmark medseg's U-Net and sliding-window inference beside MONAI's (not a test).

Cases (full sizes; ``--quick`` shrinks them for a smoke run):

* ``unet3d_train``  one training step (forward, cross-entropy, backward, SGD step) of a 3D U-Net,
  batch 2 of 1x64^3, channels (16, 32, 64, 128, 256), strides 2;
* ``unet2d_train``  the same in 2D, batch 8 of 1x256^2;
* ``sw_unet``       sliding-window inference over a 1x160^3 volume, 64^3 windows, overlap 0.5,
  Gaussian weighting, 4 windows per forward, with medseg's 3D U-Net (eval, inference mode) as
  the predictor of both inferers, so the rows compare the inferers on the same network;
* ``sw_overhead``   the same with a parameter-free predictor (``cat([x, -x])``, two channels):
  the cost of cutting windows, weighting and stitching alone.

MONAI rows use ``monai.networks.nets.UNet(num_res_units=2, norm="instance",
act=LeakyReLU(0.01))`` (two convolutions per encoder level plus a residual path, like medseg's
``residual=True``) with the same channels and strides (2, 2, 2, 2), and a second configuration
with strides (1, 2, 2, 2): MONAI's first block is strided, so with strides 2 its top level runs
at half resolution and it does far less work than an nnU-Net-style U-Net, whose top level runs
at full resolution. ``monai.inferers.sliding_window_inference`` is the other inferer. MONAI
rows are skipped, saying so, when ``import monai`` fails.

Each case runs in a fresh process: ``--warmup`` untimed runs, then ``--repeats`` timed runs;
the table gives the median and minimum. Peak memory is the growth of the process's peak
resident set (``resource.getrusage``) from just before the model and inputs are built until the
end of the timed runs (CPU), or ``torch.cuda.max_memory_allocated`` over the same span (CUDA).

    python benchmarks/bench_unet.py --device cpu --repeats 5
    python benchmarks/bench_unet.py --quick --repeats 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medseg.inference import sliding_window_inference  # noqa: E402
from medseg.networks import UNet  # noqa: E402

CHANNELS = (16, 32, 64, 128, 256)
FULL = {"train3d": (2, 64), "train2d": (8, 256), "sw": (160, 64)}
QUICK = {"train3d": (1, 32), "train2d": (2, 64), "sw": (64, 32)}
IMPLS_TRAIN = ("medseg", "medseg-residual", "monai", "monai-fullres")
IMPLS_SW = ("medseg", "monai")
CASES = ("unet3d_train", "unet2d_train", "sw_unet", "sw_overhead")


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _build_unet(impl: str, spatial_dims: int,
                channels: tuple[int, ...] = CHANNELS) -> nn.Module:
    if impl in ("medseg", "medseg-residual"):
        return UNet(spatial_dims, in_channels=1, num_classes=2, channels=channels,
                    residual=impl == "medseg-residual")
    from monai.networks.nets import UNet as MonaiUNet

    # MONAI's first block is already strided, so with strides (2, 2, 2, 2) its top level runs
    # at half resolution; "monai-fullres" keeps the top level at full resolution instead.
    down = (2,) * (len(channels) - 2)
    strides = (1, *down) if impl == "monai-fullres" else (2, *down)
    return MonaiUNet(
        spatial_dims=spatial_dims, in_channels=1, out_channels=2, channels=channels,
        strides=strides, num_res_units=2, norm="instance",
        act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    )


def _train_step(impl: str, spatial_dims: int, batch: int, size: int,
                device: torch.device) -> tuple[Callable[[], None], nn.Module]:
    model = _build_unet(impl, spatial_dims).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *(size,) * spatial_dims, device=device)
    y = torch.randint(0, 2, (batch, *(size,) * spatial_dims), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step, model


class _TwoChannels(nn.Module):
    """A parameter-free two-channel "network" whose cost is negligible next to stitching."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, -x], dim=1)


def _sw_run(impl: str, predictor_kind: str, volume: int, roi: int,
            device: torch.device) -> tuple[Callable[[], torch.Tensor], nn.Module]:
    if predictor_kind == "unet":
        net: nn.Module = _build_unet("medseg", 3)
    else:
        net = _TwoChannels()
    net = net.to(device).eval()
    image = torch.randn(1, 1, volume, volume, volume)  # stays on the CPU, like a real volume

    if impl == "medseg":
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window_inference(
                    image, net, roi, overlap=0.5, sw_batch_size=4, mode="gaussian",
                    device=device, output_device="cpu",
                )
    else:
        from monai.inferers import sliding_window_inference as monai_swi

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return monai_swi(
                    image, (roi,) * 3, 4, net, overlap=0.5, mode="gaussian",
                    sw_device=device, device="cpu",
                )

    return run, net


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build and time one case (called in a fresh process)."""
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        mem0 = torch.cuda.memory_allocated(device)
    rss0 = _peak_rss_mib()

    case, impl = spec["case"], spec["impl"]
    extra: dict[str, Any] = {}
    if case in ("unet3d_train", "unet2d_train"):
        dims = 3 if case == "unet3d_train" else 2
        batch, size = spec["sizes"]["train3d" if dims == 3 else "train2d"]
        fn, model = _train_step(impl, dims, batch, size, device)
        extra["input"] = f"{batch}x1x{'x'.join([str(size)] * dims)}"
    else:
        volume, roi = spec["sizes"]["sw"]
        kind = "unet" if case == "sw_unet" else "cheap"
        fn, model = _sw_run(impl, kind, volume, roi, device)
        extra["input"] = f"1x1x{volume}^3, roi {roi}^3, overlap 0.5"
    params = sum(p.numel() for p in model.parameters())

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(spec["warmup"]):
        timed()
    times = [timed() for _ in range(spec["repeats"])]
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - mem0) / 2**20
    else:
        peak = _peak_rss_mib() - rss0

    if case.startswith("sw_") and impl == "monai":
        # Same predictor, same windows: how far apart are the two stitched results?
        out_monai = fn()
        torch.manual_seed(0)  # rebuild the same predictor and volume
        ref, _ = _sw_run("medseg", "unet" if case == "sw_unet" else "cheap",
                         *spec["sizes"]["sw"], device)
        out_medseg = ref()
        extra["max_abs_diff_vs_medseg"] = float((out_monai - out_medseg).abs().max())
    return {
        "case": case,
        "impl": impl,
        "params_m": params / 1e6,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_mem_mib": peak,
        "peak_mem_kind": "cuda max_memory_allocated" if cuda else "peak RSS growth",
        **extra,
    }


def _label(case: str, impl: str) -> str:
    if case.startswith("sw_"):
        return {"medseg": "medseg sliding_window", "monai": "MONAI sliding_window"}[impl]
    return {
        "medseg": "medseg UNet",
        "medseg-residual": "medseg UNet residual=True",
        "monai": "MONAI UNet nru=2 s=2,2,2,2",
        "monai-fullres": "MONAI UNet nru=2 s=1,2,2,2",
    }[impl]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="which cases to run (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None,
                        help="output file (default benchmarks/results/bench_unet_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")

    try:
        import monai

        monai_version: str | None = monai.__version__
    except Exception as exc:  # any import failure means: no MONAI rows
        monai_version = None
        print(f"MONAI rows skipped: `import monai` failed ({type(exc).__name__}: {exc}). "
              f"Install the bench extra: pip install -e '.[bench]'", file=sys.stderr)

    sizes = QUICK if args.quick else FULL
    specs = []
    for case in args.cases:
        impls = IMPLS_TRAIN if case.endswith("_train") else IMPLS_SW
        for impl in impls:
            if impl.startswith("monai") and monai_version is None:
                continue
            specs.append({"case": case, "impl": impl, "device": args.device,
                          "repeats": args.repeats, "warmup": args.warmup,
                          "threads": args.threads, "sizes": sizes})

    results = []
    ctx = mp.get_context("spawn")
    header = (f"{'case':<13} {'implementation':<27} {'params M':>8} {'median s':>9} "
              f"{'min s':>8} {'peak MiB':>9}  input")
    print(header)
    print("-" * len(header))
    for spec in specs:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            r = pool.submit(run_case, spec).result()
        results.append(r)
        line = (f"{r['case']:<13} {_label(r['case'], r['impl']):<27} {r['params_m']:>8.2f} "
                f"{r['median_s']:>9.3f} {r['min_s']:>8.3f} {r['peak_mem_mib']:>9.0f}  "
                f"{r['input']}")
        if "max_abs_diff_vs_medseg" in r:
            line += f"  (max |monai - medseg| = {r['max_abs_diff_vs_medseg']:.2e})"
        print(line, flush=True)

    out = args.json or (Path(__file__).resolve().parent / "results"
                        / f"bench_unet_{args.device}{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai_version,
            "device": args.device,
            "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "settings": {"cases": args.cases, "repeats": args.repeats, "warmup": args.warmup,
                     "quick": args.quick, "channels": CHANNELS, "sizes": sizes},
        "results": results,
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
