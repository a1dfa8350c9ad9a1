"""Paths listed inside data tables (``dataset.json``, label CSVs): resolved and kept in their root.

A table is data a user may have downloaded; the paths it lists must not reach outside the folder
it describes (``../../home/user/.ssh/id_rsa``, ``/etc/passwd``, a symbolic link planted in the
dataset that points elsewhere) unless the user says they trust it
(``allow_outside_root=True``, the ``data.allow_outside_root`` setting).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.limits import check_regular_file

#: Largest JSON table read (a dataset.json of 10^5 cases is a few MiB).
MAX_TABLE_BYTES = 64 * 2**20

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


def path_inside(path: Path, root: Path) -> bool:
    """``path`` resolves (through symbolic links) to ``root`` or somewhere below it."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError, RuntimeError):
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


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json_object(path: str | Path, hint: str = "write it as a JSON object") -> dict[str, Any]:
    """Read a JSON table a user may have been sent, refusing what the JSON standard does not allow.

    Args:
        path: The file (``dataset.json``, ``restoration.json``, ...), named in every message.
        hint: The fix suggested when the file does not hold a JSON object.

    Returns:
        The parsed object.

    Raises:
        InputError: missing or not a regular file, over :data:`MAX_TABLE_BYTES`, not UTF-8,
            invalid JSON (also ``NaN``/``Infinity``, which Python's json module would accept),
            nested too deeply, or not an object.
    """
    path = Path(path)
    name = path.name
    if not path_exists(path):
        raise InputError(f"{name} not found", path, hint)
    check_regular_file(path)
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise InputError(f"{name} is {path.stat().st_size} bytes, more than a table needs "
                         f"(limit {MAX_TABLE_BYTES // 2**20} MiB)", path, hint)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise InputError(f"{name} is not UTF-8 text (byte {e.start})", path,
                         "save it as UTF-8 JSON") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{name} is not valid JSON ({str(e)[:200]})", path,
                         "fix the syntax (NaN and Infinity are not JSON)") from None
    except OSError as e:
        raise InputError(f"cannot read {name} ({e})", path, "check the file") from None
    if not isinstance(data, dict):
        raise InputError(f"{name} must hold a JSON object, not a {type(data).__name__}",
                         path, hint)
    return data


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
