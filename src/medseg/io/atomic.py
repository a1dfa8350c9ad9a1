"""Atomic output: write beside the destination, then rename over it, and never touch the input."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medseg.errors import InputError


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_source_overwrite(dest: Path, sources: Iterable[Path]) -> None:
    """Raise when ``dest`` is one of the files an array was read from.

    Raises:
        InputError: ``dest`` is (or is a link to) a source file.
    """
    for src in sources:
        if _same_file(dest, Path(src)):
            raise InputError(
                "refusing to overwrite the input file this image was read from",
                dest,
                "write to another path (medseg never modifies its inputs)",
            )


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the body finishes, then raise ``KeyboardInterrupt``.

    A library writer interrupted half-way (``torch.save``'s zip writer, for one) can raise a
    different error from its cleanup and hide the interrupt; deferring it makes a write either
    complete or not start. Outside the main thread signals cannot be handled, so this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def atomic_path(dest: Path, suffix: str) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    The temporary name ends with ``suffix`` so libraries that pick the format from the file name
    (nibabel, Pillow, pynrrd) write the right one. Parent folders are created. If the body raises,
    the temporary file is removed and ``dest`` is left as it was.

    Args:
        dest: Final path.
        suffix: Ending for the temporary file, e.g. ``".nii.gz"``.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        known = _write_error(e, dest)
        if known is None:
            raise
        raise known from None
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.partial{suffix}"
    try:
        try:
            yield tmp
            if tmp.is_file():  # libraries that wrote it themselves did not fsync it
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, dest)
            fsync_folder(dest.parent)
        except OSError as e:
            known = _write_error(e, dest)
            if known is None:
                raise
            raise known from None
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (fsync of the directory; skipped where the
    platform cannot open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(e: OSError, dest: Path) -> InputError | None:
    """A full disk, a read-only or forbidden folder as one line naming the folder (``None``
    for other errors, which the caller reports as its own)."""
    folder = dest.parent
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        return InputError(f"no space left on the device writing {dest.name} "
                          f"({free / 2**20:.1f} MiB free)", folder,
                          "free some space or write elsewhere; the previous file is kept")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return InputError(f"cannot write {dest.name}: the folder is read-only or not yours "
                          f"({os.strerror(e.errno)})", folder,
                          "write to another folder; the previous file is kept")
    return None


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success rename it to ``dest``.

    ``dest`` must not exist or be an empty folder. On failure the temporary folder is removed.

    Raises:
        InputError: ``dest`` exists and is not an empty folder.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(
            "output folder already exists and is not empty",
            dest,
            "choose a new folder (mixing series in one folder makes them ambiguous)",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.partial"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file beside it, fsync, then rename.

    A crash or Ctrl-C mid-write leaves any previous file at ``path`` intact.
    """
    dest = Path(path)
    with atomic_path(dest, ".tmp") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return dest


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
