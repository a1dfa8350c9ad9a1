"""The evaluation report: one self-contained ``report.html`` and its Markdown twin (E5).

``report.html`` opens offline, from a ``file://`` URL or out of a zip: every picture is a PNG
data URI, the only script and style are inline, and a Content-Security-Policy
(``default-src 'none'``) forbids the page any other fetch. It holds

* the summary: the folders, the model, the metric table with 95% percentile bootstrap
  intervals over cases or subjects (:func:`medseg.metrics.aggregate.mean_intervals`) and the
  empty-case policy;
* the per-case table, sortable by any column (click a header; numbers sort as numbers, undefined
  values last), worst cases first, or most uncertain first when the caller gives a ranking;
* per case the image with reference, prediction (and uncertainty) overlays; a 3D case gets a
  slice slider per plane that swaps the embedded slice (:mod:`medseg.reports.slices`);
* figures (ROC, reliability), every other section of the evaluation summary (rendered as a
  key / value table, so sections added later appear without code here), and the model card.

``report.md`` carries the same tables in the same row order, and links the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io.atomic import atomic_write_text
from medseg.metrics.aggregate import mean_intervals, metric_array
from medseg.metrics.policy import EmptyPolicy
from medseg.reports.model_card import ModelCard, fmt
from medseg.reports.slices import CaseImages

#: The page may load nothing but its own inline script / style and data: images.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")
#: Summary keys the report shows in its own tables (others become generic sections).
SEGMENTATION_KEYS = frozenset({"n_cases", "policy", "metrics", "classes", "pooled",
                               "class_names", "ci95"})
#: Lists longer than this are summarised in generic sections ("N values, see metrics.json").
MAX_LIST = 16
#: Longer texts of a generic section are shown as key / value rows, not as table cells.
MAX_CELL = 40


@dataclass
class Table:
    """A table: ``header`` and ``rows`` of raw values (numbers, text, ``None`` / NaN).

    Attributes:
        header: Column names.
        rows: One list of values per row, as long as ``header``.
        caption: A line under the table heading.
    """

    header: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def numeric(self, col: int) -> bool:
        """Whether every defined value of column ``col`` is a number."""
        vals = [r[col] for r in self.rows if r[col] is not None]
        return bool(vals) and all(isinstance(v, (int, float, np.number))
                                  and not isinstance(v, bool) for v in vals)


@dataclass
class Report:
    """Everything a report shows; :func:`render_html` / :func:`render_markdown` lay it out.

    Attributes:
        title: Heading.
        info: ``(field, value)`` lines of the summary (folders, model, case count...).
        notes: Free lines (empty-case policy, how the intervals were computed...).
        metrics: The metric table (with intervals).
        cases: The per-case table, rows in the default order; its first column is the case id.
        images: Pictures per case (in the order shown).
        figures: ``(caption, PNG file)`` embedded as data URIs (ROC, reliability).
        sections: ``(heading, value)`` rendered generically (nested dicts, lists, scalars).
        model_card: The model card, or ``None``.
        key_names: Names of keys in ``sections`` (class id -> class name).
    """

    title: str
    info: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: Table | None = None
    cases: Table | None = None
    images: list[CaseImages] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    sections: list[tuple[str, Any]] = field(default_factory=list)
    model_card: ModelCard | None = None
    key_names: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ tables from results
def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def segmentation_metric_table(
    case_results: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    class_names: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    subjects: Sequence[str] | None = None,
    intervals: Mapping[str, Any] | None = None,
) -> Table:
    """Mean, 95% bootstrap interval, median and counts per class and metric, and pooled.

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case` (``N`` cases).
        metrics: Metric keys (``dice``, ``hd95``, ``nsd``...).
        class_names: Class id (text) -> name.
        n_boot: Bootstrap resamples (cases drawn with replacement).
        seed: Seed of the resampling.
        subjects: One subject id per case: subjects are resampled instead.
        intervals: :func:`medseg.metrics.aggregate.mean_intervals` already computed (the
            evaluation's ``summary["ci95"]``), used instead of drawing again.

    Returns:
        Rows ``class, metric, mean, ci_low, ci_high, median, n, n_nan``; the mean is NaN-aware
        over cases (as :func:`medseg.metrics.summarize`); ``all classes`` pools every
        (case, class) pair, its interval resampling cases.
    """
    names = dict(class_names or {})
    classes, vals = metric_array(case_results, metrics)
    n, m, c = vals.shape
    header = ["class", "metric", "mean", "ci_low", "ci_high", "median", "n", "n_nan"]
    if n == 0 or m == 0 or c == 0:
        return Table(header, [])
    ci = intervals if intervals is not None else mean_intervals(
        case_results, metrics, n_boot=n_boot, seed=seed, subjects=subjects)

    def interval(cls: str | None, met: str) -> list[float]:
        if cls is None:
            got = (ci.get("pooled") or {}).get(met)
        else:
            per = ci.get("classes") or {}
            got = (per.get(cls) or per.get(int(cls) if cls.lstrip("-").isdigit() else cls)
                   or {}).get(met)
        return [_value(v) for v in got] if got else [math.nan, math.nan]

    rows = []
    for k, cls in enumerate([*classes, None]):
        for j, met in enumerate(metrics):
            v = vals[:, j, k] if cls is not None else vals[:, j, :].ravel()
            finite = v[~np.isnan(v)]
            rows.append([names.get(cls, f"class {cls}") if cls is not None else "all classes",
                         met, float(finite.mean()) if finite.size else math.nan,
                         *interval(cls, met),
                         float(np.median(finite)) if finite.size else math.nan,
                         int(finite.size), int(v.size - finite.size)])
    over = ci.get("over", "cases")
    return Table(header, rows,
                 caption=f"mean over cases with a 95% percentile bootstrap interval "
                         f"({ci.get('n_boot', n_boot)} resamples of the {ci.get('n_groups', n)} "
                         f"{'case(s)' if over == 'cases' else 'subject(s)'}, seed "
                         f"{ci.get('seed', seed)}); undefined (NaN) values are left out and "
                         "counted in n_nan")


def segmentation_case_table(
    case_results: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    class_names: Mapping[str, str] | None = None,
    ranking: Sequence[Mapping[str, Any]] | None = None,
) -> Table:
    """One row per case: its metrics per class, worst first (or most uncertain first).

    Args:
        case_results: Outputs of :func:`medseg.metrics.evaluate_case`.
        metrics: Metric keys, one column per class and metric (``organ dice``...).
        class_names: Class id (text) -> name.
        ranking: :func:`medseg.uncertainty.ranking.rank_cases` rows (``case``, ``score``,
            ``column``), most uncertain first; when given the table gets an uncertainty column
            and follows that order (cases it lacks last).

    Returns:
        The table; without a ranking rows are sorted by the mean Dice over classes, lowest
        first (cases without a defined Dice last).
    """
    names = dict(class_names or {})
    classes = sorted({str(c) for r in case_results for c in r.get("classes", {})},
                     key=lambda c: (len(c), c))
    header = ["case"]
    score_of: dict[str, float] = {}
    column = ""
    if ranking:
        column = str(ranking[0].get("column", "uncertainty"))
        header.append(column)
        score_of = {str(r["case"]): _value(r.get("score")) for r in ranking}
    header.append("mean dice")
    for cls in classes:
        header += [f"{names.get(cls, 'class ' + cls)} {m}" for m in metrics]
    rows = []
    for r in case_results:
        cl = {str(k): v for k, v in r.get("classes", {}).items()}
        dice = [_value(cl.get(c, {}).get("dice")) for c in classes]
        good = [d for d in dice if not math.isnan(d)]
        row: list[Any] = [str(r.get("case"))]
        if ranking:
            row.append(score_of.get(str(r.get("case")), math.nan))
        row.append(sum(good) / len(good) if good else math.nan)
        for cls in classes:
            row += [_value(cl.get(cls, {}).get(m)) for m in metrics]
        rows.append(row)
    if ranking:
        order = {str(r["case"]): i for i, r in enumerate(ranking)}
        rows.sort(key=lambda row: order.get(row[0], len(order)))
        caption = (f"most uncertain first (uncertainty.csv, {column} averaged over a case's "
                   "structures, as medseg review ranks them); click a header to sort")
    else:
        md = header.index("mean dice")
        rows.sort(key=lambda row: (math.isnan(row[md]), row[md] if not math.isnan(row[md])
                                   else 0.0))
        caption = "worst first (lowest mean Dice over classes); click a header to sort"
    return Table(header, rows, caption)


def policy_note(policy: Mapping[str, Any] | None) -> str:
    """The empty-case policy line of :meth:`EmptyPolicy.describe` (``None``: not recorded)."""
    if not policy:
        return "empty-case policy: not recorded"
    try:
        return EmptyPolicy.from_dict(policy).describe()
    except (TypeError, ValueError):
        return f"empty-case policy: {json.dumps(policy, sort_keys=True)}"


def extra_sections(summary: Mapping[str, Any], known: frozenset[str]) -> list[tuple[str, Any]]:
    """The summary's sections the report has no dedicated table for, as ``(heading, value)``."""
    return [(str(k), v) for k, v in summary.items() if k not in known]


# ------------------------------------------------------------------ rendering helpers
def _sort_key(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return repr(float(v))
    return str(v)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``(dotted key, text)``; long lists summarised."""
    if isinstance(value, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or [(prefix, "{}")]
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST:
            return [(prefix, f"{len(value)} values (in metrics.json)")]
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            return [(prefix, "[" + ", ".join(fmt(v) for v in value) + "]")]
        out = []
        for i, v in enumerate(value):
            out += _flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, fmt(value))]


def section_table(value: Any, key_names: Mapping[str, str] | None = None
                  ) -> tuple[Table | None, list[tuple[str, str]]]:
    """A summary section as a table when it is a mapping of records (``{class: {field:
    value}}``: one row per key, one column per scalar field), plus the ``(key, text)`` rows of
    everything else (:func:`_flatten`)."""
    names = dict(key_names or {})
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping)
                                                    for v in value.values()):
        def cell(x: Any) -> bool:  # short scalars become columns, the rest key / value rows
            return not isinstance(x, (Mapping, list, tuple)) and len(str(x)) <= MAX_CELL

        cols: list[str] = []
        for rec in value.values():
            cols += [str(k) for k, x in rec.items() if str(k) not in cols and cell(x)]
        if cols:
            rows = [[names.get(str(k), str(k)), *[rec.get(c) for c in cols]]
                    for k, rec in value.items()]
            rest = {k: {f: x for f, x in rec.items() if str(f) not in cols or not cell(x)}
                    for k, rec in value.items()}
            rest = {names.get(str(k), str(k)): v for k, v in rest.items() if v}
            return Table(["", *cols], rows), _flatten(rest) if rest else []
    return None, _flatten(value)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 7px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}
table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
.caption{color:#555;font-size:.9em}figure.case{display:inline-block;margin:.5em 1em 1em 0;
vertical-align:top}figure.case figcaption{font-weight:bold}.plane{margin:.3em 0}
.plane input{width:100%;max-width:400px}.panels{color:#555;font-size:.85em}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em}
"""

_SCRIPT = """
(function(){
function sortBy(th){
  var table=th.closest('table'), body=table.tBodies[0], col=th.cellIndex;
  var asc=th.getAttribute('aria-sort')!=='ascending', num=th.getAttribute('data-type')==='num';
  Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',asc?'ascending':'descending');
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
    var x=a.cells[col].getAttribute('data-v'), y=b.cells[col].getAttribute('data-v');
    if(x===''||y===''){return (x==='')-(y==='');}
    var r=num?parseFloat(x)-parseFloat(y):x.localeCompare(y);
    return asc?r:-r;});
  rows.forEach(function(r){body.appendChild(r);});
}
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click',function(){sortBy(th);});});
document.querySelectorAll('input[type=range][data-slices]').forEach(function(el){
  var slices=JSON.parse(document.getElementById(el.getAttribute('data-slices')).textContent);
  var img=document.getElementById(el.getAttribute('data-img'));
  var label=document.getElementById(el.getAttribute('data-label'));
  function show(){var s=slices[parseInt(el.value,10)]; img.src=s[1];
    img.setAttribute('data-slice',s[0]); label.textContent=el.getAttribute('data-plane')+
    ' slice '+s[0]+' of '+el.getAttribute('data-n');}
  el.addEventListener('input',show);
});
})();
"""


def _html_table(t: Table, sortable: bool, table_id: str = "") -> list[str]:
    cls = " class='sortable'" if sortable else ""
    tid = f" id='{_e(table_id)}'" if table_id else ""
    out = []
    if t.caption:
        out.append(f"<p class='caption'>{_e(t.caption)}</p>")
    kinds = ["num" if t.numeric(i) else "text" for i in range(len(t.header))]
    out.append(f"<table{cls}{tid}><thead><tr>" + "".join(
        f"<th data-type='{k}' title='sort by {_e(h)}'>{_e(h)}</th>"
        for h, k in zip(t.header, kinds, strict=True)) + "</tr></thead><tbody>")
    for r in t.rows:
        cells = "".join(
            f"<td data-v='{_e(_sort_key(v))}'" + (" class='n'" if k == "num" else "")
            + f">{_e(fmt(v))}</td>" for v, k in zip(r, kinds, strict=True))
        out.append(f"<tr data-case='{_e(r[0])}'>{cells}</tr>")
    out.append("</tbody></table>")
    return out


def _html_kv(rows: Sequence[tuple[str, str]]) -> list[str]:
    return ["<table>"] + [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows] + [
        "</table>"]


def _html_card(card: ModelCard, level: int, heading: bool = True) -> list[str]:
    h, hs = f"h{level}", f"h{level + 1}"
    out = [f"<{h} id='model-card'>{_e(card.title)}</{h}>"] if heading else []
    for s in card.sections:
        out.append(f"<{hs}>{_e(s.heading)}</{hs}>")
        if s.rows:
            out += _html_kv(s.rows)
        if s.table is not None:
            out += _html_table(Table(s.table[0], [list(r) for r in s.table[1]]), False)
        if len(s.text) > 1:
            out += ["<ul>"] + [f"<li>{_e(t)}</li>" for t in s.text] + ["</ul>"]
        elif s.text:
            out.append(f"<p>{_e(s.text[0])}</p>")
        if s.pre:
            out.append(f"<pre>{_e(s.pre)}</pre>")
    return out


def _html_case(ci: CaseImages, k: int) -> list[str]:
    out = [f"<figure class='case' id='case-{k}' data-case='{_e(ci.case)}'>",
           f"<figcaption>{_e(ci.case)}</figcaption>",
           f"<div class='panels'>{_e(' | '.join(ci.panels))}</div>"]
    for plane, entries in ci.planes.items():
        if not entries:
            continue
        start = ci.start.get(plane, 0)
        idx, uri = entries[start]
        base = f"{k}-{plane}"
        n = ci.n_slices.get(plane, len(entries))
        out.append("<div class='plane'>")
        out.append(f"<img id='img-{base}' src='{uri}' data-slice='{idx}' "
                   f"alt='{_e(ci.case)} {plane}'>")
        if len(entries) > 1:
            out.append(f"<br><input type='range' id='range-{base}' min='0' "
                       f"max='{len(entries) - 1}' value='{start}' step='1' "
                       f"data-slices='slices-{base}' data-img='img-{base}' "
                       f"data-label='label-{base}' data-plane='{plane}' data-n='{n}' "
                       f"aria-label='{_e(ci.case)} {plane} slice'>")
            out.append(f"<span id='label-{base}'>{plane} slice {idx} of {n}</span>")
            js = json.dumps([[i, u] for i, u in entries]).replace("</", "<\\/")
            out.append(f"<script type='application/json' id='slices-{base}'>{js}</script>")
        out.append("</div>")
    out.append("</figure>")
    return out


def render_html(report: Report) -> str:
    """The whole page as one string (no reference outside the page)."""
    h = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
         f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
         "<meta name='viewport' content='width=device-width, initial-scale=1'>",
         f"<title>{_e(report.title)}</title><style>{_STYLE}</style></head><body>",
         f"<h1>{_e(report.title)}</h1>"]
    if report.info or report.notes:
        h.append("<h2 id='summary'>Summary</h2>")
        h += _html_kv(report.info)
        if report.notes:
            h += ["<ul>"] + [f"<li>{_e(n)}</li>" for n in report.notes] + ["</ul>"]
    if report.metrics is not None:
        h.append("<h2 id='metrics'>Metrics</h2>")
        h += _html_table(report.metrics, False, "metrics-table")
    if report.cases is not None:
        h.append("<h2 id='cases'>Cases</h2>")
        h += _html_table(report.cases, True, "case-table")
    if report.images:
        h.append("<h2 id='images'>Images</h2>")
        h.append("<p class='caption'>reference, prediction and uncertainty overlays on the same "
                 "slice; a 3D case has a slider per plane (every embedded slice of the volume)"
                 "</p>")
        for k, ci in enumerate(report.images):
            h += _html_case(ci, k)
    for caption, path in report.figures:
        h.append(f"<h2>{_e(caption)}</h2><img src='{_data_uri(path)}' alt='{_e(caption)}'>")
    for heading, value in report.sections:
        h.append(f"<h2>{_e(heading)}</h2>")
        table, rest = section_table(value, report.key_names)
        if table is not None:
            h += _html_table(table, False)
        if rest:
            h += _html_kv(rest)
    if report.model_card is not None:  # a card alone: the page title is the card's
        alone = report.model_card.title == report.title
        h += _html_card(report.model_card, 1 if alone else 2, heading=not alone)
    h.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(h) + "\n"


# ------------------------------------------------------------------ Markdown twin
def _md_cell(v: Any) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_md_cell(c) for c in header) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return out + [""]


def _md_link(path: Path, base: Path) -> str:
    p, b = Path(path).resolve(), base.resolve()
    return (p.relative_to(b) if p.is_relative_to(b) else p).as_posix()


def render_markdown(report: Report, base: Path) -> str:
    """The Markdown twin: the same tables in the same row order; pictures linked relative to
    ``base`` (the folder of ``report.md``)."""
    md = [f"# {report.title}", ""]
    if report.info or report.notes:
        md += ["## Summary", ""] + _md_table(["field", "value"], report.info)
        md += [f"- {n}" for n in report.notes] + [""]
    if report.metrics is not None:
        md += ["## Metrics", "", report.metrics.caption, ""]
        md += _md_table(report.metrics.header, report.metrics.rows)
    if report.cases is not None:
        md += ["## Cases", "", report.cases.caption, ""]
        md += _md_table(report.cases.header, report.cases.rows)
    shown = [ci for ci in report.images if ci.file is not None]
    if shown:
        md += ["## Images", ""]
        md += [f"![{ci.case}]({_md_link(ci.file, base)})" for ci in shown] + [""]
    for caption, path in report.figures:
        md += [f"## {caption}", "", f"![{caption}]({_md_link(path, base)})", ""]
    for heading, value in report.sections:
        md += [f"## {heading}", ""]
        table, rest = section_table(value, report.key_names)
        if table is not None:
            md += _md_table(table.header, table.rows)
        if rest:
            md += _md_table(["field", "value"], rest)
    card = report.model_card
    if card is not None:
        lvl = "#" if card.title == report.title else "##"
        if card.title != report.title:  # a card alone: the page title is the card's
            md += [f"{lvl} {card.title}", ""]
        for s in card.sections:
            md += [f"{lvl}# {s.heading}", ""]
            if s.rows:
                md += _md_table(["field", "value"], s.rows)
            if s.table is not None:
                md += _md_table(s.table[0], s.table[1])
            md += [f"- {t}" if len(s.text) > 1 else t for t in s.text] + ([""] if s.text else [])
            if s.pre:
                md += ["```yaml", s.pre.rstrip("\n"), "```", ""]
    return "\n".join(md).rstrip("\n") + "\n"


def write_report(out_dir: str | Path, report: Report, formats: Sequence[str] = ("html", "md")
                 ) -> Path:
    """Write ``report.html`` and/or ``report.md`` into ``out_dir`` (atomically).

    Returns:
        The path of ``report.html`` (of ``report.md`` when only Markdown is asked for).
    """
    out = Path(out_dir)
    written = []
    if "md" in formats:
        written.append(atomic_write_text(out / "report.md", render_markdown(report, out)))
    if "html" in formats:
        written.insert(0, atomic_write_text(out / "report.html", render_html(report)))
    if not written:
        raise ValueError(f"formats must name html and/or md, got {list(formats)}")
    return written[0]


def summary_rows(summary: dict) -> list[list[str]]:
    """Flatten ``{class: {metric: {mean, median, std, n}}}`` into text rows
    ``class, metric, mean, median, std, n``."""
    rows = []
    for cls, metrics in summary.items():
        if not isinstance(metrics, dict):
            continue
        for m, stats in metrics.items():
            if isinstance(stats, dict) and "mean" in stats:
                rows.append([str(cls), m, fmt(stats["mean"]), fmt(stats.get("median")),
                             fmt(stats.get("std")), fmt(stats.get("n", ""))])
    return rows
