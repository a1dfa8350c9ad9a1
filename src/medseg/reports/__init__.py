"""Figures, the model card and the self-contained HTML / Markdown report."""

from medseg.reports.evaluation import classification_report, segmentation_report
from medseg.reports.model_card import ModelCard, model_card
from medseg.reports.overlay import pick_slice, save_overlay
from medseg.reports.reliability import save_reliability_diagram
from medseg.reports.report import (
    Report,
    Table,
    render_html,
    render_markdown,
    summary_rows,
    write_report,
)
from medseg.reports.roc import save_roc_curve
from medseg.reports.slices import CaseImages, case_images

__all__ = ["CaseImages", "ModelCard", "Report", "Table", "case_images", "classification_report",
           "model_card", "pick_slice", "render_html", "render_markdown", "save_overlay",
           "save_reliability_diagram", "save_roc_curve", "segmentation_report", "summary_rows",
           "write_report"]
