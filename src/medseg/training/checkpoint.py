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
import pickle
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
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # the pickle asks for code or a foreign object
            raise InputError(
                "not a weights-only checkpoint: medseg never loads it with weights_only=False "
                "(that would run code from the file)", path,
                "use a checkpoint written by medseg train") from None
        raise InputError("cannot read checkpoint (corrupt or not a checkpoint)", path,
                         "use checkpoint_best.pt or retrain") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(
            f"cannot read checkpoint ({type(e).__name__})",
            path,
            "the file is corrupt or not a medseg checkpoint; use checkpoint_best.pt or retrain",
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError("not a medseg checkpoint (no 'model' entry)", path)
    return ckpt


def load_trained_network(
    folder: str | Path,
    plan: dict[str, Any],
    checkpoint: str = "best",
    device: str = "auto",
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> tuple[torch.nn.Module, torch.device]:
    """Build the network a model folder's ``plan.json`` names and load its weights.

    Args:
        folder: The model folder.
        plan: Its ``plan.json`` (``model.name``, ``model.options``, ``spatial_dims`` and, unless
            given here, ``in_channels`` / ``num_classes``).
        checkpoint: ``"best"`` (falls back to the last checkpoint when there is no best yet) or
            ``"last"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
        in_channels: Override of the plan's input channels.
        num_classes: Override of the plan's output channels.

    Returns:
        The network in eval mode on ``device``, and the device.

    Raises:
        InputError: missing or unreadable checkpoint.
    """
    from medseg.networks import create_model

    folder = Path(folder)
    ck = folder / (BEST_NAME if checkpoint == "best" else LAST_NAME)
    if checkpoint == "best" and not ck.exists() and (folder / LAST_NAME).exists():
        ck = folder / LAST_NAME
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    state = load_checkpoint(ck, map_location=dev)
    model = create_model(
        plan["model"]["name"], spatial_dims=plan["spatial_dims"],
        in_channels=plan["in_channels"] if in_channels is None else in_channels,
        num_classes=plan["num_classes"] if num_classes is None else num_classes,
        **plan["model"]["options"])
    model.load_state_dict(state["model"])
    return model.to(dev).eval(), dev


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """JSON with the same temp-file-and-rename discipline."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
