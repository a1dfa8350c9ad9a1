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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16).

    Read from the ``flags`` line of ``/proc/cpuinfo`` (``avx512_bf16`` / ``amx_bf16``), where
    there is one; elsewhere (macOS, Windows) from torch's CPU capability, which only reports
    the vector width, so the answer there is ``False`` unless torch reports ``AVX512`` *and*
    ``torch.backends.mkldnn`` says it can use bf16. On a CPU without native bf16, bf16
    autocast emulates the arithmetic and is slower than fp32, so ``auto`` must not pick it.
    Tests mock this one function.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(torch.backends.cpu.get_cpu_capability().startswith("AVX512")
                    and mkldnn_bf16 is not None and mkldnn_bf16())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``auto`` picks bf16 autocast on a CPU with native bf16 (:func:`cpu_has_native_bf16`) and
    on a CUDA GPU that supports bf16 (Ampere or newer), fp16 autocast with the gradient
    scaler on an older CUDA GPU, and fp32 everywhere else (CPUs without native bf16, MPS).
    An explicit ``bf16`` / ``fp16`` / ``fp32`` is kept as asked.

    Args:
        requested: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: Where the network runs.

    Raises:
        InputError: an unknown precision name.
    """
    if requested not in PRECISIONS:
        raise InputError(f"unknown precision {requested!r}",
                         hint=f"use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"
