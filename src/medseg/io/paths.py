"""Paths listed inside data tables (``dataset.json``, label CSVs): resolved and kept in their root.

A table is data a user may have downloaded; the paths it lists must not reach outside the folder
it describes (``../../home/user/.ssh/id_rsa``, ``/etc/passwd``, a symbolic link planted in the
dataset that points elsewhere) unless the user says they trust it
(``allow_outside_root=True``, the ``data.allow_outside_root`` setting).
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError

#: What a refused entry's message suggests.
OUTSIDE_ROOT_HINT = (
    "list the file relative to the dataset folder and keep it inside it, or pass "
    "allow_outside_root=True (setting data.allow_outside_root: true) if you trust this table"
)


def path_exists(path: Path) -> bool:
    """``path.exists()`` that says False (instead of raising) for names the OS cannot look up:
    too long, holding a NUL byte, or behind a folder without permission."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_listed_path(
    root: Path,
    entry: object,
    what: str,
    table: Path,
    allow_outside_root: bool = False,
) -> Path:
    """The file a table entry names, resolved (through symbolic links) relative to ``root``.

    Args:
        root: The folder the table's paths are relative to (the dataset folder).
        entry: The path as written in the table.
        what: Where the entry sits, for the message (``"training[3].image"``, ``"row at line 7"``).
        table: The table file, named in the message.
        allow_outside_root: Accept absolute paths, ``..`` and links leading out of ``root``.

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        InputError: the entry is not a non-empty string or holds a NUL byte; or, unless
            ``allow_outside_root``, it is absolute, contains ``..``, or resolves outside ``root``.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise InputError(
            f"{what} must be a non-empty file path (a string), got {_short(entry)}",
            table,
            "write the path of the file relative to the dataset folder",
        )
    if "\0" in entry:
        raise InputError(f"{what} {_short(entry)} holds a NUL character", table,
                         "write a plain file path")
    rel = Path(entry)
    if not allow_outside_root:
        if rel.is_absolute():
            raise InputError(f"{what} {_short(entry)} is an absolute path", table,
                             OUTSIDE_ROOT_HINT)
        if ".." in rel.parts:
            raise InputError(f"{what} {_short(entry)} climbs out of the folder with '..'", table,
                             OUTSIDE_ROOT_HINT)
    try:
        resolved = Path(os.path.realpath(root / rel))
        base = Path(os.path.realpath(root))
    except (OSError, ValueError, RuntimeError) as exc:  # name too long, symlink loops
        raise InputError(f"{what} {_short(entry)} cannot be resolved ({exc})", table,
                         "check the path") from None
    if not allow_outside_root and not resolved.is_relative_to(base):
        raise InputError(
            f"{what} {_short(entry)} resolves outside the dataset folder {base} (to {resolved}, "
            "through a symbolic link)",
            table,
            OUTSIDE_ROOT_HINT,
        )
    return resolved


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
