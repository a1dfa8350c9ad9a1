"""The report builder (``medseg.reports.report`` / ``evaluation``): tables, intervals,
self-containment, sort attributes, and the Markdown twin with the same rows."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from medseg.metrics.policy import EmptyPolicy
from medseg.reports import Report, Table, render_html, render_markdown, write_report
from medseg.reports.report import (
    CSP,
    policy_note,
    section_table,
    segmentation_case_table,
    segmentation_metric_table,
)


def _case(name, d1, d2, h1=None):
    return {"case": name, "classes": {"1": {"dice": d1, "hd95": h1}, "2": {"dice": d2,
                                                                          "hd95": None}}}


RESULTS = [_case("a", 0.5, 1.0, 2.0), _case("b", 0.7, 0.0, 4.0), _case("c", 0.9, None, 6.0)]


def _row(table, cls, metric):
    return next(r for r in table.rows if r[0] == cls and r[1] == metric)


def test_metric_table_hand_values_and_reference_bootstrap():
    t = segmentation_metric_table(RESULTS, ["dice", "hd95"], {"1": "organ", "2": "lesion"},
                                  n_boot=500, seed=3)
    assert t.header == ["class", "metric", "mean", "ci_low", "ci_high", "median", "n", "n_nan"]
    organ = _row(t, "organ", "dice")
    assert math.isclose(organ[2], 0.7) and math.isclose(organ[5], 0.7) and organ[6:] == [3, 0]
    # a plain-loop percentile bootstrap over cases with the same generator
    rng = np.random.default_rng(3)
    v = np.array([0.5, 0.7, 0.9])
    pooled = np.array([[0.5, 1.0], [0.7, 0.0], [0.9, np.nan]])
    boot, boot_pooled = [], []
    for _ in range(500):
        idx = rng.integers(0, 3, size=3)
        boot.append(v[idx].mean())
        boot_pooled.append(np.nanmean(pooled[idx]))
    np.testing.assert_allclose(organ[3:5], np.quantile(boot, [0.025, 0.975]), rtol=1e-12)
    lesion = _row(t, "lesion", "dice")
    assert math.isclose(lesion[2], 0.5) and lesion[6:] == [2, 1]  # None left out, counted
    allc = _row(t, "all classes", "dice")
    assert math.isclose(allc[2], np.nanmean(pooled)) and allc[6:] == [5, 1]
    np.testing.assert_allclose(allc[3:5], np.quantile(boot_pooled, [0.025, 0.975]),
                               rtol=1e-12)
    undefined = _row(t, "lesion", "hd95")
    assert all(math.isnan(x) for x in undefined[2:6]) and undefined[6:] == [0, 3]
    assert "95% percentile bootstrap" in t.caption and "500" in t.caption


def test_bootstrap_closed_forms():
    # two cases 0 and 1: resampled means are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5% / 97.5% quantiles of 1000 resamples are 0 and 1; a constant has a point interval
    res = [_case("a", 0.0, 0.25), _case("b", 1.0, 0.25)]
    t = segmentation_metric_table(res, ["dice"], None)
    assert _row(t, "class 1", "dice")[2:5] == [0.5, 0.0, 1.0]
    assert _row(t, "class 2", "dice")[2:5] == [0.25, 0.25, 0.25]


def test_case_table_worst_first_and_uncertain_first():
    t = segmentation_case_table(RESULTS, ["dice", "hd95"], {"1": "organ", "2": "lesion"})
    assert t.header == ["case", "mean dice", "organ dice", "organ hd95", "lesion dice",
                        "lesion hd95"]
    # mean Dice: a 0.75, b 0.35, c 0.9 (the undefined lesion left out)
    assert [r[0] for r in t.rows] == ["b", "a", "c"]
    assert math.isclose(t.rows[0][1], 0.35) and math.isclose(t.rows[2][1], 0.9)
    assert t.numeric(1) and not t.numeric(0) and "worst first" in t.caption
    ranking = [{"case": "c", "score": 0.8, "column": "predictive_entropy_structure"},
               {"case": "a", "score": 0.2, "column": "predictive_entropy_structure"}]
    u = segmentation_case_table(RESULTS, ["dice"], None, ranking)
    assert u.header[:3] == ["case", "predictive_entropy_structure", "mean dice"]
    assert [r[0] for r in u.rows] == ["c", "a", "b"]  # b has no score: last
    assert u.rows[0][1] == 0.8 and math.isnan(u.rows[2][1])
    assert "most uncertain first" in u.caption


def test_policy_note_is_the_policy_line():
    p = EmptyPolicy(distance_one_empty="diagonal")
    assert policy_note(p.to_dict()) == p.describe()
    assert policy_note(None) == "empty-case policy: not recorded"


def test_generic_section_table_with_class_names():
    long = "difference = predicted - reference; both empty: 0 (counted)"
    value = {"1": {"bias": 0.5, "n": 3, "unit": "ml", "points": [1, 2], "policy": long},
             "2": {"bias": -1.0, "n": 3, "unit": "ml"}}
    t, rest = section_table(value, {"1": "organ", "2": "lesion"})
    assert t.header == ["", "bias", "n", "unit"]
    assert t.rows == [["organ", 0.5, 3, "ml"], ["lesion", -1.0, 3, "ml"]]
    assert rest == [("organ.points", "[1, 2]"), ("organ.policy", long)]
    t2, rest2 = section_table({"connectivity": "full", "tol": 1.0})
    assert t2 is None and rest2 == [("connectivity", "full"), ("tol", "1")]


class _Collect(HTMLParser):
    """Tags with their attributes, and the text of every cell of the case table's body."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self._table = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tbody" and self._table == "case-table":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _md_table_rows(md: str, heading: str) -> list[list[str]]:
    block = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
    return [[c.strip().replace("\\|", "|") for c in ln.strip("|").split(" | ")] for ln in lines]


def test_html_is_self_contained_and_sortable(eval_3d: Path):
    text = (eval_3d / "report.html").read_text()
    p = _Collect()
    p.feed(text)
    # nothing outside the page: images are data URIs, no external script/style/link/frame
    imgs = [a for t, a in p.tags if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert not [a for t, a in p.tags if t in ("link", "iframe", "object", "embed", "audio",
                                               "video", "source")]
    assert all("src" not in a for t, a in p.tags if t == "script")
    assert not re.search(r"https?:|//[a-z]", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+",
                                                     "", text))
    assert ("meta", {"http-equiv": "Content-Security-Policy", "content": CSP}) in p.tags
    assert "default-src 'none'" in CSP
    # sorting data: every header typed, every cell with its sort value
    ths = [a for t, a in p.tags if t == "th" and "data-type" in a]
    assert {a["data-type"] for a in ths} == {"num", "text"}
    metrics = json.loads((eval_3d / "metrics.json").read_text())
    n = len(metrics["cases"])
    assert len(p.rows) == n == 3
    tds = [a for t, a in p.tags if t == "td" and "data-v" in a]
    values = {c["case"]: c["classes"]["1"]["dice"] for c in metrics["cases"]}
    dice_cells = [a["data-v"] for a in tds if a["data-v"] in {repr(v) for v in values.values()}]
    assert len(dice_cells) >= n  # the organ Dice sorts on its exact value
    # the 3D sliders: one per plane and case, each with its JSON list of slices
    ranges = [a for t, a in p.tags if t == "input" and a.get("type") == "range"]
    assert len(ranges) == 3 * n
    for a in ranges:
        m = re.search(rf"id='{a['data-slices']}'>(.*?)</script>", text)
        slices = json.loads(m.group(1))
        assert len(slices) == int(a["max"]) + 1 and all(u.startswith("data:image/png")
                                                        for _, u in slices)


def test_markdown_twin_has_the_same_rows(eval_3d: Path, eval_2d: Path):
    for ev in (eval_3d, eval_2d):
        p = _Collect()
        p.feed((ev / "report.html").read_text())
        md = (ev / "report.md").read_text()
        assert _md_table_rows(md, "Cases") == p.rows
        for line in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):  # linked pictures exist
            assert (ev / line).is_file()
    assert "## Model card" in (eval_2d / "report.md").read_text()


def test_write_report_formats_and_atomic(tmp_path: Path):
    rep = Report("t", info=[("a", "b")], metrics=Table(["x", "y"], [["r", 1.5]]),
                 cases=Table(["case", "v"], [["c1", float("nan")], ["c2", 2.0]]))
    path = write_report(tmp_path, rep, formats=("md",))
    assert path == tmp_path / "report.md" and not (tmp_path / "report.html").exists()
    assert write_report(tmp_path, rep) == tmp_path / "report.html"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.html", "report.md"]
    html = render_html(rep)
    assert "<td data-v='' class='n'>n/a</td>" in html and "data-v='2.0'" in html
    assert "| c1 | n/a |" in render_markdown(rep, tmp_path)
