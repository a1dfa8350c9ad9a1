"""Segmentation losses (L1, L5, L6) with observation masks (T5).

Pure functions live in :mod:`medseg.losses.functional`, thin modules in
:mod:`medseg.losses.modules`. Functions taking logits: :func:`masked_cross_entropy`,
:func:`dice_ce_loss`; taking probabilities: :func:`soft_dice_loss`.
"""

from medseg.losses.functional import (
    deep_supervision_loss,
    deep_supervision_weights,
    dice_ce_loss,
    downsample_labels,
    masked_cross_entropy,
    one_hot,
    soft_dice_grad,
    soft_dice_loss,
)
from medseg.losses.modules import (
    DeepSupervisionLoss,
    DiceCELoss,
    MaskedCrossEntropyLoss,
    SoftDiceLoss,
)

__all__ = [
    "DeepSupervisionLoss",
    "DiceCELoss",
    "MaskedCrossEntropyLoss",
    "SoftDiceLoss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "dice_ce_loss",
    "downsample_labels",
    "masked_cross_entropy",
    "one_hot",
    "soft_dice_grad",
    "soft_dice_loss",
]
