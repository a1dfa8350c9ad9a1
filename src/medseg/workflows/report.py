"""``medseg report --model M``: the model card of a model folder alone (HTML or Markdown).

The card (:func:`medseg.reports.model_card`) is written from the checked model folder: the
training data, the configuration, the intended use and known limits, and the validation results
(``train_log.csv``, ``oof_metrics.json``, ``calibration.json``). The HTML is one self-contained
file, like the evaluation's ``report.html``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from medseg.errors import InputError
from medseg.io.atomic import atomic_write_text
from medseg.model_folder import ModelFolder
from medseg.reports import Report, model_card, render_html, render_markdown
from medseg.tasks import get_task

FORMATS = ("html", "md")


def card_output_path(output: Path, fmt: str | None) -> tuple[Path, str]:
    """Where the card goes and in which format.

    A folder (an existing one, or a path without a suffix) gets ``model_card.<fmt>``; a file
    path keeps its name, and without ``fmt`` its suffix (``.md`` / ``.html``) picks the format.

    Raises:
        InputError: the suffix and ``fmt`` disagree, or an unknown suffix without ``fmt``.
    """
    if output.is_dir() or not output.suffix:
        f = fmt or "html"
        return output / f"model_card.{f}", f
    suffix = output.suffix.lower().lstrip(".")
    by_suffix = {"html": "html", "htm": "html", "md": "md", "markdown": "md"}.get(suffix)
    if fmt is None:
        if by_suffix is None:
            raise InputError(f"cannot tell the format from the suffix {output.suffix!r}", output,
                             "name the file .html or .md, or pass --format html|md")
        return output, by_suffix
    if by_suffix is not None and by_suffix != fmt:
        raise InputError(f"--format {fmt} but the file is named {output.suffix}", output,
                         f"name the file .{fmt} or pass --format {by_suffix}")
    return output, fmt


def write_model_card(model: str | Path, output: str | Path, fmt: str | None = None,
                     force: bool = False) -> Path:
    """Write the model card of ``model`` to ``output`` (a file or a folder).

    Args:
        model: Model folder written by ``medseg train``.
        output: File or folder (see :func:`card_output_path`).
        fmt: ``html`` or ``md`` (default: from the file suffix, else ``html``).
        force: Replace an existing file.

    Returns:
        The written file.

    Raises:
        InputError: not a model folder, an existing file without ``force``, or a bad format.
    """
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint="use --format html or --format md")
    folder = ModelFolder.open(model)
    path, fmt = card_output_path(Path(output), fmt)
    if path.exists() and not force:
        raise InputError("the file exists already", path, "pass --force to replace it, or "
                                                         "choose another --output")
    task = get_task(folder.task)
    card = model_card(folder, task.key_metric, task.higher_is_better)
    report = Report(card.title, model_card=card)
    text = render_html(report) if fmt == "html" else render_markdown(report, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def cmd_report(a: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """``medseg report``: write the card and say where."""
    path = write_model_card(a.model, a.output, a.format, a.force)
    log(f"written: {path}")
    return 0
