"""Empirical coverage of the split-conformal volume interval (issue "Uncertainty a user can act
on", U5) on simulated phantoms.

One model (trained here on ``medseg simulate`` phantoms, or given with ``--model``) is copied per
repetition and method; ``medseg calibrate --conformal --uncertainty METHOD --alpha A`` fits the
interval on a calibration set of simulated cases; ``medseg predict --uncertainty METHOD`` then
predicts a separate test set (same simulator settings, another seed) and writes
``volume_conformal_low/high`` and the raw sample interval ``volume_low/high`` (2.5-97.5 %
quantiles of the T samples' volumes) into ``uncertainty.csv``. Coverage = the fraction of test
cases whose reference volume (from the simulator's label map) lies inside the interval, per
structure.

Each repetition ``r`` draws a new calibration set (``medseg simulate --seed CAL_SEED+r``) and a
new test set (``--seed TEST_SEED+r``); the model is the same in every repetition.

Usage (from the repository root)::

    .venv/bin/python examples/uncertainty/conformal_coverage.py --out runs/unc_conformal \\
        [--model runs/unc_phantom/models/dropout_decoder] --reps 3 --methods mc tta
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_utils import MEDSEG, Timings, fmt, read_csv, write_csv  # noqa: E402

from medseg.io import read_label  # noqa: E402


def simulate_cmd(a: argparse.Namespace, n: int, seed: int, out: Path) -> list[str]:
    return [MEDSEG, "simulate", "--modality", "us", "--dims", "2", "--n-train", str(n),
            "--looks", str(a.looks), "--size", str(a.size), "--seed", str(seed),
            "--output", str(out)]


def reference_volumes(labels: Path, n_classes: int) -> dict[str, dict[int, float]]:
    """``{case: {class: volume in mm^2}}`` of the simulator's label maps."""
    out = {}
    for f in sorted(labels.glob("*.nii.gz")):
        lab, meta = read_label(f)
        lab = np.asarray(lab)
        vox = float(np.prod(meta.spacing[: lab.ndim]))
        out[f.name[: -len(".nii.gz")]] = {c: float((lab == c).sum()) * vox
                                          for c in range(1, n_classes)}
    return out


def coverage(rows: list[dict[str, str]], refs: dict[str, dict[int, float]],
             names: list[str]) -> dict[str, dict]:
    res = {}
    for c in range(1, len(names)):
        sel = [r for r in rows if r["class"] == names[c]]
        ref = np.array([refs[r["case"]][c] for r in sel])
        out = {"n": len(sel), "mean_reference_volume": float(ref.mean())}
        for kind, lo_k, hi_k in (("conformal", "volume_conformal_low", "volume_conformal_high"),
                                 ("sample", "volume_low", "volume_high")):
            if any(r[lo_k] == "" for r in sel):
                out[kind] = None
                continue
            lo = np.array([float(r[lo_k]) for r in sel])
            hi = np.array([float(r[hi_k]) for r in sel])
            out[kind] = {"coverage": float(np.mean((lo <= ref) & (ref <= hi))),
                         "mean_width": float(np.mean(hi - lo)),
                         "median_width": float(np.median(hi - lo))}
        vol = np.array([float(r["volume"]) for r in sel])
        out["mean_abs_volume_error"] = float(np.mean(np.abs(vol - ref)))
        res[names[c]] = out
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="a trained model folder (with dropout for mc); default: "
                                    "train one here")
    ap.add_argument("--methods", nargs="+", default=["mc", "tta"],
                    choices=["mc", "mc_decoder", "tta", "ensemble"])
    ap.add_argument("--reps", type=int, default=3, help="repetitions (new cal + test draws)")
    ap.add_argument("--n-cal", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--cal-seed", type=int, default=1000)
    ap.add_argument("--test-seed", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    g = ap.add_argument_group("simulator and training (when --model is not given)")
    g.add_argument("--looks", type=float, default=1.0)
    g.add_argument("--size", type=int, default=96)
    g.add_argument("--n-train", type=int, default=40)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--steps", type=int, default=15)
    g.add_argument("--dropout", type=float, default=0.2)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    timings = Timings(out / "timings.json")
    t0 = time.perf_counter()

    if a.model:
        model = Path(a.model)
    else:
        train_data = out / "data_train"
        timings.step("simulate_train", (train_data / "dataset.json").exists(),
                     simulate_cmd(a, a.n_train, 0, train_data), log, a.threads)
        model = out / "model"
        timings.step("train", (model / "checkpoint_best.pt").exists(),
                     [MEDSEG, "train", "--dataset", str(train_data), "--output", str(model),
                      "--epochs", str(a.epochs), "--steps-per-epoch", str(a.steps),
                      "--batch-size", "8", "--seed", "0",
                      "--set", f"train.num_threads={a.threads}", "--set", "train.val_every=5",
                      "--set", "model.options.channels=[16,32,64,128]",
                      "--set", "data.val_fraction=0.15",
                      "--set", f"model.options.dropout={a.dropout}"], log, a.threads)
    names = list(json.loads((model / "plan.json").read_text())["class_names"])

    per_rep: dict[str, list[dict]] = {m: [] for m in a.methods}
    for r in range(a.reps):
        cal, test = out / f"cal_r{r}", out / f"test_r{r}"
        timings.step(f"simulate_cal_r{r}", (cal / "dataset.json").exists(),
                     simulate_cmd(a, a.n_cal, a.cal_seed + r, cal), log, a.threads)
        timings.step(f"simulate_test_r{r}", (test / "dataset.json").exists(),
                     simulate_cmd(a, a.n_test, a.test_seed + r, test), log, a.threads)
        refs = reference_volumes(test / "labelsTr", len(names))
        for m in a.methods:
            copy = out / "models" / f"{m}_r{r}"
            done = (copy / "calibration.json").exists() and "conformal" in json.loads(
                (copy / "calibration.json").read_text())
            if not done:
                if copy.exists():
                    shutil.rmtree(copy)
                shutil.copytree(model, copy)  # calibrate writes into the model folder
            cmd = [MEDSEG, "calibrate", "--model", str(copy), "--data", str(cal), "--split", "Tr",
                   "--conformal", "--uncertainty", m, "--alpha", str(a.alpha)]
            if m in ("mc", "mc_decoder"):
                cmd += ["--samples", str(a.samples)]
            timings.step(f"calibrate_{m}_r{r}", done, cmd, log, a.threads)
            pred = out / "predictions" / f"{m}_r{r}"
            pdone = (pred / "uncertainty.csv").exists()
            if not pdone and pred.exists():
                shutil.rmtree(pred)
            cmd = [MEDSEG, "predict", "--model", str(copy), "--input", str(test / "imagesTr"),
                   "--output", str(pred), "--uncertainty", m, "--uncertainty-seed", "0"]
            if m in ("mc", "mc_decoder"):
                cmd += ["--samples", str(a.samples)]
            timings.step(f"predict_{m}_r{r}", pdone, cmd, log, a.threads)
            cov = coverage(read_csv(pred / "uncertainty.csv"), refs, names)
            q = json.loads((copy / "calibration.json").read_text())["conformal"]
            per_rep[m].append({"rep": r, "coverage": cov,
                               "quantile": {k: v["quantile"] for k, v in q["classes"].items()}})
            print(f"{m} r{r}: " + json.dumps(cov), flush=True)

    # summary: mean and range over repetitions
    summary: dict = {"alpha": a.alpha, "reps": a.reps, "n_cal": a.n_cal, "n_test": a.n_test,
                     "samples": a.samples, "model": str(model), "methods": {}}
    rows = []
    for m, reps in per_rep.items():
        summary["methods"][m] = {}
        for c in names[1:]:
            entry = {}
            for kind in ("conformal", "sample"):
                covs = [x["coverage"][c][kind]["coverage"] for x in reps if x["coverage"][c][kind]]
                wids = [x["coverage"][c][kind]["mean_width"] for x in reps
                        if x["coverage"][c][kind]]
                entry[kind] = {"coverage_mean": float(np.mean(covs)), "coverage_min": min(covs),
                               "coverage_max": max(covs), "coverage_per_rep": covs,
                               "width_mean": float(np.mean(wids)), "width_per_rep": wids}
            entry["mean_reference_volume"] = float(np.mean(
                [x["coverage"][c]["mean_reference_volume"] for x in reps]))
            entry["mean_abs_volume_error"] = float(np.mean(
                [x["coverage"][c]["mean_abs_volume_error"] for x in reps]))
            entry["quantile_per_rep"] = [x["quantile"][c] for x in reps]
            summary["methods"][m][c] = entry
            rows.append({"method": m, "structure": c, **{
                f"{k}_{s}": entry[k][s] for k in ("conformal", "sample")
                for s in ("coverage_mean", "coverage_min", "coverage_max", "width_mean")},
                "mean_reference_volume": entry["mean_reference_volume"],
                "mean_abs_volume_error": entry["mean_abs_volume_error"]})
    summary["timings"] = timings.data
    summary["wall_seconds_this_run"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    write_csv(out / "results.csv", rows)

    lines = [f"Target coverage {1 - a.alpha:.2f} (alpha {a.alpha}); {a.reps} repetition(s), each "
             f"with {a.n_cal} calibration and {a.n_test} test phantoms; mean [min, max] over "
             "repetitions.", "",
             "| method | structure | mean ref. volume (mm^2) | mean abs. volume error | "
             "conformal coverage | conformal width | sample-interval coverage | "
             "sample-interval width |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['structure']} | {r['mean_reference_volume']:.0f} | "
            f"{r['mean_abs_volume_error']:.1f} | {fmt(r['conformal_coverage_mean'])} "
            f"[{fmt(r['conformal_coverage_min'], 2)}, {fmt(r['conformal_coverage_max'], 2)}] | "
            f"{r['conformal_width_mean']:.1f} | {fmt(r['sample_coverage_mean'])} "
            f"[{fmt(r['sample_coverage_min'], 2)}, {fmt(r['sample_coverage_max'], 2)}] | "
            f"{r['sample_width_mean']:.1f} |")
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
