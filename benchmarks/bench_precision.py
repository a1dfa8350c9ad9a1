"""medseg fp32, medseg with reduced precision / channels-last, and MONAI, interleaved (not a test).

Cases (``--quick`` shrinks them for a smoke run):

* ``train3d``  one training step (forward, cross-entropy on float32 logits, backward, SGD step)
  of a 3D U-Net, batch 2 of 1x64^3, channels (16, 32, 64, 128, 256);
* ``train2d``  the same in 2D, batch 8 of 1x256^2;
* ``sw``       sliding-window prediction of a 1x160^3 volume, 64^3 windows, overlap 0.5,
  Gaussian weighting, 4 windows per forward, softmax probabilities stitched in float32
  (medseg: :func:`medseg.inference.predict_probs`; MONAI: its ``sliding_window_inference`` on
  its own network with a softmax predictor);
* ``cls``      classification prediction of 624 images of 1x28^2 (BreastMNIST's train+val
  size) in batches of 64 by ``resnet_classifier`` (channels 32..256, the MedMNIST recipe), as
  ``medseg predict`` runs it (:func:`medseg.tasks.classification.classifier_logits`); MONAI
  has no network of this architecture, so its ratio column is against medseg fp32.

Implementations: ``monai`` (``monai.networks.nets.UNet`` at the same architecture as medseg's,
the ``monai-fullres`` construction of ``bench_unet.py``: strides (1, 2, 2, 2), two residual
units, instance norm, LeakyReLU, fp32), ``medseg-fp32``, ``medseg-fp32-cl`` (channels-last),
``medseg-bf16`` (bf16 autocast) and ``medseg-bf16-cl`` (bf16 + channels-last; the ``best``
setting where it is fastest). ``--compile`` adds ``medseg-bf16-compile`` and
``medseg-bf16-cl-compile`` (``torch.compile``, inductor) and reports their warm-up (first-call)
time; ``--impls`` / ``--sw-impls`` pick implementations.

Timing: every implementation is built once in this process, then the repeats run
**interleaved** (round-robin: one run of each implementation, then the next round), so a
load from other processes on a shared machine hits all of them alike; the table gives the
median over repeats and the ratio to MONAI's fp32 median. Peak memory is measured separately:
one fresh process per implementation and case builds it and runs two calls (one for the
sliding window), and the number is the growth of that process's peak resident set (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` just before the network and inputs are
built; ``ru_maxrss`` elsewhere, which a spawned child inherits from its parent on Linux).

Extras: ``--agreement`` compares the label maps (arg-max) of the timed medseg sliding-window
outputs, each bf16 variant against fp32 (same fixed-seed network, same smooth synthetic
volume, see ``_volume``) in % identical voxels; ``--phantom`` trains the same small 2D U-Net
on MR phantoms for a fixed number of steps in fp32 and in bf16 (same seed) and reports the
held-out Dice of each, and the label-map agreement of the fp32 model predicted in fp32 vs bf16;
``--real-ct`` trains a small 3D model on the TotalSegmentator example CT (``../shared/data``,
skipped if absent) and measures background-window skipping on the real CT volumes: windows
skipped, speed ratio and label-map difference.

    python benchmarks/bench_precision.py --repeats 5 --agreement
    python benchmarks/bench_precision.py --quick
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
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medseg.inference import predict_probs  # noqa: E402
from medseg.inference.precision import autocast, maybe_compile, to_channels_last  # noqa: E402
from medseg.networks import UNet  # noqa: E402

CHANNELS = (16, 32, 64, 128, 256)
FULL = {"train3d": (2, 64), "train2d": (8, 256), "sw": (160, 64), "cls": (624, 28)}
QUICK = {"train3d": (1, 32), "train2d": (2, 64), "sw": (64, 32), "cls": (64, 28)}
CASES = ("train3d", "train2d", "sw", "cls")
MEDSEG = {  # name -> (precision, channels-last, compile)
    "medseg-fp32": ("fp32", False, False),
    "medseg-fp32-cl": ("fp32", True, False),
    "medseg-bf16": ("bf16", False, False),
    "medseg-bf16-cl": ("bf16", True, False),
    "medseg-bf16-compile": ("bf16", False, True),
    "medseg-bf16-cl-compile": ("bf16", True, True),
}
DATA = Path(os.environ.get("MEDSEG_SHARED_DATA", Path(__file__).resolve().parents[2]
                           / "shared" / "data"))


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); ``False`` where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """Peak resident set of this process: ``VmHWM`` (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` is inherited through fork + exec on Linux (a spawned child starts at its
    parent's peak), so it cannot measure a child's own growth; ``VmHWM`` belongs to the new
    address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _network(impl: str, dims: int) -> nn.Module:
    torch.manual_seed(0)
    if impl == "monai":
        from bench_unet import _build_unet  # the matched MONAI construction

        return _build_unet("monai-fullres", dims)
    return UNet(dims, in_channels=1, num_classes=2, channels=CHANNELS)


def _volume(size: int) -> torch.Tensor:
    """A smooth synthetic ``(1, 1, size^3)`` volume: two blurred blobs plus mild noise."""
    g = torch.Generator().manual_seed(0)
    ax = torch.linspace(-1, 1, size)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    v = torch.exp(-((x - 0.3) ** 2 + y**2 + z**2) / 0.1) + 0.7 * torch.exp(
        -((x + 0.4) ** 2 + (y - 0.3) ** 2 + (z + 0.2) ** 2) / 0.05)
    return (v + 0.05 * torch.randn(v.shape, generator=g))[None, None]


def build(case: str, impl: str, sizes: dict[str, tuple[int, int]]) -> Callable[[], Any]:
    """One callable that runs the case once with the implementation."""
    if case in ("train3d", "train2d"):
        dims = 3 if case == "train3d" else 2
        batch, size = sizes[case]
        model = _network(impl, dims).train()
        precision, cl, comp = MEDSEG.get(impl, ("fp32", False, False))
        if cl:
            model = model.to(memory_format=torch.channels_last_3d if dims == 3
                             else torch.channels_last)
        net = maybe_compile(model, comp, impl)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 1, *(size,) * dims, generator=g)
        if cl:
            x = to_channels_last(x)
        y = torch.randint(0, 2, (batch, *(size,) * dims), generator=g)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(precision, "cpu"):
                logits = net(x)
            F.cross_entropy(logits.float(), y).backward()
            opt.step()

        return step
    if case == "cls":
        from medseg.networks import create_model
        from medseg.tasks.classification import classifier_logits

        n, size = sizes["cls"]
        torch.manual_seed(0)
        net = create_model("resnet_classifier", spatial_dims=2, in_channels=1, num_classes=2,
                           channels=[32, 64, 128, 256]).eval()
        precision, cl, _ = MEDSEG[impl]
        if cl:
            net = net.to(memory_format=torch.channels_last)
        images = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(2))
        images = images.numpy()

        def predict() -> torch.Tensor:
            return classifier_logits(net, images, torch.device("cpu"), precision=precision)

        return predict
    volume, roi = sizes["sw"]
    image = _volume(volume)
    model = _network(impl, 3).eval()
    if impl == "monai":
        from monai.inferers import sliding_window_inference as monai_swi

        def softmax_net(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(x), 1)

        def run_monai() -> torch.Tensor:
            with torch.inference_mode():
                return monai_swi(image, (roi,) * 3, 4, softmax_net, overlap=0.5, mode="gaussian",
                                 sw_device="cpu", device="cpu")

        return run_monai
    precision, cl, comp = MEDSEG[impl]

    def run() -> torch.Tensor:
        return predict_probs(model, image, roi, overlap=0.5, sw_batch_size=4, device="cpu",
                             precision=precision, channels_last=cl, compile=comp)

    return run


def peak_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Fresh process: peak RSS growth (``VmHWM``, reset first) of building + ``calls`` calls."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    _reset_peak_rss()
    rss0 = _peak_rss_mib()
    fn = build(spec["case"], spec["impl"], spec["sizes"])
    for _ in range(spec["calls"]):
        fn()
    return {"peak_mib": _peak_rss_mib() - rss0}


def interleaved(case: str, impls: list[str], sizes: dict[str, tuple[int, int]], repeats: int,
                warmup: int, outputs: dict[str, Any] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Build every implementation, call each once (its first-call time) plus ``warmup - 1``
    untimed calls, then time ``repeats`` rounds round-robin; ``outputs`` receives each
    implementation's last result."""
    fns: dict[str, Callable[[], Any]] = {}
    first: dict[str, float] = {}
    for impl in impls:
        fns[impl] = build(case, impl, sizes)
        t0 = time.perf_counter()
        out = fns[impl]()
        first[impl] = time.perf_counter() - t0
        for _ in range(max(warmup - 1, 0)):
            out = fns[impl]()
        if outputs is not None:
            outputs[impl] = out
    times: dict[str, list[float]] = {i: [] for i in impls}
    for _ in range(repeats):
        for impl in impls:
            t0 = time.perf_counter()
            out = fns[impl]()
            times[impl].append(time.perf_counter() - t0)
            if outputs is not None:
                outputs[impl] = out
    return {i: {"median_s": statistics.median(times[i]), "times_s": times[i],
                "first_call_s": first[i]} for i in impls}


def agreement(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """% identical voxels of the arg-max of each medseg variant vs medseg fp32 (the timed
    sliding-window outputs: same fixed-seed network, same volume)."""
    ref = outputs["medseg-fp32"]
    out: dict[str, float] = {}
    for name, p in outputs.items():
        if name.startswith("medseg-") and name != "medseg-fp32":
            out[f"identical_voxels_pct_{name}"] = 100.0 * float(
                (p.argmax(1) == ref.argmax(1)).double().mean())
            out[f"max_abs_prob_diff_{name}"] = float((p - ref).abs().max())
    return out


def phantom_training(steps_per_epoch: int, epochs: int, size: int, dims: int = 2
                     ) -> dict[str, Any]:
    """Fixed-step MR phantom training, fp32 vs bf16, same seed: held-out Dice; and the label
    maps of the fp32 model predicted in bf16 / channels-last against fp32 channels-first."""
    from medseg.io import read_image, read_label
    from medseg.metrics import dice
    from medseg.physics import PhantomSpec, write_phantom_dataset
    from medseg.tasks.segmentation import SegmentationModel
    from medseg.training.config import ExperimentConfig
    from medseg.training.engine import train

    out: dict[str, Any] = {}
    n_train, n_test, batch = (24, 8, 8) if dims == 2 else (16, 4, 2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_phantom_dataset(data, PhantomSpec(shape=(size,) * dims, modality="mr",
                                                lesion_fraction=0.005),
                              n_train=n_train, n_test=n_test, seed=0)
        tests = [(read_image(f), read_label(data / "labelsTs" / f.name.replace("_0000", ""))[0])
                 for f in sorted((data / "imagesTs").iterdir())]

        def predict(model: SegmentationModel) -> tuple[list[torch.Tensor], float]:
            preds, dices = [], []
            for (img, meta), lab in tests:
                pred = model.predict(img, meta).probs.argmax(0)
                preds.append(pred)
                for c in (1, 2):
                    dices.append(dice(pred.numpy() == c, lab.reshape(pred.shape) == c))
            return preds, float(sum(dices) / len(dices))

        for precision in ("fp32", "bf16"):
            cfg = ExperimentConfig()
            cfg.data.dataset = str(data)
            cfg.output_dir = str(Path(tmp) / f"model_{precision}")
            cfg.model.options = {"channels": [16, 32, 64, 128]}
            cfg.train.batch_size, cfg.train.epochs = batch, epochs
            cfg.train.steps_per_epoch, cfg.train.val_every = steps_per_epoch, 0
            cfg.train.precision, cfg.train.seed = precision, 0
            cfg.train.calibrate = False
            cfg.inference.precision, cfg.inference.channels_last = "fp32", False
            t0 = time.perf_counter()
            train(cfg, log=lambda _m: None)
            out[f"train_minutes_{precision}"] = (time.perf_counter() - t0) / 60
            model = SegmentationModel.load(cfg.output_dir, checkpoint="last", device="cpu")
            ref, out[f"dice_{precision}"] = predict(model)
            if precision != "fp32":
                continue
            inf = model.info.entries["inference"]
            for pred_precision, cl in (("fp32", True), ("bf16", False), ("bf16", True)):
                model.precision, inf["channels_last"] = pred_precision, cl
                preds, d = predict(model)
                key = f"fp32_model_{pred_precision}{'_cl' if cl else ''}"
                out[f"{key}_dice"] = d
                same = [float((p == r).double().mean()) for p, r in zip(preds, ref, strict=True)]
                out[f"{key}_vs_fp32_identical_pct"] = 100 * sum(same) / len(same)
            model.precision, inf["channels_last"] = None, False
        out["setting"] = (f"{dims}D MR phantoms {size}^{dims}, {n_train} train / {n_test} test, "
                          f"U-Net (16..128), {epochs}x{steps_per_epoch} steps of batch {batch}, "
                          f"seed 0, last weights")
    return out


def real_ct(steps: int) -> dict[str, Any]:
    """Background-window skipping on the real CT volumes of ``../shared/data``."""
    import numpy as np

    from medseg.io import read_image, read_label
    from medseg.tasks.segmentation import SegmentationModel
    from medseg.training.config import ExperimentConfig
    from medseg.training.engine import train

    src = DATA / "ct_totalseg"
    if not (src / "example_ct_sm.nii.gz").is_file():
        return {"skipped": f"no real CT data under {DATA}"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ct"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        img, meta = read_image(src / "example_ct_sm.nii.gz")
        lab, _ = read_label(src / "example_seg.nii.gz")
        from medseg.io import write_image, write_label

        binary = (np.asarray(lab) > 0).astype(np.uint8).reshape(img.shape[1:])
        for k in range(2):  # the same case twice: one to train, one to validate
            write_image(root / "imagesTr" / f"ct_{k}_0000.nii.gz", img, meta)
            write_label(root / "labelsTr" / f"ct_{k}.nii.gz", binary, meta)
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": {"background": 0, "structure": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}))
        cfg = ExperimentConfig()
        cfg.data.dataset, cfg.output_dir = str(root), str(Path(tmp) / "model")
        cfg.data.val_fraction = 0.5
        cfg.model.options = {"channels": [8, 16, 32, 64]}
        cfg.train.patch_size = [48, 48, 16]
        cfg.train.batch_size, cfg.train.epochs, cfg.train.steps_per_epoch = 2, 1, steps
        cfg.train.calibrate, cfg.train.val_every = False, 0
        train(cfg, log=lambda _m: None)
        model = SegmentationModel.load(cfg.output_dir, checkpoint="last", device="cpu")
        try:  # MONAI's U-Net at the same architecture (untrained: its speed only), fp32
            from bench_unet import _build_unet  # the matched MONAI construction

            torch.manual_seed(0)
            monai_net: nn.Module | None = _build_unet("monai-fullres", 3,
                                                      (8, 16, 32, 64)).eval()
        except ImportError:
            monai_net = None
        volumes = [src / "example_ct_sm.nii.gz", src / "example_ct.nii.gz",
                   src / "example_ct_dicom"]
        for v in volumes:
            if not v.exists():
                continue
            image, vmeta = read_image(v)
            res: dict[str, Any] = {"shape": list(image.shape[1:])}
            labels = {}
            for skip in (False, True):
                model.info.entries["inference"]["skip_background"] = skip
                t0 = time.perf_counter()
                probs = model.predict(image, vmeta).probs
                res[f"seconds_skip_{skip}"] = time.perf_counter() - t0
                labels[skip] = probs.argmax(0)
                if skip:
                    res["windows"] = model.last_stats.get("windows")
                    res["skipped"] = model.last_stats.get("skipped")
            res["speed_ratio"] = res["seconds_skip_False"] / res["seconds_skip_True"]
            if monai_net is not None:  # MONAI's window stage alone on the same network input
                from monai.inferers import sliding_window_inference as monai_swi

                x = torch.as_tensor(model.network_input(image, vmeta))[None].float()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    monai_swi(x, tuple(model.info["patch_size"]), 4,
                              lambda w: torch.softmax(monai_net(w), 1), overlap=0.5,
                              mode="gaussian")
                res["seconds_monai_window_stage"] = time.perf_counter() - t0
                res["medseg_skip_vs_monai"] = (res["seconds_monai_window_stage"]
                                               / res["seconds_skip_True"])
            res["differing_voxels"] = int((labels[True] != labels[False]).sum())
            res["identical_pct"] = 100 * float((labels[True] == labels[False]).double().mean())
            out[v.name] = res
        out["setting"] = (f"3D U-Net (8..64), patch 48x48x16, {steps} bf16 steps on "
                          "example_ct_sm (label > 0); prediction in the model's precision "
                          "(medseg: the whole of model.predict, reading excluded; MONAI: its "
                          "sliding_window_inference alone on medseg's network input, fp32)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per implementation")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--cases", nargs="*", choices=CASES, default=list(CASES),
                        help="timed cases (none: only the extras asked for)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compile", action="store_true", help="add medseg-bf16-compile")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument("--no-timing", action="store_true", help="only the memory processes")
    parser.add_argument("--impls", nargs="+", default=None,
                        help="implementations of the training cases (default: all but the "
                             "compiled ones; --compile adds those)")
    parser.add_argument("--sw-impls", nargs="+", default=None,
                        help="implementations of the sliding-window case (default: monai, "
                             "medseg-fp32, medseg-bf16, medseg-bf16-cl)")
    parser.add_argument("--sw-repeats", type=int, default=None,
                        help="timed rounds of the sliding-window case (default --repeats)")
    parser.add_argument("--agreement", action="store_true",
                        help="fp32 vs bf16 label maps on the sliding-window case")
    parser.add_argument("--phantom", action="store_true",
                        help="fixed-step phantom training fp32 vs bf16 (minutes)")
    parser.add_argument("--phantom-dims", type=int, choices=(2, 3), default=2,
                        help="2D (128^2) or 3D (48^3) phantoms for --phantom")
    parser.add_argument("--real-ct", action="store_true",
                        help="background-window skipping on the real CT volumes")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    try:
        import monai

        monai_version: str | None = monai.__version__
    except ImportError as e:
        monai_version = None
        print(f"MONAI rows skipped ({e}); pip install monai", file=sys.stderr)
    report: dict[str, Any] = {"environment": {
        "torch": torch.__version__, "monai": monai_version, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": os.getloadavg()}, "sizes": sizes, "cases": {}}
    from medseg.training.device import resolve_precision

    report["environment"]["auto_precision"] = resolve_precision("auto", torch.device("cpu"))
    print("peak memory: growth of the process's peak RSS (VmHWM, reset before building) in a "
          "fresh process per implementation", flush=True)
    print(f"torch {torch.__version__}, MONAI {monai_version}, {torch.get_num_threads()} threads, "
          f"auto precision on this CPU: {report['environment']['auto_precision']}, load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    header = (f"{'case':<8} {'implementation':<20} {'median s':>9} {'vs MONAI':>9} "
              f"{'peak MiB':>9} {'1st call s':>10}")
    ctx = mp.get_context("spawn")
    for case in args.cases:
        impls = (["monai"] if monai_version else []) + [
            i for i in MEDSEG if args.compile or not i.endswith("compile")]
        if case == "cls":
            impls = [i for i in impls if i in ("medseg-fp32", "medseg-fp32-cl", "medseg-bf16",
                                               "medseg-bf16-cl")]
        if case == "sw":
            impls = [i for i in impls if i != "medseg-fp32-cl"]
            if args.sw_impls:
                impls = [i for i in args.sw_impls if i in impls]
        elif args.impls:
            impls = [i for i in args.impls if i in impls]
        print(f"\n{header}\n{'-' * len(header)}", flush=True)
        outputs: dict[str, Any] = {}
        res: dict[str, dict[str, Any]] = {i: {} for i in impls}
        if not args.no_timing:
            res = interleaved(case, impls, sizes, args.sw_repeats or args.repeats
                              if case == "sw" else args.repeats, args.warmup,
                              outputs if case == "sw" else None)
        if not args.no_memory:
            for impl in impls:
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    res[impl].update(pool.submit(peak_memory, {
                        "case": case, "impl": impl, "sizes": sizes, "threads": args.threads,
                        "calls": 1 if case == "sw" else 2}).result())
        base = res.get("monai" if case != "cls" else "medseg-fp32", {}).get("median_s")
        for impl in impls:
            r = res[impl]
            r["speedup_vs_monai_fp32"] = base / r["median_s"] if base else None
            ratio = f"{r['speedup_vs_monai_fp32']:.2f}x" if base else "-"
            mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
            med = f"{r['median_s']:.3f}" if "median_s" in r else "-"
            first = f"{r['first_call_s']:.2f}" if "first_call_s" in r else "-"
            print(f"{case:<8} {impl:<20} {med:>9} {ratio:>9} {mem:>9} {first:>10}", flush=True)
        report["cases"][case] = res
        if case == "sw" and args.agreement and "medseg-fp32" in outputs:
            report["agreement"] = agreement(outputs)
    if args.agreement and "agreement" in report:
        print("\nsliding-window label maps, medseg bf16 vs fp32 (same network and volume): "
              + ", ".join(f"{k} {v:.4g}" for k, v in report["agreement"].items()), flush=True)
    if args.phantom:
        if args.phantom_dims == 2:
            sizes = (4, 2, 64) if args.quick else (20, 8, 128)
        else:
            sizes = (2, 1, 32) if args.quick else (20, 6, 48)
        report["phantom"] = phantom_training(*sizes, dims=args.phantom_dims)
        print(f"\nphantom training fp32 vs bf16: {report['phantom']}", flush=True)
    if args.real_ct:
        report["real_ct"] = real_ct(10 if args.quick else 60)
        print(f"\nreal CT, background skipping: {json.dumps(report['real_ct'], indent=1)}",
              flush=True)
    report["environment"]["load_average_end"] = os.getloadavg()
    if args.json:
        from medseg.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
