"""Negative log-likelihoods of the per-modality noise laws (L7, see P1-P3).

All functions are elementwise torch functions, differentiable in their parameters, and return
``-log p(observation | parameters)`` with the same (broadcast) shape as their inputs; reduce it
with ``reduction="mean"`` / ``"sum"`` or keep it per voxel with ``"none"`` (the default ``"mean"``).

* :func:`poisson_nll` — CT projection counts (P1): ``counts ~ Poisson(rate)``.
* :func:`rician_nll` — single-coil MR magnitude (P2): ``x = |nu + n|``, complex Gaussian ``n``.
* :func:`gamma_nll` — ultrasound echo intensity with multiplicative speckle (P3).
* :func:`gaussian_hetero_nll` — Gaussian with a predicted per-voxel log-variance.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gamma_nll", "gaussian_hetero_nll", "poisson_nll", "reduce_nll", "rician_nll"]

_REDUCTIONS = ("none", "mean", "sum")


def reduce_nll(value: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``) to a per-voxel NLL."""
    if reduction == "none":
        return value
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def poisson_nll(
    rate: torch.Tensor, counts: torch.Tensor, full: bool = False, reduction: str = "mean"
) -> torch.Tensor:
    """Poisson negative log-likelihood ``rate - counts log(rate) [+ log(counts!)]``.

    Args:
        rate: Expected counts ``lambda > 0`` (a *rate*, in photons/counts per detector bin, not
            its logarithm), any shape.
        counts: Observed counts ``>= 0`` (integer-valued, any dtype), broadcastable to ``rate``.
        full: Add the constant ``log(counts!) = lgamma(counts + 1)`` so that the value is the
            exact ``-log P(counts | rate)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The NLL, shape of ``rate`` (``"none"``) or a scalar.

    Raises:
        ValueError: If any count is negative or any rate is not positive.

    ``counts * log(rate)`` is computed with :func:`torch.xlogy`, so ``counts = 0`` gives exactly
    ``rate`` whatever the rate; large rates stay finite (no exponentials are taken).
    """
    counts = counts.to(rate.dtype)
    if bool((counts < 0).any()):
        raise ValueError("poisson_nll: counts must be >= 0 (Poisson counts cannot be negative)")
    if bool((rate <= 0).any()):
        raise ValueError("poisson_nll: rate must be > 0 (pass the rate, not its logarithm)")
    nll = rate - torch.xlogy(counts, rate)
    if full:
        nll = nll + torch.lgamma(counts + 1.0)
    return reduce_nll(nll, reduction)


def rician_nll(
    x: torch.Tensor,
    nu: torch.Tensor,
    sigma: torch.Tensor | float,
    eps: float = 1e-12,
    reduction: str = "mean",
) -> torch.Tensor:
    """Rician NLL of an MR magnitude ``x`` given signal ``nu`` and noise std ``sigma``.

    ``p(x) = x / sigma^2 exp(-(x^2 + nu^2) / (2 sigma^2)) I0(x nu / sigma^2)`` for ``x >= 0``.
    With ``z = x nu / sigma^2`` and ``log I0(z) = log(i0e(z)) + z`` (exponentially scaled Bessel,
    never overflows) the NLL is

    ``-log x + 2 log sigma + (x - nu)^2 / (2 sigma^2) - log(i0e(z))``,

    which stays finite and smooth at very high SNR (where it tends to the Gaussian NLL) and at
    ``x = 0``.

    Args:
        x: Observed magnitudes ``>= 0`` (intensity units of the image), any shape.
        nu: Noise-free signal magnitude ``>= 0`` (same units), broadcastable to ``x``.
        sigma: Standard deviation of the Gaussian noise on each of the real and imaginary parts
            (same units), ``> 0``, tensor or float.
        eps: Floor on ``x`` inside the ``-log x`` term only. The true density is 0 at ``x = 0``
            (NLL ``+inf``); the floor keeps the value finite there. That term does not depend on
            ``nu`` or ``sigma``, so their gradients are exact.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The NLL, broadcast shape (``"none"``) or a scalar.

    Raises:
        ValueError: If ``sigma <= 0`` anywhere or ``x < 0`` anywhere.
    """
    sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if bool((sigma_t <= 0).any()):
        raise ValueError("rician_nll: sigma must be > 0 (noise std of the real/imaginary parts)")
    if bool((x < 0).any()):
        raise ValueError("rician_nll: magnitudes x must be >= 0")
    var = sigma_t * sigma_t
    z = x * nu / var
    nll = (
        -torch.log(x.clamp_min(eps))
        + torch.log(var)
        + (x - nu) ** 2 / (2.0 * var)
        - torch.log(torch.special.i0e(z))
    )
    return reduce_nll(nll, reduction)


def gamma_nll(
    y: torch.Tensor,
    mean: torch.Tensor,
    looks: torch.Tensor | float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Gamma negative log-likelihood of a speckled echo intensity (P3).

    ``y = mean * G`` with ``G ~ Gamma(shape=L, scale=1/L)`` (``E[G] = 1``: mean preserving), so
    ``y ~ Gamma(shape=L, scale=mean/L)`` and

    ``-log p(y) = lgamma(L) - L log L + L log(mean) - (L - 1) log y + L y / mean``.

    Args:
        y: Observed echo *intensity* (power, linear scale — not log-compressed grey values),
            ``>= 0``, any shape.
        mean: Noise-free intensity ``> 0`` (same units), broadcastable to ``y``.
        looks: Number of looks ``L >= 1`` (tensor or float); ``L = 1`` is fully developed speckle.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The NLL, broadcast shape (``"none"``) or a scalar.

    Raises:
        ValueError: If ``looks < 1``, ``mean <= 0`` or ``y < 0``.
    """
    L = torch.as_tensor(looks, dtype=y.dtype, device=y.device)
    if bool((L < 1).any()):
        raise ValueError("gamma_nll: looks must be >= 1 (L = 1 is fully developed speckle)")
    if bool((mean <= 0).any()):
        raise ValueError("gamma_nll: mean intensity must be > 0")
    if bool((y < 0).any()):
        raise ValueError("gamma_nll: intensities y must be >= 0 (use linear power, not dB)")
    nll = (
        torch.lgamma(L)
        - L * torch.log(L)
        + L * torch.log(mean)
        - torch.xlogy(L - 1.0, y)
        + L * y / mean
    )
    return reduce_nll(nll, reduction)


def gaussian_hetero_nll(
    y: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    full: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """Heteroscedastic Gaussian NLL ``0.5 (log_var + (y - mean)^2 exp(-log_var)) [+ 0.5 log 2 pi]``.

    Args:
        y: Observed values (image intensity units), any shape.
        mean: Predicted mean (same units), broadcastable to ``y``.
        log_var: Predicted log-variance (natural log of squared intensity units), broadcastable.
            Predicting the log keeps the variance positive without clamping.
        full: Add the constant ``0.5 log(2 pi)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        The NLL, broadcast shape (``"none"``) or a scalar.
    """
    nll = 0.5 * (log_var + (y - mean) ** 2 * torch.exp(-log_var))
    if full:
        nll = nll + 0.5 * math.log(2.0 * math.pi)
    return reduce_nll(nll, reduction)
