"""Figures and the Markdown/HTML report."""

from medseg.reports.overlay import pick_slice, save_overlay
from medseg.reports.report import summary_rows, write_report

__all__ = ["pick_slice", "save_overlay", "summary_rows", "write_report"]
