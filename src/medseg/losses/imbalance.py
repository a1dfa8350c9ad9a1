"""Class imbalance: gradient-balancing class weights, fixed and adaptive (L3, L4, T6).

A binary lesion task with lesion fraction ``alpha`` and current predictions ``p1`` (mean lesion
probability on lesion voxels) and ``p0`` (mean lesion probability on background voxels) has
per-voxel cross-entropy gradients ``p1 - 1`` on lesion and ``p0`` on background (``p - y``, L1).
Summed over ``N`` voxels, background pushes with ``N (1 - alpha) |p0|`` against the lesion's
``N alpha |p1 - 1|``. Weighting the lesion voxels' CE terms by ``w1`` (background ``w0 = 1``)
multiplies the lesion total by ``w1``; the totals are equal at::

    w1 = (1 - alpha) p0 / (alpha (1 - p1))

(``alpha = 0.001, p1 = 0.30, p0 = 0.02`` gives ratio = ``w1 = 28.54``, :func:`gradient_balance`).

**Multi-class, one class against the rest.** For class ``c`` with voxel fraction ``alpha_c``,
``s_c`` = mean of ``p_c`` over class-``c`` voxels and ``q_c`` = mean of ``p_c`` over all other
voxels, the gradient on logit ``z_c`` totals ``N alpha_c (1 - s_c)`` from class ``c`` and
``N (1 - alpha_c) q_c`` from the rest, so::

    w_c = (1 - alpha_c) q_c / (alpha_c (1 - s_c)),     w_ref = 1 for the reference class

(the reference is the background, class 0, by default). With two classes this is exactly L4
(``alpha_1 = alpha``, ``s_1 = p1``, ``q_1 = p0``). With more classes the rest is counted at
weight 1, so the balance is per class against an unweighted rest, not a joint solution.

Use the weights with :func:`medseg.losses.masked_cross_entropy` (``class_weights=``): fixed from
dataset statistics (:func:`class_fractions`, :func:`gradient_balance_weights`) or adaptive
(:class:`AdaptiveClassWeights`, updated from the current predictions each step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from medseg.losses.functional import as_label_map, as_mask, check_logits, one_hot


def gradient_balance(alpha: float, p0: float, p1: float) -> tuple[float, float]:
    """Background-to-lesion gradient ratio and the balancing lesion weight (L3, L4).

    Args:
        alpha: Lesion fraction of the voxels, in ``(0, 1)``.
        p0: Mean predicted lesion probability on background voxels, in ``[0, 1]``.
        p1: Mean predicted lesion probability on lesion voxels, in ``[0, 1)``.

    Returns:
        ``(ratio, w1)`` with ``ratio = N(1-alpha)|p0| / (N alpha |p1 - 1|)`` (the total
        background over total lesion gradient magnitude of unweighted CE) and
        ``w1 = (1-alpha) p0 / (alpha (1-p1))`` (the lesion weight that equalises them with
        ``w0 = 1``). The two are equal numbers; both are returned to name what each means.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not 0 <= p0 <= 1:
        raise ValueError(f"p0 must lie in [0, 1], got {p0}")
    if not 0 <= p1 < 1:
        raise ValueError(f"p1 must lie in [0, 1) (p1 = 1 means no lesion gradient), got {p1}")
    ratio = (1 - alpha) * abs(p0) / (alpha * abs(p1 - 1))
    w1 = (1 - alpha) * p0 / (alpha * (1 - p1))
    return ratio, w1


def gradient_balance_weights(
    alpha: torch.Tensor | Sequence[float],
    p_own: torch.Tensor | Sequence[float],
    p_rest: torch.Tensor | Sequence[float],
    reference: int = 0,
    w_min: float = 0.0,
    w_max: float = math.inf,
) -> torch.Tensor:
    """One-vs-rest gradient-balancing class weights (L4; formula in the module docstring).

    ``w_c = (1 - alpha_c) q_c / (alpha_c (1 - s_c))`` clipped to ``[w_min, w_max]``, and
    ``w_reference = 1``. A class with ``alpha_c = 0`` (absent) or ``s_c = 1`` gets ``w_max``
    if finite, else the undefined ratio is replaced by 1.

    Args:
        alpha: ``(C,)`` class fractions ``alpha_c`` (e.g. :func:`class_fractions`).
        p_own: ``(C,)`` mean ``p_c`` on class-``c`` voxels (``s_c``).
        p_rest: ``(C,)`` mean ``p_c`` on the other voxels (``q_c``).
        reference: Class whose weight is fixed at 1 (the background).
        w_min: Lower clip bound.
        w_max: Upper clip bound.

    Returns:
        ``(C,)`` float64 weights.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    s = torch.as_tensor(p_own, dtype=torch.float64)
    q = torch.as_tensor(p_rest, dtype=torch.float64)
    if a.ndim != 1 or a.shape != s.shape or a.shape != q.shape:
        raise ValueError(
            f"alpha, p_own and p_rest must be (C,) of one shape, got {tuple(a.shape)}, "
            f"{tuple(s.shape)}, {tuple(q.shape)}"
        )
    if not 0 <= reference < a.numel():
        raise ValueError(f"reference must be a class index in [0, {a.numel()}), got {reference}")
    if not 0 <= w_min <= w_max:
        raise ValueError(f"need 0 <= w_min <= w_max, got {w_min}, {w_max}")
    den = a * (1 - s)
    undefined = den <= 0
    fallback = w_max if math.isfinite(w_max) else 1.0
    w = torch.where(
        undefined, torch.full_like(a, fallback), (1 - a) * q / torch.where(undefined, 1.0, den)
    )
    w = w.clamp(w_min, w_max)
    w[reference] = 1.0
    return w


def class_fractions(
    labels: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of observed voxels in each class (the ``alpha_c`` of L3/L4).

    Args:
        labels: ``(B, *spatial)`` integer label map (a ``(B, 1, *spatial)`` map is read as
            such when its axis 1 has size 1 and it has at least 4 axes).
        num_classes: ``C``.
        mask: Optional observation mask of the label map's layout.

    Returns:
        ``(C,)`` float64 fractions summing to 1 (all zero when nothing is observed).
    """
    if labels.ndim >= 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    spatial, batch = tuple(labels.shape[1:]), labels.shape[0]
    labels = as_label_map(labels, spatial, batch)
    m = as_mask(mask, spatial, batch, torch.float64)
    oh = one_hot(labels, num_classes, m, torch.float64, spatial_dims=len(spatial))
    counts = oh.sum(dim=(0, *range(2, oh.ndim)))
    total = counts.sum()
    return counts / total if total > 0 else counts


def prediction_statistics(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class voxel counts and mean predicted probabilities over observed voxels.

    Args:
        probs: ``(B, C, *spatial)`` probabilities (softmax outputs; detached internally).
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
        mask: Optional ``(B, *spatial)`` / ``(B, 1, *spatial)`` observation mask.

    Returns:
        ``(counts, p_own, p_rest)``, each ``(C,)`` float64: observed voxels of class ``c``;
        mean ``p_c`` over them (NaN when there are none); mean ``p_c`` over observed voxels of
        the other classes (NaN when there are none).
    """
    check_logits(probs, "probs")
    batch, num_classes, spatial = probs.shape[0], probs.shape[1], tuple(probs.shape[2:])
    p = probs.detach().to(torch.float64)
    target = as_label_map(target, spatial, batch)
    m = as_mask(mask, spatial, batch, torch.float64)
    y = one_hot(target, num_classes, m, torch.float64, spatial_dims=len(spatial))
    obs = torch.ones_like(p[:, :1]) if m is None else m.unsqueeze(1)
    dims = (0, *range(2, p.ndim))
    counts = y.sum(dims)
    rest = (obs - y).sum(dims)
    own_sum = (p * y).sum(dims)
    rest_sum = (p * (obs - y)).sum(dims)
    nan = torch.full_like(counts, math.nan)
    p_own = torch.where(counts > 0, own_sum / counts.clamp_min(1e-300), nan)
    p_rest = torch.where(rest > 0, rest_sum / rest.clamp_min(1e-300), nan)
    return counts, p_own, p_rest


class AdaptiveClassWeights:
    """Gradient-balancing CE class weights recomputed from the current predictions (L4).

    State: exponential moving averages (EMA) of ``s_c`` (mean ``p_c`` on observed class-``c``
    voxels) and ``q_c`` (mean ``p_c`` on the other observed voxels), and the cumulative
    observed voxel count per class, from which ``alpha_c`` is estimated unless fixed
    ``class_fractions`` are given. Each :meth:`update` does, per class with voxels in the
    batch, ``ema <- momentum * ema + (1 - momentum) * batch_mean`` (the first observation sets
    the EMA directly); classes without voxels in the batch keep their value. The weights are
    the one-vs-rest formula of the module docstring::

        w_c = clip((1 - alpha_c) q_c / (alpha_c (1 - s_c)), w_min, w_max),   w_reference = 1

    and stay at ``initial`` for a class until both of its EMAs and its ``alpha_c`` exist.

    Use in a training loop (probabilities detached, masks as for the loss)::

        acw = AdaptiveClassWeights(num_classes=2)
        for step in ...:
            logits = model(x)
            loss = masked_cross_entropy(logits, y, m, class_weights=acw.weights)
            ...
            acw.update(torch.softmax(logits, 1), y, m)
        acw.end_epoch()  # appends acw.last to acw.history for logging

    Args:
        num_classes: ``C >= 2``.
        momentum: EMA momentum in ``[0, 1)`` (0 = use the latest batch only).
        w_min: Lower weight bound (default 1: a rare class is never down-weighted).
        w_max: Upper weight bound (default 100), so the weight cannot explode while the
            rare class is still predicted near 0.
        class_fractions: Optional fixed ``(C,)`` ``alpha_c`` from dataset statistics.
        reference: Class with weight fixed at 1 (the background).
        initial: Optional ``(C,)`` weights to use before statistics exist (default ones).
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.9,
        w_min: float = 1.0,
        w_max: float = 100.0,
        class_fractions: torch.Tensor | Sequence[float] | None = None,
        reference: int = 0,
        initial: torch.Tensor | Sequence[float] | None = None,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not (0 <= w_min <= w_max and math.isfinite(w_max)):
            raise ValueError(f"need 0 <= w_min <= w_max < inf, got {w_min}, {w_max}")
        if not 0 <= reference < num_classes:
            raise ValueError(f"reference must be in [0, {num_classes}), got {reference}")
        self.num_classes = num_classes
        self.momentum = float(momentum)
        self.w_min = float(w_min)
        self.w_max = float(w_max)
        self.reference = reference
        self.fixed_fractions = self._vector(class_fractions, "class_fractions")
        init = self._vector(initial, "initial")
        self.initial = torch.ones(num_classes, dtype=torch.float64) if init is None else init
        self.p_own = torch.full((num_classes,), math.nan, dtype=torch.float64)
        self.p_rest = torch.full((num_classes,), math.nan, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)
        self.num_updates = 0
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    def _vector(self, v: torch.Tensor | Sequence[float] | None, name: str) -> torch.Tensor | None:
        if v is None:
            return None
        t = torch.as_tensor(v, dtype=torch.float64).clone()
        if t.shape != (self.num_classes,):
            raise ValueError(f"{name} must have shape ({self.num_classes},), got {tuple(t.shape)}")
        return t

    @property
    def alpha(self) -> torch.Tensor:
        """``(C,)`` float64 class fractions: the fixed ones, or the cumulative estimate."""
        if self.fixed_fractions is not None:
            return self.fixed_fractions.clone()
        total = self.counts.sum()
        return self.counts / total if total > 0 else torch.full_like(self.counts, math.nan)

    def raw_weights(self) -> torch.Tensor:
        """``(C,)`` float64 unclipped one-vs-rest weights (NaN where undefined)."""
        a, s, q = self.alpha, self.p_own, self.p_rest
        w = (1 - a) * q / (a * (1 - s))
        w[self.reference] = 1.0
        return w

    @property
    def weights(self) -> torch.Tensor:
        """``(C,)`` float32 class weights for ``masked_cross_entropy(class_weights=...)``."""
        raw = self.raw_weights()
        w = torch.where(torch.isnan(raw), self.initial, raw.clamp(self.w_min, self.w_max))
        w[self.reference] = 1.0
        return w.to(torch.float32)

    @torch.no_grad()
    def update(
        self, probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fold one batch into the EMAs and return the new :attr:`weights`.

        Args:
            probs: ``(B, C, *spatial)`` softmax probabilities (for a 1-channel sigmoid model
                pass ``torch.cat([1 - p, p], 1)``).
            target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
            mask: Optional observation mask; only observed voxels count.

        Returns:
            The ``(C,)`` float32 weights after the update.
        """
        if probs.shape[1] != self.num_classes:
            raise ValueError(
                f"probs has {probs.shape[1]} classes, AdaptiveClassWeights was built for "
                f"{self.num_classes}"
            )
        counts, own, rest = prediction_statistics(probs, target, mask)
        self.counts += counts
        for ema, new in ((self.p_own, own), (self.p_rest, rest)):
            have = ~torch.isnan(new)
            first = have & torch.isnan(ema)
            blend = self.momentum * ema + (1 - self.momentum) * new
            ema.copy_(torch.where(first, new, torch.where(have, blend, ema)))
        self.num_updates += 1
        w = self.weights
        self.last = {
            "update": self.num_updates,
            "alpha": self.alpha.tolist(),
            "p_own": self.p_own.tolist(),
            "p_rest": self.p_rest.tolist(),
            "raw_weights": self.raw_weights().tolist(),
            "weights": w.tolist(),
        }
        return w

    def end_epoch(self) -> dict[str, Any]:
        """Append a copy of :attr:`last` (tagged with the epoch index) to :attr:`history`."""
        entry = {"epoch": len(self.history), **self.last}
        self.history.append(entry)
        return entry

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors are copies)."""
        return {
            "num_classes": self.num_classes,
            "momentum": self.momentum,
            "w_min": self.w_min,
            "w_max": self.w_max,
            "reference": self.reference,
            "fixed_fractions": None
            if self.fixed_fractions is None
            else self.fixed_fractions.clone(),
            "initial": self.initial.clone(),
            "p_own": self.p_own.clone(),
            "p_rest": self.p_rest.clone(),
            "counts": self.counts.clone(),
            "num_updates": self.num_updates,
            "last": dict(self.last),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (configuration included).

        Raises:
            ValueError: the state is for a different number of classes or lacks keys.
        """
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise ValueError(f"AdaptiveClassWeights state lacks keys {missing}")
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError(
                f"state is for {state['num_classes']} classes, this object has {self.num_classes}"
            )
        self.momentum = float(state["momentum"])
        self.w_min = float(state["w_min"])
        self.w_max = float(state["w_max"])
        self.reference = int(state["reference"])
        ff = state["fixed_fractions"]
        self.fixed_fractions = None if ff is None else self._vector(ff, "fixed_fractions")
        self.initial = torch.as_tensor(state["initial"], dtype=torch.float64).clone()
        self.p_own = torch.as_tensor(state["p_own"], dtype=torch.float64).clone()
        self.p_rest = torch.as_tensor(state["p_rest"], dtype=torch.float64).clone()
        self.counts = torch.as_tensor(state["counts"], dtype=torch.float64).clone()
        self.num_updates = int(state["num_updates"])
        self.last = dict(state["last"])
        self.history = [dict(h) for h in state["history"]]
