"""Ultrasound speckle for per-image-normalised classification images (issue 13 recipes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import polygamma

from medseg.errors import ConfigError
from medseg.tasks.classification import preprocess_cls_images
from medseg.training.augmentation import PerImageSpeckle, make_image_augmenter
from medseg.transforms.augment import AugmentConfig
from medseg.transforms.physics_noise import PhysicsNoise, PhysicsNoiseConfig


def _grey_images() -> np.ndarray:
    """Two (1, 64, 64) B-mode images: a dark left half (grey 20) and a bright right half (128),
    with one pixel at 0 and one at 255 so the min-max range is the full 8-bit range."""
    g = np.full((2, 1, 64, 64), 20.0)
    g[:, :, :, 32:] = 128.0
    g[:, 0, 0, 0], g[:, 0, 0, 1] = 0.0, 255.0
    return g


def test_speckle_is_gamma_speckle_through_the_log_compression_then_renormalised():
    grey = _grey_images()
    x = torch.from_numpy(preprocess_cls_images(list(grey), None, ["a", "b"]))
    cfg = PhysicsNoiseConfig(p_us=1.0, us_looks_range=(4.0, 4.0), us_dynamic_range_db=60.0)
    out = PerImageSpeckle(cfg)(x, torch.Generator().manual_seed(5))
    # replay: the grey values recovered from the z-scored images are the originals
    noisy = PhysicsNoise(cfg)(torch.from_numpy(grey), torch.Generator().manual_seed(5), 1.0, 0.0,
                              ["US"])
    ref = preprocess_cls_images(list(noisy.numpy()), None, ["a", "b"])
    assert np.allclose(out.numpy(), ref, atol=1e-5)
    # in the bright half the grey-value noise is 255 / DR * 10 log10(G), G ~ Gamma(4, 1/4):
    # std = 255 / 60 * 10 / ln(10) * sqrt(trigamma(4)) = 9.83 grey levels
    want = 255 / 60 * 10 / math.log(10) * math.sqrt(float(polygamma(1, 4.0)))
    assert want == pytest.approx(9.833, abs=1e-3)
    d = (noisy - torch.from_numpy(grey))[:, 0, 8:, 40:]
    assert float(d.std()) == pytest.approx(want, rel=0.05)


def test_speckle_leaves_undrawn_images_bit_exact():
    x = torch.from_numpy(preprocess_cls_images(list(_grey_images()), None, ["a", "b"]))
    out = PerImageSpeckle(PhysicsNoiseConfig(p_us=0.0))(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_image_augmenter_picks_speckle_for_ultrasound_only():
    cfg, noise = AugmentConfig(), PhysicsNoiseConfig()
    assert isinstance(make_image_augmenter(cfg, noise, 2, 0, "US").noise, PerImageSpeckle)
    assert make_image_augmenter(cfg, noise, 2, 0, None).noise is None  # Gaussian step
    assert make_image_augmenter(cfg, noise, 2, 0, "CT").noise is None  # auto: no HU scale
    with pytest.raises(ConfigError, match="needs ultrasound images"):
        make_image_augmenter(AugmentConfig(noise_model="physics"), noise, 2, 0, "XR")
    assert make_image_augmenter(AugmentConfig(enabled=False), noise, 2, 0, "US") is None
