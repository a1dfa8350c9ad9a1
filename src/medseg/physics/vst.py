"""Anscombe variance-stabilising transform for Poisson data and its inverses (P1).

For ``X ~ Poisson(lambda)``, ``A(X) = 2 sqrt(X + 3/8)`` has variance close to 1 once
``lambda`` is larger than a few counts, so Poisson data can be denoised with L2 / Gaussian
methods in the Anscombe domain. Going back needs care: the algebraic inverse
``(y/2)^2 - 3/8`` is biased at low counts because ``E[A(X)] != A(E[X])``. The *exact unbiased
inverse* maps ``y = E[A(X) | lambda]`` back to ``lambda`` (Makitalo & Foi, IEEE TIP 2011).

Here ``E[A(X) | lambda]`` is computed by summing the Poisson pmf (truncated at
``k <= lambda + 20 sqrt(lambda) + 50``) on a grid of ``lambda`` in ``[0, 200]`` and inverted by
monotone (piecewise-linear) interpolation. Above the grid (``y`` larger than
``E[A(X) | 200] ~= 28.3``) the closed-form asymptotic approximation of Makitalo & Foi is used:

``lambda ~= 1/4 y^2 + 1/4 sqrt(3/2) y^-1 - 11/8 y^-2 + 5/8 sqrt(3/2) y^-3 - 1/8``,

whose error there is far below a count. Below ``E[A(X) | 0] = 2 sqrt(3/8)`` the inverse is 0.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import stats

__all__ = [
    "anscombe",
    "anscombe_expectation",
    "inverse_anscombe_algebraic",
    "inverse_anscombe_asymptotic",
    "inverse_anscombe_unbiased",
]

_LAMBDA_MAX = 200.0


def anscombe(x: torch.Tensor) -> torch.Tensor:
    """Forward Anscombe transform ``2 sqrt(x + 3/8)``.

    Args:
        x: Poisson counts (or count-scaled intensities) ``>= 0``, any shape.

    Returns:
        Transformed values, same shape; unit variance (approximately) for ``lambda >~ 4``.

    Raises:
        ValueError: a negative count (Poisson counts are >= 0).
    """
    if x.numel() and float(x.min()) < 0:
        raise ValueError(f"anscombe: counts must be >= 0, got a minimum of {float(x.min()):g}")
    return 2.0 * torch.sqrt(x + 0.375)


def inverse_anscombe_algebraic(y: torch.Tensor) -> torch.Tensor:
    """Algebraic inverse ``(y / 2)^2 - 3/8`` (biased at low counts).

    Args:
        y: Values in the Anscombe domain, any shape.

    Returns:
        Counts, same shape (not clipped: can be slightly negative).
    """
    return (y / 2.0) ** 2 - 0.375


def inverse_anscombe_asymptotic(y: torch.Tensor) -> torch.Tensor:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011).

    ``1/4 y^2 + 1/4 sqrt(3/2) y^-1 - 11/8 y^-2 + 5/8 sqrt(3/2) y^-3 - 1/8``; accurate for
    ``y >~ 2`` and used by :func:`inverse_anscombe_unbiased` above its tabulated range.

    Args:
        y: Values in the Anscombe domain ``> 0``, any shape.

    Returns:
        Estimated Poisson means, same shape.
    """
    c = math.sqrt(1.5)
    return 0.25 * y**2 + 0.25 * c / y - 1.375 / y**2 + 0.625 * c / y**3 - 0.125


def anscombe_expectation(lam: np.ndarray) -> np.ndarray:
    """``E[2 sqrt(X + 3/8)]`` for ``X ~ Poisson(lam)``, by summing the pmf.

    The sum runs over ``k = 0 .. ceil(max(lam) + 20 sqrt(max(lam)) + 50)``; the tail beyond is
    negligible (far below ``1e-15``).

    Args:
        lam: Poisson means ``>= 0``, shape ``(N,)``.

    Returns:
        The expectations, float64, shape ``(N,)``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    kmax = int(math.ceil(lam.max() + 20.0 * math.sqrt(lam.max()) + 50.0))
    k = np.arange(kmax + 1, dtype=np.float64)
    pmf = stats.poisson.pmf(k[None, :], lam[:, None])
    return pmf @ (2.0 * np.sqrt(k + 0.375))


@functools.lru_cache(maxsize=1)
def _unbiased_table() -> tuple[np.ndarray, np.ndarray]:
    """``(E[A(X) | lambda], lambda)`` on a grid dense at low counts, both increasing."""
    lam = np.unique(np.concatenate([
        np.linspace(0.0, 1.0, 201),
        np.geomspace(1.0, _LAMBDA_MAX, 1200),
    ]))
    return anscombe_expectation(lam), lam


def inverse_anscombe_unbiased(y: torch.Tensor) -> torch.Tensor:
    """Exact unbiased inverse: the ``lambda`` with ``E[2 sqrt(X + 3/8) | lambda] = y``.

    Tabulated and inverted by monotone interpolation for ``lambda <= 200``; the Makitalo-Foi
    asymptotic closed form (:func:`inverse_anscombe_asymptotic`) above; 0 for
    ``y <= 2 sqrt(3/8)`` (the expectation at ``lambda = 0``).

    Args:
        y: Values in the Anscombe domain (e.g. a denoised Anscombe image), any shape.

    Returns:
        Estimated Poisson means ``>= 0``, same shape and dtype as ``y``. Not differentiable
        through the tabulated part.
    """
    ey, lam = _unbiased_table()
    yv = y.detach().to(torch.float64).cpu().numpy()
    low = np.interp(yv, ey, lam, left=0.0, right=lam[-1])
    high = inverse_anscombe_asymptotic(torch.from_numpy(np.maximum(yv, ey[-1]))).numpy()
    out = np.where(yv > ey[-1], high, low)
    return torch.from_numpy(out).to(dtype=y.dtype, device=y.device)
