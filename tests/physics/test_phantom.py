"""Noise models per modality (P1-P3) and the synthetic phantoms (E6)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.data import load_msd_folder, validate_dataset
from medseg.errors import InputError
from medseg.io import read_image, read_label
from medseg.physics import (
    PhantomSpec,
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
    spec = PhantomSpec(shape=(96, 96), modality=modality, lesion_fraction=0.01, n_lesions=3)
    img, lab, info = make_phantom(spec, seed=4)
    img2, lab2, _ = make_phantom(spec, seed=4)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    img3, _, _ = make_phantom(PhantomSpec(shape=(96, 96), modality=modality), seed=5)
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
    img, lab, info = make_phantom(PhantomSpec(shape=(128, 128), modality="mr", noise_level=1.0),
                                  seed=0)
    sigma = info["noise"]["sigma"]
    corner = img[:12, :12]  # air outside the body: magnitude of pure complex noise
    assert corner.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)


def test_phantom_3d_and_small_fraction():
    img, lab, info = make_phantom(PhantomSpec(shape=(32, 40, 36), modality="ct",
                                              lesion_fraction=0.001, n_lesions=1), seed=1)
    assert img.shape == (32, 40, 36)
    assert (lab == 2).sum() == round(0.001 * lab.size)
    assert info["lesion_sizes"] == [int((lab == 2).sum())]
    _, lab0, _ = make_phantom(PhantomSpec(shape=(32, 32), lesion_fraction=0.0), seed=1)
    assert set(np.unique(lab0)) == {0, 1}
    with pytest.raises(ValueError, match="no room"):
        make_phantom(PhantomSpec(shape=(32, 32), lesion_fraction=0.19, n_lesions=1,
                                 organ_scale=(0.2, 0.25)), seed=1)


def _tree_hash(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_phantom_dataset_layout_reuse_and_refusal(tmp_path):
    out = tmp_path / "ph"
    spec = PhantomSpec(shape=(48, 48), modality="us", lesion_fraction=0.01, spacing=(0.5, 0.5))
    write_phantom_dataset(out, spec, n_train=3, n_test=2, seed=0)
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
    write_phantom_dataset(out, PhantomSpec(shape=(48, 48), modality="us", spacing=(0.5, 0.5)),
                          3, 2, seed=0)
    assert _tree_hash(out) == before
    assert (out / "imagesTr" / "case_000_0000.nii.gz").stat().st_mtime_ns == mtime
    # other parameters: our own previous phantom is replaced (no stale cases left)
    write_phantom_dataset(out, PhantomSpec(shape=(32, 32)), 2, 0, seed=1)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_000_0000.nii.gz",
                                                                   "case_001_0000.nii.gz"]
    assert not any((out / "imagesTs").iterdir())
    # a user's folder is never touched
    user = tmp_path / "user"
    user.mkdir()
    (user / "scan.nii.gz").write_bytes(b"precious")
    with pytest.raises(InputError, match="not a medseg phantom"):
        write_phantom_dataset(user, PhantomSpec(shape=(32, 32)), 1, 0)
    assert (user / "scan.nii.gz").read_bytes() == b"precious"
    assert sorted(p.name for p in user.iterdir()) == ["scan.nii.gz"]
    # a phantom folder with a user's file added is refused too
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="other files"):
        write_phantom_dataset(out, PhantomSpec(shape=(32, 32), modality="ct"), 1, 0)
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------- physics options of the simulator


def test_ct_phantom_goes_through_the_sinogram():
    from medseg.physics import simulate_phantom

    ct = PhantomSpec(shape=(64, 64), modality="ct")
    case = simulate_phantom(ct, seed=3)
    noise = case.info["noise"]
    assert noise["model"] == "sinogram_poisson_fbp" and noise["n_angles"] == 101
    organ = ndi.binary_erosion(case.label == 1, iterations=2)
    # the dose is set for 10 HU mean-pixel noise (delta method, see ct.fbp_noise_std_hu)
    assert (case.image - case.clean)[organ].std() == pytest.approx(10.0, rel=0.2)
    assert noise["sigma_hu_mean"] == pytest.approx(10.0)
    # 4x the dose halves the noise; explicit dose is recorded
    hi = simulate_phantom(replace(ct, dose=4 * noise["photons_per_ray"]), seed=3)
    ratio = (case.image - case.clean)[organ].std() / (hi.image - hi.clean)[organ].std()
    assert ratio == pytest.approx(2.0, rel=0.1)
    assert hi.info["noise"]["photons_per_ray"] == pytest.approx(4 * noise["photons_per_ray"])
    # same anatomy whatever the noise model; the per-voxel model is still there
    pv = simulate_phantom(replace(ct, ct_model="per_voxel"), seed=3)
    np.testing.assert_array_equal(pv.label, case.label)
    np.testing.assert_array_equal(pv.clean, case.clean)
    assert pv.info["noise"]["model"] == "poisson_transmission"
    quiet = simulate_phantom(replace(ct, noise_level=0.0), seed=3)
    np.testing.assert_array_equal(quiet.image, quiet.clean)
    with pytest.raises(ValueError, match="ct_model"):
        replace(ct, ct_model="exact")
    with pytest.raises(ValueError, match="dose"):
        replace(ct, dose=0.0)


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
    mr = PhantomSpec(shape=(64, 64), modality="mr", mr_sigma=0.0)
    full = simulate_phantom(mr, seed=2)
    np.testing.assert_allclose(full.image, full.clean, atol=1e-6)
    und = simulate_phantom(replace(mr, acceleration=4.0), seed=2)
    np.testing.assert_array_equal(und.label, full.label)
    err = float(np.abs(und.image - und.clean).mean())
    assert err > 0.005
    kept = und.info["noise"]["sampled_fraction"]
    assert kept == pytest.approx(0.25, abs=0.08)
    again = simulate_phantom(replace(mr, acceleration=4.0), seed=2)
    np.testing.assert_array_equal(und.image, again.image)
    # US: fewer looks, stronger speckle (log domain std grows as L falls)
    organ = None
    stds = []
    for looks in (1.0, 16.0):
        c = simulate_phantom(PhantomSpec(shape=(64, 64), modality="us", looks=looks), seed=1)
        organ = ndi.binary_erosion(c.label == 1, iterations=2) if organ is None else organ
        stds.append(float((c.image - c.clean)[organ].std()))
        assert c.info["noise"]["looks"] == looks
    assert stds[0] > 2.5 * stds[1]


def test_write_phantom_dataset_clean_images(tmp_path):
    out = write_phantom_dataset(tmp_path / "d", PhantomSpec(shape=(32, 32), modality="ct"), 2, 1,
                                seed=5, write_clean=True)
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
        PhantomSpec(shape=(32, 32), modality="ct", spacing=(1.0, 2.0))


# ------------------------------------------------------------------------------- PhantomSpec


def test_phantom_spec_defaults_normalisation_and_frozen():
    s = PhantomSpec()
    assert s.shape == (128, 128) and s.spacing == (1.0, 1.0) and s.modality == "mr"
    assert (s.lesion_fraction, s.n_lesions, s.noise_level) == (0.01, 3, 1.0)
    assert s.organ_scale == (0.45, 0.65) and (s.deformation, s.bias_strength) == (0.15, 0.15)
    assert s.blur_sigma == 0.6 and s.ct_model == "sinogram" and s.center_fraction == 0.08
    assert s.dose is None and s.mr_sigma is None and s.looks is None and s.acceleration == 1.0
    assert s.spatial_dims == 2 and s.modality_tag == "MR"
    t = PhantomSpec(shape=[16, 20, 24], modality="CT", spacing=[2, 2, 3])
    assert t.shape == (16, 20, 24) and t.spacing == (2.0, 2.0, 3.0) and t.modality == "ct"
    assert t.spatial_dims == 3 and t.modality_tag == "CT"
    assert PhantomSpec(modality="US") == PhantomSpec(modality="us")
    with pytest.raises(FrozenInstanceError):
        s.shape = (64, 64)  # type: ignore[misc]


@pytest.mark.parametrize("field, value", [
    ("shape", (4, 32)), ("shape", (32,)), ("spacing", (1.0,)), ("spacing", (1.0, 0.0)),
    ("modality", "pet"), ("lesion_fraction", 0.2), ("lesion_fraction", -0.1),
    ("n_lesions", -1), ("noise_level", -1.0), ("organ_scale", (0.7, 0.5)),
    ("organ_scale", (0.5, 1.2)), ("deformation", -0.1), ("bias_strength", -0.1),
    ("blur_sigma", -1.0), ("dose", 0.0), ("ct_model", "exact"), ("mr_sigma", -0.1),
    ("acceleration", 0.5), ("center_fraction", 0.0), ("center_fraction", 1.5), ("looks", 0.5),
])
def test_phantom_spec_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PhantomSpec(**{field: value})


def test_phantom_spec_ct_needs_square_pixels_only_for_the_sinogram():
    with pytest.raises(ValueError, match="spacing"):
        PhantomSpec(modality="ct", spacing=(1.0, 2.0))
    assert PhantomSpec(modality="ct", spacing=(1.0, 2.0), ct_model="per_voxel").spacing[1] == 2.0
    assert PhantomSpec(modality="mr", spacing=(1.0, 2.0)).spacing == (1.0, 2.0)


def test_dataset_record_keeps_its_old_keys_and_adds_changed_appearance(tmp_path):
    out = write_phantom_dataset(tmp_path / "d", PhantomSpec(shape=(32, 32)), 1, 0)
    params = json.loads((out / "dataset.json").read_text())["medseg_phantom"]["params"]
    assert list(params) == ["n_train", "n_test", "spatial_dims", "shape", "modality",
                            "lesion_fraction", "seed", "spacing", "noise_level", "n_lesions",
                            "dose", "ct_model", "mr_sigma", "acceleration", "center_fraction",
                            "looks", "write_clean"]
    img, _ = read_image(out / "imagesTr" / "case_000_0000.nii.gz")
    # another anatomy is recorded, so the folder is rewritten rather than reused
    write_phantom_dataset(out, PhantomSpec(shape=(32, 32), blur_sigma=0.0), 1, 0)
    params = json.loads((out / "dataset.json").read_text())["medseg_phantom"]["params"]
    assert params["blur_sigma"] == 0.0 and "organ_scale" not in params
    img2, _ = read_image(out / "imagesTr" / "case_000_0000.nii.gz")
    assert not np.array_equal(img, img2)
