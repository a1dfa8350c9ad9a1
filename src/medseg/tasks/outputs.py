"""Output types of every task (T1-T5).

These are plain dataclasses around tensors, not tensor subclasses: the hot path (networks,
losses) works on raw tensors; these types are what a predictor hands to metrics, writers and
reports, and what states the mathematical object of each task.

* T1 :class:`ClassProbs` — a point of the simplex per image.
* T2 :class:`MultiLabel` — C independent Bernoulli scores plus per-class thresholds.
* T3 :class:`SegProbs` (a distribution over C classes per voxel) and :class:`LabelMap`.
* T4 :class:`InstanceSet` — a variable-size set of (binary mask, class, score), N = 0 valid.
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
class InstanceSet:
    """T4 instance segmentation: a finite set ``{(m_i, c_i, s_i)}_{i=1..N}``; N may be 0.

    It is not a fixed tensor: ``masks`` has shape ``(N, *spatial)`` with N varying per image,
    and ``spatial_shape`` keeps the grid when N = 0.

    Overlap policy (documented, used by :meth:`to_label_map`): where masks overlap, the pixel
    goes to the instance with the higher score; equal scores go to the lower index. Instance
    ids in a label map are ``1..N`` in the set's order; 0 is background.

    Attributes:
        masks: ``(N, *spatial)`` bool.
        classes: ``(N,)`` int64 class of each instance (foreground classes start at 1).
        scores: ``(N,)`` float32 confidence in [0, 1].
        spatial_shape: The image grid.
    """

    masks: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    spatial_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        n = self.masks.shape[0] if self.masks.ndim else 0
        if self.masks.numel() == 0 and n == 0:
            self.masks = torch.zeros((0, *self.spatial_shape), dtype=torch.bool)
        if tuple(self.masks.shape[1:]) != self.spatial_shape:
            raise ValueError(f"masks {tuple(self.masks.shape)} must be (N, *{self.spatial_shape})")
        self.masks = self.masks.to(torch.bool)
        self.classes = torch.as_tensor(self.classes, dtype=torch.int64).reshape(-1)
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        if not (self.classes.numel() == self.scores.numel() == n):
            raise ValueError(f"{n} masks but {self.classes.numel()} classes and "
                             f"{self.scores.numel()} scores")
        if n and (float(self.scores.min()) < 0 or float(self.scores.max()) > 1):
            raise ValueError("instance scores must lie in [0, 1]")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, spatial_shape: tuple[int, ...]) -> InstanceSet:
        """The valid empty set (N = 0) on a grid."""
        return cls(torch.zeros((0, *spatial_shape), dtype=torch.bool),
                   torch.zeros(0, dtype=torch.int64), torch.zeros(0), spatial_shape)

    @classmethod
    def from_label_map(
        cls,
        instance_map: torch.Tensor,
        semantic: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> InstanceSet:
        """Build from an instance label map (0 = background, ``k > 0`` = instance k).

        Args:
            instance_map: ``(*spatial)`` integer map.
            semantic: Optional ``(*spatial)`` class map; each instance takes the majority class
                of its pixels (ties: the smaller class). Without it every class is 1.
            scores: Optional per-instance scores in id order (default 1.0).

        Returns:
            Instances ordered by increasing id (ids need not be contiguous).
        """
        if instance_map.is_floating_point():
            raise ValueError("instance map must be integer")
        ids = [int(i) for i in torch.unique(instance_map) if int(i) != 0]
        shape = tuple(instance_map.shape)
        if not ids:
            return cls.empty(shape)
        masks = torch.stack([instance_map == i for i in ids])
        if semantic is None:
            classes = torch.ones(len(ids), dtype=torch.int64)
        else:
            classes = torch.stack([torch.bincount(semantic[m].reshape(-1).to(torch.int64))
                                   .argmax() for m in masks])
        sc = torch.ones(len(ids)) if scores is None else torch.as_tensor(scores,
                                                                         dtype=torch.float32)
        return cls(masks, classes, sc, shape)

    def to_label_map(self) -> torch.Tensor:
        """``(*spatial)`` int64 instance ids ``1..N`` (0 background), overlaps by score."""
        out = torch.zeros(self.spatial_shape, dtype=torch.int64)
        if len(self) == 0:
            return out
        # paint lowest priority first: ascending score, and for equal scores higher index first
        order = sorted(range(len(self)), key=lambda i: (float(self.scores[i]), -i))
        for i in order:
            out[self.masks[i]] = i + 1
        return out

    def to_semantic_map(self) -> torch.Tensor:
        """``(*spatial)`` int64 class map under the same overlap policy."""
        ids = self.to_label_map()
        lut = torch.cat([torch.zeros(1, dtype=torch.int64), self.classes])
        return lut[ids]

    def areas(self) -> torch.Tensor:
        """``(N,)`` pixel/voxel count of each instance mask."""
        return self.masks.flatten(1).sum(1)


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
