"""HC18 fetal head: fill outlines, train, predict, Dice and head circumference (HC) in mm.

Usage (from the repository root, after ``make env``)::

    .venv/bin/python examples/hc18/run_hc18.py --data ../shared/data/us_hc18 --out runs/hc18

    # the trained model on other images (e.g. a held-out set with its own CSV / annotations)
    .venv/bin/python examples/hc18/run_hc18.py --model runs/hc18/model \\
        --images OTHER/images --csv OTHER/pixel_size_and_hc.csv \\
        [--annotations OTHER/annotations] --out runs/hc18_other

    # the validation subjects again, with flip TTA
    .venv/bin/python examples/hc18/run_hc18.py --model runs/hc18/model --validation --tta \
        --images ../shared/data/us_hc18/images --csv ../shared/data/us_hc18/pixel_size_and_hc.csv \
        --annotations ../shared/data/us_hc18/annotations --out runs/hc18_tta

The data folder holds ``images/*.png``, ``annotations/*_Annotation.png`` (ellipse outlines) and
``pixel_size_and_hc.csv`` (``filename, pixel size(mm), head circumference (mm)``). HC is measured
by fitting an ellipse to the predicted mask (second moments of its largest component) and
converting its Ramanujan perimeter to mm with the pixel size. The mask written and scored is
that filled ellipse (the reference outlines are ellipses; ``--raw-masks`` keeps the network's
mask); ``dice_raw`` in the summary scores the network's mask either way.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from medseg.data.convert import fill_outline_masks
from medseg.data.splits import subject_of
from medseg.io import read_image, read_label, write_label
from medseg.metrics import dice
from medseg.metrics.aggregate import bootstrap_mean_ci
from medseg.metrics.shape import fit_ellipse
from medseg.model_folder import ModelFolder
from medseg.tasks.segmentation import SegmentationModel
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train

#: The subject id of an HC18 image name (``hc18.yaml``'s ``data.group_regex``).
SUBJECT = r"^(\d+)_"

HERE = Path(__file__).resolve().parent


def read_pixel_csv(path: Path) -> dict[str, tuple[float, float | None]]:
    """``{image stem: (mm per pixel, reference HC in mm or None)}``."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            keys = {k.strip().lower(): v for k, v in row.items()}
            name = Path(keys["filename"]).stem
            px = float(keys["pixel size(mm)"])
            hc = keys.get("head circumference (mm)")
            out[name] = (px, float(hc) if hc not in (None, "") else None)
    return out


def measure(model: SegmentationModel, images: list[Path], pixels: dict, masks_dir: Path | None,
            pred_dir: Path, tta: bool, ellipse_masks: bool = True) -> list[dict]:
    """Predict each image, write the mask, and measure Dice (if a reference mask exists) and
    HC (mm) of prediction and reference.

    The head is measured by the ellipse fitted to the predicted mask; with ``ellipse_masks``
    the mask written (and scored as ``dice``) is that filled ellipse, the shape the reference
    annotations are drawn as, and ``dice_raw`` scores the network's own mask."""
    rows = []
    for i, img_path in enumerate(images):
        image, meta = read_image(img_path)
        probs = model.predict(image, meta, tta=tta).probs
        raw = probs.argmax(0).numpy().astype(np.uint8)
        stem = img_path.stem
        px, hc_ref = pixels.get(stem, (float("nan"), None))
        e = fit_ellipse(raw > 0)
        hc_pred = e.circumference(px) if e is not None else float("nan")
        pred = e.mask(raw.shape).astype(np.uint8) if ellipse_masks and e is not None else raw
        write_label(pred_dir / img_path.name, pred, meta)
        row = {"image": img_path.name, "pixel_mm": px, "hc_ref_mm": hc_ref,
               "hc_pred_mm": hc_pred,
               "hc_abs_err_mm": abs(hc_pred - hc_ref) if hc_ref is not None else float("nan"),
               "hc_err_mm": hc_pred - hc_ref if hc_ref is not None else float("nan")}
        if masks_dir is not None and (masks_dir / img_path.name).exists():
            ref, _ = read_label(masks_dir / img_path.name)
            row["dice"] = dice(pred > 0, ref > 0)
            row["dice_raw"] = dice(raw > 0, ref > 0)
            er = fit_ellipse(ref > 0)
            row["hc_refmask_mm"] = er.circumference(px) if er is not None else float("nan")
        rows.append(row)
        if (i + 1) % 20 == 0:
            print(f"  measured {i + 1}/{len(images)}", flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean, median, std and a 95% interval of each figure; the interval resamples subjects
    (the number before the first ``_``), since the images of one subject are not
    independent."""
    def stats(key):
        keep = [r for r in rows if r.get(key) is not None and np.isfinite(float(r[key]))]
        if not keep:
            return None
        v = np.array([float(r[key]) for r in keep])
        lo, hi = bootstrap_mean_ci(v, n_boot=2000, groups=[subject_of(r["image"], SUBJECT)
                                                           for r in keep])
        return {"mean": float(v.mean()), "ci95_subjects": [lo, hi],
                "median": float(np.median(v)), "std": float(v.std()), "n": int(v.size)}

    out = {"n_images": len(rows), "dice": stats("dice"),
           "dice_raw (network mask, not the ellipse)": stats("dice_raw"),
           "hc_abs_err_mm": stats("hc_abs_err_mm"),
           "hc_signed_err_mm (bias)": stats("hc_err_mm")}
    ref_err = [abs(r["hc_refmask_mm"] - r["hc_ref_mm"]) for r in rows
               if r.get("hc_refmask_mm") is not None and r["hc_ref_mm"] is not None]
    if ref_err:
        out["hc_abs_err_of_reference_masks_mm"] = float(np.nanmean(ref_err))
    return out


def write_rows(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="HC18 folder (images/, annotations/, pixel_size_and_hc.csv)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--config", default=str(HERE / "hc18.yaml"))
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: "
                                                                "the config's, 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="skip training: use this model folder")
    ap.add_argument("--images", help="with --model: folder of images to predict")
    ap.add_argument("--csv", help="with --model: pixel size / HC CSV of those images")
    ap.add_argument("--annotations", help="with --model: outline annotations for Dice")
    ap.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    ap.add_argument("--raw-masks", action="store_true",
                    help="write and score the network's masks, not their fitted ellipses")
    ap.add_argument("--validation", action="store_true",
                    help="with --model: only the images the model held out for validation "
                         "(its plan.json's val_ids), e.g. to rescore them with --tta")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if a.model is None:
        if not a.data:
            ap.error("--data is needed to train")
        data = Path(a.data)
        masks = out / "masks"
        if not masks.exists():
            print(f"filling outlines -> {masks}")
            print(fill_outline_masks(data / "annotations", masks, suffix="_Annotation"))
        cfg = ExperimentConfig.load(a.config)
        cfg.data.dataset = str(data / "images")
        cfg.data.masks = str(masks)
        cfg.output_dir = str(out / "model")
        cfg.train.seed = a.seed
        if a.minutes is not None:
            cfg.train.max_minutes = a.minutes
        res = train(cfg)
        model_dir = Path(res.output_dir)
        plan = ModelFolder.open(model_dir).plan
        images = [data / "images" / f"{cid}.png" for cid in plan["val_ids"]]
        pixels = read_pixel_csv(data / "pixel_size_and_hc.csv")
        masks_dir: Path | None = masks
        split = "validation (subjects held out of training)"
        train_minutes = (time.perf_counter() - t0) / 60
    else:
        model_dir = Path(a.model)
        if not a.images or not a.csv:
            ap.error("--model needs --images and --csv")
        images = sorted(Path(a.images).glob("*.png"))
        if a.validation:
            val = set(ModelFolder.open(model_dir).plan.val_ids)
            images = [p for p in images if p.stem in val]
        pixels = read_pixel_csv(Path(a.csv))
        masks_dir = None
        if a.annotations:
            masks_dir = out / "masks"
            if not masks_dir.exists():
                print(fill_outline_masks(a.annotations, masks_dir, suffix="_Annotation"))
        split = (f"validation images (of the model) in {a.images}" if a.validation
                 else f"images in {a.images}")
        train_minutes = 0.0

    model = SegmentationModel.load(model_dir)
    print(f"predicting and measuring {len(images)} {split}")
    rows = measure(model, images, pixels, masks_dir, out / "predictions", a.tta,
                   ellipse_masks=not a.raw_masks)
    summary = summarize(rows)
    summary.update({"split": split, "train_minutes": round(train_minutes, 1),
                    "model": str(model_dir)})
    write_rows(out / "hc18_measurements.csv", rows)
    (out / "hc18_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
