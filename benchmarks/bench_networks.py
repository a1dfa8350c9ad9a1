"""Training-step time and peak memory of medseg's networks beside MONAI's (not a test).

One training step = forward, cross-entropy (summed over deep-supervision outputs), backward,
SGD step. Cases (``--quick`` shrinks them for a smoke run):

* ``seg2d``  batch 8 of 1x256^2, 3 classes: medseg ``unet``, ``unetpp``, ``deeplabv3plus``,
  ``transunet``; MONAI ``BasicUNetPlusPlus`` (deep supervision, the same widths as medseg's
  UNet++: features ``(32, 64, 128, 256, 320, 32)``) and ``UNETR`` (patch 16, a Transformer of
  the width and depth of the TransUNet row: hidden 256, 4 layers, 8 heads, MLP 1024);
* ``seg3d``  (``--3d``) the same networks, batch 2 of 1x64^3;
* ``vit``    medseg ``vit_classifier``, batch 32 of 1x64^2, 3 classes (patch 8: 64 tokens).

Every case runs in a fresh process: ``--warmup`` untimed steps, then ``--repeats`` timed ones
(median and minimum reported). Peak memory: on CPU the growth of the process's resident set,
sampled every 2 ms from ``/proc/self/statm`` by a background thread from just before the model
is built to the end of the timed steps (``ru_maxrss`` growth where ``/proc`` is absent); on CUDA
``torch.cuda.max_memory_allocated``. MONAI rows are skipped, saying so, when ``import monai``
fails (run with a Python that has MONAI and ``PYTHONPATH=src``).

    PYTHONPATH=src /tmp/benchvenv/bin/python benchmarks/bench_networks.py --threads 2
    python benchmarks/bench_networks.py --quick --repeats 1 --only medseg-unet
    PYTHONPATH=src /tmp/benchvenv/bin/python benchmarks/bench_networks.py \
        --interleave medseg-unetpp monai-basicunetplusplus --repeats 3

Two more implementations exist for ``--only`` and ``--interleave``:
``monai-basicunetplusplus-default``
(MONAI's default features ``(32, 32, 64, 128, 256, 32)``) and ``medseg-unetpp-monai-widths``
(medseg's UNet++ with channels ``(32, 32, 64, 128, 256)``).

``--interleave A B`` times two implementations in one process with their steps alternating,
so that both see the same background load (their ratio stays meaningful on a shared machine).
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
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medseg.networks import create_model  # noqa: E402

WIDTHS = (32, 64, 128, 256, 320)
SEG_IMPLS = (
    "medseg-unet", "medseg-unetpp", "medseg-deeplabv3plus", "medseg-transunet",
    "monai-basicunetplusplus", "monai-unetr",
)
FULL = {"seg2d": (8, 256), "seg3d": (2, 64), "vit": (32, 64)}
QUICK = {"seg2d": (2, 64), "seg3d": (1, 32), "vit": (4, 32)}
NUM_CLASSES = 3


class _PeakRSS:
    """Peak resident-set growth of this process, sampled by a background thread (MiB)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()
        self.base = self._now()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> float:
        if self._proc:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def growth(self) -> float:
        return self.peak - self.base


def _build(impl: str, dims: int, size: int) -> nn.Module:
    if impl == "medseg-unet":
        return create_model("unet", spatial_dims=dims, num_classes=NUM_CLASSES, channels=WIDTHS)
    if impl == "medseg-unetpp":
        return create_model("unetpp", spatial_dims=dims, num_classes=NUM_CLASSES,
                            channels=WIDTHS)
    if impl == "medseg-unetpp-monai-widths":  # the widths of MONAI's default
        return create_model("unetpp", spatial_dims=dims, num_classes=NUM_CLASSES,
                            channels=(32, 32, 64, 128, 256))
    if impl == "medseg-deeplabv3plus":
        return create_model("deeplabv3plus", spatial_dims=dims, num_classes=NUM_CLASSES)
    if impl == "medseg-transunet":
        return create_model("transunet", spatial_dims=dims, num_classes=NUM_CLASSES,
                            channels=(32, 64, 128, 256), embed_dim=256, num_heads=8,
                            num_layers=4, mlp_ratio=4.0, image_size=size)
    if impl == "medseg-vit":
        return create_model("vit_classifier", spatial_dims=dims, num_classes=NUM_CLASSES,
                            image_size=size)
    if impl == "monai-basicunetplusplus":
        from monai.networks.nets import BasicUNetPlusPlus

        return BasicUNetPlusPlus(spatial_dims=dims, in_channels=1, out_channels=NUM_CLASSES,
                                 features=(*WIDTHS, 32), deep_supervision=True)
    if impl == "monai-basicunetplusplus-default":  # MONAI's default, narrower widths
        from monai.networks.nets import BasicUNetPlusPlus

        return BasicUNetPlusPlus(spatial_dims=dims, in_channels=1, out_channels=NUM_CLASSES,
                                 deep_supervision=True)
    if impl == "monai-unetr":
        from monai.networks.nets import UNETR

        return UNETR(in_channels=1, out_channels=NUM_CLASSES, img_size=(size,) * dims,
                     feature_size=16, hidden_size=256, mlp_dim=1024, num_heads=8,
                     spatial_dims=dims)
    raise ValueError(impl)


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build and time one case (called in a fresh process)."""
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    case, impl = spec["case"], spec["impl"]
    batch, size = spec["sizes"][case]
    dims = 3 if case == "seg3d" else 2
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        mem0 = torch.cuda.memory_allocated(device)
    times: list[float] = []
    with _PeakRSS() as rss:
        model = _build(impl, dims, size).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(batch, 1, *(size,) * dims, device=device)
        if case == "vit":
            y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
        else:
            y = torch.randint(0, NUM_CLASSES, (batch, *(size,) * dims), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            outs = out if isinstance(out, list | tuple) else [out]
            loss = sum(F.cross_entropy(o, y) for o in outs)
            loss.backward()
            opt.step()

        for i in range(spec["warmup"] + spec["repeats"]):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) - mem0) / 2**20 if cuda else rss.growth
    return {
        "case": case,
        "impl": impl,
        "input": f"{batch}x1x{'x'.join([str(size)] * dims)}",
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_mem_mib": peak,
        "peak_mem_kind": "cuda max_memory_allocated" if cuda else "peak RSS growth (sampled)",
    }


def run_interleaved(spec: dict[str, Any]) -> dict[str, Any]:
    """Time two implementations in one process, alternating their steps.

    On a machine shared with other work the load changes from minute to minute; alternating
    the steps exposes both networks to the same load, so their ratio is meaningful even when
    the absolute times are not.
    """
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    batch, size = spec["sizes"]["seg2d"]
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size))
    steps = {}
    for impl in spec["pair"]:
        model = _build(impl, 2, size).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            outs = out if isinstance(out, list | tuple) else [out]
            sum(F.cross_entropy(o, y) for o in outs).backward()
            opt.step()

        steps[impl] = step
    times: dict[str, list[float]] = {impl: [] for impl in spec["pair"]}
    for i in range(spec["warmup"] + spec["repeats"]):
        for impl, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= spec["warmup"]:
                times[impl].append(time.perf_counter() - t0)
    return {"pair": list(spec["pair"]), "input": f"{batch}x1x{size}x{size}",
            "times_s": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "min_s": {k: min(v) for k, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--3d", dest="three_d", action="store_true",
                        help="also run the 3D cases (batch 2 of 64^3)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="implementations to run (default: all), e.g. medseg-unetpp")
    parser.add_argument("--interleave", nargs=2, default=None, metavar="IMPL",
                        help="only time these two implementations on the 2D case, steps "
                        "alternating in one process (e.g. medseg-unetpp "
                        "monai-basicunetplusplus)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None,
                        help="output file (default benchmarks/results/bench_networks_<dev>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    try:
        import monai

        monai_version: str | None = monai.__version__
    except Exception as exc:  # any import failure means: no MONAI rows
        monai_version = None
        print(f"MONAI rows skipped: `import monai` failed ({type(exc).__name__}: {exc})",
              file=sys.stderr)

    sizes = QUICK if args.quick else FULL
    if args.interleave:
        spec = {"pair": args.interleave, "repeats": args.repeats, "warmup": args.warmup,
                "threads": args.threads, "sizes": sizes}
        r = run_interleaved(spec)
        for impl in r["pair"]:
            print(f"{impl:<24} median {r['median_s'][impl]:8.3f} s  min {r['min_s'][impl]:8.3f} "
                  f"s  steps {[round(t, 2) for t in r['times_s'][impl]]}  {r['input']}")
        a, b = r["pair"]
        print(f"ratio {a} / {b}: median {r['median_s'][a] / r['median_s'][b]:.2f}, "
              f"min {r['min_s'][a] / r['min_s'][b]:.2f}")
        return 0
    plan = [("seg2d", SEG_IMPLS)] + ([("seg3d", SEG_IMPLS)] if args.three_d else [])
    plan.append(("vit", ("medseg-vit",)))
    specs = [
        {"case": case, "impl": impl, "device": args.device, "repeats": args.repeats,
         "warmup": args.warmup, "threads": args.threads, "sizes": sizes}
        for case, impls in plan for impl in impls
        if (args.only is None or impl in args.only)
        and not (impl.startswith("monai") and monai_version is None)
    ]
    results = []
    ctx = mp.get_context("spawn")
    for spec in specs:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            r = pool.submit(run_case, spec).result()
        results.append(r)
        print(f"{r['case']:<6} {r['impl']:<24} {r['params_m']:>7.2f} M  median "
              f"{r['median_s']:8.3f} s  min {r['min_s']:8.3f} s  peak {r['peak_mem_mib']:7.0f} "
              f"MiB  {r['input']}", flush=True)

    print("\n| case | implementation | params M | median s | min s | peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} {r['input']} | {r['impl']} | {r['params_m']:.2f} | "
              f"{r['median_s']:.3f} | {r['min_s']:.3f} | {r['peak_mem_mib']:.0f} |")
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
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "quick": args.quick,
                     "sizes": sizes, "widths": WIDTHS},
        "results": results,
    }
    print("\n" + json.dumps(report, indent=2))
    out = args.json or (Path(__file__).resolve().parent / "results"
                        / f"bench_networks_{args.device}{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
