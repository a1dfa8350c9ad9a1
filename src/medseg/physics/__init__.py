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
