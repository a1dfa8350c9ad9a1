"""Uncertainty decomposition (SPEC U1, U4): pure torch functions on stacked predictions.

Every function takes ``T`` stacked predictions on axis 0 (MC Dropout passes, ensemble members,
or noise samples) and works for any batch/spatial shape. Classification functions take
probabilities ``(T, B, C, *spatial)`` with the class axis ``class_dim`` (default 2, counted in
the stacked tensor) and return maps without the ``T`` and class axes, ``(B, *spatial)``.

The decompositions are the law of total variance,
``Var(y) = E_t[Var(y | t)] (aleatoric) + Var_t(E[y | t]) (epistemic)``, with the expectation
over ``t`` the uniform average over the ``T`` samples. Variances over ``t`` are population
variances (``ddof = 0``), which makes the identity exact for the empirical mixture. Entropies are
in nats.

The heteroscedastic classification loss of Kendall & Gal (2017) models the logits as
``logits + sigma * eps`` with ``sigma = exp(log_var / 2)`` and ``eps ~ N(0, 1)``
(:func:`sample_softmax_with_logit_noise`, :func:`heteroscedastic_ce`).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "bernoulli_variance_split",
    "entropy",
    "expected_entropy",
    "heteroscedastic_ce",
    "mutual_information",
    "predictive_entropy",
    "sample_softmax_with_logit_noise",
    "total_variance_split",
]


def total_variance_split(
    means: torch.Tensor, variances: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Split the predictive variance of a regression-type output (law of total variance).

    Args:
        means: ``(T, ...)`` the predicted mean of each of ``T`` samples (passes or members).
        variances: ``(T, ...)`` the predicted variance of each sample (e.g. ``exp(log_var)`` of
            a heteroscedastic head), or ``None`` for models without one (aleatoric part 0).

    Returns:
        Dict of ``(...)`` tensors: ``mean`` (mean over T of ``means``), ``aleatoric`` (mean over
        T of ``variances``), ``epistemic`` (population variance over T of ``means``, ``ddof=0``)
        and ``total = aleatoric + epistemic``, the variance of the equal-weight mixture of the T
        predictive distributions.

    Raises:
        ValueError: ``variances`` is given with a shape different from ``means``.
    """
    if variances is not None and variances.shape != means.shape:
        raise ValueError(
            f"means and variances must have the same shape (T, ...), got {tuple(means.shape)} "
            f"and {tuple(variances.shape)}"
        )
    mean = means.mean(dim=0)
    epistemic = means.var(dim=0, correction=0)
    aleatoric = variances.mean(dim=0) if variances is not None else torch.zeros_like(mean)
    return {"mean": mean, "aleatoric": aleatoric, "epistemic": epistemic,
            "total": aleatoric + epistemic}


def bernoulli_variance_split(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class variance split of the one-hot outcome ``y_c`` under ``T`` probability maps.

    ``Var(y_c) = p̄_c (1 - p̄_c) = E_t[p_tc (1 - p_tc)] (aleatoric) + Var_t(p_tc) (epistemic)``.

    Args:
        probs: ``(T, B, C, *spatial)`` class probabilities (any shape with T first).

    Returns:
        Dict of ``(B, C, *spatial)`` tensors ``mean``, ``aleatoric``, ``epistemic``, ``total``
        (as :func:`total_variance_split` with Bernoulli variances ``p (1 - p)``).
    """
    return total_variance_split(probs, probs * (1.0 - probs))


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy ``-sum_c p_c log p_c`` in nats along ``dim`` (``0 log 0 = 0``).

    Args:
        probs: Probabilities summing to one along ``dim``.
        dim: The class axis.

    Returns:
        ``probs`` with axis ``dim`` removed.
    """
    return -torch.special.xlogy(probs, probs).sum(dim=dim)


def predictive_entropy(probs: torch.Tensor, class_dim: int = 2) -> torch.Tensor:
    """Entropy of the mean prediction ``H[mean_t p_t]`` (total uncertainty), nats.

    Args:
        probs: ``(T, B, C, *spatial)`` probabilities.
        class_dim: Class axis of ``probs`` (counted with the T axis).

    Returns:
        ``(B, *spatial)``.
    """
    return entropy(probs.mean(dim=0), dim=_class_axis(probs, class_dim) - 1)


def expected_entropy(probs: torch.Tensor, class_dim: int = 2) -> torch.Tensor:
    """Mean entropy of the individual predictions ``E_t H[p_t]`` (aleatoric part), nats.

    Args:
        probs: ``(T, B, C, *spatial)`` probabilities.
        class_dim: Class axis of ``probs`` (counted with the T axis).

    Returns:
        ``(B, *spatial)``.
    """
    return entropy(probs, dim=_class_axis(probs, class_dim)).mean(dim=0)


def mutual_information(
    probs: torch.Tensor, class_dim: int = 2, clamp: bool = True
) -> torch.Tensor:
    """BALD mutual information ``H[mean_t p_t] - E_t H[p_t]`` (epistemic part), nats.

    It is non-negative (Jensen, entropy is concave); round-off can make it slightly negative
    where all samples agree, so it is clamped at 0 unless ``clamp=False``.

    Args:
        probs: ``(T, B, C, *spatial)`` probabilities.
        class_dim: Class axis of ``probs`` (counted with the T axis).
        clamp: Clamp tiny negative values to 0.

    Returns:
        ``(B, *spatial)``.
    """
    mi = predictive_entropy(probs, class_dim) - expected_entropy(probs, class_dim)
    return mi.clamp_min(0.0) if clamp else mi


def sample_softmax_with_logit_noise(
    logits: torch.Tensor,
    log_var: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    class_dim: int = 1,
) -> torch.Tensor:
    """Softmax of Gaussian-perturbed logits ``softmax(logits + exp(log_var / 2) * eps)``.

    Args:
        logits: ``(B, C, *spatial)`` logits.
        log_var: ``(B, C, *spatial)`` log-variance of the logits (a variance head's output).
        n_samples: Number ``S`` of noise draws.
        generator: Random generator for ``eps`` (``None``: the global one).
        class_dim: Class axis of ``logits``.

    Returns:
        ``(S, B, C, *spatial)`` probabilities (differentiable in ``logits`` and ``log_var``).
    """
    z = _noisy_logits(logits, log_var, n_samples, generator)
    return torch.softmax(z, dim=_class_axis(logits, class_dim) + 1)


def heteroscedastic_ce(
    logits: torch.Tensor,
    log_var: torch.Tensor,
    target: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Heteroscedastic cross-entropy of Kendall & Gal (2017), from logits.

    Per voxel ``-log (1/S) sum_s softmax(logits + sigma * eps_s)[target]`` with
    ``sigma = exp(log_var / 2)``, computed with ``logsumexp`` over the samples; averaged over
    the observed voxels (``mask`` weights applied to the per-voxel terms). With no observed
    voxel the loss is 0 (still attached to the graph).

    Args:
        logits: ``(B, C, *spatial)`` logits (class axis 1).
        log_var: ``(B, C, *spatial)`` log-variance of the logits.
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` int64 class indices.
        n_samples: Number ``S`` of noise draws.
        generator: Random generator for the noise (``None``: the global one).
        mask: Optional ``(B, *spatial)`` or ``(B, 1, *spatial)`` observation mask or weights
            (bool or float; 1 = observed).

    Returns:
        Scalar loss.

    Raises:
        ValueError: shapes do not match.
    """
    if log_var.shape != logits.shape:
        raise ValueError(f"log_var must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(log_var.shape)}")
    target = _drop_channel(target, logits, "target").long()
    z = _noisy_logits(logits, log_var, n_samples, generator)  # (S, B, C, *spatial)
    logp = torch.log_softmax(z, dim=2)
    idx = target.unsqueeze(0).unsqueeze(2).expand(n_samples, *target.shape[:1], 1,
                                                  *target.shape[1:])
    logp_t = logp.gather(2, idx).squeeze(2)  # (S, B, *spatial)
    nll = -(torch.logsumexp(logp_t, dim=0) - math.log(n_samples))  # (B, *spatial)
    if mask is None:
        return nll.mean()
    w = _drop_channel(mask, logits, "mask").to(nll.dtype)
    total = w.sum()
    return (w * nll).sum() / total.clamp_min(torch.finfo(nll.dtype).tiny)


def _noisy_logits(
    logits: torch.Tensor, log_var: torch.Tensor, n_samples: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if log_var.shape != logits.shape:
        raise ValueError(f"log_var must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(log_var.shape)}")
    eps = torch.randn((n_samples, *logits.shape), generator=generator, dtype=logits.dtype,
                      device=logits.device)
    return logits.unsqueeze(0) + torch.exp(0.5 * log_var).unsqueeze(0) * eps


def _drop_channel(t: torch.Tensor, logits: torch.Tensor, name: str) -> torch.Tensor:
    """``(B, 1, *spatial)`` or ``(B, *spatial)`` -> ``(B, *spatial)`` matching ``logits``."""
    want = (logits.shape[0], *logits.shape[2:])
    if t.ndim == logits.ndim and t.shape[1] == 1:
        t = t.squeeze(1)
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must be (B, *spatial) = {want} or (B, 1, *spatial) for logits "
                         f"{tuple(logits.shape)}, got {tuple(t.shape)}")
    return t


def _class_axis(t: torch.Tensor, dim: int) -> int:
    return dim % t.ndim
