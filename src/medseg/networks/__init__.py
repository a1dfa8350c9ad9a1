"""Networks, each registered by name (:func:`create_model`, :func:`list_models`).

Importing this package imports every network module so that they register themselves.
"""

from medseg.networks.classifier import ResNetClassifier
from medseg.networks.deeplab import DeepLabV3Plus as DeepLabV3Plus
from medseg.networks.heads import MeanAndLogVar, VarianceHead, add_variance_head
from medseg.networks.receptive_field import (
    NetworkRF,
    network_receptive_field,
    output_field,
    stage_field,
)
from medseg.networks.registry import (
    create_model,
    list_models,
    model_signature,
    model_spatial_dims,
    model_task,
    register_model,
)
from medseg.networks.transunet import TransUNet as TransUNet
from medseg.networks.unet import UNet, unet_feature_channels
from medseg.networks.unetpp import UNetPlusPlus as UNetPlusPlus
from medseg.networks.vit import ViTClassifier as ViTClassifier

__all__ = [
    "MeanAndLogVar",
    "NetworkRF",
    "VarianceHead",
    "add_variance_head",
    "ResNetClassifier",
    "UNet",
    "create_model",
    "list_models",
    "model_signature",
    "model_spatial_dims",
    "model_task",
    "network_receptive_field",
    "output_field",
    "stage_field",
    "register_model",
    "unet_feature_channels",
]
