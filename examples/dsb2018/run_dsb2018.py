"""DSB2018 nuclei: hold out 3 images by id, train an instance model, predict, evaluate.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python examples/dsb2018/run_dsb2018.py \\
        --data ../shared/data/inst_dsb2018 --out runs/dsb2018

The data folder is in the DSB2018 layout (``train/<id>/images/<id>.png``,
``train/<id>/masks/*.png``). The split is made with symbolic links in ``OUT/split/{train,test}``
(the data itself is never touched). Training runs ``medseg train --task instance --folds 3``
with ``dsb2018.yaml`` (3 fold models of 4.5 minutes each; the watershed parameters are chosen
on their out-of-fold predictions, ``postprocess.json``); the held-out images are predicted by
the fold ensemble with ``medseg predict`` and scored with ``medseg evaluate`` (F1@0.5, AP@0.5,
mAP 0.5:0.95, PQ). ``--folds 1`` trains one model with the configured parameters instead. A
complete model in ``OUT/model`` is reused; an interrupted K-fold run is resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from medseg.cli import main as medseg

HERE = Path(__file__).resolve().parent
#: Held-out ids: a small fluorescence image, a large one and one of the GNF DNA-stain images.
TEST_IDS = (
    "1d4a5e729bb96b08370789cad0791f6e52ce0ffe1fcc97a04046420b43c851dd",
    "4ee5850b63549794eb3ecd3d5f5673164ac16936e36ecc3700da886e3b616149",
    "gnf_dna-13",
)


def make_split(data: Path, out: Path) -> tuple[Path, Path]:
    """``out/train`` and ``out/test`` folders of links to the case folders of ``data``."""
    src = data / "train" if (data / "train").is_dir() else data
    ids = sorted(p.name for p in src.iterdir() if p.is_dir())
    missing = [i for i in TEST_IDS if i not in ids]
    if missing:
        raise SystemExit(f"{src}: held-out id(s) not found: {missing}")
    for part, keep in (("train", [i for i in ids if i not in TEST_IDS]), ("test", TEST_IDS)):
        d = out / part
        d.mkdir(parents=True, exist_ok=True)
        for i in keep:
            link = d / i
            if not link.exists():
                os.symlink((src / i).resolve(), link, target_is_directory=True)
    return out / "train", out / "test"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="DSB2018 folder (train/<id>/...)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--config", default=str(HERE / "dsb2018.yaml"))
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget override (per fold with --folds)")
    ap.add_argument("--folds", type=int, default=3,
                    help="K-fold cross-validation on the 9 training images: K models, the "
                         "watershed parameters chosen on their out-of-fold predictions "
                         "(postprocess.json), the test images predicted by the fold ensemble "
                         "(default 3; 1 = one model with the configured parameters)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    train_dir, test_dir = make_split(Path(a.data), out / "split")
    model = out / "model"
    t0 = time.time()
    trained = (model / "postprocess.json").exists() if a.folds > 1 else (
        model / "checkpoint_last.pt").exists()  # (a K-fold folder is complete once tuned)
    if not trained:
        extra = ["--max-minutes", str(a.minutes)] if a.minutes else []
        if a.folds > 1:
            extra += ["--folds", str(a.folds)]
            extra += ["--resume"] if model.exists() else []
        rc = medseg(["train", "--config", a.config, "--dataset", str(train_dir),
                     "--output", str(model), *extra])
        if rc:
            return rc
    t_train = time.time() - t0
    preds = out / "predictions"
    rc = medseg(["predict", "--model", str(model), "--input", str(test_dir),
                 "--output", str(preds), "--device", "cpu"])
    if rc:
        return rc
    rc = medseg(["evaluate", "--pred", str(preds), "--ref", str(test_dir),
                 "--output", str(out / "evaluation"), "--mask-threshold", "0.5"])
    if rc:
        return rc
    summary = json.loads((out / "evaluation" / "metrics.json").read_text())["summary"]
    summary["train_seconds_this_run"] = round(t_train, 1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
