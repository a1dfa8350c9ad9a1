"""Pure tensor functions for batch augmentation, 2D and 3D (no randomness in here).

Every function takes a batch ``image`` of shape ``(B, C, *spatial)`` (float) and, where it moves
voxels, a ``label`` of shape ``(B, 1, *spatial)`` (integer); per-sample parameters are tensors of
shape ``(B,)`` (or ``(B, C)`` for per-channel intensity factors). Random draws live in
:class:`medseg.transforms.augment.Augmenter`, which composes these functions.

Spatial transforms use a single ``F.affine_grid`` + ``F.grid_sample`` for the whole batch:
bilinear (trilinear in 3D) for images, nearest for labels, so a label map never receives a value
it did not hold. The affine matrices are given in *voxel units of the array axes* about the patch
centre (``x_in = A @ x_out``) and converted to ``affine_grid``'s normalised, reversed-axis
convention here, so a rotation of a non-square patch is a true rotation of the voxel grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _bcast(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` or ``(B, C)`` parameters -> broadcastable against ``(B, C, *spatial)``."""
    p = p.to(like.dtype)
    if p.ndim == 1:
        p = p[:, None]
    return p.reshape(p.shape[0], p.shape[1], *([1] * (like.ndim - 2)))


def rotation_matrices(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Rotation matrices in array-axis order.

    Args:
        angles: ``(B,)`` radians for 2D; ``(B, 3)`` radians about array axes 0, 1 and 2 for 3D
            (applied in that order: ``R = R2 @ R1 @ R0``).
        spatial_dims: 2 or 3.

    Returns:
        ``(B, d, d)`` float64 orthogonal matrices with determinant 1.
    """
    a = angles.to(torch.float64)
    if spatial_dims == 2:
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    if spatial_dims != 3 or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"3D rotations need (B, 3) angles, got {tuple(angles.shape)}")
    B = a.shape[0]
    out = torch.eye(3, dtype=torch.float64).repeat(B, 1, 1)
    for axis in range(3):
        i, j = [k for k in range(3) if k != axis]
        c, s = torch.cos(a[:, axis]), torch.sin(a[:, axis])
        r = torch.eye(3, dtype=torch.float64).repeat(B, 1, 1)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        out = r @ out
    return out


def affine_theta(matrices: torch.Tensor, spatial_shape: tuple[int, ...],
                 offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Convert voxel-unit matrices to the ``theta`` that ``F.affine_grid`` expects.

    With ``align_corners=False`` a normalised coordinate ``n`` on an axis of ``N`` voxels is the
    voxel offset from the centre times ``2 / N``, so ``theta_arr = D^-1 A D`` with
    ``D = diag(N / 2)`` and the translation ``D^-1 t``; ``affine_grid`` orders axes
    last-to-first (x = last array axis), hence the reversal.

    Args:
        matrices: ``(B, d, d)`` maps from output to input voxel offsets about the centre.
        spatial_shape: The ``d`` spatial sizes.
        offsets: ``(B, d)`` translations in voxels (array axis order), added after the
            matrix: output voxel ``x`` reads input voxel ``A x + t``; ``None`` = none.

    Returns:
        ``(B, d, d + 1)`` float32 theta.
    """
    d = len(spatial_shape)
    half = torch.tensor([n / 2.0 for n in spatial_shape], dtype=torch.float64)
    t = matrices.to(torch.float64) * half[None, None, :] / half[None, :, None]
    t = t.flip(1).flip(2)
    if offsets is None:
        shift = torch.zeros(t.shape[0], d, 1, dtype=torch.float64)
    else:
        shift = (offsets.to(torch.float64) / half[None]).flip(1)[:, :, None]
    return torch.cat([t, shift], dim=2).to(torch.float32)


def spatial_transform(
    image: torch.Tensor,
    label: torch.Tensor | None,
    matrices: torch.Tensor,
    image_pad: torch.Tensor | float = 0.0,
    label_pad: int = 0,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample a batch through per-sample affine maps (one grid, one ``grid_sample`` each).

    Args:
        image: ``(B, C, *spatial)`` float.
        label: ``(B, 1, *spatial)`` integer, or ``None``.
        matrices: ``(B, d, d)`` output-to-input voxel maps about the centre (identity = no-op up
            to interpolation rounding).
        image_pad: Value for voxels mapped from outside the input; scalar or ``(B, C)``.
        label_pad: Label value outside the input (0 = background, or the ignore label).
        offsets: ``(B, d)`` translations in voxels: output voxel ``x`` (about the centre)
            reads input voxel ``A x + t``, so a whole-voxel ``t`` shifts the content by ``-t``
            exactly; ``None`` = none.

    Returns:
        ``(image, label)`` of the input shapes; the label keeps its dtype and only holds values it
        held before or ``label_pad``.
    """
    shape = tuple(image.shape[2:])
    theta = affine_theta(matrices, shape, offsets)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False).to(image.dtype)
    pad = torch.as_tensor(image_pad, dtype=image.dtype)
    pad = _bcast(pad.expand(image.shape[0]) if pad.ndim == 0 else pad, image)
    out = F.grid_sample(image - pad, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False) + pad
    lab = None
    if label is not None:
        # nearest never mixes values; float32 holds integers exactly up to 2**24
        if label.numel() and int(label.abs().max()) + abs(label_pad) >= 2**24:
            raise ValueError("label values must be below 2**24 in magnitude")
        lf = label.to(torch.float32) - float(label_pad)
        lab = F.grid_sample(lf, grid.to(torch.float32), mode="nearest", padding_mode="zeros",
                            align_corners=False)
        lab = (lab + float(label_pad)).round().to(label.dtype)
    return out, lab


def flip(
    image: torch.Tensor, label: torch.Tensor | None, flips: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample mirroring.

    Args:
        image: ``(B, C, *spatial)``.
        label: ``(B, 1, *spatial)`` or ``None``.
        flips: ``(B, d)`` bool, ``flips[b, k]`` mirrors sample ``b`` along spatial axis ``k``.

    Returns:
        New tensors (inputs are not modified).
    """
    image = image.clone()
    label = None if label is None else label.clone()
    for k in range(flips.shape[1]):
        idx = torch.nonzero(flips[:, k]).flatten()
        if idx.numel() == 0:
            continue
        image[idx] = image[idx].flip(k + 2)
        if label is not None:
            label[idx] = label[idx].flip(k + 2)
    return image, label


def brightness(image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Multiplicative brightness: ``x * f`` with ``f`` of shape ``(B,)`` or ``(B, C)``."""
    return image * _bcast(factors, image)


def _stats(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dims = tuple(range(2, image.ndim))
    return (image.mean(dim=dims, keepdim=True), image.std(dim=dims, keepdim=True),
            image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True))


def contrast(image: torch.Tensor, factors: torch.Tensor, preserve_range: bool = True
             ) -> torch.Tensor:
    """Contrast about the per-sample, per-channel mean: ``(x - m) * f + m``.

    Args:
        image: ``(B, C, *spatial)``.
        factors: ``(B,)`` or ``(B, C)``.
        preserve_range: Clip the result to the input's per-channel min / max (nnU-Net).
    """
    mean, _, lo, hi = _stats(image)
    out = (image - mean) * _bcast(factors, image) + mean
    return torch.maximum(torch.minimum(out, hi), lo) if preserve_range else out


def gamma(image: torch.Tensor, gammas: torch.Tensor, invert: bool = False,
          retain_stats: bool = True) -> torch.Tensor:
    """Gamma on the per-channel range: ``((x - lo) / r) ** g * r + lo``.

    Args:
        image: ``(B, C, *spatial)``.
        gammas: ``(B,)`` or ``(B, C)`` positive exponents.
        invert: Apply to ``-x`` (brightens dark structures instead).
        retain_stats: Restore each channel's mean and std afterwards (nnU-Net).
    """
    x = -image if invert else image
    mean, std, lo, hi = _stats(x)
    rng = (hi - lo).clamp_min(1e-7)
    out = ((x - lo) / rng).clamp(0, 1) ** _bcast(gammas, x) * rng + lo
    if retain_stats:
        m2, s2, _, _ = _stats(out)
        out = (out - m2) / s2.clamp_min(1e-7) * std + mean
    return -out if invert else out


def invert(image: torch.Tensor) -> torch.Tensor:
    """Polarity inversion about each sample's channel mean: ``2 m - x``.

    Dark structures on a bright background become bright on dark (bright-field against
    fluorescence microscopy); the mean and the standard deviation of every channel are kept,
    so a normalised image stays normalised.

    Args:
        image: ``(B, C, *spatial)``.

    Returns:
        ``(B, C, *spatial)``.
    """
    mean = image.mean(dim=tuple(range(2, image.ndim)), keepdim=True)
    return 2.0 * mean - image


def gaussian_noise(image: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Additive Gaussian noise ``x + std * noise`` (generic; physics models in medseg.physics).

    Args:
        image: ``(B, C, *spatial)``.
        std: ``(B,)`` or ``(B, C)`` noise standard deviations.
        noise: Standard normal draws of the image's shape (supplied so this stays pure).
    """
    return image + _bcast(std, image) * noise


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1D Gaussian kernels ``(B, 2 * radius + 1)``; ``sigma <= 0`` gives a delta."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma.to(torch.float64).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor, truncate: float = 3.0
                  ) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (voxels), edges replicated.

    One pass per axis for the whole batch: the padded axis is unfolded into windows and
    contracted with each sample's kernel (faster on CPU than a grouped convolution).

    Args:
        image: ``(B, C, *spatial)``.
        sigma: ``(B,)`` standard deviations in voxels.
        truncate: Kernel radius in standard deviations (one radius for the batch,
            ``ceil(truncate * max(sigma))``).

    Returns:
        ``(B, C, *spatial)``; equals ``scipy.ndimage.gaussian_filter(mode="nearest")`` with the
        same radius.
    """
    B = image.shape[0]
    d = image.ndim - 2
    radius = max(1, int(math.ceil(truncate * float(sigma.max()))))
    k = gaussian_kernel1d(sigma, radius).to(image.dtype)  # (B, K)
    kk = k.reshape(B, 1, *([1] * (d - 1)), 1, k.shape[1])  # broadcast over C and other axes
    x = image
    for axis in range(d):
        xm = x.movedim(axis + 2, -1)
        length = xm.shape[-1]
        xp = F.pad(xm.reshape(-1, 1, length), [radius, radius], mode="replicate")
        windows = xp.reshape(*xm.shape[:-1], length + 2 * radius).unfold(-1, 2 * radius + 1, 1)
        x = (windows * kk).sum(-1).movedim(-1, axis + 2)
    return x.contiguous()


def simulate_low_resolution(image: torch.Tensor, zoom: float) -> torch.Tensor:
    """Down-sample by ``zoom`` (nearest) and up-sample back (linear), as a blurry low-res scan.

    Args:
        image: ``(B, C, *spatial)``.
        zoom: Factor in (0, 1]; 1 returns a copy.
    """
    shape = tuple(image.shape[2:])
    small = tuple(max(1, int(round(n * zoom))) for n in shape)
    if small == shape:
        return image.clone()
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    low = F.interpolate(image, size=small, mode="nearest-exact")
    return F.interpolate(low, size=shape, mode=mode, align_corners=False)
