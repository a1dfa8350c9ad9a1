"""How a network is called: reduced-precision autocast, memory layout and compilation.

The training engine and the predictor use the same three switches:

* **precision** ``"fp32" | "bf16" | "fp16"`` (resolved from ``auto`` by
  :func:`medseg.training.device.resolve_precision`): :func:`autocast` runs the network's
  convolutions and matrix products in that type; the caller casts the output back to float32
  before the loss, the softmax, the sliding-window accumulator and the metrics, which therefore
  stay float32;
* **channels-last** (:func:`use_channels_last`, :func:`to_channels_last`): NHWC / NDHWC
  memory layout of the weights and the inputs;
* **compilation** (:func:`maybe_compile`): ``torch.compile`` with a one-line warning and a fall
  back to eager execution where the compiler toolchain is missing or fails.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

#: Resolved precisions and the autocast dtype of each (``None``: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast for a resolved precision on ``device`` (a no-op for ``"fp32"``).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``auto`` must be resolved first).
        device: Where the network runs; its type picks the autocast backend.

    Raises:
        ValueError: an unresolved or unknown precision.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {tuple(AUTOCAST_DTYPES)} (resolve 'auto' "
                         f"with medseg.training.device.resolve_precision), got {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def use_channels_last(setting: bool | str, spatial_dims: int, precision: str, *,
                      training: bool = True, device_type: str = "cpu") -> bool:
    """Resolve a ``channels_last`` setting (``True``, ``False`` or ``"auto"``).

    ``auto`` follows what was measured on a 2-thread AVX-512-BF16 CPU
    (``benchmarks/bench_precision.py``, ``benchmarks/RESULTS.md``, 2026-12-06):

    * **prediction on a CPU: on** (2D and 3D, fp32 and bf16). With instance norm kept
      channels-last (:mod:`medseg.layers.norm`) the U-Net 16..256's forward pass ran 1.42x
      faster in 3D bf16 (4x1x64^3 windows: 459 vs 650 ms), 1.60x in 3D fp32, 1.26x in 2D bf16
      (4x1x256^2) and 1.53x in 2D fp32; the 160^3 sliding window 1.39x in bf16.
    * **training: off.** A channels-last step is slower (3D U-Net bf16 step 0.789 s vs
      0.714 s channels-first, 2D 0.822 vs 0.725 s; with instance norm's channels-last path in
      the backward pass too it was 1.195 / 1.419 s).
    * **on a GPU: off** (not measured here).

    Args:
        setting: ``True``, ``False`` or ``"auto"``.
        spatial_dims: 1, 2 or 3 (1D tensors have no channels-last layout: always ``False``).
        precision: The resolved precision (accepted so that the rule can depend on it; today
            it does not).
        training: Whether the layout is for training (forward and backward) or prediction.
        device_type: ``"cpu"``, ``"cuda"``, ... where the network runs.

    Raises:
        ValueError: a setting other than ``True``, ``False`` or ``"auto"``.
    """
    if isinstance(setting, bool):
        return setting and spatial_dims in (2, 3)
    if setting != "auto":
        raise ValueError(f"channels_last must be true, false or 'auto', got {setting!r}")
    return not training and device_type == "cpu" and spatial_dims in (2, 3)


def memory_format(spatial_dims: int) -> torch.memory_format:
    """``torch.channels_last`` (2D) or ``torch.channels_last_3d`` (3D)."""
    if spatial_dims == 2:
        return torch.channels_last
    if spatial_dims == 3:
        return torch.channels_last_3d
    raise ValueError(f"channels-last exists for 2D and 3D tensors only, got {spatial_dims}D")


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` in the channels-last layout of its dimensionality (same values)."""
    return x.contiguous(memory_format=memory_format(x.ndim - 2))


def model_to_channels_last(model: nn.Module, spatial_dims: int) -> nn.Module:
    """Move the 4D / 5D weights of ``model`` to channels-last, in place; returns ``model``."""
    return model.to(memory_format=memory_format(spatial_dims))


class _CompileFallback(nn.Module):
    """Calls the compiled module; on its first failure warns once and runs eagerly after."""

    def __init__(self, module: nn.Module, compiled: Callable[..., Any], what: str):
        super().__init__()
        self.module = module
        self._compiled: Callable[..., Any] | None = compiled
        self._what = what

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:  # any compiler failure: the eager module still works
                self._compiled = None
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                warnings.warn(f"torch.compile failed for {self._what} ({type(e).__name__}: "
                              f"{first}); running eagerly", RuntimeWarning, stacklevel=2)
        return self.module(*args, **kwargs)

    @property
    def compiled(self) -> bool:
        """Whether calls still go through the compiled graph."""
        return self._compiled is not None


def maybe_compile(model: nn.Module, enabled: bool, what: str = "the network") -> nn.Module:
    """``torch.compile(model)`` with an eager fall back, or ``model`` itself when disabled.

    The returned module shares ``model``'s parameters (save ``model.state_dict()``, not the
    wrapper's). Compilation happens at the first call (its warm-up cost); if it fails there
    (no C compiler, an unsupported op, Windows without Triton...) a one-line
    ``RuntimeWarning`` is issued and every call runs ``model`` eagerly.

    Args:
        model: The network.
        enabled: ``train.compile`` / ``inference.compile``.
        what: Named in the warning.
    """
    if not enabled:
        return model
    try:
        # static shapes: a new shape (the last, smaller window batch; a validation case) is
        # compiled on its own; the dynamic-shape recompile failed in inductor on torch 2.13
        compiled = torch.compile(model, dynamic=False)
    except Exception as e:  # e.g. torch.compile unsupported on this Python
        warnings.warn(f"torch.compile is unavailable for {what} ({type(e).__name__}: "
                      f"{str(e)[:160]}); running eagerly", RuntimeWarning, stacklevel=2)
        return model
    return _CompileFallback(model, compiled, what)


def describe(precision: str, channels_last: bool, compiled: bool) -> str:
    """One line for the logs, e.g. ``"bf16 autocast, channels-last"``."""
    parts = ["fp32" if precision == "fp32" else f"{precision} autocast"]
    if channels_last:
        parts.append("channels-last")
    if compiled:
        parts.append("torch.compile")
    return ", ".join(parts)

