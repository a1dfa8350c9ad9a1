"""Ultrasound physics in torch (P3): Gamma speckle, B-mode log compression, homomorphic log.

* :func:`speckle` multiplies the echo *intensity* (power) by ``G ~ Gamma(L, 1/L)`` (mean 1,
  variance ``1/L``): ``L`` looks, ``L = 1`` fully developed speckle (exponential intensity).
  The Gamma variates come from ``torch._standard_gamma(alpha, generator=...)``, which takes an
  explicit ``torch.Generator`` (unlike ``torch.distributions.Gamma``, which draws from the global
  RNG): the same generator state gives the same speckle, whatever the global seed.
* :func:`envelope_to_bmode` is the torch version of :func:`medseg.physics.noise.log_compress`:
  ``255 clip(1 + 10 log10(I / I_ref) / DR, 0, 1)``; :func:`bmode_to_intensity` inverts it on the
  displayed range (grey 0 stands for anything at or below ``-DR`` dB).
* :func:`log_transform` / :func:`inverse_log_transform`: ``log(I + eps)`` and its exact inverse,
  the homomorphic path where speckle is additive: ``log(s G) = log s + log G`` with
  ``Var(log G) = polygamma(1, L)`` whatever the signal ``s``.

Looks: ``L < 1`` raises ``ValueError`` here, as in :func:`medseg.physics.likelihoods.gamma_nll`
(averaging ``L`` independent looks gives ``L >= 1``; ``L = 1`` is the most speckled physical
case). :func:`medseg.physics.noise.us_speckle` (numpy, used by the phantoms) accepts any
``L > 0``; this module follows the likelihood's stricter, physical contract.
"""

from __future__ import annotations

import torch

__all__ = [
    "bmode_to_intensity",
    "envelope_to_bmode",
    "inverse_log_transform",
    "log_transform",
    "speckle",
]

_FLOOR = 1e-12


def _check_intensity(intensity: torch.Tensor, fn: str) -> None:
    if bool((intensity < 0).any()):
        raise ValueError(
            f"{fn}: echo intensity must be >= 0, got a minimum of {float(intensity.min())} "
            "(pass linear power, not dB or normalised values)"
        )


def speckle(
    intensity: torch.Tensor, looks: float | torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Multiplicative Gamma speckle on echo intensity (mean preserving).

    Args:
        intensity: Noise-free echo intensity (linear power) ``>= 0``, any shape, float.
        looks: Number of looks ``L >= 1``: a float or a tensor broadcastable to ``intensity``
            (e.g. ``(B, 1, 1, 1)`` for one value per sample).
        generator: Source of the random numbers.

    Returns:
        ``intensity * G`` with ``G ~ Gamma(shape=L, scale=1/L)`` i.i.d. per voxel; same shape and
        dtype as ``intensity``. ``E = intensity``, ``Var = intensity^2 / L``.

    Raises:
        ValueError: ``looks < 1`` or negative intensity.
    """
    L = torch.as_tensor(looks, dtype=torch.float64)
    if bool((L < 1).any()) or bool(torch.isnan(L).any()):
        raise ValueError(
            f"speckle: looks must be >= 1 (L = 1 is fully developed speckle), got "
            f"{float(L.min())}"
        )
    _check_intensity(intensity, "speckle")
    work = torch.float64 if intensity.dtype == torch.float64 else torch.float32
    alpha = L.to(work).to(intensity.device).expand(intensity.shape).contiguous()
    g = torch._standard_gamma(alpha, generator=generator) / alpha
    return (intensity.to(work) * g).to(intensity.dtype)


def envelope_to_bmode(
    intensity: torch.Tensor,
    dynamic_range_db: float = 60.0,
    reference: float | torch.Tensor | None = None,
    max_value: float = 255.0,
) -> torch.Tensor:
    """B-mode log compression ``max_value clip(1 + 10 log10(I / I_ref) / DR, 0, 1)``.

    Equal to :func:`medseg.physics.noise.log_compress` for ``max_value=255``.

    Args:
        intensity: Echo intensity (linear power) ``>= 0``, any shape.
        dynamic_range_db: Displayed dynamic range ``DR`` in dB, ``> 0``.
        reference: Intensity shown as ``max_value``: float, tensor broadcastable to
            ``intensity`` (e.g. one per sample), or ``None`` for the maximum of the whole tensor.
        max_value: Grey value of the reference (255 for 8-bit display).

    Returns:
        Grey values in ``[0, max_value]``, same shape and dtype.

    Raises:
        ValueError: negative intensity or ``dynamic_range_db <= 0``.
    """
    _check_intensity(intensity, "envelope_to_bmode")
    if dynamic_range_db <= 0:
        raise ValueError(f"envelope_to_bmode: dynamic_range_db must be > 0, got {dynamic_range_db}")
    x = intensity.to(torch.float64)
    ref = x.max() if reference is None else torch.as_tensor(reference, dtype=torch.float64,
                                                            device=x.device)
    db = 10.0 * torch.log10(x.clamp_min(_FLOOR) / ref.clamp_min(_FLOOR))
    return (max_value * (1.0 + db / dynamic_range_db).clamp(0.0, 1.0)).to(intensity.dtype)


def bmode_to_intensity(
    bmode: torch.Tensor,
    dynamic_range_db: float = 60.0,
    reference: float | torch.Tensor = 1.0,
    max_value: float = 255.0,
) -> torch.Tensor:
    """Undo the log compression: ``I = I_ref 10^(DR (g / max_value - 1) / 10)``.

    Exact inverse of :func:`envelope_to_bmode` for grey values in ``(0, max_value]``; grey 0
    (clipped: ``-DR`` dB or less) maps to the floor ``I_ref 10^(-DR / 10)``.

    Args:
        bmode: Grey values in ``[0, max_value]``, any shape.
        dynamic_range_db: The ``DR`` (dB) the image was compressed with, ``> 0``.
        reference: Intensity of grey ``max_value`` (float or broadcastable tensor).
        max_value: Grey value of the reference.

    Returns:
        Intensity ``> 0``, same shape and dtype.

    Raises:
        ValueError: grey values outside ``[0, max_value]`` or ``dynamic_range_db <= 0``.
    """
    if dynamic_range_db <= 0:
        raise ValueError(
            f"bmode_to_intensity: dynamic_range_db must be > 0, got {dynamic_range_db}"
        )
    if bool((bmode < 0).any()) or bool((bmode > max_value).any()):
        raise ValueError(
            f"bmode_to_intensity: grey values must lie in [0, {max_value}], got "
            f"[{float(bmode.min())}, {float(bmode.max())}]"
        )
    g = bmode.to(torch.float64)
    ref = torch.as_tensor(reference, dtype=torch.float64, device=g.device)
    return (ref * 10.0 ** (dynamic_range_db * (g / max_value - 1.0) / 10.0)).to(bmode.dtype)


def log_transform(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Homomorphic log ``log(x + eps)`` (multiplicative speckle becomes additive).

    Args:
        x: Intensity ``>= 0``, any shape.
        eps: Offset ``> 0`` that keeps ``log`` finite at 0 (in the units of ``x``).

    Returns:
        ``log(x + eps)``, same shape and dtype.

    Raises:
        ValueError: negative values or ``eps <= 0``.
    """
    if eps <= 0:
        raise ValueError(f"log_transform: eps must be > 0, got {eps}")
    _check_intensity(x, "log_transform")
    return torch.log(x + eps)


def inverse_log_transform(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`log_transform`: ``exp(y) - eps``.

    Args:
        y: Log-domain values, any shape.
        eps: The ``eps`` used by :func:`log_transform`.

    Returns:
        ``exp(y) - eps``, same shape and dtype (``>= -eps``; ``>= 0`` for ``y`` from
        :func:`log_transform`).
    """
    return torch.exp(y) - eps
