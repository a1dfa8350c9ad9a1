"""Noise models per modality (P1-P3) and the synthetic phantoms (E6)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.data import load_msd_folder, validate_dataset
from medseg.errors import InputError
from medseg.io import read_image, read_label
from medseg.physics import (
    ct_photons_for_sigma,
    ct_transmission_noise,
    log_compress,
    make_phantom,
    mr_rician_noise,
    us_speckle,
    write_phantom_dataset,
)

# ---------------------------------------------------------------------------------- noise


def test_mr_noise_is_rician():
    rng = np.random.default_rng(0)
    sigma = 2.0
    bg = mr_rician_noise(np.zeros(200_000), sigma, rng)
    # Rayleigh background: mean sigma sqrt(pi/2), second moment 2 sigma^2
    assert bg.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.005)
    assert (bg.astype(np.float64) ** 2).mean() == pytest.approx(2 * sigma**2, rel=0.01)
    assert bg.min() >= 0.0  # a magnitude; Gaussian-on-magnitude would go negative
    sig = mr_rician_noise(np.full(200_000, 3.0), sigma, rng, phase=1.0)
    # E[M^2] = A^2 + 2 sigma^2 for any phase
    assert (sig.astype(np.float64) ** 2).mean() == pytest.approx(9 + 2 * sigma**2, rel=0.01)


def test_us_speckle_mean_preserving_gamma():
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.3)
    for looks in (1.0, 4.0):
        s = us_speckle(x, looks, rng)
        assert s.mean() == pytest.approx(0.3, rel=0.01)
        assert s.var() == pytest.approx(0.3**2 / looks, rel=0.03)  # Gamma(L, 1/L): var 1/L
    # log compression: reference -> 255, -30 dB of 60 -> 127.5, below the range -> 0
    out = log_compress(np.array([1.0, 1e-3, 1e-7]), 60.0, reference=1.0)
    np.testing.assert_allclose(out, [255.0, 127.5, 0.0], atol=1e-4)


def test_ct_noise_poisson_form():
    rng = np.random.default_rng(2)
    i0 = ct_photons_for_sigma(10.0, path_mm=200.0)
    water = ct_transmission_noise(np.zeros(100_000), rng, photons=i0)
    assert water.std() == pytest.approx(10.0, rel=0.03)
    assert abs(float(water.mean())) < 0.5
    # heteroscedastic: std grows with attenuation as exp(mu L / 2) (delta method, which is
    # accurate at high counts: 100 x I0 leaves ~1500 photons behind 1000 HU)
    hi = 100 * i0
    water_hi = ct_transmission_noise(np.zeros(100_000), rng, photons=hi)
    bone = ct_transmission_noise(np.full(100_000, 1000.0), rng, photons=hi)
    lung = ct_transmission_noise(np.full(100_000, -900.0), rng, photons=hi)
    assert water_hi.std() == pytest.approx(1.0, rel=0.03)
    ratio = np.exp(0.0192 * 200 / 2)
    assert bone.std() / water_hi.std() == pytest.approx(ratio, rel=0.03)
    assert lung.std() / water_hi.std() == pytest.approx(np.exp(-0.9 * 0.0192 * 200 / 2),
                                                         rel=0.03)


# -------------------------------------------------------------------------------- phantom


@pytest.mark.parametrize("modality", ["ct", "mr", "us"])
def test_phantom_deterministic_labels_fraction_contrast(modality):
    img, lab, info = make_phantom(2, (96, 96), modality, lesion_fraction=0.01, n_lesions=3,
                                  seed=4)
    img2, lab2, _ = make_phantom(2, (96, 96), modality, lesion_fraction=0.01, n_lesions=3,
                                 seed=4)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    img3, _, _ = make_phantom(2, (96, 96), modality, seed=5)
    assert not np.array_equal(img, img3)
    assert img.dtype == np.float32 and lab.dtype == np.int64 and img.shape == (96, 96)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert abs((lab == 2).mean() - 0.01) <= 1 / lab.size
    assert info["lesion_fraction"] == pytest.approx((lab == 2).mean())
    # lesions lie inside the organ: their 1-voxel neighbourhood is organ or lesion
    ring = ndi.binary_dilation(lab == 2) & (lab != 2)
    assert np.all(lab[ring] == 1)
    # visibility: lesion vs organ contrast-to-noise (interior voxels, away from partial volume)
    core_l = ndi.binary_erosion(lab == 2)
    core_o = ndi.binary_erosion(lab == 1, iterations=2)
    cnr = abs(img[core_l].mean() - img[core_o].mean()) / img[core_o].std()
    assert cnr > 2.0
    if modality == "ct":
        assert img[lab == 1].mean() == pytest.approx(60.0, abs=10.0)  # HU
        assert img[0, 0] < -900
    if modality == "us":
        assert 0.0 <= img.min() and img.max() <= 255.0


def test_phantom_mr_background_is_rayleigh():
    img, lab, info = make_phantom(2, (128, 128), "mr", seed=0, noise_level=1.0)
    sigma = info["noise"]["sigma"]
    corner = img[:12, :12]  # air outside the body: magnitude of pure complex noise
    assert corner.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)


def test_phantom_3d_and_small_fraction():
    img, lab, info = make_phantom(3, (32, 40, 36), "ct", lesion_fraction=0.001, n_lesions=1,
                                  seed=1)
    assert img.shape == (32, 40, 36)
    assert (lab == 2).sum() == round(0.001 * lab.size)
    assert info["lesion_sizes"] == [int((lab == 2).sum())]
    _, lab0, _ = make_phantom(2, (32, 32), "mr", lesion_fraction=0.0, seed=1)
    assert set(np.unique(lab0)) == {0, 1}
    with pytest.raises(ValueError, match="no room"):
        make_phantom(2, (32, 32), "mr", lesion_fraction=0.19, n_lesions=1, seed=1,
                     organ_scale=(0.2, 0.25))
    with pytest.raises(ValueError, match="modality"):
        make_phantom(2, (32, 32), "pet")


def _tree_hash(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_phantom_dataset_layout_reuse_and_refusal(tmp_path):
    out = tmp_path / "ph"
    write_phantom_dataset(out, n_train=3, n_test=2, spatial_dims=2, shape=(48, 48),
                          modality="us", lesion_fraction=0.01, seed=0, spacing=(0.5, 0.5))
    js = json.loads((out / "dataset.json").read_text())
    assert js["channel_names"] == {"0": "US"}
    assert js["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert js["numTraining"] == 3 and js["file_ending"] == ".nii.gz"
    assert (out / "imagesTr" / "case_000_0000.nii.gz").is_file()
    assert (out / "labelsTs" / "case_004.nii.gz").is_file()
    ds = load_msd_folder(out)
    assert len(ds.cases) == 3 and len(ds.test_cases) == 2 and ds.modalities == ["US"]
    s = validate_dataset(ds, spatial_dims=2, include_test=True)
    assert s.median_spacing == pytest.approx((0.5, 0.5))
    img, meta = read_image(out / "imagesTr" / "case_001_0000.nii.gz")
    lab, _ = read_label(out / "labelsTr" / "case_001.nii.gz")
    assert img.shape[0] == 1 and set(np.unique(lab)) == {0, 1, 2}
    # same parameters: reused untouched
    before = _tree_hash(out)
    mtime = (out / "imagesTr" / "case_000_0000.nii.gz").stat().st_mtime_ns
    write_phantom_dataset(out, 3, 2, 2, (48, 48), "us", 0.01, 0, (0.5, 0.5))
    assert _tree_hash(out) == before
    assert (out / "imagesTr" / "case_000_0000.nii.gz").stat().st_mtime_ns == mtime
    # other parameters: our own previous phantom is replaced (no stale cases left)
    write_phantom_dataset(out, 2, 0, 2, (32, 32), "mr", 0.01, 1)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_000_0000.nii.gz",
                                                                   "case_001_0000.nii.gz"]
    assert not any((out / "imagesTs").iterdir())
    # a user's folder is never touched
    user = tmp_path / "user"
    user.mkdir()
    (user / "scan.nii.gz").write_bytes(b"precious")
    with pytest.raises(InputError, match="not a medseg phantom"):
        write_phantom_dataset(user, 1, 0, 2, (32, 32), "mr")
    assert (user / "scan.nii.gz").read_bytes() == b"precious"
    assert sorted(p.name for p in user.iterdir()) == ["scan.nii.gz"]
    # a phantom folder with a user's file added is refused too
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="other files"):
        write_phantom_dataset(out, 1, 0, 2, (32, 32), "ct")
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------- physics options of the simulator


def test_ct_phantom_goes_through_the_sinogram():
    from medseg.physics import simulate_phantom

    case = simulate_phantom(2, (64, 64), "ct", seed=3)
    noise = case.info["noise"]
    assert noise["model"] == "sinogram_poisson_fbp" and noise["n_angles"] == 101
    organ = ndi.binary_erosion(case.label == 1, iterations=2)
    # the dose is set for 10 HU mean-pixel noise (delta method, see ct.fbp_noise_std_hu)
    assert (case.image - case.clean)[organ].std() == pytest.approx(10.0, rel=0.2)
    assert noise["sigma_hu_mean"] == pytest.approx(10.0)
    # 4x the dose halves the noise; explicit dose is recorded
    hi = simulate_phantom(2, (64, 64), "ct", seed=3, dose=4 * noise["photons_per_ray"])
    ratio = (case.image - case.clean)[organ].std() / (hi.image - hi.clean)[organ].std()
    assert ratio == pytest.approx(2.0, rel=0.1)
    assert hi.info["noise"]["photons_per_ray"] == pytest.approx(4 * noise["photons_per_ray"])
    # same anatomy whatever the noise model; the per-voxel model is still there
    pv = simulate_phantom(2, (64, 64), "ct", seed=3, ct_model="per_voxel")
    np.testing.assert_array_equal(pv.label, case.label)
    np.testing.assert_array_equal(pv.clean, case.clean)
    assert pv.info["noise"]["model"] == "poisson_transmission"
    quiet = simulate_phantom(2, (64, 64), "ct", seed=3, noise_level=0.0)
    np.testing.assert_array_equal(quiet.image, quiet.clean)
    with pytest.raises(ValueError, match="ct_model"):
        simulate_phantom(2, (32, 32), "ct", ct_model="exact")
    with pytest.raises(ValueError, match="dose"):
        simulate_phantom(2, (32, 32), "ct", dose=0.0)


def test_mr_kspace_undersampling_and_us_looks():
    from medseg.physics import cartesian_line_mask, simulate_phantom

    m = cartesian_line_mask(100, 4.0, 0.08, np.random.default_rng(0))
    assert m.shape == (100,) and m.dtype == bool
    centred = np.fft.fftshift(m)
    assert centred[46:54].all()  # the 8 centre lines around k = 0 (index 50 once shifted)
    assert m.mean() == pytest.approx(0.25, abs=0.08)
    assert cartesian_line_mask(50, 1.0, 0.1, np.random.default_rng(0)).all()
    with pytest.raises(ValueError, match="acceleration"):
        cartesian_line_mask(50, 0.5, 0.1, np.random.default_rng(0))
    # noise-free and fully sampled: the magnitude is the clean image; undersampled: aliasing
    full = simulate_phantom(2, (64, 64), "mr", seed=2, mr_sigma=0.0)
    np.testing.assert_allclose(full.image, full.clean, atol=1e-6)
    und = simulate_phantom(2, (64, 64), "mr", seed=2, mr_sigma=0.0, acceleration=4.0)
    np.testing.assert_array_equal(und.label, full.label)
    err = float(np.abs(und.image - und.clean).mean())
    assert err > 0.005
    kept = und.info["noise"]["sampled_fraction"]
    assert kept == pytest.approx(0.25, abs=0.08)
    again = simulate_phantom(2, (64, 64), "mr", seed=2, mr_sigma=0.0, acceleration=4.0)
    np.testing.assert_array_equal(und.image, again.image)
    # US: fewer looks, stronger speckle (log domain std grows as L falls)
    organ = None
    stds = []
    for looks in (1.0, 16.0):
        c = simulate_phantom(2, (64, 64), "us", seed=1, looks=looks)
        organ = ndi.binary_erosion(c.label == 1, iterations=2) if organ is None else organ
        stds.append(float((c.image - c.clean)[organ].std()))
        assert c.info["noise"]["looks"] == looks
    assert stds[0] > 2.5 * stds[1]


def test_write_phantom_dataset_clean_images(tmp_path):
    out = write_phantom_dataset(tmp_path / "d", 2, 1, 2, (32, 32), "ct", 0.01, 5,
                                write_clean=True)
    js = json.loads((out / "dataset.json").read_text())
    assert js["clean_images"]["training"] == "cleanTr"
    assert js["medseg_phantom"]["params"]["write_clean"] is True
    noisy, _ = read_image(out / "imagesTr" / "case_001_0000.nii.gz")
    clean, _ = read_image(out / "cleanTr" / "case_001_0000.nii.gz")
    lab, _ = read_label(out / "labelsTr" / "case_001.nii.gz")
    assert (out / "cleanTs" / "case_002_0000.nii.gz").is_file()
    assert noisy.shape == clean.shape == (1, 32, 32)
    body = lab > 0
    assert 3.0 < float((noisy - clean)[0][body].std()) < 30.0  # CT noise in HU, not zero
    with pytest.raises(ValueError, match="square in-plane"):
        write_phantom_dataset(tmp_path / "e", 1, 0, 2, (32, 32), "ct", spacing=(1.0, 2.0))
