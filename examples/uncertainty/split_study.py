"""Is the aleatoric / epistemic split real? A controlled study on simulated phantoms (U5).

The simulator knows its noise, so we can change one thing at a time:

1. train one model that gives both terms (a deep ensemble, ``medseg train --ensemble M``, or
   MC Dropout) on 2D phantoms at one noise setting (default MR, SNR 12);
2. predict test sets with ``medseg predict --uncertainty ...`` that differ from the
   in-distribution (ID) test set in one thing:

   * **noise** (expected: the aleatoric term rises more than the epistemic one): lower MR SNR /
     fewer US looks / lower CT dose. These test sets are *paired* with the ID set: the same
     seed gives the same anatomy, only the noise differs;
   * **shift** (expected: the epistemic term rises more): MR k-space undersampling
     (``--acceleration``, same anatomy as the ID set), more and smaller lesions
     (``--n-lesions``, new anatomy), and the same ID test set predicted by an ensemble trained
     on fewer cases (``--few-cases``);

3. read the ``*_image`` columns of ``uncertainty.csv`` (the mean of each map over the image):
   aleatoric = ``expected_entropy_image`` (and ``aleatoric_variance_image``), epistemic =
   ``mutual_information_image`` (and ``epistemic_variance_image``).

Outputs in ``--out``: ``results.csv`` (one row per condition and case), ``summary.csv`` and
``summary.md`` (the table), ``summary.json``, the datasets, model folders and predictions.

Usage (from the repository root)::

    .venv/bin/python examples/uncertainty/split_study.py --out runs/split_study

Every setting is a flag (``--help``); ``--threads`` limits torch's CPU threads in every
subprocess (OMP_NUM_THREADS and ``train.num_threads``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_utils import run_medseg  # noqa: E402

NOISE_FLAG = {"mr": "--snr", "us": "--looks", "ct": "--dose"}
TERMS = {"aleatoric_entropy": "expected_entropy_image",
         "epistemic_mi": "mutual_information_image",
         "aleatoric_var": "aleatoric_variance_image",
         "epistemic_var": "epistemic_variance_image",
         "predictive_entropy": "predictive_entropy_image"}


def simulate(a, out: Path, log: Path, *, n_train: int, n_test: int, level: float | None = None,
             extra: list[str] | None = None) -> Path:
    if (out / "dataset.json").exists():
        return out
    args = ["simulate", "--modality", a.modality, "--dims", "2", "--n-train", str(n_train),
            "--n-test", str(n_test), "--seed", str(a.data_seed), "--size", str(a.size),
            "--n-lesions", str(a.n_lesions), "--lesion-fraction", str(a.lesion_fraction),
            "--output", str(out)]
    lvl = a.train_level if level is None else level
    if lvl is not None:
        args += [NOISE_FLAG[a.modality], str(lvl)]
    run_medseg(args + (extra or []), log, a.threads)
    return out


def train(a, data: Path, out: Path, log: Path) -> Path:
    if (out / "plan.json").exists():
        return out
    ch = "[" + ",".join(str(c) for c in a.channels) + "]"
    args = ["train", "--dataset", str(data), "--output", str(out), "--epochs", str(a.epochs),
            "--steps-per-epoch", str(a.steps), "--batch-size", str(a.batch_size),
            "--seed", str(a.seed), "--set", f"model.options.channels={ch}",
            "--set", f"train.num_threads={a.threads}", "--set", f"train.val_every={a.epochs}"]
    if a.sampler == "ensemble":
        args += ["--ensemble", str(a.members)]
    else:
        args += ["--set", f"model.options.dropout={a.dropout}"]
    if a.variance_head:
        args += ["--set", "model.variance_head=true"]
    if not a.calibrate:
        args += ["--set", "train.calibrate=false"]
    run_medseg(args, log, a.threads)
    return out


def predict(a, model: Path, images: Path, out: Path, log: Path) -> Path:
    if (out / "uncertainty.csv").exists():
        return out
    args = ["predict", "--model", str(model), "--input", str(images), "--output", str(out),
            "--uncertainty", a.sampler, "--samples", str(a.samples),
            "--uncertainty-seed", str(a.seed)]
    run_medseg(args, log, a.threads)
    return out


def case_rows(pred: Path, labels: Path, condition: str, group: str) -> list[dict]:
    """One row per case: the image-mean terms (first class row; ``*_image`` columns are the
    same for every class of a case) and the foreground Dice per class."""
    from medseg.io import read_label
    from medseg.metrics import dice

    seen: dict[str, dict] = {}
    with open(pred / "uncertainty.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["case"] in seen:
                continue
            row = {"condition": condition, "group": group, "case": r["case"]}
            row.update({k: float(r[col]) for k, col in TERMS.items()})
            p, _ = read_label(pred / f"{r['case']}.nii.gz")
            ref, _ = read_label(labels / f"{r['case']}.nii.gz")
            p, ref = np.asarray(p).squeeze(), np.asarray(ref).squeeze()
            row["dice_organ"] = dice(p == 1, ref == 1)
            row["dice_lesion"] = dice(p == 2, ref == 2)
            seen[r["case"]] = row
    return list(seen.values())


def summarise(rows: list[dict], ref: str, paired_sets: set[str]) -> list[dict]:
    """Per condition: means, ratio epistemic/aleatoric, fold change vs the ID condition, and
    for conditions paired with the ID set (same anatomy: only the noise, the k-space sampling or
    the model differ) the share of cases where the aleatoric fold change exceeds the epistemic
    one."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r)
    base = {r["case"]: r for r in by[ref]}
    mref = {k: float(np.mean([r[k] for r in by[ref]])) for k in TERMS}
    out = []
    for cond, rs in by.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in TERMS}
        s = {"condition": cond, "group": rs[0]["group"], "n_cases": len(rs),
             "dice_organ": float(np.mean([r["dice_organ"] for r in rs])),
             "dice_lesion": float(np.nanmean([r["dice_lesion"] for r in rs]))}
        for k in TERMS:
            s[k] = m[k]
            s[f"{k}_x"] = m[k] / mref[k]
            s[f"{k}_d"] = m[k] - mref[k]
        s["ratio_entropy"] = m["epistemic_mi"] / m["aleatoric_entropy"]
        s["ratio_var"] = m["epistemic_var"] / m["aleatoric_var"]
        s["epistemic_share"] = m["epistemic_mi"] / m["predictive_entropy"]
        paired = [r for r in rs if r["case"] in base]
        if cond in paired_sets and len(paired) == len(rs):
            fa = [r["aleatoric_entropy"] / base[r["case"]]["aleatoric_entropy"] for r in paired]
            fe = [r["epistemic_mi"] / base[r["case"]]["epistemic_mi"] for r in paired]
            s["paired_share_alea_gt_epi"] = float(np.mean(
                [x > y for x, y in zip(fa, fe, strict=True)]))
        else:
            s["paired_share_alea_gt_epi"] = math.nan
        out.append(s)
    return out


def verdict(s: dict, scale: str) -> str:
    """Did the expected term rise more? ``scale``: ``"x"`` (fold change vs ID) or ``"d"``
    (absolute change), judged on the entropy pair and on the variance pair."""
    if s["group"] == "reference":
        return ""
    ah, eh = s[f"aleatoric_entropy_{scale}"], s[f"epistemic_mi_{scale}"]
    av, ev = s[f"aleatoric_var_{scale}"], s[f"epistemic_var_{scale}"]
    ok_h, ok_v = (ah > eh, av > ev) if s["group"] == "noise" else (eh > ah, ev > av)
    return {(True, True): "held", (False, False): "NOT held"}.get(
        (ok_h, ok_v), f"mixed (entropy {'held' if ok_h else 'not'}, variance "
                      f"{'held' if ok_v else 'not'})")


def expectation(s: dict) -> str:
    return {"noise": "aleatoric up more", "shift": "epistemic up more"}.get(s["group"], "")


def discrimination(rows: list[dict]) -> list[str]:
    """Can a case's epistemic share MI / H tell a noisier image from a shifted one? For each
    (noise, shift) pair of conditions: P(share of a noise case > share of a shift case) over
    all case pairs (an AUC; the split's expectation is < 0.5), beside their mean total
    entropies H (a fair contrast has similar H)."""
    def share(r: dict) -> float:
        return r["epistemic_mi"] / r["predictive_entropy"]

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r)
    noise = [c for c, rs in by.items() if rs[0]["group"] == "noise"]
    shift = [c for c, rs in by.items() if rs[0]["group"] == "shift"]
    if not noise or not shift:
        return []
    lines = ["", "Does the epistemic share MI / H of a case tell noise from shift? Cell: "
             "P(share of a noise case > share of a shift case) over all case pairs (expected "
             "< 0.5 if the split works; 0.5 = no information); in brackets the mean H of the "
             "noise / shift set.", "",
             "| noise \\ shift | " + " | ".join(shift) + " |",
             "|---|" + "---|" * len(shift)]
    for n in noise:
        a = np.array([share(r) for r in by[n]])
        hn = np.mean([r["predictive_entropy"] for r in by[n]])
        cells = []
        for sc in shift:
            b = np.array([share(r) for r in by[sc]])
            hs = np.mean([r["predictive_entropy"] for r in by[sc]])
            auc = float(np.mean(a[:, None] > b[None, :]) + 0.5 * np.mean(a[:, None] == b[None, :]))
            cells.append(f"{auc:.2f} (H {hn:.3f} / {hs:.3f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def write_summary(out: Path, summ: list[dict], meta: dict, rows: list[dict]) -> None:
    keys = list(summ[0])
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys + ["expectation", "verdict_fold",
                                                  "verdict_absolute"])
        w.writeheader()
        for s in summ:
            w.writerow({**s, "expectation": expectation(s), "verdict_fold": verdict(s, "x"),
                        "verdict_absolute": verdict(s, "d")})

    def pair(s: dict) -> str:
        v = s["paired_share_alea_gt_epi"]
        return "" if math.isnan(v) else f"{v * s['n_cases']:.0f}/{s['n_cases']}"

    lines = [
        "Entropy split (nats, mean over the image and the cases): aleatoric = expected entropy "
        "E[H], epistemic = mutual information MI.", "",
        "| condition | n | Dice organ / lesion | E[H] | MI | MI / E[H] | MI / H (epistemic "
        "share) | E[H] vs ID | MI vs ID | paired cases with E[H] x > MI x |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summ:
        lines.append(
            f"| {s['condition']} | {s['n_cases']} | {s['dice_organ']:.3f} / "
            f"{s['dice_lesion']:.3f} | {s['aleatoric_entropy']:.4f} | {s['epistemic_mi']:.5f} | "
            f"{s['ratio_entropy']:.3f} | {s['epistemic_share']:.3f} | "
            f"{s['aleatoric_entropy_x']:.2f}x ({s['aleatoric_entropy_d']:+.4f}) | "
            f"{s['epistemic_mi_x']:.2f}x ({s['epistemic_mi_d']:+.5f}) | {pair(s)} |")
    lines += [
        "", "Variance split (law of total variance of the predicted class, mean over the image "
        "and the cases).", "",
        "| condition | aleatoric var | epistemic var | epistemic / aleatoric | aleatoric vs ID | "
        "epistemic vs ID |", "|---|---|---|---|---|---|"]
    for s in summ:
        lines.append(
            f"| {s['condition']} | {s['aleatoric_var']:.5f} | {s['epistemic_var']:.5f} | "
            f"{s['ratio_var']:.3f} | {s['aleatoric_var_x']:.2f}x ({s['aleatoric_var_d']:+.5f}) "
            f"| {s['epistemic_var_x']:.2f}x ({s['epistemic_var_d']:+.5f}) |")
    lines += ["", "Expectation per condition (entropy pair and variance pair both judged): "
              "by fold change vs ID, and by absolute change vs ID.", "",
              "| condition | expectation | by fold change | by absolute change |",
              "|---|---|---|---|"]
    for s in summ:
        if s["group"] != "reference":
            lines.append(f"| {s['condition']} | {expectation(s)} | {verdict(s, 'x')} | "
                         f"{verdict(s, 'd')} |")
    lines += discrimination(rows)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summ}, indent=2))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (reused: finished steps are "
                                                  "skipped)")
    ap.add_argument("--modality", choices=("mr", "us", "ct"), default="mr")
    ap.add_argument("--train-level", type=float, default=12.0,
                    help="training noise: MR SNR / US looks / CT dose (photons per ray)")
    ap.add_argument("--test-levels", type=float, nargs="*", default=[8.0, 5.0, 3.0],
                    help="noisier test levels (same anatomy as the ID test set)")
    ap.add_argument("--acceleration", type=float, default=4.0,
                    help="MR shift: k-space undersampling factor (0 = skip; MR only)")
    ap.add_argument("--shift-lesions", type=int, default=8,
                    help="shift: test phantoms with this many lesions (same total lesion "
                         "area, so smaller lesions; 0 = skip)")
    ap.add_argument("--few-cases", type=int, default=8,
                    help="shift of the model: a second model trained on the first K training "
                         "cases predicts the ID test set (0 = skip)")
    ap.add_argument("--train-mix", type=float, nargs="*", default=None,
                    help="train on a mixture of these noise levels instead (case i of the "
                         "training set at level i mod L): then every --test-levels inside the "
                         "mixture's range is in distribution, and only the noise of the test "
                         "image changes; the ID set stays at --train-level")
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-lesions", type=int, default=3)
    ap.add_argument("--lesion-fraction", type=float, default=0.01)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--sampler", choices=("ensemble", "mc"), default="ensemble")
    ap.add_argument("--members", type=int, default=5, help="ensemble members")
    ap.add_argument("--dropout", type=float, default=0.2, help="with --sampler mc")
    ap.add_argument("--samples", type=int, default=10, help="T for MC Dropout")
    ap.add_argument("--variance-head", action="store_true",
                    help="train with model.variance_head=true")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="train.calibrate=false (no temperature scaling)")
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25, help="steps per epoch")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.modality != "mr":
        a.acceleration = 0.0
    if a.threads > 0:
        import torch

        torch.set_num_threads(a.threads)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    t0 = time.perf_counter()

    def fmt(v: float) -> str:
        return f"{v:g}"

    lvl_name = {"mr": "SNR", "us": "looks", "ct": "dose"}[a.modality]
    data = out / "data"
    ref_name = f"ID ({lvl_name} {fmt(a.train_level)})"
    if a.train_mix:
        ref_name += f", trained on {lvl_name} {'/'.join(fmt(v) for v in a.train_mix)}"
    sets: list[tuple[str, str, Path, str]] = []  # (condition, group, dataset, model key)
    paired: set[str] = set()  # conditions with the ID set's anatomy (same seed and counts)
    train_ds = simulate(a, data / "train", log, n_train=a.n_train, n_test=a.n_test)
    sets.append((ref_name, "reference", train_ds, "main"))
    for lvl in a.test_levels:
        ds = simulate(a, data / f"level_{fmt(lvl)}", log, n_train=a.n_train, n_test=a.n_test,
                      level=lvl)
        sets.append((f"noise: {lvl_name} {fmt(lvl)}", "noise", ds, "main"))
        paired.add(sets[-1][0])
    if a.acceleration and a.acceleration > 1:
        ds = simulate(a, data / f"accel_{fmt(a.acceleration)}", log, n_train=a.n_train,
                      n_test=a.n_test, extra=["--acceleration", str(a.acceleration)])
        sets.append((f"shift: k-space R={fmt(a.acceleration)}", "shift", ds, "main"))
        paired.add(sets[-1][0])
    if a.shift_lesions:
        b = argparse.Namespace(**{**vars(a), "n_lesions": a.shift_lesions})
        ds = simulate(b, data / f"lesions_{a.shift_lesions}", log, n_train=a.n_train,
                      n_test=a.n_test)
        sets.append((f"shift: {a.shift_lesions} lesions (not {a.n_lesions})", "shift", ds,
                     "main"))
    main_ds = train_ds
    if a.train_mix:
        main_ds = data / "train_mix"
        for i in range(a.n_train):
            lvl = a.train_mix[i % len(a.train_mix)]
            src = simulate(a, data / ("train" if lvl == a.train_level else f"level_{fmt(lvl)}"),
                           log, n_train=a.n_train, n_test=a.n_test, level=lvl)
            for sub, name in (("imagesTr", f"case_{i:03d}_0000.nii.gz"),
                              ("labelsTr", f"case_{i:03d}.nii.gz")):
                dst = main_ds / sub / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    os.symlink(src / sub / name, dst)
        doc = json.loads((train_ds / "dataset.json").read_text())
        doc.pop("medseg_phantom", None)
        doc.update(numTest=0, description="mixture of noise levels " + str(a.train_mix))
        (main_ds / "dataset.json").write_text(json.dumps(doc, indent=2))
    models = {"main": train(a, main_ds, out / "model", log)}
    if a.few_cases:
        if a.train_mix:
            raise SystemExit("--few-cases with --train-mix is not implemented; pass "
                             "--few-cases 0")
        few = simulate(a, data / f"train_first_{a.few_cases}", log, n_train=a.few_cases,
                       n_test=0)
        models["few"] = train(a, few, out / f"model_{a.few_cases}cases", log)
        sets.append((f"shift: model trained on {a.few_cases} cases", "shift", train_ds, "few"))
        paired.add(sets[-1][0])

    rows: list[dict] = []
    for cond, group, ds, key in sets:
        tag = "".join(ch if ch.isalnum() else "_" for ch in cond).strip("_")
        pred = predict(a, models[key], ds / "imagesTs", out / "pred" / tag, log)
        rows += case_rows(pred, ds / "labelsTs", cond, group)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summ = summarise(rows, ref_name, paired)
    temps = {}
    for m in models.values():
        for cal in sorted(m.glob("**/calibration.json")):
            temps[str(cal.relative_to(out))] = json.loads(cal.read_text()).get("temperature")
    meta = {"args": vars(a), "minutes": round((time.perf_counter() - t0) / 60, 2),
            "temperatures": temps}
    write_summary(out, summ, meta, rows)
    print(f"total {meta['minutes']} min; written {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
