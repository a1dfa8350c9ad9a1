"""Building blocks shared by the networks, written once for 1D/2D/3D (``spatial_dims``)."""

from medseg.layers.aspp import ASPP
from medseg.layers.attention import (
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
    attention_cost,
)
from medseg.layers.conv import (
    UPSAMPLE_MODES,
    ConvBlock,
    ConvNormAct,
    ResidualBlock,
    UpSample,
    as_tuple,
    same_padding,
)
from medseg.layers.dilated import DilatedConv, effective_kernel_size
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
from medseg.layers.receptive_field import (
    EmpiricalRF,
    RFStep,
    backward_interval,
    empirical_receptive_field,
    interval_hull,
    module_receptive_field,
    receptive_field,
)

__all__ = [
    "ASPP",
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
    "DilatedConv",
    "EmpiricalRF",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "RFStep",
    "TransformerBlock",
    "attention_cost",
    "effective_kernel_size",
    "backward_interval",
    "empirical_receptive_field",
    "interval_hull",
    "module_receptive_field",
    "receptive_field",
]
