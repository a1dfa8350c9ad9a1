"""Physics per modality (P1-P4): noise models and the synthetic phantoms of E6."""

from medseg.physics.noise import (
    MU_WATER_PER_MM,
    add_modality_noise,
    ct_photons_for_sigma,
    ct_transmission_noise,
    log_compress,
    mr_rician_noise,
    us_speckle,
)
from medseg.physics.phantom import make_phantom, write_phantom_dataset

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
]
from medseg.physics.likelihoods import gamma_nll, gaussian_hetero_nll, poisson_nll, rician_nll
from medseg.physics.tv import homomorphic_tv_despeckle, total_variation, tv_denoise
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
