"""A short human-readable report: the metrics table and overlay images (Markdown + HTML)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from medseg.io.atomic import atomic_write_text


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def summary_rows(summary: dict) -> list[list[str]]:
    """Flatten ``{class: {metric: {mean, median, std, n}}}`` into table rows."""
    rows = []
    for cls, metrics in summary.items():
        if not isinstance(metrics, dict):
            continue
        for m, stats in metrics.items():
            if isinstance(stats, dict) and "mean" in stats:
                rows.append([str(cls), m, _fmt(stats["mean"]), _fmt(stats.get("median")),
                             _fmt(stats.get("std")), _fmt(stats.get("n", ""))])
    return rows


def write_report(
    out_dir: str | Path,
    title: str,
    summary: dict,
    overlays: Sequence[Path] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` and ``report.html`` in ``out_dir``.

    Args:
        out_dir: Folder of the report (overlay paths are linked relative to it).
        title: Heading.
        summary: The ``summary`` part of ``metrics.json``.
        overlays: PNG files to show.
        notes: Free lines shown under the title (command, policy, timings...).

    Returns:
        Path of ``report.html``.
    """
    out = Path(out_dir)
    header = ["class", "metric", "mean", "median", "std", "n"]
    rows = summary_rows(summary)
    rel = [Path(p).resolve().relative_to(out.resolve()) if Path(p).resolve().is_relative_to(
        out.resolve()) else Path(p) for p in overlays]
    md = [f"# {title}", ""] + [f"- {n}" for n in notes] + ["", "## Metrics", ""]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Overlays (image | reference | prediction)", ""]
    md += [f"![{p.stem}]({p.as_posix()})" for p in rel]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")

    h = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{border:1px solid #999;padding:3px 8px;text-align:right}</style>",
         f"<h1>{html.escape(title)}</h1><ul>"]
    h += [f"<li>{html.escape(n)}</li>" for n in notes]
    h.append("</ul><h2>Metrics</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in header)
             + "</tr>")
    h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
    h.append("</table><h2>Overlays (image | reference | prediction)</h2>")
    h += [f"<div><img src='{html.escape(p.as_posix())}' alt='{html.escape(p.stem)}'></div>"
          for p in rel]
    atomic_write_text(out / "report.html", "\n".join(h) + "\n")
    return out / "report.html"
