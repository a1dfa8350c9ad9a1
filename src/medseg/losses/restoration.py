"""Restoration (denoising) losses: plain L2 or the modality's likelihood (P1-P4).

The network sees the noisy image scaled to about unit range, ``u = to_network(image)``, and its
single output channel ``t`` is a *correction* of it: :func:`from_network` returns the predicted
clean image in the image's own units (HU, MR magnitude, US grey value) from ``s = u + t``
(residual parameterisation: an untrained network starts at the noisy input, which keeps the
exponentials of the likelihoods in range from the first step):

* CT: ``HU = data_range * s`` (no constraint needed: the count rate
  ``lambda = I0 exp(-mu_water (1 + HU / 1000) L)`` is positive for any HU);
* MR: ``nu = data_range * softplus(20 s) / 20`` (a magnitude is ``>= 0``; this softplus is the
  identity to within 1e-10 of the data range above ``s = 0.1``);
* US: ``grey = 255 s`` (the mean intensity ``reference * 10^((grey / 255 - 1) DR / 10)`` is an
  exponential of it, hence positive).

Losses (``kind``), each the mean over voxels of a per-voxel term; ``target`` is in image units:

* ``"l2"``: ``((pred - target) / data_range)^2`` in the input's intensity domain (for US that is
  the log-compressed grey domain, i.e. L2 on log intensity).
* ``"likelihood"``: the NLL of the *target* as an observation of the predicted clean signal —
  CT: Poisson NLL of the target's counts (``I0 exp(-mu L)``, rounded) given the predicted rate
  (written as the Poisson deviance, same gradient, ~0 at the optimum); MR: Rician NLL with the
  dataset's ``sigma``; US: Gamma NLL (``L`` looks) of the target's linear intensity given the
  predicted mean intensity.
* ``"anscombe_l2"`` (CT only): ``(A(y) - 2 sqrt(lambda + 1/8))^2`` with ``A(y) = 2 sqrt(y + 3/8)``
  the Anscombe transform of the target counts; ``2 sqrt(lambda + 1/8)`` is ``E[A(y) | lambda]``
  to ``O(lambda^-3/2)`` (far below 1e-3 at the ``lambda > 100`` counts of the datasets here),
  so the minimiser is the true rate.

With a noisy target (a second independent realisation, Noise2Noise), L2 converges to
``E[target]``, which is biased for Rician magnitudes (``E[m] > nu``) and log-compressed speckle
(``E[log y] = log x + digamma(L) - log L``), while each NLL is minimised at the true signal. With
a *clean* target, L2 is the right loss; Poisson and Gamma NLLs are still minimised at the target,
but the Rician NLL of a clean ``x`` is minimised at ``nu = x I1(z) / I0(z) < x`` (biased low).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg.physics.likelihoods import gamma_nll, poisson_nll, reduce_nll, rician_nll
from medseg.physics.noise_params import NoiseParams

__all__ = [
    "LOSS_KINDS",
    "RestorationLoss",
    "from_network",
    "observation",
    "predicted_parameter",
    "restoration_loss",
    "restoration_nll",
    "to_network",
]

LOSS_KINDS = ("l2", "likelihood", "anscombe_l2")
_BETA = 20.0  # sharpness of the MR softplus
_MAX_EXPONENT = 60.0  # |exponent| cap of the CT / US exponentials (no over/underflow)


def to_network(image: torch.Tensor, noise: NoiseParams) -> torch.Tensor:
    """Scale an image (image units) to the network's input range.

    Args:
        image: ``(B, 1, *spatial)`` (any shape) in HU / magnitude / grey.
        noise: The dataset's noise record.

    Returns:
        Same shape: ``image / data_range`` (CT, MR) or ``image / 255`` (US).
    """
    return image / (255.0 if noise.modality == "US" else noise.data_range)


def from_network(t: torch.Tensor, image: torch.Tensor, noise: NoiseParams) -> torch.Tensor:
    """The predicted clean image in image units from the network's output ``t``.

    Args:
        t: ``(B, 1, *spatial)`` raw network output (a correction in the network's range).
        image: ``(B, 1, *spatial)`` the noisy input the network saw, image units.
        noise: The dataset's noise record.

    Returns:
        Same shape: HU (CT), magnitude ``>= 0`` (MR, sharp softplus) or grey (US).
    """
    s = to_network(image, noise) + t
    if noise.modality == "CT":
        return noise.data_range * s
    if noise.modality == "MR":
        return noise.data_range * F.softplus(s, beta=_BETA)
    return 255.0 * s


def predicted_parameter(pred: torch.Tensor, noise: NoiseParams) -> torch.Tensor:
    """The likelihood's parameter from a predicted clean image (image units).

    Returns:
        CT: count rate ``I0 exp(-mu_water (1 + HU / 1000) L)``; MR: ``nu = max(pred, 0)``; US:
        mean intensity ``reference * exp(ln(10) DR / 10 (grey / 255 - 1))``. Same shape. The
        CT / US exponents are clipped to +-60 (far outside any image: HU beyond ~15000, grey
        beyond -4 DR), so the parameter never overflows or reaches 0.
    """
    if noise.modality == "CT":
        mu_l = noise.mu_water * (1.0 + pred / 1000.0) * noise.path_mm
        return noise.photons * torch.exp(-mu_l.clamp(-_MAX_EXPONENT, _MAX_EXPONENT))
    if noise.modality == "MR":
        return pred.clamp_min(0.0)
    k = math.log(10.0) * noise.dynamic_range_db / 10.0
    return noise.reference * torch.exp((k * (pred / 255.0 - 1.0)).clamp(-_MAX_EXPONENT,
                                                                         _MAX_EXPONENT))


def observation(image: torch.Tensor, noise: NoiseParams) -> torch.Tensor:
    """An observed (noisy) image in the likelihood's domain.

    Returns:
        CT: detector counts ``I0 exp(-mu(HU) L)`` (the transmission model inverted: integer
        counts up to float32 rounding of the stored HU, ~1e-2 count); MR: the magnitude; US:
        linear intensity (log compression undone). Same shape and dtype.
    """
    if noise.modality == "CT":
        return predicted_parameter(image.double(), noise).to(image.dtype)
    if noise.modality == "MR":
        return image
    return predicted_parameter(image.double(), noise).to(image.dtype)


def _poisson_deviance(rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``poisson_nll(rate, y) - poisson_nll(y, y)`` (>= 0, float64 inside)."""
    r, y = rate.double(), counts.double()
    sat = y - torch.xlogy(y, y)
    return (poisson_nll(r, y, reduction="none") - sat).to(rate.dtype)


def restoration_loss(pred: torch.Tensor, target: torch.Tensor, noise: NoiseParams,
                     kind: str = "l2") -> torch.Tensor:
    """Mean training loss of a predicted clean image against a (noisy or clean) target.

    Args:
        pred: ``(B, 1, *spatial)`` predicted clean image in image units (:func:`from_network`).
        target: Same shape, the target in image units.
        noise: The dataset's noise record.
        kind: ``"l2"``, ``"likelihood"`` or ``"anscombe_l2"`` (CT); see the module docstring.

    Returns:
        A scalar.

    Raises:
        ValueError: unknown ``kind``, ``anscombe_l2`` on MR/US, shapes that differ, or targets
            outside the likelihood's support (negative magnitude or intensity).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    if kind == "l2":
        scale = 255.0 if noise.modality == "US" else noise.data_range
        return (((pred - target) / scale) ** 2).mean()
    if kind == "anscombe_l2":
        if noise.modality != "CT":
            raise ValueError("anscombe_l2 is the CT (Poisson counts) loss; use l2 or likelihood")
        rate = predicted_parameter(pred, noise)
        y = observation(target, noise)
        return ((2.0 * torch.sqrt(y + 0.375) - 2.0 * torch.sqrt(rate + 0.125)) ** 2).mean()
    if kind != "likelihood":
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    return restoration_nll(pred, target, noise, reduction="mean", deviance=True)


def restoration_nll(pred: torch.Tensor, observed: torch.Tensor, noise: NoiseParams,
                    reduction: str = "mean", deviance: bool = False) -> torch.Tensor:
    """NLL of an observed noisy image given a predicted clean image (the proper score).

    Args:
        pred: Predicted clean image, image units, any shape.
        observed: A noisy realisation, same shape, image units.
        noise: The dataset's noise record.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        deviance: CT only: subtract the saturated NLL (Poisson deviance / 2), which removes a
            constant and keeps float32 losses readable; otherwise the full NLL
            ``-log P(counts | rate)`` (``lgamma`` term included).

    Returns:
        CT: Poisson NLL per voxel in counts; MR: Rician NLL of the magnitude; US: Gamma NLL of
        the linear intensity (densities per unit of the observation's own domain).
    """
    param = predicted_parameter(pred, noise)
    obs = observation(observed, noise)
    if noise.modality == "CT":
        if deviance:
            nll = _poisson_deviance(param, obs)
        else:
            nll = poisson_nll(param.double(), obs.double(), full=True,
                              reduction="none").to(pred.dtype)
    elif noise.modality == "MR":
        nll = rician_nll(obs, param, float(noise.sigma), reduction="none")
    else:
        nll = gamma_nll(obs, param, float(noise.looks), reduction="none")
    return reduce_nll(nll, reduction)


class RestorationLoss(torch.nn.Module):
    """Thin module around :func:`restoration_loss` (prediction in image units).

    Args:
        noise: The dataset's noise record.
        kind: ``"l2"``, ``"likelihood"`` or ``"anscombe_l2"``.
    """

    def __init__(self, noise: NoiseParams, kind: str = "l2"):
        super().__init__()
        if kind not in LOSS_KINDS or (kind == "anscombe_l2" and noise.modality != "CT"):
            raise ValueError(f"loss kind must be one of {LOSS_KINDS} (anscombe_l2: CT only), "
                             f"got {kind!r} for {noise.modality}")
        self.noise = noise
        self.kind = kind

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` prediction and target (image units) -> scalar loss."""
        return restoration_loss(pred, target, self.noise, self.kind)
