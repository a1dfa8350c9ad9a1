"""Networks, each registered by name (:func:`create_model`, :func:`list_models`).

Importing this package imports every network module so that they register themselves.
"""

from medseg.networks.classifier import ResNetClassifier
from medseg.networks.deeplab import DeepLabV3Plus as DeepLabV3Plus
from medseg.networks.registry import (
    create_model,
    list_models,
    model_signature,
    model_spatial_dims,
    model_task,
    register_model,
)
from medseg.networks.unet import UNet, unet_feature_channels
from medseg.networks.unetpp import UNetPlusPlus as UNetPlusPlus
from medseg.networks.vit import ViTClassifier as ViTClassifier

__all__ = [
    "ResNetClassifier",
    "UNet",
    "create_model",
    "list_models",
    "model_signature",
    "model_spatial_dims",
    "model_task",
    "register_model",
    "unet_feature_channels",
]
