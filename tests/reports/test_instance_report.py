"""The instance evaluation writes the report too: per-image means with intervals, the per-image
table worst first, pooled counts; one self-contained file."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medseg.io import ImageMeta, write_label
from medseg.tasks.instance import evaluate_instance_folders


def test_instance_evaluation_writes_a_self_contained_report(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    meta = ImageMeta.from_spacing((1.0, 1.0), (20, 20))
    r = np.zeros((20, 20), np.int64)
    r[2:6, 2:6], r[10:15, 10:15] = 1, 2
    perfect, half = r.copy(), np.zeros_like(r)
    half[2:6, 2:7] = 1  # one of two nuclei found (IoU 16/20 = 0.8), none extra
    for name, p in (("a", perfect), ("b", half)):
        write_label(ref / f"{name}.png", r.astype(np.uint8), meta)
        write_label(pred / f"{name}_instances.png", p.astype(np.uint8), meta)
    res = evaluate_instance_folders(pred, ref, tmp_path / "ev", log=lambda s: None)
    html_path = res["files"][-1]
    assert html_path.name == "report.html" and (tmp_path / "ev" / "report.md").is_file()
    html = html_path.read_text()
    assert not re.search(r"https?://", html)
    # the case table: worst F1@0.5 first (b: 2/3, a: 1)
    body = html[html.index("worst F1@0.5 first"):]
    assert body.index(">b<") < body.index(">a<")
    md = (tmp_path / "ev" / "report.md").read_text()
    # mean F1@0.5 over the two images: (1 + 2/3) / 2 = 0.8333
    assert re.search(r"\| f1@0\.5 \| 0\.8333 \|", md), md
    assert res["summary"]["mean"]["f1@0.5"] == pytest.approx(5 / 6)
