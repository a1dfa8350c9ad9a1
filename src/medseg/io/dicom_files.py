"""Recognising DICOM files and series folders on disk, without reading them (E1).

The lowest piece of the DICOM support: :mod:`medseg.io.dicom` (reading and writing series) and
:mod:`medseg.io.files` (format detection, folder listings) both build on it, so neither needs the
other to find DICOM files.
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike


def is_dicom_file(path: PathLike) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128).

    Files named ``*.dcm`` count too, even without the preamble (some exporters omit it).
    """
    p = Path(path)
    if not p.is_file():
        return False
    if p.name.lower().endswith(".dcm"):
        return True
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _candidate_files(folder: Path) -> list[Path]:
    """Visible regular files directly inside ``folder``, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def dicom_files_in(folder: PathLike) -> list[Path]:
    """The DICOM files directly inside ``folder`` (not its subfolders), sorted by name.

    ``DICOMDIR`` index files are left out: they hold no pixels.
    """
    files = _candidate_files(Path(folder))
    return [p for p in files if p.name.upper() != "DICOMDIR" and is_dicom_file(p)]


def is_dicom_folder(path: PathLike) -> bool:
    """True when ``path`` is a folder with at least one DICOM file directly inside it."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any(p.name.upper() != "DICOMDIR" and is_dicom_file(p) for p in _candidate_files(p))
