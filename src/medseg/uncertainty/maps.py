"""From ``T`` probability samples to the decomposition a user reads (U4), per voxel or image.

Two exact identities, for samples from any method (MC Dropout, ensembles, TTA, a variance
head; :mod:`medseg.uncertainty.samplers`):

* **variance** of the one-hot outcome ``y_c`` (law of total variance over the samples ``t``):
  ``p̄_c (1 - p̄_c) = E_t[p_tc (1 - p_tc)] + Var_t(p_tc)`` — total = aleatoric (expected
  within-model variance) + epistemic (variance of the model means), per class. A variance head
  feeds the aleatoric term through each sample's noise-averaged probability ``p_tc``;
* **entropy**: ``H[p̄] = E_t H[p_t] + MI`` — predictive entropy = expected entropy (aleatoric)
  + mutual information (epistemic, BALD).

For independent labels (sigmoid, multi-label classification) the same identities hold per label
with the binary entropy.
"""

from __future__ import annotations

import torch

from medseg.uncertainty.decompose import bernoulli_variance_split, entropy

#: The scalar maps (one value per voxel / image) written beside a prediction.
SCALAR_TERMS = ("predictive_entropy", "expected_entropy", "mutual_information",
                "aleatoric_variance", "epistemic_variance", "total_variance")


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def uncertainty_maps(probs: torch.Tensor, logit_var: torch.Tensor | None = None,
                     activation: str = "softmax") -> dict[str, torch.Tensor]:
    """The decomposition of ``T`` samples of one prediction.

    Args:
        probs: ``(T, C, *spatial)`` probability samples (``*spatial`` may be empty for an
            image-level prediction).
        logit_var: ``(T, C, *spatial)`` logit variances of a variance head, or ``None``.
        activation: ``"softmax"`` (classes exclusive) or ``"sigmoid"`` (independent labels).

    Returns:
        ``mean`` ``(C, *spatial)``; per class ``(C, *spatial)``: ``aleatoric_variance_c``,
        ``epistemic_variance_c``, ``total_variance_c`` (total = aleatoric + epistemic exactly);
        ``predicted`` ``(*spatial)`` (arg-max of the mean; for sigmoid ``(C, *spatial)`` 0/1
        at 0.5); the scalar maps of :data:`SCALAR_TERMS`: for softmax ``(*spatial)`` — the
        entropies in nats and the variances of the predicted class; for sigmoid ``(C,
        *spatial)`` per label; and ``logit_variance`` ``(C, *spatial)`` with a variance head.
    """
    if probs.ndim < 2:
        raise ValueError(f"probs must be (T, C, *spatial), got {tuple(probs.shape)}")
    probs = probs.double()
    split = bernoulli_variance_split(probs)
    mean = split["mean"]
    out = {"mean": mean, "aleatoric_variance_c": split["aleatoric"],
           "epistemic_variance_c": split["epistemic"], "total_variance_c": split["total"]}
    if activation == "softmax":
        pred = mean.argmax(0)
        h_mean = entropy(mean, dim=0)
        h_exp = entropy(probs, dim=1).mean(0)
        out["predicted"] = pred
        for name in ("aleatoric", "epistemic", "total"):
            out[f"{name}_variance"] = split[name].gather(0, pred.unsqueeze(0))[0]
    elif activation == "sigmoid":
        h_mean = _binary_entropy(mean)
        h_exp = _binary_entropy(probs).mean(0)
        out["predicted"] = (mean >= 0.5).to(torch.int64)
        for name in ("aleatoric", "epistemic", "total"):
            out[f"{name}_variance"] = split[name]
    else:
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
    out["predictive_entropy"] = h_mean
    out["expected_entropy"] = h_exp
    out["mutual_information"] = (h_mean - h_exp).clamp_min(0.0)
    if logit_var is not None:
        out["logit_variance"] = logit_var.double().mean(0)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
