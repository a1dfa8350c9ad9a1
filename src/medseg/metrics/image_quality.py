"""Image-quality metrics for restoration: PSNR and SSIM (2D and 3D, torch).

* :func:`psnr` — ``10 log10(data_range^2 / MSE)``; the data range is an explicit argument (never
  guessed from the prediction). Empty-case policy: identical images (MSE 0) give ``+inf``.
* :func:`ssim` — structural similarity (Wang et al. 2004) with a Gaussian window
  (``sigma = 1.5``, truncated at ``3.5 sigma``: an 11-voxel window), ``K1 = 0.01``,
  ``K2 = 0.03``, population (not sample) covariances, averaged over the voxels whose window lies
  fully inside the image. These are the settings of
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R)``, which it matches (the border it crops is the
  region whose window leaves the image, so its padding mode does not matter).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "psnr", "ssim", "ssim_map"]


def psnr(pred: torch.Tensor, ref: torch.Tensor, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB.

    Args:
        pred: Image, any shape.
        ref: Reference, same shape.
        data_range: Range of the reference's values (e.g. 255 for grey values, max - min of the
            clean images otherwise).

    Returns:
        ``10 log10(data_range^2 / mean((pred - ref)^2))``; ``inf`` when the images are equal.

    Raises:
        ValueError: shapes differ or ``data_range <= 0``.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(ref.shape)}")
    if data_range <= 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    mse = float(((pred.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """1D normalised Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's), float64."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of ``(B, C, *spatial)`` along every spatial axis."""
    d = x.dim() - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    c = x.shape[1]
    for ax in range(d):
        shape = [1] * d
        shape[ax] = w.numel()
        k = w.to(x.dtype).reshape(1, 1, *shape).repeat(c, 1, *([1] * d))
        x = conv(x, k, groups=c)
    return x


def ssim_map(pred: torch.Tensor, ref: torch.Tensor, data_range: float, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Local SSIM over the voxels whose Gaussian window lies inside the image.

    Args:
        pred: ``(B, C, *spatial)`` with 1 to 3 spatial axes.
        ref: Same shape.
        data_range: Range of the values (sets ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``).
        sigma: Gaussian window std in voxels (truncated at 3.5 sigma).
        k1: Luminance constant.
        k2: Contrast constant.

    Returns:
        ``(B, C, *(spatial - 2 r))`` local SSIM values (``r`` the window radius).

    Raises:
        ValueError: shapes differ, or an axis is not longer than the window.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(ref.shape)}")
    if not 3 <= pred.dim() <= 5:
        raise ValueError(f"ssim: need (B, C, *spatial) with 1-3 spatial axes, got "
                         f"{tuple(pred.shape)}")
    w = gaussian_window(sigma)
    if min(pred.shape[2:]) < w.numel():
        raise ValueError(f"ssim: every spatial axis must be >= the window ({w.numel()} voxels), "
                         f"got {tuple(pred.shape[2:])}")
    x, y = pred.double(), ref.double()
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    sxx = _filter_valid(x * x, w) - mx * mx
    syy = _filter_valid(y * y, w) - my * my
    sxy = _filter_valid(x * y, w) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(pred: torch.Tensor, ref: torch.Tensor, data_range: float, sigma: float = 1.5) -> float:
    """Mean SSIM (see :func:`ssim_map`); ``pred``/``ref`` may also be ``(*spatial)``.

    Returns:
        The mean of the local SSIM map, in [-1, 1] (1 for identical images).
    """
    if pred.dim() in (2, 3) and pred.shape == ref.shape:
        pred, ref = pred[None, None], ref[None, None]
    return float(ssim_map(pred, ref, data_range, sigma).mean())
