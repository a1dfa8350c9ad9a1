"""Atomic checkpoints loadable with ``torch.load(..., weights_only=True)``.

A model folder holds::

    config.yaml           resolved ExperimentConfig (beside every checkpoint)
    plan.json             preprocessing plan, labels, channels: all prediction needs
    checkpoint_last.pt    model + optimiser + scheduler + epoch + history (resume)
    checkpoint_best.pt    the same at the best validation Dice
    train_log.csv         one row per epoch

Checkpoints hold only tensors, numbers, strings, lists and dicts, so the safe unpickler
(``weights_only=True``) reads them; nothing executes code on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, atomic_write_text, deferred_interrupt

CONFIG_NAME = "config.yaml"
PLAN_NAME = "plan.json"
LAST_NAME = "checkpoint_last.pt"
BEST_NAME = "checkpoint_best.pt"
LOG_NAME = "train_log.csv"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the destination folder, fsync, then ``os.replace``.

    A crash during the write leaves the previous file at ``path`` intact; Ctrl-C during the
    write is held back until the new file is in place, then raised as ``KeyboardInterrupt``.
    """
    with deferred_interrupt(), atomic_path(Path(path), ".tmp") as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with the safe unpickler.

    Raises:
        InputError: missing, truncated or not a medseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path,
                         "give a model folder written by medseg train")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(
            f"cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})",
            path,
            "the file is corrupt or not a medseg checkpoint; use checkpoint_best.pt or retrain",
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError("not a medseg checkpoint (no 'model' entry)", path)
    return ckpt


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """JSON with the same temp-file-and-rename discipline."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
