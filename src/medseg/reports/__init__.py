"""Figures and the Markdown/HTML report."""

from medseg.reports.overlay import pick_slice, save_overlay
from medseg.reports.reliability import save_reliability_diagram
from medseg.reports.report import summary_rows, write_report
from medseg.reports.roc import save_roc_curve

__all__ = ["pick_slice", "save_overlay", "save_reliability_diagram", "save_roc_curve",
           "summary_rows", "write_report"]
