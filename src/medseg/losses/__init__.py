"""Segmentation and classification losses (L1-L6) with observation masks (T5), imbalance (T6).

Pure functions live in :mod:`medseg.losses.functional`, thin modules in
:mod:`medseg.losses.modules`, gradient-balancing class weights (L3, L4) in
:mod:`medseg.losses.imbalance`. Functions taking logits: :func:`masked_cross_entropy`,
:func:`dice_ce_loss`, :func:`masked_bce_with_logits`, :func:`focal_loss`,
:func:`sigmoid_focal_loss`; taking probabilities: :func:`soft_dice_loss`,
:func:`generalized_dice_loss`.
"""

from medseg.losses.functional import (
    deep_supervision_loss,
    deep_supervision_weights,
    dice_ce_loss,
    downsample_labels,
    focal_loss,
    generalized_dice_loss,
    generalized_dice_weights,
    masked_bce_with_logits,
    masked_cross_entropy,
    one_hot,
    sigmoid_focal_loss,
    soft_dice_grad,
    soft_dice_loss,
)
from medseg.losses.imbalance import (
    AdaptiveClassWeights,
    class_fractions,
    gradient_balance,
    gradient_balance_weights,
    prediction_statistics,
)
from medseg.losses.modules import (
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    GeneralizedDiceLoss,
    MaskedBCEWithLogitsLoss,
    MaskedCrossEntropyLoss,
    SigmoidFocalLoss,
    SoftDiceLoss,
)

__all__ = [
    "AdaptiveClassWeights",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "MaskedBCEWithLogitsLoss",
    "MaskedCrossEntropyLoss",
    "SigmoidFocalLoss",
    "SoftDiceLoss",
    "class_fractions",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "dice_ce_loss",
    "downsample_labels",
    "focal_loss",
    "generalized_dice_loss",
    "generalized_dice_weights",
    "gradient_balance",
    "gradient_balance_weights",
    "masked_bce_with_logits",
    "masked_cross_entropy",
    "one_hot",
    "prediction_statistics",
    "sigmoid_focal_loss",
    "soft_dice_grad",
    "soft_dice_loss",
]
