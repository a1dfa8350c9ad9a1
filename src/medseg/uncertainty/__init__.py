"""Uncertainty (SPEC U1-U4): decomposition functions and MC Dropout / ensemble samplers."""

from medseg.uncertainty.decompose import (
    bernoulli_variance_split,
    entropy,
    expected_entropy,
    heteroscedastic_ce,
    mutual_information,
    predictive_entropy,
    sample_softmax_with_logit_noise,
    total_variance_split,
)
from medseg.uncertainty.sampling import (
    ensemble_predict,
    mc_dropout,
    mc_dropout_predict,
    predict_with_uncertainty,
)

__all__ = [
    "bernoulli_variance_split",
    "ensemble_predict",
    "entropy",
    "expected_entropy",
    "heteroscedastic_ce",
    "mc_dropout",
    "mc_dropout_predict",
    "mutual_information",
    "predict_with_uncertainty",
    "predictive_entropy",
    "sample_softmax_with_logit_noise",
    "total_variance_split",
]
