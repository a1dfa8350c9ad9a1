"""Integration on real data (skipped without ../shared/data): HC18 fetal-head ultrasound.

A short CPU training on a subset of HC18 (outlines filled by ``fill_outline_masks``, subjects kept
apart by ``group_regex``) must segment held-out subjects well above chance.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data import fill_outline_masks
from medseg.io import read_image, read_label
from medseg.metrics import dice
from medseg.metrics.shape import fit_ellipse
from medseg.tasks.segmentation import SegmentationModel
from medseg.training.config import ExperimentConfig
from medseg.training.engine import train


@pytest.fixture(scope="module")
def hc18_subset(shared_data, tmp_path_factory):
    src = shared_data / "us_hc18"
    root = tmp_path_factory.mktemp("hc18")
    images, ann = root / "images", root / "annotations"
    images.mkdir()
    ann.mkdir()
    names = sorted(p.name for p in (src / "images").glob("*.png"))[:60]
    for n in names:
        (images / n).symlink_to(src / "images" / n)
        a = n.replace(".png", "_Annotation.png")
        (ann / a).symlink_to(src / "annotations" / a)
    rep = fill_outline_masks(ann, root / "masks", suffix="_Annotation")
    assert len(rep.written) == len(names) and not rep.failed
    return root


def test_hc18_short_training_beats_chance(hc18_subset, tmp_path):
    cfg = ExperimentConfig()
    cfg.data.dataset = str(hc18_subset / "images")
    cfg.data.masks = str(hc18_subset / "masks")
    cfg.data.modality = "US"
    cfg.data.group_regex = r"^(\d+)_"
    cfg.data.val_fraction = 0.15
    cfg.preprocess.target_spacing = [6.0, 6.0]  # 540x800 pixels -> 90x133
    cfg.model.options = {"channels": [8, 16, 32, 64, 96]}
    cfg.train.epochs = 12
    cfg.train.steps_per_epoch = 8
    cfg.train.batch_size = 8
    cfg.train.patch_size = [96, 128]
    cfg.train.device = "cpu"
    cfg.train.val_every = 0
    cfg.optim.lr = 3e-3
    cfg.output_dir = str(tmp_path / "model")
    res = train(cfg, log=lambda s: None)
    assert not res.interrupted
    model = SegmentationModel.load(tmp_path / "model")
    import json

    val_ids = json.loads((tmp_path / "model" / "plan.json").read_text())["val_ids"]
    assert val_ids and {v.split("_")[0] for v in val_ids}.isdisjoint(
        {t.split("_")[0] for t in json.loads(
            (tmp_path / "model" / "plan.json").read_text())["train_ids"]})
    dices, chance, hc_rel = [], [], []
    for cid in val_ids:
        img, meta = read_image(hc18_subset / "images" / f"{cid}.png")
        ref, _ = read_label(hc18_subset / "masks" / f"{cid}.png")
        pred = model.predict(img, meta).probs.argmax(0).numpy()
        assert pred.shape == ref.shape  # back on the original 540x800 grid
        dices.append(dice(pred == 1, ref == 1))
        chance.append(dice(np.ones_like(ref, bool), ref == 1))  # "everything is head"
        e, er = fit_ellipse(pred == 1), fit_ellipse(ref == 1)
        if e is not None:
            hc_rel.append(abs(e.circumference() - er.circumference()) / er.circumference())
    print(f"HC18 subset: {len(val_ids)} held-out images, Dice {np.mean(dices):.3f} "
          f"(chance {np.mean(chance):.3f}), HC rel. error {np.median(hc_rel):.3f}")
    assert np.mean(dices) > 0.80 > np.mean(chance) + 0.2
    assert np.median(hc_rel) < 0.10
