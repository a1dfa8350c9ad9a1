"""Physics per modality (P1-P4): noise models and the synthetic phantoms of E6."""

from medseg.physics.ct import (
    LowDoseCT,
    default_angles,
    fbp,
    fbp_filter,
    fbp_noise_std_hu,
    fbp_photons_for_sigma,
    radon,
    radon_adjoint,
    simulate_low_dose_ct,
    sinogram_side,
)
from medseg.physics.hu import (
    WINDOW_PRESETS,
    apply_window,
    clip_hu,
    hu_to_mu,
    mu_to_hu,
    raw_to_hu,
    window_bounds,
)
from medseg.physics.noise import (
    MU_WATER_PER_MM,
    add_modality_noise,
    ct_photons_for_sigma,
    ct_transmission_noise,
    log_compress,
    mr_rician_noise,
    us_speckle,
)
from medseg.physics.noise_params import NoiseParams, grey_to_intensity, hu_to_counts_rate
from medseg.physics.phantom import (
    PhantomCase,
    PhantomSpec,
    cartesian_line_mask,
    make_phantom,
    simulate_phantom,
    write_phantom_dataset,
)

__all__ = [
    "MU_WATER_PER_MM",
    "add_modality_noise",
    "ct_photons_for_sigma",
    "ct_transmission_noise",
    "log_compress",
    "make_phantom",
    "mr_rician_noise",
    "us_speckle",
    "write_phantom_dataset",
    "NoiseParams",
    "PhantomCase",
    "PhantomSpec",
    "cartesian_line_mask",
    "grey_to_intensity",
    "hu_to_counts_rate",
    "simulate_phantom",
]
from medseg.physics.likelihoods import gamma_nll, gaussian_hetero_nll, poisson_nll, rician_nll
from medseg.physics.mri import (
    complex_noise,
    estimate_noise_sigma,
    otsu_threshold,
    rician_bias_correct,
    rician_mean,
)
from medseg.physics.tv import homomorphic_tv_despeckle, total_variation, tv_denoise
from medseg.physics.ultrasound import (
    bmode_to_intensity,
    envelope_to_bmode,
    inverse_log_transform,
    log_transform,
    speckle,
)
from medseg.physics.vst import (
    anscombe,
    anscombe_expectation,
    inverse_anscombe_algebraic,
    inverse_anscombe_asymptotic,
    inverse_anscombe_unbiased,
)

__all__ += [
    "anscombe",
    "anscombe_expectation",
    "gamma_nll",
    "gaussian_hetero_nll",
    "homomorphic_tv_despeckle",
    "inverse_anscombe_algebraic",
    "inverse_anscombe_asymptotic",
    "inverse_anscombe_unbiased",
    "poisson_nll",
    "rician_nll",
    "total_variation",
    "tv_denoise",
]
__all__ += [
    "LowDoseCT",
    "WINDOW_PRESETS",
    "apply_window",
    "clip_hu",
    "default_angles",
    "fbp",
    "fbp_filter",
    "fbp_noise_std_hu",
    "fbp_photons_for_sigma",
    "hu_to_mu",
    "mu_to_hu",
    "radon",
    "radon_adjoint",
    "raw_to_hu",
    "simulate_low_dose_ct",
    "sinogram_side",
    "window_bounds",
]
__all__ += [
    "bmode_to_intensity",
    "complex_noise",
    "envelope_to_bmode",
    "estimate_noise_sigma",
    "inverse_log_transform",
    "log_transform",
    "otsu_threshold",
    "rician_bias_correct",
    "rician_mean",
    "speckle",
]
