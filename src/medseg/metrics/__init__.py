"""Segmentation metrics in physical units with an explicit empty-case policy (E5, T5).

* :mod:`~medseg.metrics.policy` — :class:`EmptyPolicy`, what Dice/IoU/HD95/ASSD return when a
  structure is empty (defaults: Dice/IoU both empty 1.0, one empty 0.0; HD95/ASSD both empty
  0 mm, one empty NaN).
* :mod:`~medseg.metrics.overlap` — :func:`dice`, :func:`iou` on binary arrays.
* :mod:`~medseg.metrics.surface` — :func:`surface_distances`, :func:`hd95`, :func:`assd`,
  :func:`hausdorff_distance` in mm (spacing-aware).
* :mod:`~medseg.metrics.segmentation` — :func:`evaluate_case` on label maps.
* :mod:`~medseg.metrics.aggregate` — :func:`summarize`, :func:`write_metrics`,
  :func:`read_metrics`, :func:`format_summary_table`.
* :mod:`~medseg.metrics.instance` — instance matching (T4): :func:`iou_matrix`,
  :func:`match_instances` (Hungarian), :func:`evaluate_instances` (F1, AP, mAP, PQ),
  :func:`summarize_instances`.

Every function takes an optional observation mask: only observed voxels count.
"""

from medseg.metrics.aggregate import (
    SUMMARY_METRICS,
    describe_values,
    format_summary_table,
    metrics_csv_text,
    read_metrics,
    summarize,
    write_metrics,
)
from medseg.metrics.classification import (
    CLASS_METRICS,
    auroc,
    binary_counts,
    binary_rates,
    bootstrap_ci,
    classification_case_rows,
    confusion_matrix,
    evaluate_classification,
    predict_classes,
    roc_curve,
    write_classification_metrics,
)
from medseg.metrics.instance import (
    evaluate_instances,
    iou_matrix,
    match_instances,
    summarize_instances,
)
from medseg.metrics.overlap import confusion_counts, dice, iou
from medseg.metrics.policy import DEFAULT_POLICY, EmptyPolicy
from medseg.metrics.segmentation import CLASS_RESULT_KEYS, evaluate_case
from medseg.metrics.surface import (
    assd,
    hausdorff_distance,
    hd95,
    surface_distances,
    surface_voxels,
)

__all__ = [
    "CLASS_METRICS",
    "auroc",
    "binary_counts",
    "binary_rates",
    "bootstrap_ci",
    "classification_case_rows",
    "confusion_matrix",
    "evaluate_classification",
    "predict_classes",
    "roc_curve",
    "write_classification_metrics",
    "CLASS_RESULT_KEYS",
    "DEFAULT_POLICY",
    "SUMMARY_METRICS",
    "EmptyPolicy",
    "assd",
    "confusion_counts",
    "describe_values",
    "dice",
    "evaluate_case",
    "evaluate_instances",
    "format_summary_table",
    "hausdorff_distance",
    "hd95",
    "iou",
    "iou_matrix",
    "match_instances",
    "metrics_csv_text",
    "read_metrics",
    "summarize",
    "summarize_instances",
    "surface_distances",
    "surface_voxels",
    "write_metrics",
]
