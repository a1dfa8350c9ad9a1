"""Which device a run or a prediction uses, chosen once and checked with a clear error."""

from __future__ import annotations

import torch

from medseg.errors import InputError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked.

    Raises:
        InputError: not a device name torch knows, or CUDA asked for where there is none.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}",
                         hint="use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available",
                         hint="use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s))",
                         hint="use cuda:0 .. cuda:N-1")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InputError(f"device type {dev.type!r} is not supported", hint="use cpu or cuda")
    return dev
