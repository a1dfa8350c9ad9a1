"""CT physics (P1): Radon / FBP against scikit-image, the low-dose simulator, HU handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, resize
from skimage.transform import radon as sk_radon

from medseg.physics import (
    WINDOW_PRESETS,
    anscombe,
    apply_window,
    clip_hu,
    default_angles,
    fbp,
    fbp_noise_std_hu,
    fbp_photons_for_sigma,
    hu_to_mu,
    mu_to_hu,
    poisson_nll,
    radon,
    radon_adjoint,
    raw_to_hu,
    simulate_low_dose_ct,
    sinogram_side,
)

N = 64
ANGLES = np.linspace(0.0, 180.0, 90, endpoint=False)


@pytest.fixture(scope="module")
def shepp() -> np.ndarray:
    return resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)


def _disc(n: int, r: float, inside: float = 0.0, outside: float = -1000.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - n // 2
    return np.where(xx**2 + yy**2 <= r**2, inside, outside)


# ------------------------------------------------------------------------------ radon / fbp


def test_radon_matches_skimage(shepp):
    ref = sk_radon(shepp, ANGLES, circle=True)  # (n, A)
    ours = radon(torch.tensor(shepp), ANGLES).numpy()  # (A, n)
    assert ours.shape == (len(ANGLES), N)
    # same geometry and bilinear interpolation: agreement to rounding
    np.testing.assert_allclose(ours.T, ref, atol=1e-9 * np.abs(ref).max())
    # pixel size scales the line integrals; float32 agrees with float64
    ours32 = radon(torch.tensor(shepp, dtype=torch.float32), ANGLES, pixel_mm=0.5).numpy()
    np.testing.assert_allclose(ours32.T, 0.5 * ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["ramp", "shepp-logan", "cosine", "hann"])
def test_fbp_matches_iradon(shepp, name):
    sino = sk_radon(shepp, ANGLES, circle=True)
    ref = iradon(sino, ANGLES, filter_name=name, circle=True)
    ours = fbp(torch.tensor(sino.T.copy()), ANGLES, filter=name).numpy()
    assert ours.shape == ref.shape == (N, N)
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel < 0.02  # only the half-pixel edge handling of the interpolation differs
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999


def test_fbp_reconstructs_inside_circle():
    n = 128
    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    angles = default_angles(n)
    rec = fbp(radon(torch.tensor(img), angles, pixel_mm=0.8), angles, pixel_mm=0.8).numpy()
    yy, xx = np.mgrid[:n, :n] - n // 2
    inside = xx**2 + yy**2 < (n // 2 - 2) ** 2
    rmse = np.sqrt(np.mean((rec - img)[inside] ** 2))
    assert rmse < 0.04  # the phantom's range is [0, 1]; its sharp edges cost most of it
    assert np.corrcoef(rec[inside], img[inside])[0, 1] > 0.985
    # exactly as good as scikit-image's own radon -> iradon round trip
    ref = iradon(sk_radon(img, angles.numpy()), angles.numpy())
    assert rmse == pytest.approx(np.sqrt(np.mean((ref - img)[inside] ** 2)), rel=0.01)
    assert np.all(rec[~(xx**2 + yy**2 <= (n // 2) ** 2)] == 0)


def test_radon_disc_chord_length_and_linearity():
    n, r, pix = 96, 30.0, 0.7
    # a smooth-edged disc sampled finely is close to the ideal chord 2 sqrt(r^2 - s^2)
    fine = 4
    yy, xx = (np.mgrid[:n * fine, :n * fine] + 0.5) / fine - n // 2 - 0.5 / 1
    disc = (xx**2 + yy**2 <= r**2).reshape(n, fine, n, fine).mean(axis=(1, 3))
    sino = radon(torch.tensor(disc), [0.0, 33.0, 90.0], pixel_mm=pix).numpy()
    s = np.arange(n) - n // 2
    chord = 2 * np.sqrt(np.clip(r**2 - s**2, 0, None)) * pix
    core = np.abs(s) <= r - 5  # near the rim the pixelated disc departs from the circle
    for row in sino:
        np.testing.assert_allclose(row[core], chord[core], atol=0.2 * pix)  # 0.2 pixel
    # linearity
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.random((2, 32, 32)))
    lhs = radon(2.0 * a - 3.0 * b, ANGLES)
    torch.testing.assert_close(lhs, 2.0 * radon(a, ANGLES) - 3.0 * radon(b, ANGLES))


def test_adjoint_and_gradcheck():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((2, 12, 15)))
    ang = [0.0, 25.0, 70.0, 131.0]
    n = sinogram_side(12, 15, circle=False)
    y = torch.tensor(rng.standard_normal((2, 4, n)))
    lhs = (radon(x, ang, pixel_mm=1.3, circle=False) * y).sum()
    rhs = (x * radon_adjoint(y, ang, (12, 15), pixel_mm=1.3, circle=False)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)
    # float64 gradcheck of the projector and of FBP (both linear, piecewise-smooth)
    xs = torch.tensor(rng.standard_normal((1, 8, 8)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: radon(t, [10.0, 100.0]), (xs,))
    s = torch.tensor(rng.standard_normal((1, 3, 8)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fbp(t, [0.0, 60.0, 120.0], filter="hann"), (s,))


def test_volume_slices_are_a_batch(shepp):
    vol = torch.tensor(np.stack([shepp, 0.5 * shepp, shepp[::-1].copy()]))
    sino = radon(vol, ANGLES)
    assert sino.shape == (3, len(ANGLES), N)
    torch.testing.assert_close(sino[1], radon(vol[1], ANGLES))
    rec = fbp(sino.reshape(1, 3, len(ANGLES), N), ANGLES)
    assert rec.shape == (1, 3, N, N)
    torch.testing.assert_close(rec[0, 2], fbp(sino[2], ANGLES))


# ------------------------------------------------------------------------------ simulator


def test_huge_dose_matches_noise_free_fbp():
    hu = _disc(48, 18, inside=40.0)
    out = simulate_low_dose_ct(hu, 1e12, pixel_mm=0.8, rng=0, return_clean=True)
    assert out.hu.shape == (48, 48) and out.clean_hu is not None
    inside = _disc(48, 20, 1.0, 0.0) > 0
    assert float((out.hu - out.clean_hu).abs()[torch.tensor(inside)].max()) < 0.5
    # and the noise-free reconstruction is the phantom (up to the edge blur)
    core = _disc(48, 15, 1.0, 0.0) > 0
    assert float(out.clean_hu[torch.tensor(core)].mean()) == pytest.approx(40.0, abs=3.0)


def test_noise_scales_as_inverse_sqrt_dose_and_matches_delta_method():
    n, reps = 32, 400
    hu = torch.tensor(np.stack([_disc(n, 12)] * reps), dtype=torch.float64)
    stds, means = [], []
    for i0 in (2e4, 8e4):
        out = simulate_low_dose_ct(hu, i0, rng=3, return_clean=i0 > 5e4)
        centre = out.hu[:, n // 2, n // 2].numpy()
        p0 = float(out.line_integrals[0, :, n // 2].mean())
        pred = fbp_noise_std_hu(i0, len(out.angles_deg), n, p0)
        assert centre.std() == pytest.approx(pred, rel=0.1)
        region = torch.tensor(_disc(n, 5, 1.0, 0.0) > 0)
        pix_var = out.hu[:, region].var(dim=0).mean().item()
        assert math.sqrt(pix_var) == pytest.approx(
            fbp_noise_std_hu(i0, len(out.angles_deg), n, p0, location="mean"), rel=0.1)
        stds.append(math.sqrt(pix_var))
        if out.clean_hu is not None:
            means.append(out.hu[:, region].mean(dim=0) - out.clean_hu[0, region])
    assert stds[0] / stds[1] == pytest.approx(2.0, rel=0.1)
    # no streaks in expectation: the mean image is the noise-free FBP (which rings by a few HU
    # at the sharp rim) up to the sampling error; the log's bias ~ 1/(2 lambda) is negligible
    assert float(means[0].abs().max()) < 4.5 * stds[1] / math.sqrt(reps)
    # photons for a target sigma inverts the prediction
    assert fbp_noise_std_hu(fbp_photons_for_sigma(7.0, 90, 64, 2.0), 90, 64, 2.0) == \
        pytest.approx(7.0)


def test_counts_are_poisson_and_seeded():
    hu = np.stack([_disc(24, 9, inside=200.0)] * 2000)
    out = simulate_low_dose_ct(hu, 50.0, angles_deg=[0.0, 45.0], rng=7)
    y = out.counts.double()
    lam = out.expected_counts.double()
    assert torch.equal(y, y.round())  # integer counts without electronic noise
    torch.testing.assert_close(lam[0], lam[1])
    mean, var = y.mean(dim=0), y.var(dim=0)
    # per detector bin across repeats: mean = lambda and variance = mean
    np.testing.assert_allclose(mean.numpy(), lam[0].numpy(), rtol=0.05)
    np.testing.assert_allclose(var.numpy(), mean.numpy(), rtol=0.15)
    # same seed -> same counts; another seed -> different
    a = simulate_low_dose_ct(hu[:2], 50.0, [0.0, 45.0], rng=1).counts
    b = simulate_low_dose_ct(hu[:2], 50.0, [0.0, 45.0], rng=1).counts
    c = simulate_low_dose_ct(hu[:2], 50.0, [0.0, 45.0], rng=2).counts
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the counts feed the Poisson NLL directly
    nll = poisson_nll(out.expected_counts[:1].double(), out.counts[:1].double())
    assert torch.isfinite(nll)


def test_zero_counts_are_floored():
    hu = _disc(16, 6, inside=3000.0)  # dense object, 2 photons per ray: starvation
    out = simulate_low_dose_ct(hu, 2.0, angles_deg=[0.0, 90.0], rng=0, count_floor=0.5)
    assert (out.counts == 0).any()
    assert torch.isfinite(out.hu).all()


# ------------------------------------------------------------------------------ HU


def test_windows_and_rescale_hand_values():
    assert WINDOW_PRESETS["brain"] == (80.0, 40.0)
    assert WINDOW_PRESETS["lung"] == (1500.0, -600.0)
    hu = np.array([-1000.0, 0.0, 40.0, 60.0, 80.0, 200.0])
    # brain 80/40: [0, 80] -> [0, 1]
    np.testing.assert_allclose(apply_window(hu, "brain"), [0, 0, 0.5, 0.75, 1, 1])
    # lung 1500/-600: [-1350, 150] -> [0, 255]
    np.testing.assert_allclose(apply_window(hu, "lung", (0, 255)),
                               255 * np.clip((hu + 1350) / 1500, 0, 1))
    t = apply_window(torch.tensor([-110.0, 50.0, 210.0]), (320.0, 50.0), (-1.0, 1.0))
    torch.testing.assert_close(t, torch.tensor([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(apply_window(np.array([30.0]), "Soft tissue"), [0.45])
    with pytest.raises(ValueError, match="unknown window preset"):
        apply_window(hu, "abdomen-ish")
    with pytest.raises(ValueError, match="width"):
        apply_window(hu, (0.0, 40.0))
    np.testing.assert_allclose(raw_to_hu(np.array([0, 1024, 2048], np.uint16)),
                               [-1024, 0, 1024])
    np.testing.assert_allclose(raw_to_hu(np.array([100]), slope=0.5, intercept=-10.0), [40.0])
    with pytest.raises(ValueError, match="RescaleSlope"):
        raw_to_hu(np.array([1]), slope=0.0)
    np.testing.assert_allclose(clip_hu(np.array([-3000.0, 5000.0])), [-1000.0, 3071.0])
    mu = hu_to_mu(np.array([-1200.0, -1000.0, 0.0, 1000.0]), 0.02)
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04])
    np.testing.assert_allclose(mu_to_hu(mu, 0.02), [-1000.0, -1000.0, 0.0, 1000.0])


# ------------------------------------------------------------------------------ bad input


def test_bad_input_messages():
    img = torch.zeros(16, 16)
    sino = radon(img, ANGLES)
    with pytest.raises(ValueError, match=r"90 angles .* 3 entries"):
        fbp(sino, [0.0, 60.0, 120.0])
    with pytest.raises(ValueError, match=r"16 detector bins .* needs 23"):
        radon_adjoint(sino, ANGLES, (16, 16), circle=False)
    with pytest.raises(ValueError, match="unknown filter"):
        fbp(sino, ANGLES, filter="shepp")
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        radon(torch.zeros(5), ANGLES)
    with pytest.raises(TypeError, match="float32 or float64"):
        radon(torch.zeros(8, 8, dtype=torch.int64), ANGLES)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match=r"I0\) must be"):
            simulate_low_dose_ct(np.zeros((8, 8)), bad)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        anscombe(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        poisson_nll(torch.tensor([1.0]), torch.tensor([-1.0]))
