"""Error detection by uncertainty maps (issue "Uncertainty a user can act on", U5).

For each uncertainty method this trains the model(s) with ``medseg train``, predicts the test
cases with ``medseg predict --uncertainty ...`` and measures how well the written uncertainty
tells where and when the segmentation is wrong:

* **voxel level**: AUROC of each uncertainty map (predictive entropy, mutual information, total
  variance of the predicted class, ...) for detecting misclassified voxels (predicted label !=
  reference), pooled over the test cases (every ``--voxel-stride``-th voxel per axis);
* **case level**: AUROC of the case's mean uncertainty inside the predicted structures (the
  ``*_structure`` columns of ``uncertainty.csv``, averaged over a case's structures as ``medseg
  review`` does) for detecting the cases whose foreground Dice is below a threshold.

Methods (``--methods``):

* ``single``        the dropout model, one deterministic pass (``--uncertainty none``): softmax
                    entropy only (the baseline every other method has to beat);
* ``mc``            MC Dropout, the same dropout model (dropout after each decoder stage, the
                    default ``model.options.dropout_where=decoder``), ``--uncertainty mc``;
* ``mc_decoder``    the same model, ``--uncertainty mc_decoder`` (encoder once, decoder T times);
* ``mc_head``       decoder-only MC of a model whose only dropout is on the last decoder
                    features before the 1x1 head (``dropout_where=head``): encoder and decoder
                    trunk once, the head T times;
* ``mc_all``        MC Dropout of a second model trained with dropout everywhere
                    (``dropout_where=all``: encoder, bottleneck and decoder), ``--uncertainty mc``;
* ``tta``           flip TTA of the dropout model (dropout off), ``--uncertainty tta``;
* ``ensemble``      a deep ensemble (``medseg train --ensemble M``), ``--uncertainty ensemble``;
* ``variance_head`` a model with ``model.variance_head=true``, ``--uncertainty none`` (entropy
                    of the noise-averaged softmax, and its ``*_logit_variance`` map).

Datasets (``--dataset``): ``phantom`` (``medseg simulate``, 2D ultrasound with heavy speckle) or
``hc18`` (real fetal-head ultrasound; a subject-wise split of ``--hc18``).

Usage (from the repository root)::

    .venv/bin/python examples/uncertainty/error_detection.py --dataset phantom \\
        --out runs/unc_phantom
    .venv/bin/python examples/uncertainty/error_detection.py --dataset hc18 --out runs/unc_hc18 \\
        --hc18 ../shared/data/us_hc18

A re-run with the same ``--out`` skips the steps that are done (models, predictions).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_utils import (  # noqa: E402
    MEDSEG,
    Timings,
    fmt,
    foreground_dice,
    fresh_dir,
    write_csv,
)

from medseg.io import read_image, read_label  # noqa: E402
from medseg.metrics.classification import auroc  # noqa: E402
from medseg.uncertainty.ranking import rank_cases  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("single", "mc", "mc_decoder", "mc_head", "mc_all", "tta", "ensemble",
           "variance_head")
#: method -> (model key, --uncertainty value)
METHOD_SPEC = {
    "single": ("dropout_decoder", "none"),
    "mc": ("dropout_decoder", "mc"),
    "mc_decoder": ("dropout_decoder", "mc_decoder"),
    "mc_head": ("dropout_head", "mc_decoder"),
    "mc_all": ("dropout_all", "mc"),
    "tta": ("dropout_decoder", "tta"),
    "ensemble": ("ensemble", "ensemble"),
    "variance_head": ("variance_head", "none"),
}
METHOD_LABEL = {
    "single": "single pass (softmax), dropout model",
    "mc": "MC Dropout (T samples), decoder dropout",
    "mc_decoder": "MC decoder-only (T), same model",
    "mc_head": "MC decoder-only (T), dropout before the head only",
    "mc_all": "MC Dropout (T), dropout everywhere",
    "tta": "flip TTA (4 flips), dropout model",
    "ensemble": "deep ensemble (M members)",
    "variance_head": "variance head, single pass",
}
#: uncertainty maps scored at the voxel level (file ``<case>_<map>.nii.gz``)
VOXEL_MAPS = ("predictive_entropy", "mutual_information", "total_variance", "expected_entropy",
              "aleatoric_variance", "epistemic_variance", "logit_variance")
#: uncertainty.csv columns scored at the case level (mean inside the predicted structure)
CASE_COLUMNS = ("predictive_entropy_structure", "mutual_information_structure",
                "total_variance_structure")


# ----------------------------------------------------------------------------- data
def prepare_phantom(a: argparse.Namespace, out: Path, timings: Timings) -> dict:
    data = out / "data"
    cmd = [MEDSEG, "simulate", "--modality", "us", "--dims", "2", "--n-train", str(a.n_train),
           "--n-test", str(a.n_test), "--looks", str(a.looks), "--size", str(a.size),
           "--seed", str(a.data_seed), "--output", str(data)]
    if a.force_data and data.exists():
        cmd.append("--force")
    timings.step("simulate", (data / "dataset.json").exists(), cmd, out / "log.txt", a.threads)
    n_classes = len(json.loads((data / "dataset.json").read_text())["labels"])
    return {"train_args": ["--dataset", str(data)], "test_images": data / "imagesTs",
            "test_labels": data / "labelsTs", "n_classes": n_classes,
            "description": (f"2D ultrasound phantoms (`medseg simulate --modality us --looks "
                            f"{a.looks} --size {a.size}`), organ + lesion: {a.n_train} "
                            f"training, {a.n_test} test cases")}


def hc18_split(images: list[str], n_train: int, n_test: int, seed: int
               ) -> tuple[list[str], list[str]]:
    """Subject-wise split (subject = the number before the first ``_``): subjects in a seeded
    random order fill the test set to exactly ``n_test`` images, then the training set to
    ``n_train`` (a subject that would overshoot is skipped)."""
    subjects: dict[str, list[str]] = {}
    for name in sorted(images):
        subjects.setdefault(name.split("_")[0], []).append(name)
    order = sorted(subjects)
    np.random.default_rng(seed).shuffle(order)
    test: list[str] = []
    train: list[str] = []
    for s in order:
        imgs = subjects[s]
        if len(test) + len(imgs) <= n_test and len(test) < n_test:
            test += imgs
        elif len(train) + len(imgs) <= n_train and len(train) < n_train:
            train += imgs
        if len(test) == n_test and len(train) == n_train:
            break
    return sorted(train), sorted(test)


def prepare_hc18(a: argparse.Namespace, out: Path, timings: Timings) -> dict:
    src = Path(a.hc18)
    data = out / "data"
    names = sorted(p.stem for p in (src / "images").glob("*.png"))
    train, test = hc18_split(names, a.n_train_images, a.n_test_images, a.split_seed)
    subj = {n.split("_")[0] for n in train}
    assert not subj & {n.split("_")[0] for n in test}, "a subject is in both splits"
    for split, ids in (("train", train), ("test", test)):
        d = data / split
        if not (d / "masks").is_dir() or len(list((d / "masks").glob("*.png"))) != len(ids):
            fresh_dir(d)
            (d / "images").mkdir(parents=True)
            (d / "outlines").mkdir()
            for n in ids:
                shutil.copy2(src / "images" / f"{n}.png", d / "images" / f"{n}.png")
                shutil.copy2(src / "annotations" / f"{n}_Annotation.png",
                             d / "outlines" / f"{n}_Annotation.png")
            timings.data.pop(f"convert_{split}", None)
        timings.step(f"convert_{split}", (d / "masks").is_dir(),
                     [MEDSEG, "convert-outlines", "--input", str(d / "outlines"), "--output",
                      str(d / "masks"), "--suffix", "_Annotation"], out / "log.txt", a.threads)
    (data / "split.json").write_text(json.dumps({"train": train, "test": test}, indent=1))
    return {"train_args": ["--dataset", str(data / "train" / "images"), "--masks",
                           str(data / "train" / "masks"), "--config", str(a.hc18_config)],
            "test_images": data / "test" / "images", "test_labels": data / "test" / "masks",
            "n_classes": 2,
            "description": (f"HC18 (real fetal-head ultrasound), subject-wise split (seed "
                            f"{a.split_seed}): {len(train)} training images "
                            f"({len(subj)} subjects), {len(test)} test images "
                            f"({len({n.split('_')[0] for n in test})} subjects)")}


# ----------------------------------------------------------------------------- models
def model_args(a: argparse.Namespace, key: str) -> list[str]:
    drop = [f"model.options.dropout={a.dropout}"]
    extra = {
        "dropout_decoder": drop + ["model.options.dropout_where=decoder"],
        "dropout_all": drop + ["model.options.dropout_where=all"],
        "dropout_head": drop + ["model.options.dropout_where=head"],
        "ensemble": [],
        "variance_head": ["model.variance_head=true"],
    }[key]
    args = ["--epochs", str(a.epochs), "--steps-per-epoch", str(a.steps), "--batch-size",
            str(a.batch_size), "--seed", str(a.seed)]
    if key == "ensemble":
        args += ["--ensemble", str(a.ensemble)]
    sets = [f"train.num_threads={a.threads}", f"train.val_every={a.val_every}"] + a.set + extra
    for s in sets:
        args += ["--set", s]
    return args


def train_models(a: argparse.Namespace, out: Path, data: dict, keys: set[str],
                 timings: Timings) -> dict[str, Path]:
    folders = {}
    for key in sorted(keys):
        folder = out / "models" / key
        done = (folder / "plan.json").exists() and (
            (folder / "checkpoint_best.pt").exists() or (folder / "member_0").exists())
        if not done and folder.exists():
            shutil.rmtree(folder)  # an interrupted run: start it again
        cmd = [MEDSEG, "train", *data["train_args"], "--output", str(folder),
               *model_args(a, key)]
        timings.step(f"train_{key}", done, cmd, out / "log.txt", a.threads)
        folders[key] = folder
    return folders


def predict(a: argparse.Namespace, out: Path, data: dict, folders: dict[str, Path],
            method: str, timings: Timings, seed: int = 0) -> Path:
    key, unc = METHOD_SPEC[method]
    tag = method if seed == 0 else f"{method}_seed{seed}"
    dest = out / "predictions" / tag
    done = (dest / "uncertainty.csv").exists()
    if not done and dest.exists():
        shutil.rmtree(dest)
    cmd = [MEDSEG, "predict", "--model", str(folders[key]), "--input", str(data["test_images"]),
           "--output", str(dest), "--uncertainty", unc, "--uncertainty-seed", str(seed)]
    if unc in ("mc", "mc_decoder"):
        cmd += ["--samples", str(a.samples)]
    timings.step(f"predict_{tag}", done, cmd, out / "log.txt", a.threads)
    return dest


# ----------------------------------------------------------------------------- scoring
def case_names(labels_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for f in sorted(labels_dir.iterdir()):
        name = f.name
        for suf in (".nii.gz", ".png", ".nii", ".nrrd"):
            if name.endswith(suf):
                out.append((name[: -len(suf)], f))
                break
    return out


def label_file(pred_dir: Path, case: str) -> Path:
    for suf in (".nii.gz", ".png", ".nii", ".nrrd"):
        if (pred_dir / f"{case}{suf}").exists():
            return pred_dir / f"{case}{suf}"
    raise FileNotFoundError(f"no prediction for {case} in {pred_dir}")


def score_method(pred_dir: Path, labels_dir: Path, n_classes: int, stride: int
                 ) -> tuple[dict, list[dict]]:
    """Voxel AUROC per map, per-case Dice and case scores of one prediction folder."""
    err_all: list[np.ndarray] = []
    maps_all: dict[str, list[np.ndarray]] = {}
    cases = []
    for case, ref_path in case_names(labels_dir):
        ref = np.asarray(read_label(ref_path)[0])
        pred = np.asarray(read_label(label_file(pred_dir, case))[0]).reshape(ref.shape)
        sl = tuple(slice(None, None, stride) for _ in ref.shape)
        err_all.append((pred != ref)[sl].ravel())
        row = {"case": case, "dice": foreground_dice(pred, ref, n_classes),
               "error_fraction": float((pred != ref).mean())}
        lv_struct = []
        for m in VOXEL_MAPS:
            f = pred_dir / f"{case}_{m}.nii.gz"
            if not f.exists():
                continue
            arr = np.asarray(read_image(f)[0], dtype=np.float64).reshape(ref.shape)
            maps_all.setdefault(m, []).append(arr[sl].ravel())
            if m == "logit_variance":
                # the case score of the logit variance (not in uncertainty.csv): its mean inside
                # each predicted structure, averaged over the structures (as medseg review)
                lv_struct = [float(arr[pred == c].mean()) for c in range(1, n_classes)
                             if (pred == c).any()]
        if lv_struct:
            row["logit_variance_structure"] = float(np.mean(lv_struct))
        cases.append(row)
    errors = np.concatenate(err_all)
    voxel = {"n_voxels": int(errors.size), "n_errors": int(errors.sum()),
             "auroc": {m: auroc(np.concatenate(v), errors) for m, v in maps_all.items()}}
    # mutual information is identically 0 with a single sample: say so instead of AUROC 0.5
    for m, v in maps_all.items():
        if float(np.abs(np.concatenate(v)).max()) == 0.0:
            voxel["auroc"][m] = float("nan")
    by_case = {r["case"]: r for r in cases}
    for col in CASE_COLUMNS:
        for r in rank_cases(pred_dir, by=col):
            if r["case"] in by_case:
                by_case[r["case"]][col] = r["score"]
    return voxel, cases


def case_auroc(cases: list[dict], threshold: float, col: str) -> tuple[float, int, int]:
    """AUROC of ``col`` for the cases with Dice < threshold; a case without a predicted
    structure (score missing) counts as the most uncertain."""
    y = np.array([r["dice"] < threshold for r in cases], dtype=int)
    s = np.array([r.get(col, math.nan) for r in cases], dtype=float)
    if np.all(np.isnan(s)) or np.allclose(np.nan_to_num(s), 0.0):
        return float("nan"), int(y.sum()), int((1 - y).sum())
    s = np.where(np.isnan(s), np.inf, s)
    s = np.where(np.isinf(s), np.nanmax(s[np.isfinite(s)]) + 1.0, s)
    return auroc(s, y), int(y.sum()), int((1 - y).sum())


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (NaN pairs dropped; NaN if a side is constant)."""
    from scipy.stats import spearmanr

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    if ok.sum() < 3 or np.ptp(xa[ok]) == 0 or np.ptp(ya[ok]) == 0:
        return float("nan")
    return float(spearmanr(xa[ok], ya[ok]).statistic)


# ----------------------------------------------------------------------------- MC timing
def time_mc(a: argparse.Namespace, data: dict, folders: dict[str, Path]) -> dict:
    """Seconds per case of ``predict_samples`` (preprocessing, sliding window, restoring to the
    input grid; no file writing) for full and decoder-only MC on the same inputs, min over
    ``--timing-repeats`` runs."""
    from medseg.tasks.segmentation import SegmentationModel, collect_inputs

    torch.set_num_threads(a.threads)
    res = {}
    for key in ("dropout_decoder",):
        if key not in folders:
            continue
        model = SegmentationModel.load(folders[key], device="cpu")
        inputs = [read_image(src) for _, src in collect_inputs(data["test_images"], 1)]
        inputs = inputs[: a.timing_cases]
        for method in ("none", "mc", "mc_decoder"):
            best = math.inf
            for _ in range(a.timing_repeats):
                t0 = time.perf_counter()
                for image, meta in inputs:
                    model.predict_samples(image, meta, method, a.samples, seed=0)
                best = min(best, time.perf_counter() - t0)
            res[f"{key}/{method}"] = best / len(inputs)
        # same samples? (mc and mc_decoder draw the same masks when only the decoder has dropout)
        image, meta = inputs[0]
        p1, _ = model.predict_samples(image, meta, "mc", a.samples, seed=0)
        p2, _ = model.predict_samples(image, meta, "mc_decoder", a.samples, seed=0)
        res[f"{key}/max_abs_diff_mc_vs_mc_decoder"] = float((p1 - p2).abs().max())
        res["cases"] = len(inputs)
    return res


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("phantom", "hc18"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (train and predict)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (ensemble: seed..seed+M-1)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--val-every", type=int, default=5)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--ensemble", type=int, default=5, help="members M")
    ap.add_argument("--samples", type=int, default=10, help="T of MC Dropout")
    ap.add_argument("--set", action="append", default=[],
                    help="extra --set KEY=VALUE for every training")
    ap.add_argument("--voxel-stride", type=int, default=None,
                    help="score every k-th voxel per axis (default 1 phantom, 2 HC18)")
    ap.add_argument("--dice-threshold", type=float, default=None,
                    help="case level: a case is a failure when its foreground Dice is below this "
                         "(default: the lower quartile of the single-pass model's Dice)")
    ap.add_argument("--mc-seeds", type=int, nargs="+", default=None,
                    help="--uncertainty-seed values for the MC methods (the spread of the AUROC "
                         "over dropout draws; default 0 1 2 phantom, 0 HC18); the tables use 0")
    ap.add_argument("--timing-repeats", type=int, default=2)
    ap.add_argument("--timing-cases", type=int, default=20)
    g = ap.add_argument_group("phantom")
    g.add_argument("--n-train", type=int, default=40)
    g.add_argument("--n-test", type=int, default=30)
    g.add_argument("--looks", type=float, default=1.0)
    g.add_argument("--size", type=int, default=96)
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--force-data", action="store_true")
    g = ap.add_argument_group("hc18")
    g.add_argument("--hc18", default="../shared/data/us_hc18")
    g.add_argument("--hc18-config", default=str(HERE / "hc18_small.yaml"))
    g.add_argument("--n-train-images", type=int, default=200)
    g.add_argument("--n-test-images", type=int, default=100)
    g.add_argument("--split-seed", type=int, default=0)
    a = ap.parse_args(argv)
    phantom = a.dataset == "phantom"
    defaults = {"epochs": 10 if phantom else 8, "steps": 15,
                "batch_size": 8 if phantom else 4, "voxel_stride": 1 if phantom else 2,
                "mc_seeds": [0, 1, 2] if phantom else [0]}
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if phantom:
        a.set = ["model.options.channels=[16,32,64,128]", "data.val_fraction=0.15", *a.set]
    torch.set_num_threads(a.threads)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    t_start = time.perf_counter()
    data = prepare_phantom(a, out, timings) if phantom else prepare_hc18(a, out, timings)
    keys = {METHOD_SPEC[m][0] for m in a.methods}
    folders = train_models(a, out, data, keys, timings)

    results: dict[str, dict] = {}
    all_cases: dict[str, list[dict]] = {}
    for method in a.methods:
        pred_dir = predict(a, out, data, folders, method, timings)
        voxel, cases = score_method(pred_dir, data["test_labels"], data["n_classes"],
                                       a.voxel_stride)
        results[method] = {"voxel": voxel}
        all_cases[method] = cases
        write_csv(out / f"cases_{method}.csv", cases)
        au = {k: round(v, 4) for k, v in voxel["auroc"].items()}
        mean_dice = np.mean([c["dice"] for c in cases])
        print(f"{method}: voxel AUROC {json.dumps(au)}, mean Dice {mean_dice:.4f}", flush=True)
        if METHOD_SPEC[method][1] in ("mc", "mc_decoder"):
            for seed in a.mc_seeds:
                if seed == 0:
                    continue
                d = predict(a, out, data, folders, method, timings, seed)
                v, c = score_method(d, data["test_labels"], data["n_classes"], a.voxel_stride)
                all_cases[f"{method}_seed{seed}"] = c
                results[f"{method}_seed{seed}"] = {"voxel": v}
                write_csv(out / f"cases_{method}_seed{seed}.csv", c)

    # the case-level threshold: one per dataset, fixed from the Dice values alone (before any
    # AUROC is looked at): the median of every method's per-case Dice pooled
    if a.dice_threshold is not None:
        thr, thr_rule = a.dice_threshold, "given (--dice-threshold)"
    else:
        pooled = [c["dice"] for m in a.methods for c in all_cases[m]]
        thr = float(np.median(pooled))
        thr_rule = "median of the per-case Dice of all methods pooled"
    for method, cases in all_cases.items():
        r = results[method]
        r["mean_dice"] = float(np.mean([c["dice"] for c in cases]))
        r["n_cases"] = len(cases)
        r["case"] = {}
        for col in (*CASE_COLUMNS, "logit_variance_structure"):
            au, n_fail, n_ok = case_auroc(cases, thr, col)
            r["case"][col] = au
            r["n_fail"], r["n_ok"] = n_fail, n_ok
        key, unc = METHOD_SPEC[method.split("_seed")[0]]
        r["train_seconds"] = timings.data.get(f"train_{key}")
        r["predict_seconds"] = timings.data.get(f"predict_{method}")
        r["spearman_dice"] = {col: spearman([c.get(col, math.nan) for c in cases],
                                            [c["dice"] for c in cases])
                              for col in (*CASE_COLUMNS, "logit_variance_structure")}
        r["model"] = key

    mc_timing = time_mc(a, data, folders) if {"mc", "mc_decoder"} <= set(a.methods) else {}
    summary = {"dataset": data["description"], "threshold": thr, "threshold_rule": thr_rule,
               "voxel_stride": a.voxel_stride, "methods": results, "mc_timing": mc_timing,
               "timings": timings.data, "args": {k: v for k, v in vars(a).items()},
               "total_wall_seconds_this_run": time.perf_counter() - t_start,
               "torch_threads": a.threads}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    md = tables(summary, a)
    (out / "results.md").write_text(md)
    print(md)
    return 0


def tables(s: dict, a: argparse.Namespace) -> str:
    res = s["methods"]
    main_rows = [m for m in res if "_seed" not in m]
    lines = [f"Data: {s['dataset']}. Voxels: every {s['voxel_stride']}-th per axis.",
             f"Case-level failure: foreground Dice < {s['threshold']:.4f} "
             f"({s['threshold_rule']}).", "",
             "| method | mean Dice | error voxels | voxel AUROC: entropy | MI | total var | "
             "logit var | case AUROC: entropy | MI | total var | logit var | failures / ok "
             "| train s | predict s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in main_rows:
        r = res[m]
        v, c = r["voxel"]["auroc"], r["case"]
        label = METHOD_LABEL[m].replace("(T", f"(T={a.samples}").replace("(M", f"(M={a.ensemble}")
        lines.append(
            f"| {label} | {fmt(r['mean_dice'])} | {r['voxel']['n_errors']} / "
            f"{r['voxel']['n_voxels']} | {fmt(v.get('predictive_entropy'))} | "
            f"{fmt(v.get('mutual_information'))} | {fmt(v.get('total_variance'))} | "
            f"{fmt(v.get('logit_variance'))} | "
            f"{fmt(c.get('predictive_entropy_structure'))} | "
            f"{fmt(c.get('mutual_information_structure'))} | "
            f"{fmt(c.get('total_variance_structure'))} | "
            f"{fmt(c.get('logit_variance_structure'))} | {r['n_fail']} / {r['n_ok']} | "
            f"{fmt(r['train_seconds'], 0)} | {fmt(r['predict_seconds'], 1)} |")
    lines += ["", "Spearman correlation of the case score with the case's Dice (no threshold; "
                  "negative = more uncertain cases are worse):", "",
              "| method | entropy | MI | total var | logit var |", "|---|---|---|---|---|"]
    for m in main_rows:
        sp = res[m]["spearman_dice"]
        lines.append(f"| {m} | {fmt(sp['predictive_entropy_structure'], 2)} | "
                     f"{fmt(sp['mutual_information_structure'], 2)} | "
                     f"{fmt(sp['total_variance_structure'], 2)} | "
                     f"{fmt(sp['logit_variance_structure'], 2)} |")
    seeded = [m for m in main_rows if any(k.startswith(f"{m}_seed") for k in res)]
    if seeded:
        lines += ["", f"MC sampling noise: the same model and inputs with --uncertainty-seed "
                      f"{' '.join(map(str, a.mc_seeds))}; mean [min, max] over seeds:", "",
                  "| method | mean Dice | voxel AUROC entropy | voxel AUROC MI | case AUROC "
                  "entropy | case AUROC MI |", "|---|---|---|---|---|---|"]
        for m in seeded:
            keys = [m] + [k for k in res if k.startswith(f"{m}_seed")]

            def agg(get, keys=keys):
                v = np.array([get(res[k]) for k in keys], dtype=float)
                return f"{fmt(float(np.mean(v)))} [{fmt(float(v.min()))}, {fmt(float(v.max()))}]"

            lines.append(
                f"| {m} | {agg(lambda r: r['mean_dice'])} | "
                f"{agg(lambda r: r['voxel']['auroc']['predictive_entropy'])} | "
                f"{agg(lambda r: r['voxel']['auroc']['mutual_information'])} | "
                f"{agg(lambda r: r['case']['predictive_entropy_structure'])} | "
                f"{agg(lambda r: r['case']['mutual_information_structure'])} |")
    t = s.get("mc_timing") or {}
    if t:
        lines += ["", f"Sampling time per case (`SegmentationModel.predict_samples`: preprocessing,"
                      f" sliding window, restoring to the input grid, no file writing; "
                      f"{t['cases']} test cases, {s['torch_threads']} thread, best of "
                      f"{a.timing_repeats}): single pass {t['dropout_decoder/none']:.3f} s, "
                      f"MC full {t['dropout_decoder/mc']:.3f} s, MC decoder-only "
                      f"{t['dropout_decoder/mc_decoder']:.3f} s (T = {a.samples}, the same "
                      f"decoder-dropout model). At one seed the two draw the same dropout "
                      f"masks (max |p_mc - p_mc_decoder| = "
                      f"{t['dropout_decoder/max_abs_diff_mc_vs_mc_decoder']:.2g} on one case: "
                      f"batched against unbatched rounding)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
