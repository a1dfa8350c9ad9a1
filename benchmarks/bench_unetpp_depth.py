"""UNet++ pruning (A6): Dice and inference time of each prune depth of one trained network.

Trains one UNet++ with deep supervision on 2D phantoms through the ordinary training loop, then
predicts the held-out phantoms with the head of each depth ``d = 1 .. L`` (only the nodes
``X^{i,j}, i + j <= d`` are computed) and with the mean of all heads, and prints per setting the
held-out mean foreground Dice, the forward time per image (median of repeats) and the
parameter count actually used. Nothing is asserted: it prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_unetpp_depth.py --out /tmp/unetpp_depth
    .venv/bin/python benchmarks/bench_unetpp_depth.py --quick --out /tmp/unetpp_depth_q
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medseg.io import read_image, read_label  # noqa: E402
from medseg.metrics import dice  # noqa: E402
from medseg.physics import PhantomSpec, write_phantom_dataset  # noqa: E402
from medseg.tasks.segmentation import SegmentationModel  # noqa: E402
from medseg.training.config import ExperimentConfig  # noqa: E402
from medseg.training.engine import train  # noqa: E402


def _used_parameters(model: torch.nn.Module, depth: int | None) -> int:
    """Parameters of the nodes and heads a prune depth evaluates (all of them for ``None``)."""
    if depth is None:
        return sum(p.numel() for p in model.parameters())
    total = 0
    for name, p in model.named_parameters():
        part = name.split(".")
        if part[0] in ("nodes", "ups"):  # X^{i,j} and its up-sampling, keyed "x{i}_{j}"
            i, j = (int(v) for v in part[1][1:].split("_"))
            total += p.numel() if i + j <= depth else 0
        elif part[0] == "encoder":  # X^{i,0}
            total += p.numel() if int(part[1]) <= depth else 0
        elif part[0] == "heads":
            total += p.numel() if int(part[1]) == depth - 1 else 0
        else:
            total += p.numel()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work folder (data, model, results.json)")
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--modality", choices=("mr", "ct", "us"), default="mr")
    ap.add_argument("--noise-level", type=float, default=1.0,
                    help="phantom noise (US 2 = fully developed speckle: a harder task)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    size, n_train, n_test = (64, 12, 4) if a.quick else (128, 40, 10)
    data = out / "data"
    if not (data / "dataset.json").exists():
        spec = PhantomSpec(shape=(size, size), modality=a.modality, lesion_fraction=0.01,
                           noise_level=a.noise_level)
        write_phantom_dataset(data, spec, n_train=n_train, n_test=n_test, seed=0)
    model_dir = out / "model"
    if not (model_dir / "checkpoint_best.pt").exists():
        cfg = ExperimentConfig()
        cfg.data.dataset = str(data)
        cfg.data.val_fraction = 0.15
        cfg.output_dir = str(model_dir)
        cfg.model.name = "unetpp"
        cfg.model.options = {"channels": [16, 32, 64, 128, 256], "deep_supervision": True}
        cfg.train.batch_size = 8
        cfg.train.steps_per_epoch = 5 if a.quick else 20
        cfg.train.epochs = 2 if a.quick else 16
        cfg.train.val_every = 4
        cfg.train.max_minutes = 2.0 if a.quick else 12.0
        cfg.optim.lr = 3e-3
        train(cfg)
    tm = SegmentationModel.load(model_dir, device="cpu")
    net = tm.model.eval()
    images = sorted((data / "imagesTs").glob("*.nii.gz"))
    arrays = []
    for p in images:
        img, meta = read_image(p)
        lab, _ = read_label(data / "labelsTs" / p.name.replace("_0000", ""))
        arrays.append((img, meta, lab))
    rows = []
    settings: list[int | None] = [*range(1, net.depth + 1), None]
    for d in settings:
        net.prune_depth = d
        dices, times = [], []
        for img, meta, lab in arrays:
            probs = tm.predict(img, meta, tta=False).probs
            pred = probs.argmax(0).numpy()
            fg = [float(dice(pred == c, lab == c)) for c in range(1, probs.shape[0])]
            dices.append(float(np.mean(fg)))
        x = torch.randn(1, 1, size, size)
        with torch.inference_mode():
            net(x)
            for _ in range(a.repeats):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
        rows.append({"depth": "mean of heads" if d is None else d,
                     "dice": float(np.mean(dices)),
                     "forward_ms": 1000 * statistics.median(times),
                     "parameters": _used_parameters(net, d)})
    net.prune_depth = None
    print(f"UNet++ L={net.depth}, {size}^2 {a.modality.upper()} phantoms (noise level "
          f"{a.noise_level:g}), {len(arrays)} held-out images, "
          f"{a.threads} threads")
    print("| head | held-out fg Dice | forward ms / image | parameters used |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r['dice']:.3f} | {r['forward_ms']:.1f} | {r['parameters']:,} |")
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
