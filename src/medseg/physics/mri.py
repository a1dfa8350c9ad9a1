"""MR magnitude physics in torch (P2): complex noise, Rician moments, noise estimation.

A single-coil magnitude image is ``m = |nu e^{i phi} + n_re + i n_im|`` with i.i.d.
``n_re, n_im ~ N(0, sigma^2)``: Rician with signal ``nu`` and scale ``sigma``, Rayleigh where
``nu = 0`` (the background). Noise augmentation must therefore add *complex* Gaussian noise and
take the modulus (:func:`complex_noise`) — never Gaussian noise on the magnitude, whose law is
different (it goes negative and has the wrong mean at low SNR).

* :func:`complex_noise` adds the noise in the image domain, or in k-space: the spatial axes are
  Fourier transformed with the *orthonormal* DFT (``norm="ortho"``), the noise is added to every
  k-space sample and the image is transformed back. The orthonormal DFT is unitary, so i.i.d.
  complex white noise of std ``sigma`` per component in k-space is i.i.d. complex white noise of
  the same ``sigma`` in the image: the two domains give the same law (checked in the tests).
* :func:`estimate_noise_sigma` estimates ``sigma`` from background (Rayleigh) voxels with one of
  three moment / mode identities: ``E[m] = sigma sqrt(pi / 2)``, ``E[m^2] = 2 sigma^2``,
  ``mode = sigma``.
* :func:`rician_mean` is the closed form
  ``E[m] = sigma sqrt(pi / 2) L_{1/2}(-nu^2 / (2 sigma^2))`` with the Laguerre function
  ``L_{1/2}(x) = exp(x / 2) [(1 - x) I0(-x / 2) - x I1(-x / 2)]``, evaluated with the
  exponentially scaled Bessel functions ``i0e``/``i1e`` so it does not overflow at high SNR.
* :func:`rician_bias_correct` is the conventional moment correction
  ``sqrt(max(m^2 - 2 sigma^2, 0))`` (``E[m^2] = nu^2 + 2 sigma^2``).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "complex_noise",
    "estimate_noise_sigma",
    "otsu_threshold",
    "rician_bias_correct",
    "rician_mean",
]

_SIGMA_METHODS = ("rayleigh_mean", "rayleigh_mode", "rayleigh_m2")


def _check_sigma(sigma: float | torch.Tensor, fn: str) -> None:
    s = torch.as_tensor(sigma)
    if bool((s <= 0).any()) or bool(torch.isnan(s).any()):
        got = float(s.min()) if s.numel() else s
        raise ValueError(
            f"{fn}: sigma (noise std of the real and imaginary parts) must be > 0, got {got}"
        )


def _check_magnitude(magnitude: torch.Tensor, fn: str) -> None:
    if bool((magnitude < 0).any()):
        raise ValueError(
            f"{fn}: magnitudes must be >= 0, got a minimum of {float(magnitude.min())} "
            "(pass the magnitude image, not a normalised or signed one)"
        )


def complex_noise(
    magnitude: torch.Tensor,
    sigma: float | torch.Tensor,
    generator: torch.Generator,
    phase: float | torch.Tensor | None = None,
    domain: str = "image",
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Add i.i.d. complex Gaussian noise to an MR signal and return the magnitude (Rician).

    Args:
        magnitude: Noise-free magnitude ``nu >= 0``, shape ``(*lead, *spatial)`` (e.g.
            ``(B, C, *spatial)``), float32 or float64.
        sigma: Noise std of each of the real and imaginary parts, ``> 0``: a float or a tensor
            broadcastable to ``magnitude`` (for ``domain="kspace"`` it must be constant along the
            spatial axes, e.g. shape ``(B, C, 1, 1)``).
        generator: Source of the random numbers (the result is a function of its state).
        phase: Signal phase in radians (scalar or broadcastable tensor); ``None`` is 0. The
            magnitude's law does not depend on it.
        domain: ``"image"`` (noise on every voxel) or ``"kspace"`` (noise on every sample of the
            orthonormal DFT over the spatial axes; same law, see the module docstring).
        spatial_dims: Number of trailing spatial axes (used by ``"kspace"``); ``None`` means
            every axis of ``magnitude`` is spatial.

    Returns:
        ``|nu e^{i phase} + n|``, same shape and dtype as ``magnitude``.

    Raises:
        ValueError: ``sigma <= 0``, negative magnitudes, unknown ``domain``, or a ``sigma`` that
            varies along the spatial axes in k-space.
    """
    _check_sigma(sigma, "complex_noise")
    _check_magnitude(magnitude, "complex_noise")
    if domain not in ("image", "kspace"):
        raise ValueError(f"complex_noise: domain must be 'image' or 'kspace', got {domain!r}")
    nd = magnitude.ndim if spatial_dims is None else int(spatial_dims)
    if not 1 <= nd <= magnitude.ndim:
        raise ValueError(
            f"complex_noise: spatial_dims={spatial_dims} does not fit a tensor of shape "
            f"{tuple(magnitude.shape)}"
        )
    dtype = magnitude.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a = magnitude.to(work)
    sig = torch.as_tensor(sigma, dtype=work, device=a.device)
    if phase is None:
        signal = torch.complex(a, torch.zeros_like(a))
    else:
        ph = torch.as_tensor(phase, dtype=work, device=a.device)
        signal = torch.polar(a, ph.expand_as(a))
    n_re = torch.randn(a.shape, generator=generator, dtype=work, device=a.device)
    n_im = torch.randn(a.shape, generator=generator, dtype=work, device=a.device)
    dims = tuple(range(a.ndim - nd, a.ndim))
    if domain == "image":
        noisy = signal + torch.complex(sig * n_re, sig * n_im)
    else:
        if sig.ndim > 0:
            full = torch.broadcast_shapes(sig.shape, a.shape)
            sig_b = sig.reshape((1,) * (len(full) - sig.ndim) + tuple(sig.shape))
            if any(sig_b.shape[d] != 1 for d in dims):
                raise ValueError(
                    "complex_noise: in k-space sigma must be constant along the spatial axes; "
                    f"got sigma of shape {tuple(sig.shape)} for magnitude "
                    f"{tuple(magnitude.shape)} (give one sigma per leading index, e.g. "
                    "(B, C, 1, 1))"
                )
        k = torch.fft.fftn(signal, dim=dims, norm="ortho")
        k = k + torch.complex(sig * n_re, sig * n_im)
        noisy = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return noisy.abs().to(dtype)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a set of intensities.

    Args:
        values: Intensities, any shape (flattened).
        bins: Histogram bins between the minimum and the maximum.

    Returns:
        The threshold: voxels ``<= threshold`` form the lower class. For a constant input, that
        constant.
    """
    v = values.detach().flatten().to(torch.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    centers = lo + width * (torch.arange(bins, dtype=torch.float64) + 0.5)
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    s0 = torch.cumsum(hist * centers, 0)
    m0 = s0 / w0.clamp_min(1e-300)
    m1 = (s0[-1] - s0) / w1.clamp_min(1e-300)
    between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    k = int(torch.argmax(between))
    return lo + width * (k + 1)


def _background_mask(magnitude: torch.Tensor) -> torch.Tensor:
    """Voxels below Otsu's threshold (the dark, noise-only class)."""
    return magnitude <= otsu_threshold(magnitude)


def _rayleigh_mode(values: torch.Tensor) -> torch.Tensor:
    """Mode of Rayleigh samples, from the histogram around its peak.

    The histogram spans ``[0, q99]`` in 100 bins; its peak ``p`` is located on 5-bin smoothed
    counts, then the Rayleigh log-density ``log h - log m = c - m^2 / (2 sigma^2)`` is fitted by
    weighted least squares (weights ``sqrt(count)``) to the bins in ``(0.3 p, 1.7 p)`` only, and
    the mode of the fitted law, ``sigma``, is returned. Values far above the mode (tissue voxels
    in the mask) do not enter the fit, which is what makes the mode robust; a plain parabola on
    the log counts would be biased by the skew of the Rayleigh density (a few percent).
    """
    v = values.to(torch.float64)
    top = float(torch.quantile(v[:1_000_000], 0.99))
    if top <= 0:
        return torch.zeros((), dtype=torch.float64)
    bins = 100
    hist = torch.histc(v, bins=bins, min=0.0, max=top)
    width = top / bins
    centers = width * (torch.arange(bins, dtype=torch.float64) + 0.5)
    smooth = torch.nn.functional.conv1d(
        hist[None, None], torch.ones(1, 1, 5, dtype=torch.float64) / 5.0, padding=2
    )[0, 0]
    peak = float(centers[int(torch.argmax(smooth))])
    sel = (centers > 0.3 * peak) & (centers < 1.7 * peak) & (hist > 0)
    if int(sel.sum()) < 3:
        return torch.tensor(peak, dtype=torch.float64)
    x, h = centers[sel], hist[sel]
    w = torch.sqrt(h)
    y = torch.log(h) - torch.log(x)
    design = torch.stack([torch.ones_like(x), x * x], dim=1)
    coef = torch.linalg.lstsq(design * w[:, None], (y * w)[:, None]).solution[:, 0]
    if float(coef[1]) >= 0:
        return torch.tensor(peak, dtype=torch.float64)
    return torch.sqrt(-0.5 / coef[1])


def estimate_noise_sigma(
    magnitude: torch.Tensor,
    mask: torch.Tensor | None = None,
    method: str = "rayleigh_mean",
) -> torch.Tensor:
    """Estimate the complex noise ``sigma`` from background (signal-free, Rayleigh) voxels.

    Rayleigh identities: ``E[m] = sigma sqrt(pi / 2)`` (``"rayleigh_mean"``),
    ``E[m^2] = 2 sigma^2`` (``"rayleigh_m2"``), ``mode = sigma`` (``"rayleigh_mode"``, the most
    robust to a few tissue voxels in the mask).

    Args:
        magnitude: One magnitude image, any shape, ``>= 0``.
        mask: Boolean background mask of the same shape; ``None`` uses the voxels below Otsu's
            threshold (the dark class; meaningful when the image has air around the object).
        method: ``"rayleigh_mean"``, ``"rayleigh_mode"`` or ``"rayleigh_m2"``.

    Returns:
        ``sigma`` as a 0-d float64 tensor.

    Raises:
        ValueError: unknown method, negative magnitudes, a mask of the wrong shape or an empty
            mask.
    """
    if method not in _SIGMA_METHODS:
        raise ValueError(
            f"estimate_noise_sigma: method must be one of {_SIGMA_METHODS}, got {method!r}"
        )
    _check_magnitude(magnitude, "estimate_noise_sigma")
    if mask is None:
        mask = _background_mask(magnitude)
    elif mask.shape != magnitude.shape:
        raise ValueError(
            f"estimate_noise_sigma: mask shape {tuple(mask.shape)} differs from the image's "
            f"{tuple(magnitude.shape)}"
        )
    bg = magnitude.detach()[mask.bool()].to(torch.float64)
    if bg.numel() == 0:
        raise ValueError("estimate_noise_sigma: the background mask selects no voxel")
    if method == "rayleigh_mean":
        return bg.mean() / math.sqrt(math.pi / 2.0)
    if method == "rayleigh_m2":
        return torch.sqrt((bg * bg).mean() / 2.0)
    return _rayleigh_mode(bg)


def rician_mean(nu: torch.Tensor | float, sigma: torch.Tensor | float) -> torch.Tensor:
    """Mean of a Rician magnitude with signal ``nu`` and noise std ``sigma``.

    With ``t = nu^2 / (4 sigma^2)`` (so ``x = -2 t``) the closed form becomes
    ``sigma sqrt(pi / 2) [(1 + 2 t) i0e(t) + 2 t i1e(t)]``, where the ``exp(-t)`` of the Laguerre
    function cancels the growth of ``I0``, ``I1``: no overflow, and it tends to ``nu`` at high
    SNR and to ``sigma sqrt(pi / 2)`` (Rayleigh) at ``nu = 0``.

    Args:
        nu: Signal magnitude ``>= 0`` (tensor or float).
        sigma: Noise std ``> 0``, broadcastable to ``nu``.

    Returns:
        ``E[m]``, broadcast shape, float64 unless a floating tensor input sets the dtype.

    Raises:
        ValueError: ``sigma <= 0`` or ``nu < 0``.
    """
    _check_sigma(sigma, "rician_mean")
    nu_t = torch.as_tensor(nu)
    floating = isinstance(nu, torch.Tensor) and nu.is_floating_point()
    dtype = nu_t.dtype if floating else torch.float64
    nu_t = nu_t.to(dtype)
    _check_magnitude(nu_t, "rician_mean")
    s = torch.as_tensor(sigma, dtype=dtype, device=nu_t.device)
    t = nu_t * nu_t / (4.0 * s * s)
    lag = (1.0 + 2.0 * t) * torch.special.i0e(t) + 2.0 * t * torch.special.i1e(t)
    return s * math.sqrt(math.pi / 2.0) * lag


def rician_bias_correct(magnitude: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Conventional Rician bias correction ``sqrt(max(m^2 - 2 sigma^2, 0))``.

    ``m^2 - 2 sigma^2`` is an unbiased estimate of ``nu^2`` (``E[m^2] = nu^2 + 2 sigma^2``), but
    its square root is not unbiased for ``nu``, and the clamp at 0 makes it biased upwards at low
    SNR: for ``nu = 0`` the output is positive on average (``~0.6 sigma``), and it is only
    accurate for roughly ``nu / sigma > 3``. Use it for display or thresholds; for estimation
    at low SNR prefer a likelihood fit (:func:`medseg.physics.likelihoods.rician_nll`).

    Args:
        magnitude: Magnitudes ``>= 0``, any shape.
        sigma: Noise std ``> 0``, float or broadcastable tensor.

    Returns:
        Corrected magnitudes, same shape and dtype.

    Raises:
        ValueError: ``sigma <= 0`` or negative magnitudes.
    """
    _check_sigma(sigma, "rician_bias_correct")
    _check_magnitude(magnitude, "rician_bias_correct")
    s = torch.as_tensor(sigma, dtype=magnitude.dtype, device=magnitude.device)
    return torch.sqrt((magnitude * magnitude - 2.0 * s * s).clamp_min(0.0))
