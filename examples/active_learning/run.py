"""Active learning with ``medseg select`` (BALD mutual information) vs random selection (U5).

Loop, per seed and strategy::

    labelled = INIT random cases of the pool
    repeat ROUNDS times:
        train a model on `labelled` (short fixed schedule, MC Dropout in the decoder)
        score it on a held-out validation set (never selected from): mean foreground Dice
        bald:   medseg select --model M --pool <unlabelled> --n K --uncertainty mc
        random: K unlabelled cases drawn at random
        labelled += the K cases
    train and score once more

Both strategies start from the same initial set and the same initial model (per seed), use the
same training settings and seeds, and differ only in which cases they add.

Data (``--data``):

* ``phantoms``: 2D MR phantoms from ``medseg simulate`` in several groups that differ in noise
  (``--snrs``) and lesion count (``--lesions``, same total lesion area: more lesions are
  smaller), so informativeness varies across the pool; pool and validation set hold every group
  in equal shares;
* ``hc18``: HC18 training images (``--hc18``), outlines filled, downsampled by ``--hc18-factor``
  (like ``examples/hc18``, which trains at 1/3), split by subject (the number before the first
  ``_``) into a validation set and a pool.

Outputs in ``--out``: ``curve.csv`` (seed, strategy, round, labelled, Dice),
``summary.csv`` / ``summary.md`` (mean and range over seeds per step), ``curve.png``,
``selected.csv`` (which cases each strategy added, with their group), the models and the
``medseg select`` folders.

Usage (from the repository root)::

    .venv/bin/python examples/active_learning/run.py --data phantoms --out runs/al_phantoms
    .venv/bin/python examples/active_learning/run.py --data hc18 --out runs/al_hc18 \\
        --hc18 ../shared/data/us_hc18 --seeds 0 1 2

Every setting is a flag (``--help``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "uncertainty"))

from study_utils import run_medseg  # noqa: E402  (the runner the uncertainty studies use)


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


# ---------------------------------------------------------------------------------- datasets
class Phantoms:
    """Pool + validation phantoms in groups (SNR x lesion count); NIfTI, MSD layout."""

    def __init__(self, a, root: Path, log: Path):
        self.a, self.root = a, root
        self.cases: dict[str, dict] = {}  # case -> {image, label, group}
        per = a.pool_per_group + a.val_per_group
        g = 0
        self.pool, self.val = [], []
        for snr in a.snrs:
            for nl in a.lesions:
                name = f"snr{snr:g}-les{nl}"
                ds = root / "groups" / name
                if not (ds / "dataset.json").exists():
                    run_medseg(["simulate", "--modality", "mr", "--dims", "2", "--n-train",
                                str(per), "--n-test", "0", "--snr", str(snr), "--n-lesions",
                                str(nl), "--lesion-fraction", str(a.lesion_fraction), "--size",
                                str(a.size), "--seed", str(a.data_seed * 1000 + g), "--output",
                                str(ds)], log, a.threads)
                g += 1
                for i in range(per):
                    cid = f"{name}-{i:03d}"
                    self.cases[cid] = {
                        "image": ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz",
                        "label": ds / "labelsTr" / f"case_{i:03d}.nii.gz", "group": name}
                    (self.pool if i < a.pool_per_group else self.val).append(cid)
        self.template = json.loads((ds / "dataset.json").read_text())

    def pool_folder(self, cases: list[str], dst: Path) -> Path:
        for c in cases:
            link(self.cases[c]["image"], dst / f"{c}_0000.nii.gz")
        return dst

    def train_folder(self, cases: list[str], dst: Path) -> tuple[Path, dict]:
        for c in cases:
            link(self.cases[c]["image"], dst / "imagesTr" / f"{c}_0000.nii.gz")
            link(self.cases[c]["label"], dst / "labelsTr" / f"{c}.nii.gz")
        meta = {k: v for k, v in self.template.items() if k in
                ("name", "channel_names", "labels", "file_ending", "tensorImageSize")}
        meta.update(numTraining=len(cases), description="active-learning labelled set")
        (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
        return dst, {}


class HC18:
    """HC18 images + filled masks, downsampled; validation subjects vs pool subjects."""

    def __init__(self, a, root: Path, log: Path):
        from PIL import Image

        from medseg.data.convert import fill_outline_masks
        from medseg.data.splits import split_cases

        self.a, self.root = a, root
        src = Path(a.hc18)
        small = root / "hc18_small"
        masks_full = root / "hc18_masks_full"
        if not masks_full.exists():
            fill_outline_masks(src / "annotations", masks_full, suffix="_Annotation")
        f = a.hc18_factor
        names = sorted(p.stem for p in (src / "images").glob("*.png"))
        for sub in ("images", "masks"):
            (small / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            if (small / "masks" / f"{n}.png").exists():
                continue
            im = Image.open(src / "images" / f"{n}.png").convert("L")
            size = (max(1, round(im.width / f)), max(1, round(im.height / f)))
            im.resize(size, Image.BILINEAR).save(small / "images" / f"{n}.png")
            m = Image.open(masks_full / f"{n}.png")
            m.resize(size, Image.NEAREST).save(small / "masks" / f"{n}.png")
        rest, val = split_cases(names, a.hc18_val_fraction, a.data_seed, r"^(\d+)_")
        rng = np.random.default_rng(a.data_seed)
        pool = list(rest)
        if a.hc18_pool and a.hc18_pool < len(pool):
            pool = sorted(rng.choice(pool, a.hc18_pool, replace=False).tolist())
        if a.hc18_val and a.hc18_val < len(val):
            val = sorted(rng.choice(val, a.hc18_val, replace=False).tolist())
        self.pool, self.val = pool, val
        self.cases = {n: {"image": small / "images" / f"{n}.png",
                          "label": small / "masks" / f"{n}.png", "group": "hc18"}
                      for n in names}

    def pool_folder(self, cases: list[str], dst: Path) -> Path:
        for c in cases:
            link(self.cases[c]["image"], dst / f"{c}.png")
        return dst

    def train_folder(self, cases: list[str], dst: Path) -> tuple[Path, dict]:
        for c in cases:
            link(self.cases[c]["image"], dst / "images" / f"{c}.png")
            link(self.cases[c]["label"], dst / "masks" / f"{c}.png")
        return dst / "images", {"masks": str(dst / "masks"), "modality": "US"}


# ---------------------------------------------------------------------------------- train/eval
def train_model(a, data: Path, extra: dict, out: Path, seed: int) -> Path:
    from medseg.training.config import ExperimentConfig
    from medseg.training.engine import train

    if (out / "plan.json").exists():
        return out
    cfg = ExperimentConfig()
    cfg.data.dataset = str(data)
    if extra.get("masks"):
        cfg.data.masks = extra["masks"]
        cfg.data.modality = extra["modality"]
    cfg.data.val_fraction = 0.0  # the labelled set is tiny: all of it trains
    cfg.model.name = "unet"
    cfg.model.options = {"channels": list(a.channels), "dropout": a.dropout}
    cfg.train.epochs, cfg.train.steps_per_epoch = a.epochs, a.steps
    cfg.train.batch_size, cfg.train.seed = a.batch_size, seed
    cfg.train.num_threads = a.threads
    cfg.train.calibrate = False
    if a.patch:
        cfg.train.patch_size = list(a.patch)
    cfg.output_dir = str(out)
    with open(out.parent / f"{out.name}.train.log", "w") as f:
        train(cfg, log=lambda m: f.write(m + "\n"))
    return out


def evaluate(model_dir: Path, ds, cases: list[str]) -> dict:
    """Mean Dice per foreground class and their mean over the validation cases."""
    from medseg.io import read_image, read_label
    from medseg.metrics import dice
    from medseg.tasks.segmentation import SegmentationModel

    cache = model_dir / "validation_dice.json"
    if cache.exists():
        return json.loads(cache.read_text())
    model = SegmentationModel.load(model_dir, checkpoint="last", device="cpu")
    ncls = model.num_classes
    per = {c: [] for c in range(1, ncls)}
    for cid in cases:
        img, meta = read_image(ds.cases[cid]["image"])
        pred = model.predict(img, meta).probs.argmax(0).numpy()
        ref, _ = read_label(ds.cases[cid]["label"])
        ref = np.asarray(ref).squeeze()
        if ref.max() > 1 and ncls == 2:
            ref = ref > 0
        for c in per:
            per[c].append(dice(pred.squeeze() == c, ref == c))
    names = list(model.info.class_names)
    out = {f"dice_{names[c]}": float(np.mean(v)) for c, v in per.items()}
    out["dice_mean"] = float(np.mean([np.mean(v) for v in per.values()]))
    cache.write_text(json.dumps(out))
    return out


def select_bald(a, model_dir: Path, ds, unlabelled: list[str], work: Path, seed: int
                ) -> list[str]:
    done = work / "select" / "selection.csv"
    if done.exists():  # a finished round (rerun of the same --out)
        with open(done, newline="") as f:
            return [r["case"] for r in csv.DictReader(f)]
    pool = ds.pool_folder(unlabelled, work / "pool")
    run_medseg(["select", "--model", str(model_dir), "--pool", str(pool), "--n", str(a.k),
                "--output", str(work / "select"), "--uncertainty", a.uncertainty,
                "--samples", str(a.samples), "--seed", str(seed), "--by", a.by],
               work.parent / "commands.log", a.threads)
    with open(work / "select" / "selection.csv", newline="") as f:
        chosen = [r["case"] for r in csv.DictReader(f)]
    if not a.keep_maps:  # the uncertainty maps of the pool are large; selection.csv stays
        shutil.rmtree(work / "select" / "predictions", ignore_errors=True)
    return chosen


# ---------------------------------------------------------------------------------- report
def summarise(rows: list[dict], out: Path, title: str) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = []
    strategies = sorted({r["strategy"] for r in rows})
    steps = sorted({r["labelled"] for r in rows})
    for s in strategies:
        for n in steps:
            v = [r["dice_mean"] for r in rows if r["strategy"] == s and r["labelled"] == n]
            if v:
                summ.append({"strategy": s, "labelled": n, "n_seeds": len(v),
                             "dice_mean": float(np.mean(v)), "dice_min": float(np.min(v)),
                             "dice_max": float(np.max(v))})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summ[0]))
        w.writeheader()
        w.writerows(summ)
    # table: one row per step, both strategies side by side, + per-seed paired difference
    lines = ["| labelled cases | " + " | ".join(f"{s}: mean [min, max]" for s in strategies)
             + " | BALD - random per seed |",
             "|---|" + "---|" * len(strategies) + "---|"]
    for n in steps:
        cells = []
        for s in strategies:
            m = [x for x in summ if x["strategy"] == s and x["labelled"] == n]
            cells.append(f"{m[0]['dice_mean']:.3f} [{m[0]['dice_min']:.3f}, "
                         f"{m[0]['dice_max']:.3f}]" if m else "")
        diffs = []
        for seed in sorted({r["seed"] for r in rows}):
            d = {r["strategy"]: r["dice_mean"] for r in rows
                 if r["seed"] == seed and r["labelled"] == n}
            if "bald" in d and "random" in d:
                diffs.append(f"{d['bald'] - d['random']:+.3f}")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {' '.join(diffs)} |")
    for key in sorted(k for k in rows[0] if k.startswith("dice_") and k != "dice_mean"):
        lines += ["", f"{key} (mean [min, max] over seeds):", "",
                  "| labelled cases | " + " | ".join(strategies) + " |",
                  "|---|" + "---|" * len(strategies)]
        for n in steps:
            cells = []
            for s in strategies:
                v = [r[key] for r in rows if r["strategy"] == s and r["labelled"] == n]
                cells.append(f"{np.mean(v):.3f} [{np.min(v):.3f}, {np.max(v):.3f}]" if v else "")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    picks_path = out / "selected.csv"
    if picks_path.exists():
        with open(picks_path, newline="") as f:
            picks = list(csv.DictReader(f))
        groups = sorted({p["group"] for p in picks})
        if len(groups) > 1:
            lines += ["", "Cases added per pool group (all seeds and rounds):", "",
                      "| strategy | " + " | ".join(groups) + " |",
                      "|---|" + "---|" * len(groups)]
            for st in strategies:
                cnt = [sum(1 for p in picks if p["strategy"] == st and p["group"] == g)
                       for g in groups]
                lines.append(f"| {st} | " + " | ".join(str(c) for c in cnt) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s, col in zip(strategies, ("tab:red", "tab:blue", "tab:green")[:len(strategies)],
                      strict=True):
        m = [x for x in summ if x["strategy"] == s]
        xs = [x["labelled"] for x in m]
        ax.plot(xs, [x["dice_mean"] for x in m], "o-", color=col,
                label=f"{s} (mean of {m[0]['n_seeds']} seeds)")
        ax.fill_between(xs, [x["dice_min"] for x in m], [x["dice_max"] for x in m],
                        color=col, alpha=0.2)
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("validation Dice (mean over foreground classes)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)
    plt.close(fig)
    print("\n".join(lines))
    return summ


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (finished steps are reused)")
    ap.add_argument("--data", choices=("phantoms", "hc18"), default="phantoms")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=["bald", "random"],
                    choices=("bald", "random"))
    ap.add_argument("--init", type=int, default=4, help="initial labelled cases")
    ap.add_argument("--k", type=int, default=4, help="cases added per round")
    ap.add_argument("--rounds", type=int, default=4, help="selection rounds")
    # selection
    ap.add_argument("--uncertainty", default="mc", choices=("mc", "mc_decoder", "tta"))
    ap.add_argument("--samples", type=int, default=8, help="MC Dropout samples T")
    ap.add_argument("--by", default="mutual_information_image", help="acquisition column")
    ap.add_argument("--keep-maps", action="store_true", help="keep select's uncertainty maps")
    ap.add_argument("--summary-only", action="store_true",
                    help="only rewrite summary.md / curve.png from curve.csv in --out")
    # training (the same for both strategies)
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--dropout", type=float, default=0.2, help="decoder dropout (MC Dropout)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25, help="steps per epoch")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch", type=int, nargs="*", default=None,
                    help="patch size (default: medseg's choice)")
    ap.add_argument("--threads", type=int, default=1)
    # phantoms
    ap.add_argument("--snrs", type=float, nargs="+", default=[3.0, 6.0, 12.0])
    ap.add_argument("--lesions", type=int, nargs="+", default=[1, 4],
                    help="lesion counts (same total lesion area)")
    ap.add_argument("--lesion-fraction", type=float, default=0.01)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pool-per-group", type=int, default=8)
    ap.add_argument("--val-per-group", type=int, default=4)
    ap.add_argument("--data-seed", type=int, default=0)
    # hc18
    ap.add_argument("--hc18", default=str(HERE.parents[1].parent / "shared" / "data" / "us_hc18"))
    ap.add_argument("--hc18-factor", type=float, default=4.0, help="downsampling factor")
    ap.add_argument("--hc18-val-fraction", type=float, default=0.12)
    ap.add_argument("--hc18-val", type=int, default=40, help="validation images (0 = all)")
    ap.add_argument("--hc18-pool", type=int, default=120, help="pool images (0 = all)")
    a = ap.parse_args(argv)

    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    out = Path(a.out).resolve()
    if a.summary_only:
        with open(out / "curve.csv", newline="") as f:
            rows0 = [{k: (v if k == "strategy" else float(v) if "dice" in k else int(v))
                      for k, v in r.items()} for r in csv.DictReader(f)]
        meta = json.loads((out / "run.json").read_text())
        summarise(rows0, out, f"{meta['args']['data']}: +{meta['args']['k']} per round from "
                              f"{meta['args']['init']}, {len(meta['args']['seeds'])} seeds, "
                              f"validation {meta['val']} cases")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    t0 = time.perf_counter()
    ds = (Phantoms if a.data == "phantoms" else HC18)(a, out / "data", log)
    print(f"{a.data}: pool {len(ds.pool)}, validation {len(ds.val)} cases", flush=True)

    rows: list[dict] = []
    picks: list[dict] = []
    curve = out / "curve.csv"
    for seed in a.seeds:
        rng = np.random.default_rng(10_000 + seed)
        init = sorted(rng.choice(ds.pool, a.init, replace=False).tolist())
        sdir = out / f"seed{seed}"
        data0, extra0 = ds.train_folder(init, sdir / "r0_data")
        m0 = train_model(a, data0, extra0, sdir / "r0_model", seed)
        score0 = evaluate(m0, ds, ds.val)
        for strat in a.strategies:
            labelled, model = list(init), m0
            score = score0
            for r in range(a.rounds + 1):
                rows.append({"seed": seed, "strategy": strat, "round": r,
                             "labelled": len(labelled), **score})
                print(f"seed {seed} {strat:6s} round {r} labelled {len(labelled):3d} "
                      f"Dice {score['dice_mean']:.4f}  ({(time.perf_counter() - t0) / 60:.1f} "
                      "min)", flush=True)
                if r == a.rounds:
                    break
                unl = [c for c in ds.pool if c not in labelled]
                work = sdir / strat / f"r{r + 1}"
                if strat == "bald":
                    new = select_bald(a, model, ds, unl, work, seed * 100 + r)
                else:
                    rs = np.random.default_rng(20_000 + seed * 100 + r)
                    new = sorted(rs.choice(unl, min(a.k, len(unl)), replace=False).tolist())
                picks += [{"seed": seed, "strategy": strat, "round": r + 1, "case": c,
                           "group": ds.cases[c]["group"]} for c in new]
                labelled += new
                data, extra = ds.train_folder(labelled, work / "data")
                model = train_model(a, data, extra, work / "model", seed)
                score = evaluate(model, ds, ds.val)
            with open(curve, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            with open(out / "selected.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["seed", "strategy", "round", "case", "group"])
                w.writeheader()
                w.writerows(picks)
    title = (f"{a.data}: +{a.k} per round from {a.init}, {len(a.seeds)} seeds, "
             f"validation {len(ds.val)} cases")
    summarise(rows, out, title)
    minutes = (time.perf_counter() - t0) / 60
    (out / "run.json").write_text(json.dumps({"args": vars(a), "minutes": round(minutes, 2),
                                              "pool": len(ds.pool), "val": len(ds.val)},
                                             indent=2))
    print(f"total {minutes:.1f} min; written {out / 'summary.md'} and {out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
