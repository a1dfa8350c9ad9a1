"""Receptive field of the networks built here, per encoder stage and at the output (spec A2).

:func:`network_receptive_field` takes a :class:`~medseg.networks.unet.UNet`,
:class:`~medseg.networks.unetpp.UNetPlusPlus`, :class:`~medseg.networks.deeplab.DeepLabV3Plus`
or :class:`~medseg.networks.transunet.TransUNet` and walks its graph backwards with
:func:`~medseg.layers.receptive_field.backward_interval` (exact per-unit input intervals;
the plain-stack calculator :func:`~medseg.layers.receptive_field.receptive_field` covers lists of
layers):

* **encoder stages**: the field of one unit of each stage's output (size and jump per axis);
* **output**: for the U-Nets, the field of a full-resolution logit, i.e. the hull over every
  path (the deepest one, through the bottleneck and back up, dominates). Transposed
  convolutions make it depend on the unit's position, so the reported size is the largest over
  one period of positions; :func:`output_field` gives the interval of one unit. DeepLabV3+
  (ASPP's image-pooling branch) and TransUNet (self-attention on the token grid) see the whole
  input: their output field is reported as global (``None``).

Normalisation counts as point-wise (see :func:`~medseg.layers.receptive_field.backward_interval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from medseg.layers.receptive_field import Interval, RFStep, backward_interval, interval_hull
from medseg.networks.deeplab import DeepLabV3Plus
from medseg.networks.transunet import TransUNet
from medseg.networks.unet import UNet
from medseg.networks.unetpp import UNetPlusPlus

_SUPPORTED = (UNet, UNetPlusPlus, DeepLabV3Plus, TransUNet)


@dataclass(frozen=True)
class NetworkRF:
    """Receptive field of a network.

    Attributes:
        stages: One :class:`~medseg.layers.receptive_field.RFStep` per encoder stage
            (``name`` ``"encoder.<i>"``; ``rf`` in input voxels, ``jump`` the stage's
            cumulative stride), per spatial axis.
        output: Largest field of one output logit per axis, or ``None`` when the output sees
            the whole input.
        note: Why the output field is what it is.
    """

    stages: list[RFStep]
    output: tuple[int, ...] | None
    note: str


def _point(index: Sequence[int]) -> Interval:
    return tuple((int(i), int(i)) for i in index)


def stage_field(model: nn.Module, stage: int, index: Sequence[int]) -> Interval:
    """Input interval (per axis, inclusive) of unit ``index`` of encoder stage ``stage``.

    Coordinates are those of the (end-padded) input; nothing is clipped to its border.
    """
    _check(model)
    iv = _point(index)
    for i in range(stage, -1, -1):
        iv = backward_interval(model.encoder[i], iv)
    return iv


def _unet_output(model: UNet, iv: Interval) -> Interval:
    n = len(model.encoder)
    need: list[Interval | None] = [None] * n
    h = backward_interval(model.head, iv)
    for j in range(len(model.decoder) - 1, -1, -1):  # decoder j makes level n - 2 - j
        level = n - 2 - j
        cat = backward_interval(model.decoder[j], h)
        need[level] = interval_hull(need[level], cat)
        h = backward_interval(model.ups[j], cat)
    need[n - 1] = h
    return _encoder_back(model.encoder, need)


def _encoder_back(encoder: nn.ModuleList, need: list[Interval | None]) -> Interval:
    req = need[-1]
    for i in range(len(encoder) - 1, 0, -1):
        below = backward_interval(encoder[i], req) if req is not None else None
        req = interval_hull(need[i - 1], below)
    assert req is not None
    return backward_interval(encoder[0], req)


def _unetpp_output(model: UNetPlusPlus, iv: Interval) -> Interval:
    if not model.deep_supervision:
        d, heads = model.depth, [0]
    elif model.prune_depth is not None:
        d, heads = model.prune_depth, [model.prune_depth - 1]
    else:  # eval output: mean of every head
        d, heads = model.depth, list(range(model.depth))
    req: dict[tuple[int, int], Interval | None] = {}
    for h in heads:
        node = (0, d if not model.deep_supervision or model.prune_depth else h + 1)
        req[node] = interval_hull(req.get(node), backward_interval(model.heads[h], iv))
    need: list[Interval | None] = [None] * (model.depth + 1)
    for i, j in reversed(model.node_order(d)):
        r = req.get((i, j))
        if r is None:
            continue
        if j == 0:
            need[i] = r
            continue
        key = f"x{i}_{j}"
        cat = backward_interval(model.nodes[key], r)
        for jj in range(j):
            req[(i, jj)] = interval_hull(req.get((i, jj)), cat)
        below = (i + 1, j - 1)
        req[below] = interval_hull(req.get(below), backward_interval(model.ups[key], cat))
    last = max(i for i in range(model.depth + 1) if need[i] is not None)
    return _encoder_back(model.encoder[: last + 1], need[: last + 1])


def output_field(model: nn.Module, index: Sequence[int]) -> Interval:
    """Input interval (per axis, inclusive) that the output logit at ``index`` depends on.

    For :class:`~medseg.networks.unet.UNet` (eval output) and
    :class:`~medseg.networks.unetpp.UNetPlusPlus` (eval output: mean of the heads, the pruned
    head, or the single head). Coordinates are those of the input; not clipped to its border.

    Raises:
        ValueError: a network whose output field is global (DeepLabV3+, TransUNet) or that is
            not one of the supported networks.
    """
    _check(model)
    if isinstance(model, UNetPlusPlus):
        return _unetpp_output(model, _point(index))
    if isinstance(model, UNet):
        return _unet_output(model, _point(index))
    raise ValueError(
        f"the output of {type(model).__name__} depends on the whole input (global receptive "
        "field: image pooling / self-attention)"
    )


def _check(model: nn.Module) -> None:
    if not isinstance(model, _SUPPORTED):
        raise ValueError(
            f"network_receptive_field supports {', '.join(c.__name__ for c in _SUPPORTED)}; "
            f"got {type(model).__name__} (for a plain stack of layers use "
            "medseg.layers.module_receptive_field)"
        )


def network_receptive_field(model: nn.Module) -> NetworkRF:
    """Receptive field per encoder stage and at the output of a network built here.

    Args:
        model: A :class:`~medseg.networks.unet.UNet`, :class:`~medseg.networks.unetpp.UNetPlusPlus`,
            :class:`~medseg.networks.deeplab.DeepLabV3Plus` or
            :class:`~medseg.networks.transunet.TransUNet`.

    Returns:
        A :class:`NetworkRF`.

    Raises:
        ValueError: any other network.
    """
    _check(model)
    dims = model.spatial_dims
    stages: list[RFStep] = []
    for s in range(len(model.encoder)):
        a = stage_field(model, s, (0,) * dims)
        b = stage_field(model, s, (1,) * dims)
        stages.append(RFStep(
            f"encoder.{s}",
            tuple(hi - lo + 1 for lo, hi in a),
            tuple(bb[0] - aa[0] for aa, bb in zip(a, b, strict=True)),
        ))
    if isinstance(model, DeepLabV3Plus):
        return NetworkRF(stages, None, "global: ASPP's image-pooling branch sees every voxel")
    if isinstance(model, TransUNet):
        return NetworkRF(stages, None, "global: self-attention over every token of the grid")
    period = max(model.size_divisor)
    base = 4 * period
    best = [0] * dims
    for p in range(base, base + period):
        iv = output_field(model, (p,) * dims)
        best = [max(b, hi - lo + 1) for b, (lo, hi) in zip(best, iv, strict=True)]
    return NetworkRF(
        stages, tuple(best),
        "largest over output positions; the deepest path (bottleneck and back up) dominates",
    )
