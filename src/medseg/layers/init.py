"""Weight initialisation shared by the networks."""

from __future__ import annotations

import torch.nn as nn


def init_he(module: nn.Module) -> None:
    """He initialisation for LeakyReLU(0.01) (nnU-Net's ``InitWeights_He``): every
    convolution's weight Kaiming-normal, biases zero. Use as ``model.apply(init_he)``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
