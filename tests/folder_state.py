"""What a folder holds, to assert that a refused command changed nothing in it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def folder_state(root: Path) -> dict[str, str]:
    """Every entry below ``root`` by relative name: the SHA-256 of a file, the target of a
    symbolic link (not followed), ``"dir"`` for a folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out
