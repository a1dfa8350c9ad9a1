"""Parallel-beam CT in torch: Radon transform, filtered back-projection, low-dose simulator (P1).

Geometry (the same as ``skimage.transform.radon`` / ``iradon``, so results can be compared
directly): an image ``(..., H, W)`` is placed, centred, in a square of side ``n`` — ``max(H, W)``
when ``circle=True`` (the object must lie inside the inscribed circle) or ``ceil(sqrt(H^2 +
W^2))`` otherwise — and rotated about pixel ``(n // 2, n // 2)``. For angle ``theta`` the
projection at detector bin ``k`` (signed offset ``s = k - n // 2`` pixels) is the sum of the
bilinearly interpolated image along the rotated columns, times ``pixel_mm``: attenuation per mm
in, dimensionless line integrals out. Sinograms are ``(..., A, n)``: angles on axis -2, detector
bins on axis -1 (``skimage`` returns the transpose, ``(n, A)``).

* :func:`radon` — rotation + sum with ``F.grid_sample`` (differentiable, CPU/GPU,
  float32/float64).
* :func:`radon_adjoint` — the exact adjoint ``A^T`` of :func:`radon` (its vector-Jacobian
  product), for iterative reconstruction and likelihood gradients.
* :func:`fbp` — filtered back-projection: each projection is zero-padded to the next power of 2
  ``>= 2 n`` (at least 64), filtered in the frequency domain (ramp built from its band-limited
  spatial kernel, optionally apodised by Shepp-Logan, cosine or Hann) and back-projected with
  linear interpolation (``grid_sample`` of the filtered projections), times ``pi / (2 A)``.
* :func:`simulate_low_dose_ct` — HU -> ``mu = mu_w (1 + HU / 1000)`` -> ``p = radon(mu)`` ->
  ``lambda = I0 exp(-p)`` -> ``y ~ Poisson(lambda)`` (+ optional Gaussian electronic noise) ->
  ``p_hat = -ln(max(y, floor) / I0)`` -> FBP -> HU. The counts are returned so a restoration model
  can be trained with the Poisson NLL on the raw data (:func:`medseg.physics.poisson_nll`).
* :func:`fbp_photons_for_sigma` / :func:`fbp_noise_std_hu` — the delta-method link between the
  photons per ray and the noise std of the reconstruction at the rotation centre.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseg.physics.hu import hu_to_mu, mu_to_hu
from medseg.physics.noise import MU_WATER_PER_MM

__all__ = [
    "FILTERS",
    "LowDoseCT",
    "default_angles",
    "fbp",
    "fbp_filter",
    "fbp_noise_std_hu",
    "fbp_photons_for_sigma",
    "radon",
    "radon_adjoint",
    "simulate_low_dose_ct",
    "sinogram_side",
]

FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
#: Elements per ``grid_sample`` call; angles are processed in chunks below this size.
_CHUNK_ELEMS = 1 << 24


def sinogram_side(height: int, width: int, circle: bool = True) -> int:
    """Detector bins (and reconstruction side) for an image ``(height, width)``.

    ``max(height, width)`` when ``circle`` (object inside the inscribed circle), else the
    diagonal ``ceil(sqrt(h^2 + w^2))`` so that nothing is cut off.
    """
    if circle:
        return max(height, width)
    return int(math.ceil(math.sqrt(height**2 + width**2)))


def default_angles(n_detectors: int) -> torch.Tensor:
    """``ceil(pi / 2 * n)`` equally spaced angles in ``[0, 180)`` degrees (float64).

    That many views sample the sinogram as finely in angle as the detector samples it in space
    (the usual rule for parallel-beam FBP without angular aliasing).
    """
    n_ang = int(math.ceil(math.pi / 2 * n_detectors))
    return torch.arange(n_ang, dtype=torch.float64) * (180.0 / n_ang)


def _angles_tensor(angles_deg: Sequence[float] | np.ndarray | torch.Tensor,
                   ref: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(angles_deg, dtype=np.float64) if not isinstance(
        angles_deg, torch.Tensor) else angles_deg.detach().cpu().to(torch.float64))
    if a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"angles_deg must be a non-empty 1-D sequence, got shape "
                         f"{tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError("angles_deg must be finite")
    return torch.deg2rad(a).to(device=ref.device, dtype=ref.dtype)


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")


def _chunk(n_per_angle: int) -> int:
    return max(1, _CHUNK_ELEMS // max(n_per_angle, 1))


_GRID_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_GRID_CACHE_SIZE = 6


def _cached_grid(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Sampling grids depend only on geometry; keep the last few (saves half the time of a
    single-image projection)."""
    g = _GRID_CACHE.get(key)
    if g is None:
        g = make()
        _GRID_CACHE[key] = g
        if len(_GRID_CACHE) > _GRID_CACHE_SIZE:
            _GRID_CACHE.popitem(last=False)
    else:
        _GRID_CACHE.move_to_end(key)
    return g


def radon(
    image: torch.Tensor,
    angles_deg: Sequence[float] | np.ndarray | torch.Tensor,
    pixel_mm: float = 1.0,
    circle: bool = True,
) -> torch.Tensor:
    """Parallel-beam forward projection (line integrals).

    Args:
        image: ``(..., H, W)`` float tensor; leading axes are a batch (e.g. the slices of a
            volume). For attenuation per mm the result is dimensionless.
        angles_deg: ``A`` projection angles in degrees.
        pixel_mm: Pixel size; the sums along rays are multiplied by it.
        circle: Assume the object lies inside the inscribed circle (``n = max(H, W)`` detector
            bins); ``False`` pads to the diagonal.

    Returns:
        Sinogram ``(..., A, n)``, same dtype and device, differentiable in ``image``.

    Raises:
        ValueError: fewer than two dimensions, or an image side below 2.
    """
    _check_float(image, "radon: image")
    if image.ndim < 2 or min(image.shape[-2:]) < 2:
        raise ValueError(f"radon: image must be (..., H, W) with H, W >= 2, got "
                         f"{tuple(image.shape)}")
    h, w = image.shape[-2:]
    lead = image.shape[:-2]
    x = image.reshape(-1, h, w)
    b = x.shape[0]
    theta = _angles_tensor(angles_deg, image)
    n = sinogram_side(h, w, circle)
    c = n // 2
    pad_r, pad_c = (n - h) // 2, (n - w) // 2
    idx = torch.arange(n, device=image.device, dtype=image.dtype) - c
    rr, cc = torch.meshgrid(idx, idx, indexing="ij")  # rr: along the ray, cc: detector offset
    out = []
    step = _chunk(b * n * n)
    for i in range(0, theta.numel(), step):
        t = theta[i:i + step]

        def make(t: torch.Tensor = t) -> torch.Tensor:
            cos, sin = torch.cos(t)[:, None, None], torch.sin(t)[:, None, None]
            col = c + cos * cc + sin * rr - pad_c
            row = c - sin * cc + cos * rr - pad_r
            return torch.stack((2.0 * col / (w - 1) - 1.0, 2.0 * row / (h - 1) - 1.0), dim=-1)

        grid = _cached_grid(("radon", h, w, n, t.cpu().numpy().tobytes(), t.dtype, t.device),
                            make)
        inp = x.unsqueeze(0).expand(t.numel(), b, h, w)
        rot = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (a, b, n, n)
        out.append(rot.sum(dim=2))  # (a, b, n)
    sino = torch.cat(out, dim=0).permute(1, 0, 2)  # (b, A, n)
    return (sino * pixel_mm).reshape(*lead, theta.numel(), n)


def radon_adjoint(
    sinogram: torch.Tensor,
    angles_deg: Sequence[float] | np.ndarray | torch.Tensor,
    image_shape: tuple[int, int],
    pixel_mm: float = 1.0,
    circle: bool = True,
) -> torch.Tensor:
    """The exact adjoint (transpose) of :func:`radon`: ``<radon(x), y> = <x, radon_adjoint(y)>``.

    Computed as the vector-Jacobian product of the (linear) forward projector, so it is the
    matched back-projector, differentiable in ``sinogram``. It is unfiltered: use :func:`fbp` for
    a reconstruction.

    Args:
        sinogram: ``(..., A, n)`` with ``n = sinogram_side(*image_shape, circle)``.
        angles_deg: The ``A`` angles of the sinogram.
        image_shape: ``(H, W)`` of the image space.
        pixel_mm: As in :func:`radon`.
        circle: As in :func:`radon`.

    Returns:
        ``(..., H, W)`` tensor.
    """
    _check_float(sinogram, "radon_adjoint: sinogram")
    h, w = int(image_shape[0]), int(image_shape[1])
    _check_sinogram(sinogram, angles_deg, sinogram_side(h, w, circle), "radon_adjoint")
    x0 = torch.zeros(*sinogram.shape[:-2], h, w, dtype=sinogram.dtype, device=sinogram.device,
                     requires_grad=True)
    with torch.enable_grad():
        proj = radon(x0, angles_deg, pixel_mm, circle)
        (g,) = torch.autograd.grad(proj, x0, grad_outputs=sinogram,
                                   create_graph=sinogram.requires_grad)
    return g


def _check_sinogram(sinogram: torch.Tensor, angles_deg: Sequence[float] | np.ndarray |
                    torch.Tensor, n_expected: int | None, who: str) -> None:
    if sinogram.ndim < 2:
        raise ValueError(f"{who}: sinogram must be (..., A, n_detectors), got "
                         f"{tuple(sinogram.shape)}")
    n_ang = len(angles_deg)
    if sinogram.shape[-2] != n_ang:
        raise ValueError(f"{who}: the sinogram has {sinogram.shape[-2]} angles (axis -2) but "
                         f"angles_deg has {n_ang} entries; expected shape (..., {n_ang}, n)")
    if n_expected is not None and sinogram.shape[-1] != n_expected:
        raise ValueError(f"{who}: the sinogram has {sinogram.shape[-1]} detector bins (axis -1) "
                         f"but the image geometry needs {n_expected}")
    if sinogram.shape[-1] < 2:
        raise ValueError(f"{who}: need at least 2 detector bins, got {sinogram.shape[-1]}")


def fbp_filter(size: int, name: str = "ramp", dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Frequency response ``(size,)`` (FFT order) of an FBP filter.

    The ramp is the DFT of the band-limited spatial ramp kernel (``h[0] = 1/4``, ``h[k] =
    -1/(pi k)^2`` for odd ``k``, 0 for even ``k``) — not ``|f|`` sampled, which would get the DC
    term wrong — as in Kak & Slaney ch. 3 and ``skimage.transform.iradon``. Apodisations:
    Shepp-Logan ``sinc``, cosine, Hann.

    Raises:
        ValueError: unknown filter name or odd size.
    """
    if name not in FILTERS:
        raise ValueError(f"unknown FBP filter {name!r}; use one of {FILTERS}")
    if size < 2 or size % 2:
        raise ValueError(f"filter size must be even and >= 2, got {size}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int),
                        np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1.0 / (np.pi * n) ** 2
    resp = 2.0 * np.real(np.fft.fft(f))
    if name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        resp[1:] *= np.sin(omega) / omega
    elif name == "cosine":
        resp *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif name == "hann":
        resp *= np.fft.fftshift(np.hanning(size))
    return torch.as_tensor(resp, dtype=dtype, device=device)


def _padded_size(n_det: int) -> int:
    return max(64, int(2 ** math.ceil(math.log2(2 * n_det))))


def _filter_projections(sinogram: torch.Tensor, filter: str) -> torch.Tensor:
    n_det = sinogram.shape[-1]
    size = _padded_size(n_det)
    resp = fbp_filter(size, filter, dtype=sinogram.dtype, device=sinogram.device)
    spec = torch.fft.fft(sinogram, n=size, dim=-1) * resp
    return torch.fft.ifft(spec, dim=-1).real[..., :n_det]


def fbp(
    sinogram: torch.Tensor,
    angles_deg: Sequence[float] | np.ndarray | torch.Tensor,
    filter: str = "ramp",
    output_size: int | None = None,
    pixel_mm: float = 1.0,
    circle: bool = True,
) -> torch.Tensor:
    """Filtered back-projection of a parallel-beam sinogram (inverse of :func:`radon`).

    Args:
        sinogram: ``(..., A, n)`` line integrals (angles on axis -2, detector bins on -1).
        angles_deg: The ``A`` angles in degrees (``[0, 180)`` for a complete scan).
        filter: ``"ramp"``, ``"shepp-logan"``, ``"cosine"`` or ``"hann"``.
        output_size: Side of the square reconstruction; default ``n`` if ``circle`` else
            ``floor(n / sqrt(2))`` (the image that a ``circle=False`` projection came from).
        pixel_mm: Pixel size used by :func:`radon`; the result is divided by it, so
            ``fbp(radon(x, a, s), a, pixel_mm=s) ~= x``.
        circle: Zero the reconstruction outside the inscribed circle (as ``iradon``).

    Returns:
        ``(..., S, S)`` reconstruction, same dtype/device, differentiable in ``sinogram``.

    Raises:
        ValueError: the sinogram's angle count differs from ``angles_deg``, too few detector
            bins, unknown filter.
    """
    _check_float(sinogram, "fbp: sinogram")
    _check_sinogram(sinogram, angles_deg, None, "fbp")
    if filter not in FILTERS:
        raise ValueError(f"fbp: unknown filter {filter!r}; use one of {FILTERS}")
    n_ang, n_det = sinogram.shape[-2:]
    lead = sinogram.shape[:-2]
    size = output_size if output_size is not None else (
        n_det if circle else int(math.floor(n_det / math.sqrt(2))))
    if size < 1:
        raise ValueError(f"fbp: output_size must be >= 1, got {size}")
    q = _filter_projections(sinogram.reshape(-1, n_ang, n_det), filter)  # (b, A, n)
    b = q.shape[0]
    theta = _angles_tensor(angles_deg, q)
    radius = size // 2
    idx = torch.arange(size, device=q.device, dtype=q.dtype) - radius
    xpr, ypr = torch.meshgrid(idx, idx, indexing="ij")
    qa = q.permute(1, 0, 2).unsqueeze(2)  # (A, b, 1, n)
    rec = torch.zeros(b, size, size, dtype=q.dtype, device=q.device)
    step = _chunk(b * size * size)
    for i in range(0, n_ang, step):
        t_ang = theta[i:i + step]

        def make(t_ang: torch.Tensor = t_ang) -> torch.Tensor:
            t = ypr * torch.cos(t_ang)[:, None, None] - xpr * torch.sin(t_ang)[:, None, None]
            gx = 2.0 * (t + n_det // 2) / (n_det - 1) - 1.0
            return torch.stack((gx, torch.zeros_like(gx)), dim=-1)  # (a, S, S, 2)

        grid = _cached_grid(("fbp", size, n_det, t_ang.cpu().numpy().tobytes(), t_ang.dtype,
                             t_ang.device), make)
        rec = rec + F.grid_sample(qa[i:i + step], grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True).sum(dim=0)
    rec = rec * (math.pi / (2 * n_ang)) / pixel_mm
    if circle:
        rec = rec * ((xpr**2 + ypr**2) <= radius**2).to(rec.dtype)
    return rec.reshape(*lead, size, size)


def fbp_noise_std_hu(
    photons: float,
    n_angles: int,
    n_detectors: int,
    line_integral: float,
    pixel_mm: float = 1.0,
    mu_water: float = MU_WATER_PER_MM,
    filter: str = "ramp",
    location: str = "centre",
) -> float:
    """Predicted noise std (HU) of :func:`simulate_low_dose_ct` (delta method).

    ``Var(p_hat) = 1 / lambda = exp(p) / I0`` for rays of line integral ``~ p``. The centre pixel
    sums the filtered projections at ``t = 0`` (no interpolation), so with ``h`` the filter's
    spatial kernel ``Var(mu) = (pi / (2 A))^2 * A * sum_k h_k^2 * exp(p) / I0 / pixel_mm^2`` and
    ``sigma_HU = 1000 * sqrt(Var(mu)) / mu_water``. Elsewhere each view interpolates linearly
    between two neighbouring filtered bins of correlation ``rho = sum h_k h_{k+1} / sum h_k^2``;
    averaged over a uniform fractional offset this multiplies the variance by ``2/3 + rho/3``
    (``location="mean"``; about 0.46 for the ramp, whose neighbours are anticorrelated).

    Args:
        photons: ``I0`` (> 0).
        n_angles: Views ``A``.
        n_detectors: Detector bins ``n``.
        line_integral: Typical line integral ``p`` of the rays through the region.
        pixel_mm: Pixel size.
        mu_water: Attenuation of water per mm.
        filter: FBP filter.
        location: ``"centre"`` (rotation centre) or ``"mean"`` (typical pixel).
    """
    if photons <= 0:
        raise ValueError(f"photons per ray (I0) must be > 0, got {photons}")
    if location not in ("centre", "mean"):
        raise ValueError(f"location must be 'centre' or 'mean', got {location!r}")
    size = _padded_size(n_detectors)
    h = torch.fft.ifft(fbp_filter(size, filter).to(torch.complex128)).real
    e = float((h**2).sum())
    factor = 1.0
    if location == "mean":
        factor = 2.0 / 3.0 + float((h * torch.roll(h, 1)).sum()) / e / 3.0
    var_mu = (math.pi / (2 * n_angles)) ** 2 * n_angles * e * factor \
        * math.exp(line_integral) / photons / pixel_mm**2
    return 1000.0 * math.sqrt(var_mu) / mu_water


def fbp_photons_for_sigma(
    sigma_hu: float,
    n_angles: int,
    n_detectors: int,
    line_integral: float,
    pixel_mm: float = 1.0,
    mu_water: float = MU_WATER_PER_MM,
    filter: str = "ramp",
    location: str = "centre",
) -> float:
    """Photons per ray ``I0`` giving noise std ``sigma_hu`` (inverse of
    :func:`fbp_noise_std_hu`, same arguments)."""
    if sigma_hu <= 0:
        raise ValueError(f"sigma_hu must be > 0, got {sigma_hu}")
    at_one = fbp_noise_std_hu(1.0, n_angles, n_detectors, line_integral, pixel_mm, mu_water,
                              filter, location)
    return (at_one / sigma_hu) ** 2


@dataclass
class LowDoseCT:
    """Result of :func:`simulate_low_dose_ct` (leading batch axes ``...`` as in the input).

    Attributes:
        hu: Noisy reconstruction ``(..., H, W)`` in HU.
        clean_hu: Noise-free FBP reconstruction ``(..., H, W)`` in HU (``None`` unless asked
            for): the same geometry, filter and discretisation, without the counting noise.
        counts: Measured counts ``y`` ``(..., A, n)`` (integers unless electronic noise is on).
        expected_counts: ``lambda = I0 exp(-p)`` ``(..., A, n)``.
        line_integrals: Noise-free ``p`` ``(..., A, n)``.
        photons: Incident photons per ray ``I0``.
        angles_deg: The ``A`` angles (float64).
        count_floor: Counts were floored at this value before the log.
    """

    hu: torch.Tensor
    clean_hu: torch.Tensor | None
    counts: torch.Tensor
    expected_counts: torch.Tensor
    line_integrals: torch.Tensor
    photons: float
    angles_deg: torch.Tensor
    count_floor: float


def simulate_low_dose_ct(
    hu: torch.Tensor | np.ndarray,
    photons: float,
    angles_deg: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    pixel_mm: float = 1.0,
    mu_water: float = MU_WATER_PER_MM,
    rng: np.random.Generator | int = 0,
    electronic_noise: float = 0.0,
    filter: str = "ramp",
    circle: bool = True,
    count_floor: float = 0.5,
    return_clean: bool = False,
) -> LowDoseCT:
    """Low-dose CT: forward project, draw Poisson counts, reconstruct (P1).

    ``mu = mu_water (1 + max(HU, -1000) / 1000)`` -> ``p = radon(mu)`` -> ``lambda = I0
    exp(-p)`` -> ``y ~ Poisson(lambda)`` (+ ``N(0, electronic_noise^2)``) -> ``p_hat =
    -ln(max(y, count_floor) / I0)`` -> ``fbp(p_hat)`` -> HU. A detector bin that counts zero
    photons (photon starvation) carries no finite log; it is floored at ``count_floor`` (default
    half a photon), which caps ``p_hat`` at ``ln(I0 / count_floor)`` and shows up as the streaks
    real scanners get behind dense objects at very low dose.

    Args:
        hu: Noise-free image(s) in HU, ``(..., H, W)`` (torch or numpy; a volume is simulated
            per slice by putting the slice axis first). numpy input is computed in float32.
        photons: Incident photons per ray ``I0`` (> 0).
        angles_deg: Projection angles; default :func:`default_angles` of the detector count.
        pixel_mm: In-plane pixel size (mm).
        mu_water: Attenuation of water per mm.
        rng: numpy Generator or seed; the counts are drawn with numpy on the CPU, so the result
            is identical on every device for the same seed.
        electronic_noise: Std of additive Gaussian detector noise, in photons.
        filter: FBP filter (see :func:`fbp`).
        circle: See :func:`radon`; the object (non-air part) must lie inside the inscribed
            circle when ``True``.
        count_floor: Floor applied to the counts before the log (> 0).
        return_clean: Also reconstruct the noise-free sinogram (``clean_hu``).

    Returns:
        A :class:`LowDoseCT`.

    Raises:
        ValueError: ``photons <= 0``, ``count_floor <= 0``, ``electronic_noise < 0``.
    """
    if not photons > 0 or not math.isfinite(photons):
        raise ValueError(f"simulate_low_dose_ct: photons per ray (I0) must be a finite number "
                         f"> 0, got {photons}")
    if not count_floor > 0:
        raise ValueError(f"simulate_low_dose_ct: count_floor must be > 0, got {count_floor}")
    if electronic_noise < 0:
        raise ValueError(f"simulate_low_dose_ct: electronic_noise must be >= 0, got "
                         f"{electronic_noise}")
    x = hu if isinstance(hu, torch.Tensor) else torch.as_tensor(np.asarray(hu, np.float32))
    if not x.is_floating_point():
        x = x.to(torch.float32)
    h, w = x.shape[-2:]
    n = sinogram_side(h, w, circle)
    ang = default_angles(n) if angles_deg is None else torch.as_tensor(
        np.asarray(angles_deg, dtype=np.float64) if not isinstance(angles_deg, torch.Tensor)
        else angles_deg.detach().cpu().to(torch.float64))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    p = radon(hu_to_mu(x, mu_water), ang, pixel_mm, circle)
    lam = photons * torch.exp(-p)
    lam_np = lam.detach().cpu().to(torch.float64).numpy()
    y_np = gen.poisson(lam_np).astype(np.float64)
    if electronic_noise > 0:
        y_np = y_np + gen.normal(0.0, electronic_noise, size=y_np.shape)
    y = torch.as_tensor(y_np, device=x.device).to(x.dtype)
    p_hat = math.log(photons) - torch.log(y.clamp_min(count_floor))

    def _recon(sino: torch.Tensor) -> torch.Tensor:
        mu = fbp(sino, ang, filter=filter, output_size=n, pixel_mm=pixel_mm, circle=circle)
        r0, c0 = (n - h) // 2, (n - w) // 2
        return mu_to_hu(mu[..., r0:r0 + h, c0:c0 + w], mu_water)

    return LowDoseCT(
        hu=_recon(p_hat), clean_hu=_recon(p) if return_clean else None, counts=y,
        expected_counts=lam, line_integrals=p, photons=float(photons), angles_deg=ang,
        count_floor=float(count_floor),
    )
