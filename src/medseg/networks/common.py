"""What every network shares: the input check, the MC Dropout layer list, the padded size, the
encoder/decoder split.

Every registered segmentation network is split in two, ``forward(x) == decode(encode(x))``
exactly: ``encode`` runs the encoder once and returns :class:`EncoderFeatures` (whatever its
decoder needs, plus the input's spatial size), ``decode`` turns them into the logits that
``forward`` returns. Decoder-only MC Dropout
(:func:`medseg.uncertainty.sampling.mc_dropout_decoder_predict`) encodes once and decodes ``T``
times; the networks' ``dropout_where="decoder"`` puts their dropout where it can be sampled so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn


def check_input(x: torch.Tensor, name: str, spatial_dims: int, in_channels: int) -> None:
    """Raise unless ``x`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

    Args:
        x: The network's input.
        name: The network's class name, for the message.
        spatial_dims: 2 or 3.
        in_channels: Channels the network was built for.

    Raises:
        ValueError: wrong number of axes or of channels, naming what was expected.
    """
    if x.ndim != spatial_dims + 2:
        axes = ("D", "H", "W")[3 - spatial_dims:] if spatial_dims <= 3 else ("*spatial",)
        raise ValueError(
            f"{name}(spatial_dims={spatial_dims}) expects a (B, C, {', '.join(axes)}) tensor, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} was built for in_channels={in_channels} and expects {in_channels} input "
            f"channel(s), "
            f"got an input with {x.shape[1]} channels (shape {tuple(x.shape)}); set in_channels "
            "to match the data"
        )


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with ``p > 0``, in forward order (for MC Dropout)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def round_up_size(spatial: Sequence[int], divisor: Sequence[int] | int) -> tuple[int, ...]:
    """The smallest size ``>= spatial`` that is a multiple of ``divisor`` on every axis."""
    div = [divisor] * len(spatial) if isinstance(divisor, int) else list(divisor)
    return tuple(math.ceil(s / d) * d for s, d in zip(spatial, div, strict=True))


def pad_end(x: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``x`` at the end of each spatial axis to ``target`` (no-op if already there).

    Args:
        x: ``(B, C, *spatial)``.
        target: Spatial size ``>= spatial`` per axis.

    Returns:
        ``(B, C, *target)``.
    """
    spatial = tuple(x.shape[2:])
    if tuple(target) == spatial:
        return x
    pad: list[int] = []
    for s, t in zip(reversed(spatial), reversed(tuple(target)), strict=True):
        pad += [0, t - s]
    return F.pad(x, pad)


def check_dropout_where(value: str, allowed: Sequence[str]) -> None:
    """Raise :class:`ValueError` naming the ``dropout_where`` option unless ``value`` is allowed."""
    if value not in allowed:
        raise ValueError(f"dropout_where must be one of {tuple(allowed)}, got {value!r}")


@dataclass(frozen=True, eq=False)
class EncoderFeatures(Sequence[torch.Tensor]):
    """What a segmentation network's ``encode`` hands its ``decode``.

    A read-only sequence of tensors, each with the batch on axis 0 (``(B, ...)``); what each
    entry is depends on the network (skips and bottleneck, encoder stages, a token grid; see the
    network's ``encode``). ``spatial`` is the input's spatial size before any padding, which
    ``decode`` crops the logits back to.

    Attributes:
        tensors: The feature tensors, ``(B, C_i, *spatial_i)`` each.
        spatial: Spatial size of the input ``x`` given to ``encode``.
    """

    tensors: tuple[torch.Tensor, ...]
    spatial: tuple[int, ...]

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[torch.Tensor, ...]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.tensors[index]

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.tensors)

    @property
    def batch_size(self) -> int:
        """``B``, the batch size of every tensor."""
        return int(self.tensors[0].shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EncoderFeatures:
        """The same features with ``fn`` applied to every tensor (e.g. to repeat the batch)."""
        return EncoderFeatures(tuple(fn(t) for t in self.tensors), self.spatial)
