"""Layer factories so that a network is written once for 2D and 3D (MONAI-style).

``conv_nd(spatial_dims)`` returns ``nn.Conv2d`` or ``nn.Conv3d`` and so on; ``norm_layer``
builds the normalisation named in a config and ``act_layer`` the activation.
"""

from __future__ import annotations

import torch.nn as nn

from medseg.layers.norm import INSTANCE_NORM
from medseg.layers.pointwise import PATCH_TRANSPOSE, POINTWISE

# subclasses of nn.Conv*d / nn.ConvTranspose*d whose 1x1 and kernel = stride cases run as matrix
# products (same parameters and results, faster on CPU; see medseg.layers.pointwise)
_CONV = POINTWISE
_CONVT = PATCH_TRANSPOSE
_DROP = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# instance norms that keep a channels-last input channels-last (medseg.layers.norm)
_IN = INSTANCE_NORM


def _check(spatial_dims: int) -> int:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv{1,2,3}d`` (a subclass whose 1x1 case is a matrix product)."""
    return _CONV[_check(spatial_dims)]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose{1,2,3}d`` (a subclass whose kernel = stride case is a matrix
    product)."""
    return _CONVT[_check(spatial_dims)]


def dropout_nd(spatial_dims: int) -> type[nn.Module]:
    """Channel dropout ``nn.Dropout{1,2,3}d``."""
    return _DROP[_check(spatial_dims)]


def maxpool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool{1,2,3}d``."""
    return _POOL[_check(spatial_dims)]


def adaptive_avgpool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.AdaptiveAvgPool{1,2,3}d``."""
    return _AVGPOOL[_check(spatial_dims)]


NORMS = ("instance", "batch", "group", "none")


def norm_layer(name: str, spatial_dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer by name.

    Args:
        name: ``"instance"`` (affine, nnU-Net's default), ``"batch"``, ``"group"`` or ``"none"``.
        spatial_dims: 1, 2 or 3.
        channels: Number of feature channels.
        groups: Groups for group norm (reduced to a divisor of ``channels``).
    """
    _check(spatial_dims)
    if name == "instance":
        return _IN[spatial_dims](channels, affine=True)
    if name == "batch":
        return _BN[spatial_dims](channels)
    if name == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; choose one of {NORMS}")


ACTS = ("leakyrelu", "relu", "gelu", "prelu", "elu", "none")


def act_layer(name: str, negative_slope: float = 0.01, inplace: bool = True) -> nn.Module:
    """An activation layer by name.

    Args:
        name: ``"leakyrelu"`` (slope ``negative_slope``, nnU-Net's default), ``"relu"``,
            ``"gelu"``, ``"prelu"`` (one learnable slope), ``"elu"`` or ``"none"``.
        negative_slope: Slope of the negative part for ``"leakyrelu"``.
        inplace: Let the element-wise activations overwrite their input (saves memory when the
            input is not needed elsewhere, e.g. right after a normalisation).
    """
    if name == "leakyrelu":
        return nn.LeakyReLU(negative_slope, inplace=inplace)
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "gelu":
        return nn.GELU()
    if name == "prelu":
        return nn.PReLU()
    if name == "elu":
        return nn.ELU(inplace=inplace)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTS}")
