"""What every network shares: the input check, the MC Dropout layer list, the padded size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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
