"""Small helpers shared by tests: a toy classification ``.npz`` and loading an example script.

Imported as ``from helpers import ...`` (``tests/`` is on ``sys.path`` as pytest's rootdir of
the test modules, as for :mod:`folder_state`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_toy_npz(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """40 noise images of 16x16 in the MedMNIST layout (30 train, 10 val); class 1 has a bright
    8x8 square, so a small network separates the classes in a few steps.

    Returns:
        ``(path, labels)``: the file and the ``(40,)`` labels in train-then-val order.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    x = rng.integers(0, 60, (40, 16, 16)).astype(np.uint8)
    x[y == 1, 4:12, 4:12] = 200
    np.savez(path, train_images=x[:30], train_labels=y[:30, None], val_images=x[30:],
             val_labels=y[30:, None])
    return path, y


def load_example(relative: str, name: str) -> ModuleType:
    """The module of ``examples/<relative>`` (a script, not a package), executed once."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
