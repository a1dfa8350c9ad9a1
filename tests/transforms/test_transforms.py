"""Resampling and batch augmentation (2D and 3D): hand-computed numbers and scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from medseg.errors import ConfigError
from medseg.transforms import (
    AugmentConfig,
    Augmenter,
    resample_labels,
    resample_to_shape,
    resample_to_spacing,
    shape_for_spacing,
    spacing_after_resample,
)
from medseg.transforms import functional as TF

# ---------------------------------------------------------------------------------- resample


def test_shape_for_spacing_numbers():
    assert shape_for_spacing((100, 50), (1.0, 2.0), (2.0, 2.0)) == (50, 50)
    assert shape_for_spacing((10, 7, 3), (1.0, 1.0, 5.0), (3.0, 0.5, 1.0)) == (3, 14, 15)
    assert spacing_after_resample((10,), (1.0,), (3,)) == pytest.approx((10 / 3,))
    with pytest.raises(ValueError):
        shape_for_spacing((10,), (1.0,), (0.0,))


def test_resample_identity_is_exact_copy():
    a = np.random.default_rng(0).standard_normal((2, 5, 6, 7)).astype(np.float32)
    out = resample_to_spacing(a, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    assert isinstance(out, np.ndarray) and out is not a
    np.testing.assert_array_equal(out, a)
    t = torch.from_numpy(a)
    out_t = resample_to_shape(t, (5, 6, 7))
    assert torch.equal(out_t, t) and out_t.data_ptr() != t.data_ptr()


def test_linear_upsampling_of_a_ramp_matches_hand_values():
    # 1D ramp x_i = i on 4 voxels, upsampled to 8 with edges aligned: sample positions
    # (j + 0.5) / 2 - 0.5 = j/2 - 0.25, clamped at the edges.
    ramp = np.tile(np.arange(4, dtype=np.float32), (3, 1))[None]  # (1, 3, 4)
    out = resample_to_shape(ramp, (3, 8), order="linear")
    expect = np.clip(np.arange(8) / 2 - 0.25, 0, 3)
    np.testing.assert_allclose(out[0, 1], expect, atol=1e-6)
    assert out.shape == (1, 3, 8)


def test_resample_to_spacing_shape_and_nearest_values():
    lab = np.arange(8 * 4, dtype=np.int64).reshape(1, 8, 4)
    out = resample_to_spacing(lab, (1.0, 1.0), (2.0, 1.0), order="nearest")
    assert out.shape == (1, 4, 4) and out.dtype == np.int64
    # nearest-exact: new voxel j takes old voxel floor((j + 0.5) * 2) = 2j + 1
    np.testing.assert_array_equal(out[0], lab[0, 1::2])
    up = resample_to_spacing(np.zeros((1, 10, 20), np.float32), (2.0, 1.0), (1.0, 1.0))
    assert up.shape == (1, 20, 20)


def test_resample_labels_onehot_linear_keeps_values():
    rng = np.random.default_rng(1)
    lab = np.kron(rng.integers(0, 4, (4, 4)), np.ones((4, 4), dtype=np.int64)) * 50  # 16x16
    lab[0, 0] = 255  # an ignore value
    for method in ("nearest", "onehot_linear"):
        out = resample_labels(lab, (23, 9), method=method)
        assert out.dtype == lab.dtype and out.shape == (23, 9)
        assert set(np.unique(out)) <= set(np.unique(lab))
    # integer up-sampling: the centre of every 4x4 block keeps its value with both methods
    nn = resample_labels(lab, (32, 32), method="nearest")
    ol = resample_labels(lab, (32, 32), method="onehot_linear")
    np.testing.assert_array_equal(nn[3::8, 3::8], lab[1::4, 1::4])
    np.testing.assert_array_equal(ol[3::8, 3::8], lab[1::4, 1::4])


# ------------------------------------------------------------------------------- functional


def test_rotation_matrices_are_rotations():
    ang = torch.tensor([[0.3, -1.1, 2.0], [0.0, 0.0, 0.0]])
    r = TF.rotation_matrices(ang, 3)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), eye.expand(2, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(r[1], eye)
    r2 = TF.rotation_matrices(torch.tensor([math.pi / 2], dtype=torch.float64), 2)
    assert torch.allclose(r2[0], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64),
                          atol=1e-12)


def test_spatial_transform_identity_rotation_and_zoom():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    lab = x.long()
    im, lb = TF.spatial_transform(x, lab, torch.eye(2)[None])
    assert torch.equal(lb, lab)
    assert torch.allclose(im, x, atol=1e-5)
    # +90 degrees (x_in = R x_out) is torch.rot90 with k=-1 on (row, col)
    r = TF.rotation_matrices(torch.tensor([math.pi / 2], dtype=torch.float64), 2)
    _, lb = TF.spatial_transform(x, lab, r)
    assert torch.equal(lb[0, 0], torch.rot90(lab[0, 0], k=-1, dims=(0, 1)))
    # zoom x2 on a non-square (4, 8) grid, label = column index: output column c samples input
    # position c/2 + 1.75 (voxel units, not normalised units), nearest -> [2,2,3,3,4,4,5,5]
    ramp = torch.arange(8).repeat(4, 1)[None, None]
    _, lb = TF.spatial_transform(ramp.float(), ramp, torch.eye(2)[None] / 2)
    assert lb[0, 0, 0].tolist() == [2, 2, 3, 3, 4, 4, 5, 5]
    assert lb.dtype == torch.int64


def test_spatial_transform_padding_values():
    x = torch.full((1, 1, 6, 6), 5.0)
    lab = torch.ones((1, 1, 6, 6), dtype=torch.long)
    # zoom out by 2: the border comes from outside the input
    im, lb = TF.spatial_transform(x, lab, torch.eye(2)[None] * 2, image_pad=-3.0, label_pad=7)
    assert im[0, 0, 0, 0].item() == pytest.approx(-3.0)
    assert lb[0, 0, 0, 0].item() == 7 and lb[0, 0, 3, 3].item() == 1
    assert set(lb.unique().tolist()) == {1, 7}


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_transform_whole_voxel_offsets_shift_exactly(dims):
    """Output voxel x reads input voxel x + t: a whole-voxel offset is an exact shift, the
    part shifted in from outside takes the pad values (image and label alike)."""
    g = torch.Generator().manual_seed(0)
    shape = (7, 9) if dims == 2 else (5, 6, 7)
    x = torch.randn(2, 2, *shape, generator=g)
    lab = torch.randint(1, 4, (2, 1, *shape), generator=g)
    offsets = torch.tensor([[2, -3], [-1, 0]] if dims == 2 else [[1, -2, 3], [0, 2, -1]],
                           dtype=torch.float64)
    eye = torch.eye(dims, dtype=torch.float64).expand(2, dims, dims)
    im, lb = TF.spatial_transform(x, lab, eye, image_pad=-9.0, label_pad=0, offsets=offsets)
    for b in range(2):
        exp_i = torch.full_like(x[b], -9.0)
        exp_l = torch.zeros_like(lab[b])
        dst, src = [slice(None)], [slice(None)]
        for t, n in zip(offsets[b].long().tolist(), shape, strict=True):
            dst.append(slice(max(0, -t), n - max(0, t)))
            src.append(slice(max(0, t), n - max(0, -t)))
        exp_i[tuple(dst)] = x[b][tuple(src)]
        exp_l[tuple(dst)] = lab[b][tuple(src)]
        assert torch.allclose(im[b], exp_i, atol=1e-5)
        assert torch.equal(lb[b], exp_l)
    # no offsets and zero offsets are the same map
    a, _ = TF.spatial_transform(x, None, eye)
    z, _ = TF.spatial_transform(x, None, eye, offsets=torch.zeros(2, dims))
    assert torch.equal(a, z)


def test_augmenter_translation_bounds_and_label_follow():
    """p_translate = 1, nothing else: every image is shifted by at most the fraction of its
    size per axis, the label moves with it, and the shifts spread over the allowed range."""
    n, size = 64, 32
    img = torch.zeros(n, 1, size, size)
    img[:, :, 14:18, 10:14] = 1.0
    lab = (img > 0).long()
    cfg = AugmentConfig.identity()
    cfg.p_translate, cfg.translate_fraction = 1.0, (0.125, 0.25)
    out_i, out_l = Augmenter(cfg, 2, seed=0)(img, lab)
    grid = torch.stack(torch.meshgrid(torch.arange(float(size)),
                                      torch.arange(float(size)), indexing="ij"))
    centre = torch.tensor([15.5, 11.5])
    mass = out_i[:, 0].sum(dim=(1, 2))
    assert torch.allclose(mass, torch.full_like(mass, 16.0), atol=1e-4)  # nothing left the image
    c = (out_i[:, 0, None] * grid[None]).sum(dim=(2, 3)) / mass[:, None]
    moved = c - centre
    assert (moved[:, 0].abs() <= 0.125 * size + 1e-4).all()
    assert (moved[:, 1].abs() <= 0.25 * size + 1e-4).all()
    assert moved[:, 1].abs().max() > 0.7 * 0.25 * size  # the range is used, both signs
    assert (moved[:, 0] > 1).any() and (moved[:, 0] < -1).any()
    cl = (out_l[:, 0, None].float() * grid[None]).sum(dim=(2, 3)) / out_l.sum(dim=(1, 2, 3))[
        :, None]
    assert torch.allclose(cl, c, atol=0.75)  # nearest label vs bilinear image
    # off (the default) the random stream of the other augmentations is unchanged
    base = AugmentConfig()
    a1 = Augmenter(base, 2, seed=3)(img, lab)
    a2 = Augmenter(AugmentConfig(translate_fraction=0.3), 2, seed=3)(img, lab)
    assert torch.equal(a1[0], a2[0])
    with pytest.raises(ConfigError, match="translate_fraction"):
        AugmentConfig(translate_fraction=1.5)
    with pytest.raises(ConfigError, match="translate_fraction"):
        Augmenter(AugmentConfig(translate_fraction=(0.1, 0.1)), 3)


def test_augmenter_polarity_inversion():
    """p_invert = 1, nothing else: every image becomes 2 m - x (m its channel mean), which
    keeps each channel's mean and std and reverses its ranking; the label is untouched;
    p_invert = 0.5 inverts about half of a batch; it is drawn after every other augmentation."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 2, 12, 10, generator=g) * torch.tensor([1.0, 5.0])[:, None, None]
    lab = torch.randint(0, 3, (4, 1, 12, 10), generator=g)
    cfg = AugmentConfig.identity()
    cfg.p_invert = 1.0
    out_i, out_l = Augmenter(cfg, 2, seed=0)(img, lab)
    assert torch.equal(out_l, lab)
    m = img.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out_i, 2 * m - img, atol=1e-6)
    assert torch.allclose(out_i.mean(dim=(2, 3)), img.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(out_i.std(dim=(2, 3)), img.std(dim=(2, 3)), atol=1e-5)
    assert torch.equal(out_i[0, 0].flatten().argsort(), img[0, 0].flatten().argsort().flip(0))
    cfg.p_invert = 0.5
    big = torch.rand(400, 1, 4, 4, generator=g)
    out, _ = Augmenter(cfg, 2, seed=1)(big)
    inverted = ~torch.isclose(out, big).all(dim=(1, 2, 3))
    assert 160 <= int(inverted.sum()) <= 240  # Binomial(400, 0.5): 200 +- 4 sd
    # drawn after everything else: with p_invert = 1 on top of the defaults the result is
    # the inversion of what the defaults alone give from the same seed
    a1 = Augmenter(AugmentConfig(), 2, seed=3)(img, lab)
    a2 = Augmenter(AugmentConfig(p_invert=1.0), 2, seed=3)(img, lab)
    assert torch.equal(a1[1], a2[1])
    assert torch.allclose(a2[0], TF.invert(a1[0]), atol=1e-5)
    with pytest.raises(ConfigError, match="p_invert"):
        AugmentConfig(p_invert=1.5)


def test_flip_matches_torch_flip():
    x = torch.randn(3, 2, 4, 5, 6)
    lab = torch.randint(0, 3, (3, 1, 4, 5, 6))
    flips = torch.tensor([[True, False, False], [False, True, True], [False, False, False]])
    im, lb = TF.flip(x, lab, flips)
    assert torch.equal(im[0], x[0].flip(1))
    assert torch.equal(im[1], x[1].flip(2).flip(3))
    assert torch.equal(im[2], x[2])
    assert torch.equal(lb[1], lab[1].flip(2).flip(3))


@pytest.mark.parametrize("shape", [(2, 3, 17, 19), (2, 2, 9, 10, 11)])
def test_gaussian_blur_matches_scipy(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    sig = torch.tensor([1.0, 0.7], dtype=torch.float64)
    out = TF.gaussian_blur(x, sig)
    # one kernel radius (ceil(3 * max sigma) = 3) for the batch: same radius in scipy
    for b in range(2):
        for c in range(shape[1]):
            ref = ndi.gaussian_filter(x[b, c].numpy(), float(sig[b]), mode="nearest",
                                      truncate=3.0 / float(sig[b]))
            np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-6)


def test_intensity_functions_numbers():
    x = torch.tensor([[[0.0, 0.25, 0.5, 1.0]]])  # (1, 1, 4): 1D spatial
    assert torch.allclose(TF.brightness(x, torch.tensor([2.0])), 2 * x)
    # contrast about the mean 0.4375, factor 2, then clipped to [0, 1]
    c = TF.contrast(x, torch.tensor([2.0]))
    expect = torch.clamp((x - 0.4375) * 2 + 0.4375, 0, 1)
    assert torch.allclose(c, expect)
    g = TF.gamma(x, torch.tensor([2.0]), retain_stats=False)
    assert torch.allclose(g, x**2)
    g1 = TF.gamma(x, torch.tensor([1.0]))
    assert torch.allclose(g1, x, atol=1e-6)
    n = TF.gaussian_noise(x, torch.tensor([0.5]), torch.ones_like(x))
    assert torch.allclose(n, x + 0.5)
    lr = TF.simulate_low_resolution(torch.randn(1, 1, 8, 8), 0.5)
    assert lr.shape == (1, 1, 8, 8)
    same = torch.randn(1, 1, 8, 8)
    assert torch.equal(TF.simulate_low_resolution(same, 1.0), same)


# --------------------------------------------------------------------------------- augmenter


def _batch(dims: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (16, 20) if dims == 2 else (10, 12, 14)
    img = torch.randn(3, 2, *shape, generator=g)
    lab = torch.randint(0, 3, (3, 1, *shape), generator=g) * 2  # values {0, 2, 4}
    return img, lab


def _strong(dims: int) -> AugmentConfig:
    return AugmentConfig(**{f: 1.0 for f in AugmentConfig.__dataclass_fields__ if
                            f.startswith("p_") and f != "p_gamma_invert"})


@pytest.mark.parametrize("dims", [2, 3])
def test_augmenter_identity_config_is_identity(dims):
    img, lab = _batch(dims)
    for cfg in (AugmentConfig.identity(), AugmentConfig(enabled=False)):
        out_i, out_l = Augmenter(cfg, dims, seed=3)(img, lab)
        assert torch.equal(out_i, img) and torch.equal(out_l, lab)


@pytest.mark.parametrize("dims", [2, 3])
def test_augmenter_shapes_and_label_values(dims):
    img, lab = _batch(dims)
    for cfg in (AugmentConfig(), _strong(dims)):
        aug = Augmenter(cfg, dims, seed=1)
        for _ in range(3):
            out_i, out_l = aug(img, lab)
            assert out_i.shape == img.shape and out_i.dtype == img.dtype
            assert out_l.shape == lab.shape and out_l.dtype == torch.int64
            assert set(out_l.unique().tolist()) <= {0, 2, 4}
            assert torch.isfinite(out_i).all()
    # the strong config changed the image; (B, *spatial) labels come back without a channel
    out_i, out_l = Augmenter(_strong(dims), dims, seed=1)(img, lab[:, 0])
    assert not torch.equal(out_i, img) and out_l.shape == lab[:, 0].shape


def test_augmenter_deterministic_and_resumable():
    img, lab = _batch(2)
    a, b = Augmenter(AugmentConfig(), 2, seed=5), Augmenter(AugmentConfig(), 2, seed=5)
    for _ in range(3):
        ia, la = a(img, lab)
        ib, lb = b(img, lab)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    state = a.state_dict()
    nxt = a(img, lab)
    c = Augmenter(AugmentConfig(), 2, seed=99)
    c.load_state_dict(state)
    again = c(img, lab)
    assert torch.equal(nxt[0], again[0]) and torch.equal(nxt[1], again[1])
    other = Augmenter(AugmentConfig(), 2, seed=6)(img, lab)
    assert not torch.equal(other[0], ia)


def test_augment_config_roundtrip_and_errors():
    cfg = AugmentConfig(p_rotate=0.5, rotation_deg=(0.0, 0.0, 15.0))
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="p_rotat"):
        AugmentConfig.from_dict({"p_rotat": 0.1})
    with pytest.raises(ConfigError):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(ConfigError):
        Augmenter(AugmentConfig(rotation_deg=(10.0, 10.0)), 3)
    with pytest.raises(TypeError):
        AugmentConfig(p_rotate=0.1, bogus=1)  # type: ignore[call-arg]
