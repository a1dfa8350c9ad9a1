"""Building blocks shared by the networks, written once for 1D/2D/3D (``spatial_dims``)."""

from medseg.layers.conv import (
    UPSAMPLE_MODES,
    ConvBlock,
    ConvNormAct,
    ResidualBlock,
    UpSample,
    as_tuple,
    same_padding,
)
from medseg.layers.factories import (
    ACTS,
    NORMS,
    act_layer,
    adaptive_avgpool_nd,
    conv_nd,
    conv_transpose_nd,
    dropout_nd,
    maxpool_nd,
    norm_layer,
)

__all__ = [
    "ACTS",
    "NORMS",
    "UPSAMPLE_MODES",
    "ConvBlock",
    "ConvNormAct",
    "ResidualBlock",
    "UpSample",
    "act_layer",
    "adaptive_avgpool_nd",
    "as_tuple",
    "conv_nd",
    "conv_transpose_nd",
    "dropout_nd",
    "maxpool_nd",
    "norm_layer",
    "same_padding",
]
