"""Output types of every task (T1-T5).

These are plain dataclasses around tensors, not tensor subclasses: the hot path (networks,
losses) works on raw tensors; these types are what a predictor hands to metrics, writers and
reports, and what states the mathematical object of each task.

* T1 :class:`ClassProbs` — a point of the simplex per image.
* T2 :class:`MultiLabel` — C independent Bernoulli scores plus per-class thresholds.
* T3 :class:`SegProbs` (a distribution over C classes per voxel) and :class:`LabelMap`.
* T4 instance sets are a variable-size collection; the type lands with instance segmentation.
* T5 :class:`ObservationMask` — which voxels (or which labels) are observed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check_simplex(p: torch.Tensor, dim: int, name: str, atol: float = 1e-4) -> None:
    if p.numel() == 0:
        return
    if torch.any(p < -atol) or not torch.allclose(
        p.sum(dim=dim), torch.ones((), dtype=p.dtype, device=p.device), atol=atol
    ):
        raise ValueError(f"{name}: probabilities must be >= 0 and sum to 1 along dim {dim}")


@dataclass
class ClassProbs:
    """T1 single-label classification: ``probs`` of shape ``(B, C)`` on the simplex."""

    probs: torch.Tensor

    def __post_init__(self) -> None:
        if self.probs.ndim != 2:
            raise ValueError(f"ClassProbs expects (B, C), got {tuple(self.probs.shape)}")
        _check_simplex(self.probs, 1, "ClassProbs")

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> ClassProbs:
        """Softmax over classes of ``(B, C)`` logits."""
        return cls(torch.softmax(logits.float(), dim=1))

    def hard(self) -> torch.Tensor:
        """``(B,)`` argmax class index."""
        return self.probs.argmax(dim=1)


@dataclass
class MultiLabel:
    """T2 multi-label classification: ``scores`` ``(B, C)`` in [0, 1] from independent sigmoids.

    Attributes:
        scores: ``(B, C)`` probabilities, one Bernoulli per label.
        thresholds: ``(C,)`` per-class decision thresholds (default 0.5).
    """

    scores: torch.Tensor
    thresholds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.scores.ndim != 2:
            raise ValueError(f"MultiLabel expects (B, C), got {tuple(self.scores.shape)}")
        if self.thresholds is None:
            self.thresholds = torch.full((self.scores.shape[1],), 0.5, dtype=self.scores.dtype)

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, thresholds: torch.Tensor | None = None
    ) -> MultiLabel:
        return cls(torch.sigmoid(logits.float()), thresholds)

    def hard(self) -> torch.Tensor:
        """``(B, C)`` in {0, 1}."""
        return (self.scores >= self.thresholds.to(self.scores.device)).to(torch.uint8)


@dataclass
class SegProbs:
    """T3 probability field: ``probs`` of shape ``(C, *spatial)``, a distribution per voxel."""

    probs: torch.Tensor

    def __post_init__(self) -> None:
        if self.probs.ndim not in (3, 4):
            raise ValueError(
                f"SegProbs expects (C, H, W) or (C, D, H, W), got {tuple(self.probs.shape)}"
            )
        # a strided sample of voxels keeps the check O(N / 7^d) on large volumes
        sample = self.probs[(slice(None),) + (slice(None, None, 7),) * (self.probs.ndim - 1)]
        _check_simplex(sample, 0, "SegProbs")

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> SegProbs:
        """Softmax over the class axis of ``(C, *spatial)`` logits."""
        return cls(torch.softmax(logits.float(), dim=0))

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[0])

    def hard(self) -> LabelMap:
        """The arg-max label map."""
        return LabelMap(self.probs.argmax(dim=0).to(torch.int64), self.num_classes)


@dataclass
class LabelMap:
    """T3 hard segmentation: ``labels`` ``(*spatial)`` integer in ``[0, num_classes)``."""

    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.labels.is_floating_point():
            raise ValueError("LabelMap needs an integer tensor")
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"LabelMap values must lie in [0, {self.num_classes}), got "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def one_hot(self) -> torch.Tensor:
        """``(C, *spatial)`` float one-hot encoding."""
        oh = torch.nn.functional.one_hot(self.labels, self.num_classes)
        return oh.movedim(-1, 0).float()


@dataclass
class ObservationMask:
    """T5: ``observed`` is 1 where a label exists and 0 where it is missing (not background).

    For segmentation it has the spatial shape of the label map; for multi-label classification
    it has shape ``(B, C)`` (one flag per image and label). Losses and metrics weight their
    per-element terms by it and average over observed elements only.
    """

    observed: torch.Tensor

    @classmethod
    def from_labels(cls, labels: torch.Tensor, ignore_label: int | None) -> ObservationMask:
        """Everything observed except voxels whose label equals ``ignore_label``."""
        if ignore_label is None:
            return cls(torch.ones_like(labels, dtype=torch.bool))
        return cls(labels != ignore_label)

    @property
    def fraction(self) -> float:
        """Fraction of observed elements."""
        return float(self.observed.float().mean()) if self.observed.numel() else 0.0
