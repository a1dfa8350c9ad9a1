"""Datasets larger than memory (issue 11): peak RSS, preparation time and data wait of
``medseg train`` with the on-disk preprocessed cache, against the in-memory path (not a test).

For each case count N (default 10, 40, 160) the first N cases of a simulated 3D MR phantom
dataset are linked into a dataset folder of their own, and ``medseg train`` runs three times in
a fresh subprocess each:

* ``cold``  ``data.cache: true`` with an empty cache folder (validation + preprocessing into the
  cache, the first run on a dataset);
* ``warm``  the same command again (a cache hit: no reading, no preprocessing);
* ``off``   ``data.cache: false`` (every case kept in memory, the path before issue 11).

Each row gives the peak resident set of the ``medseg train`` process tree
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a helper process that only starts the
run and waits for it, so nothing else is counted), the preparation time (from the
``preparing segmentation data`` line to the ``data ready in`` line that ends
``prepare_data``, both time-stamped as they arrive; the interpreter's start and imports are
excluded; it includes opening the dataset and the early network check), the whole run's
wall time, and from ``train_log.csv`` the median epoch time and the data-wait fraction (seconds
the loop waited for a batch over the epoch's training seconds) of the first epoch (which waits
for its first batch in full) and of the later ones.

The training is short and the same for every row: U-Net channels 16..256, 64^3 patches, batch
2, ``--epochs 2 --steps-per-epoch S``, validation on 2 cases (``data.val_max_cases``), no
temperature calibration.

    python benchmarks/bench_cache.py --simulate --work /tmp/bench_cache       # 160 x 96^3
    python benchmarks/bench_cache.py --dataset DIR --counts 10 40 --steps 4 --modes cold warm
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from medseg.io.atomic import atomic_write_text  # noqa: E402

MODES = ("cold", "warm", "off")
START_MARK = "preparing segmentation data"
END_MARK = "data ready in"


def _measure_child(cmd: list[str]) -> None:
    """Helper-process body: run ``cmd``, time-stamp its output lines, print one JSON record."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    print(json.dumps({"rc": rc, "wall_s": wall, "maxrss_kb": maxrss_kb, "lines": lines}))


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` under a fresh helper process (so RUSAGE_CHILDREN holds this run only)."""
    out = subprocess.run([sys.executable, __file__, "--measure-child", "--", *cmd],
                         capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    if rec["rc"] != 0:
        tail = "\n".join(t for _, t in rec["lines"][-15:])
        raise RuntimeError(f"medseg train failed (rc {rec['rc']}):\n{tail}")
    return rec


def simulate(folder: Path, n: int, size: int, seed: int) -> None:
    """``n`` 3D MR phantoms of ``size``^3 (``medseg simulate`` equivalent)."""
    from medseg.physics import PhantomSpec, write_phantom_dataset

    write_phantom_dataset(folder, PhantomSpec(shape=(size,) * 3, modality="mr"), n_train=n,
                          n_test=0, seed=seed)


def subset(src: Path, dest: Path, n: int) -> Path:
    """A dataset folder with the first ``n`` cases of ``src`` (symbolic links + dataset.json)."""
    meta = json.loads((src / "dataset.json").read_text())
    images = sorted((src / "imagesTr").iterdir())
    labels = sorted((src / "labelsTr").iterdir())
    if len(labels) < n:
        raise SystemExit(f"{src} has {len(labels)} training cases, {n} requested "
                         "(--simulate writes enough)")
    n_ch = len(meta["channel_names"])
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True)
    for lab in labels[:n]:
        (dest / "labelsTr" / lab.name).symlink_to(lab)
    case_ids = {lab.name.split(".")[0] for lab in labels[:n]}
    for im in images:
        if im.name[: -len("_0000.nii.gz")] in case_ids:
            (dest / "imagesTr" / im.name).symlink_to(im)
    assert len(list((dest / "imagesTr").iterdir())) == n * n_ch
    meta["numTraining"] = n
    meta.pop("numTest", None)
    atomic_write_text(dest / "dataset.json", json.dumps(meta, indent=1))
    return dest


def train_cmd(dataset: Path, output: Path, cache_dir: Path, mode: str, steps: int,
              val_cases: int) -> list[str]:
    cmd = [sys.executable, "-m", "medseg.cli", "train", "--dataset", str(dataset),
           "--output", str(output), "--epochs", "2", "--steps-per-epoch", str(steps),
           "--batch-size", "2", "--patch-size", "64", "64", "64", "--device", "cpu",
           "--set", "model.options.channels=[16,32,64,128,256]",
           "--set", f"data.val_max_cases={val_cases}", "--set", "train.calibrate=false",
           "--set", f"data.cache_dir={cache_dir}"]
    if mode == "off":
        cmd += ["--set", "data.cache=false"]
    return cmd


def summarise(rec: dict[str, Any], output: Path) -> dict[str, Any]:
    lines = rec["lines"]
    t_start = next(t for t, s in lines if START_MARK in s)
    t_end = next(t for t, s in lines if END_MARK in s)
    hit = any("cache hit" in s for _, s in lines)
    with open(output / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    waits = [float(r["data_wait_fraction"]) for r in rows]
    secs = [float(r["epoch_seconds"]) for r in rows]
    return {"prep_s": t_end - t_start, "wall_s": rec["wall_s"],
            "peak_rss_mb": rec["maxrss_kb"] / 1024, "cache_hit": hit,
            "epoch_s": statistics.median(secs), "wait_epoch1": waits[0],
            "wait_later": statistics.mean(waits[1:]) if len(waits) > 1 else float("nan")}


def sampler_timing(cache_root: Path, batches: int = 40) -> dict[str, float]:
    """Median seconds per batch (2 x 64^3, fg_oversample 0.33) of :class:`PatchSampler` on
    the cache's memory maps (page cache warm) and on the same cases copied into memory."""
    import numpy as np

    from medseg.data.cache import MANIFEST_NAME, open_cache
    from medseg.data.sampler import PatchSampler, owned_array

    (folder,) = [d for d in cache_root.iterdir() if (d / MANIFEST_NAME).is_file()]
    key = json.loads((folder / MANIFEST_NAME).read_text())["key"]
    cache, why = open_cache(folder, key)
    assert cache is not None, why
    ids = list(cache.entries)
    lazy_x, lazy_y = cache.images(ids), cache.labels(ids)
    mem_x = [owned_array(a, np.float32) for a in lazy_x]
    mem_y = [owned_array(a, np.int64) for a in lazy_y]
    out = {}
    for name, (xs, ys, pad) in {"memory": (mem_x, mem_y, None),
                                "memmap": (lazy_x, lazy_y, lazy_x.channel_min)}.items():
        smp = PatchSampler(xs, ys, (64, 64, 64), 2, seed=0, pad_values=pad)
        for _ in range(5):
            next(smp)
        times = []
        for _ in range(batches):
            t0 = time.perf_counter()
            next(smp)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure-child":
        _measure_child(sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, help="3D phantom dataset with >= max(counts) cases")
    ap.add_argument("--simulate", action="store_true",
                    help="write the dataset into WORK/sim first (if --dataset is not given)")
    ap.add_argument("--size", type=int, default=96, help="phantom edge with --simulate")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_cache")
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 40, 160])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--steps", type=int, default=8, help="steps per epoch (2 epochs)")
    ap.add_argument("--val-cases", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    src = args.dataset
    if src is None:
        if not args.simulate:
            ap.error("give --dataset DIR or --simulate")
        src = args.work / f"sim{max(args.counts)}_{args.size}"
        if not (src / "dataset.json").is_file():
            print(f"simulating {max(args.counts)} phantoms of {args.size}^3 into {src}")
            simulate(src, max(args.counts), args.size, seed=0)
    run_root = Path(tempfile.mkdtemp(prefix="run_", dir=args.work))
    rows: list[dict[str, Any]] = []
    for n in args.counts:
        ds = subset(src, run_root / f"ds{n}", n)
        cache_dir = run_root / f"cache{n}"
        for mode in args.modes:
            out = run_root / f"out{n}_{mode}"
            rec = measure(train_cmd(ds, out, cache_dir, mode, args.steps, args.val_cases))
            row = {"cases": n, "mode": mode, **summarise(rec, out)}
            rows.append(row)
            print(f"  N={n:4d} {mode:5s} prep {row['prep_s']:7.2f} s  peak RSS "
                  f"{row['peak_rss_mb']:7.1f} MB  wait {row['wait_epoch1']:.1%}/"
                  f"{row['wait_later']:.1%}  (hit={row['cache_hit']})", flush=True)

    print()
    print("| cases | mode | preparation s | peak RSS MB | run wall s | median epoch s | "
          "data wait epoch 1 | data wait epoch 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cases']} | {r['mode']} | {r['prep_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['wall_s']:.1f} | {r['epoch_s']:.2f} | {r['wait_epoch1']:.1%} | "
              f"{r['wait_later']:.1%} |")
    by = {(r["cases"], r["mode"]): r for r in rows}
    lo, hi = min(args.counts), max(args.counts)
    print()
    for mode in args.modes:
        if (lo, mode) in by and (hi, mode) in by and lo != hi:
            g = by[(hi, mode)]["peak_rss_mb"] / by[(lo, mode)]["peak_rss_mb"] - 1
            print(f"peak RSS growth {lo} -> {hi} cases, {mode}: {g:+.1%}")
    for n in args.counts:
        if (n, "cold") in by and (n, "warm") in by:
            ratio = by[(n, "cold")]["prep_s"] / by[(n, "warm")]["prep_s"]
            print(f"preparation cold / warm, {n} cases: {ratio:.1f}x")
    if "cold" in args.modes or "warm" in args.modes:
        t = sampler_timing(run_root / f"cache{hi}")
        print(f"patch batch (2 x 64^3) from {hi} cases: in memory {t['memory'] * 1e3:.1f} ms, "
              f"from the memory-mapped cache {t['memmap'] * 1e3:.1f} ms (median)")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
