"""Ellipse fit and circumference against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.metrics.shape import Ellipse, ellipse_circumference, fit_ellipse


def _ellipse_mask(shape, c, a, b, theta, ss=4):
    # supersampled rasterisation, then majority vote per pixel
    h, w = shape
    r = (np.arange(h * ss) + 0.5) / ss - 0.5
    q = (np.arange(w * ss) + 0.5) / ss - 0.5
    R, Q = np.meshgrid(r, q, indexing="ij")
    dr, dq = R - c[0], Q - c[1]
    u = dr * math.cos(theta) + dq * math.sin(theta)
    v = -dr * math.sin(theta) + dq * math.cos(theta)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3)) >= 0.5


def test_circle_and_degenerate_cases():
    assert ellipse_circumference(10, 10) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    assert ellipse_circumference(5, 0) == pytest.approx(20.0, rel=2e-3)  # flat: 4a
    assert ellipse_circumference(0, 0) == 0.0
    # a known value: a=2, b=1 perimeter 9.688448220547...
    assert ellipse_circumference(2, 1) == pytest.approx(9.688448220547, rel=1e-9)
    with pytest.raises(ValueError):
        ellipse_circumference(-1, 1)


@pytest.mark.parametrize("a,b,theta", [(60, 40, 0.3), (80, 55, -1.1), (45, 45, 0.0)])
def test_fit_recovers_rasterised_ellipse(a, b, theta):
    m = _ellipse_mask((200, 240), (97.3, 121.6), a, b, theta)
    e = fit_ellipse(m)
    assert e.semi_major == pytest.approx(a, abs=0.25)
    assert e.semi_minor == pytest.approx(b, abs=0.25)
    assert e.center == pytest.approx((97.3, 121.6), abs=0.1)
    if a != b:
        d = (e.angle - theta + math.pi / 2) % math.pi - math.pi / 2
        assert abs(d) < 0.01
    # circumference error below 0.5% and scaled by the pixel size
    true = ellipse_circumference(a, b)
    assert e.circumference(0.1) == pytest.approx(0.1 * true, rel=5e-3)


def test_largest_component_and_empty():
    m = _ellipse_mask((100, 100), (50, 50), 30, 20, 0.2)
    noisy = m.copy()
    noisy[2:5, 2:5] = True          # a speck elsewhere
    noisy[50, 45:55] = False        # a hole line inside
    e0, e1 = fit_ellipse(m), fit_ellipse(noisy)
    assert e1.semi_major == pytest.approx(e0.semi_major, abs=1e-9)
    assert fit_ellipse(np.zeros((10, 10), bool)) is None
    with pytest.raises(ValueError):
        fit_ellipse(np.zeros((3, 3, 3), bool))


@pytest.mark.parametrize("a,b,theta", [(60, 40, 0.3), (80, 55, -1.1), (45, 45, 0.0)])
def test_ellipse_mask_is_the_fitted_region(a, b, theta):
    """``Ellipse.mask`` draws the same pixels as the closed-form rasterisation, and refitting
    it gives the same ellipse back."""
    m = _ellipse_mask((200, 240), (97.3, 121.6), a, b, theta)
    e = fit_ellipse(m)
    drawn = e.mask(m.shape)
    # area of the filled ellipse = pi a b (to pixelisation); nearly every pixel agrees
    assert drawn.sum() == pytest.approx(math.pi * a * b, rel=5e-3)
    assert (drawn != m).sum() <= 0.01 * m.sum()
    e2 = fit_ellipse(drawn)
    assert e2.semi_major == pytest.approx(e.semi_major, abs=0.1)
    assert e2.semi_minor == pytest.approx(e.semi_minor, abs=0.1)
    assert e2.center == pytest.approx(e.center, abs=0.05)
    # an exact case: a circle of radius 2 centred on a pixel holds the 13 pixels within 2
    circle = Ellipse((5.0, 5.0), 2.0, 2.0, 0.0).mask((11, 11))
    assert circle.sum() == 13 and circle[5, 3] and circle[3, 5] and not circle[4, 3]
