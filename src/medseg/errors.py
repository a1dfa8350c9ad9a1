"""Errors a user sees. Every message names the file (when there is one), the problem and a fix."""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError):
    """Bad user input: a file, folder, label table or configuration that cannot be used.

    Args:
        problem: What is wrong, in one sentence.
        path: The file or folder concerned, if any.
        hint: What the user should do about it.
    """

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None):
        self.problem = problem
        self.path = None if path is None else Path(path)
        self.hint = hint
        msg = f"{self.path}: {problem}" if self.path is not None else problem
        if hint:
            msg += f" -> {hint}"
        super().__init__(msg)


class ConfigError(InputError):
    """A configuration value (YAML or flag) that is unknown or out of range."""
