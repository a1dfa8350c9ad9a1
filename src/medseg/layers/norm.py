"""Instance normalisation that keeps a channels-last tensor channels-last.

``nn.InstanceNorm{2,3}d`` runs as a batch norm over the ``(1, B*C, *spatial)`` view of its input,
so a channels-last input is first copied to the channels-first layout and the output comes back
channels-first: in a channels-last 3D U-Net in bf16 these copies cost more than the
convolutions gain from the layout (``benchmarks/RESULTS.md``, issue 11). Instance norm is group
norm with one channel per group, and PyTorch's CPU group norm has a channels-last kernel (float
statistics for bf16/fp16 inputs, output in the input's layout), so :class:`InstanceNorm2d` /
:class:`InstanceNorm3d` call ``F.group_norm(x, C, weight, bias, eps)`` on a channels-last input
inside :func:`channels_last_norms` (which channels-last prediction enters) and the parent's
``forward`` otherwise (same parameters and state-dict keys, ``isinstance``
unchanged, the standard operator in ONNX export). Where a gradient will flow back (training),
the parent's path is kept: group norm's channels-last backward measured slower than the
copies (3D U-Net 16..256 bf16 channels-last training step 1.195 s with group norm vs 0.789 s
with instance norm's copies; 2D 1.419 vs 0.822 s). Equal to
``F.instance_norm`` up to rounding (tested in float64).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn as nn
import torch.nn.functional as F


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a ``(B, C, H, W)`` / ``(B, C, D, H, W)`` tensor is laid out channels-last (and
    not also channels-first contiguous, as it is when ``C == 1`` or the spatial size is 1)."""
    if x.ndim == 4:
        fmt = torch.channels_last
    elif x.ndim == 5:
        fmt = torch.channels_last_3d
    else:
        return False
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


_CHANNELS_LAST_NORMS: ContextVar[bool] = ContextVar("medseg_channels_last_norms", default=False)


@contextlib.contextmanager
def channels_last_norms(enabled: bool = True) -> Iterator[None]:
    """Within this context instance norms keep channels-last inputs channels-last (group
    norm); outside it they always run ``nn.InstanceNorm*d``'s own computation, so a network
    whose tensors happen to be channels-last-strided (e.g. TransUNet's tokens reshaped to a
    feature map) gives exactly the results it gave before this layer existed.
    :func:`medseg.inference.predict_probs` enters it when it runs a network channels-last."""
    token = _CHANNELS_LAST_NORMS.set(enabled)
    try:
        yield
    finally:
        _CHANNELS_LAST_NORMS.reset(token)


class _ChannelsLastMixin:
    """``forward`` of an instance norm: group norm (one channel per group) on channels-last
    inputs inside :func:`channels_last_norms`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if (_CHANNELS_LAST_NORMS.get()
                and not self.track_running_stats  # type: ignore[attr-defined]
                and not (torch.is_grad_enabled() and x.requires_grad)
                and is_channels_last(x) and not torch.onnx.is_in_onnx_export()):
            return F.group_norm(x, self.num_features, self.weight,  # type: ignore[attr-defined]
                                self.bias, self.eps)  # type: ignore[attr-defined]
        return super().forward(x)  # type: ignore[misc]


class InstanceNorm1d(_ChannelsLastMixin, nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` (1D tensors have no channels-last layout: the parent's forward)."""


class InstanceNorm2d(_ChannelsLastMixin, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a channels-last input channels-last."""


class InstanceNorm3d(_ChannelsLastMixin, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last-3d input channels-last-3d."""


#: ``INSTANCE_NORM[spatial_dims]``.
INSTANCE_NORM = {1: InstanceNorm1d, 2: InstanceNorm2d, 3: InstanceNorm3d}
