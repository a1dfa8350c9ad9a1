"""Thin ``nn.Module`` wrappers around :mod:`medseg.losses.functional`.

Each module stores its hyper-parameters and calls the pure function of the same name; the
docstrings of the functions are the reference for shapes, masks and reductions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.losses import functional as LF


class MaskedCrossEntropyLoss(nn.Module):
    """Cross-entropy over observed pixels (L1, T5). Takes logits.

    Args:
        class_weights: Optional ``(C,)`` per-class weights (stored as a buffer).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    class_weights: torch.Tensor | None

    def __init__(self, class_weights: torch.Tensor | None = None, reduction: str = "mean"):
        super().__init__()
        LF._check_reduction(reduction)
        self.reduction = reduction
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32),
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``logits`` ``(B, C, *spatial)``, ``target`` ``(B, [1,] *spatial)``, ``mask``."""
        return LF.masked_cross_entropy(logits, target, mask, self.class_weights, self.reduction)


class SoftDiceLoss(nn.Module):
    """Soft Dice loss with smoothing (L5). Takes probabilities and a one-hot target.

    Args:
        eps: Smoothing constant ``> 0`` (default 1).
        batch_dice: Pool the sums over the batch.
        include_background: Keep channel 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        eps: float = 1.0,
        batch_dice: bool = False,
        include_background: bool = True,
        reduction: str = "mean",
    ):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        LF._check_reduction(reduction)
        self.eps = eps
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.reduction = reduction

    def forward(
        self, probs: torch.Tensor, target_onehot: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``probs`` and ``target_onehot`` ``(B, C, *spatial)``, optional ``mask``."""
        return LF.soft_dice_loss(
            probs, target_onehot, mask, eps=self.eps, batch_dice=self.batch_dice,
            include_background=self.include_background, reduction=self.reduction,
        )


class DiceCELoss(nn.Module):
    """``w_dice * soft Dice(softmax) + w_ce * CE`` over observed pixels (L6). Takes logits.

    Args:
        w_dice: Weight of the Dice term.
        w_ce: Weight of the CE term.
        class_weights: Optional ``(C,)`` CE class weights (stored as a buffer).
        eps: Dice smoothing.
        batch_dice: Pool Dice sums over the batch.
        include_background: Include class 0 in the Dice term (default ``False``, as nnU-Net).
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        w_dice: float = 1.0,
        w_ce: float = 1.0,
        class_weights: torch.Tensor | None = None,
        eps: float = 1.0,
        batch_dice: bool = False,
        include_background: bool = False,
    ):
        super().__init__()
        if w_dice < 0 or w_ce < 0 or w_dice + w_ce == 0:
            raise ValueError(f"w_dice and w_ce must be >= 0 and not both 0, got {w_dice}, {w_ce}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.w_dice = w_dice
        self.w_ce = w_ce
        self.eps = eps
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32),
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``logits`` ``(B, C, *spatial)``, ``target`` ``(B, [1,] *spatial)``, ``mask``."""
        return LF.dice_ce_loss(
            logits, target, mask, w_dice=self.w_dice, w_ce=self.w_ce,
            class_weights=self.class_weights, eps=self.eps, batch_dice=self.batch_dice,
            include_background=self.include_background,
        )


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over deep-supervision outputs (L6).

    Args:
        loss: A module called as ``loss(logits, target, mask)``, e.g. :class:`DiceCELoss`.
        weights: One weight per output (normalised to sum 1); default halves per level.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: ``outputs`` list of ``(B, C, *spatial_i)``, full-resolution ``target``/``mask``.

        A single tensor is treated as a one-level list.
        """
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        return LF.deep_supervision_loss(self.loss, outputs, target, mask, self.weights)


def _optional_buffer(module: nn.Module, name: str, value: object) -> None:
    module.register_buffer(
        name, None if value is None else torch.as_tensor(value, dtype=torch.float32)
    )


class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary / multi-label cross-entropy over observed elements (L2, T5). Takes logits.

    ``target == -1`` marks a missing label (unobserved), as does ``mask == 0``.

    Args:
        pos_weight: Optional ``(C,)`` positive-term weights (buffer).
        class_weights: Optional ``(C,)`` per-class weights (buffer).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    pos_weight: torch.Tensor | None
    class_weights: torch.Tensor | None

    def __init__(
        self,
        pos_weight: torch.Tensor | Sequence[float] | None = None,
        class_weights: torch.Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        LF._check_reduction(reduction)
        self.reduction = reduction
        _optional_buffer(self, "pos_weight", pos_weight)
        _optional_buffer(self, "class_weights", class_weights)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``logits`` ``(B, C[, *spatial])``, ``target`` same shape, optional ``mask``."""
        return LF.masked_bce_with_logits(
            logits, target, mask, self.pos_weight, self.class_weights, self.reduction
        )


class FocalLoss(nn.Module):
    """Multi-class (softmax) focal loss over observed pixels. Takes logits and a label map.

    Args:
        gamma: Focusing parameter ``>= 0``.
        alpha: Optional ``(C,)`` class weights (buffer).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    alpha: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: torch.Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        LF._check_reduction(reduction)
        self.gamma = gamma
        self.reduction = reduction
        _optional_buffer(self, "alpha", alpha)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``logits`` ``(B, C, *spatial)``, ``target`` ``(B, [1,] *spatial)``, ``mask``."""
        return LF.focal_loss(logits, target, mask, self.gamma, self.alpha, self.reduction)


class SigmoidFocalLoss(nn.Module):
    """Binary / multi-label (sigmoid) focal loss over observed elements. Takes logits.

    Args:
        gamma: Focusing parameter ``>= 0``.
        alpha: Optional positive-class weight in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        LF._check_reduction(reduction)
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``logits`` ``(B, C[, *spatial])``, ``target`` same shape, optional ``mask``."""
        return LF.sigmoid_focal_loss(
            logits, target, mask, self.gamma, self.alpha, self.reduction
        )


class GeneralizedDiceLoss(nn.Module):
    """Generalised (volume-weighted) Dice loss (L5). Takes probabilities and a one-hot target.

    Args:
        eps: Smoothing constant ``> 0``.
        batch_dice: Pool the sums over the batch.
        include_background: Keep channel 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        eps: float = 1e-5,
        batch_dice: bool = False,
        include_background: bool = True,
        reduction: str = "mean",
    ):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        LF._check_reduction(reduction)
        self.eps = eps
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.reduction = reduction

    def forward(
        self, probs: torch.Tensor, target_onehot: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``probs`` and ``target_onehot`` ``(B, C, *spatial)``, optional ``mask``."""
        return LF.generalized_dice_loss(
            probs, target_onehot, mask, eps=self.eps, batch_dice=self.batch_dice,
            include_background=self.include_background, reduction=self.reduction,
        )
