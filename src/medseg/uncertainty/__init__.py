"""Uncertainty (SPEC U1-U5): decomposition functions, MC Dropout / ensemble samplers,
temperature scaling and split-conformal intervals."""

from medseg.uncertainty.calibration import (
    apply_temperature,
    fit_temperature,
    fit_temperature_subsampled,
    observed_elements,
    temperature_nll,
)
from medseg.uncertainty.conformal import (
    ConformalCalibration,
    calibrate_conformal,
    conformal_interval,
    conformal_quantile,
    conformal_rank,
    conformity_scores,
)
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
    "ConformalCalibration",
    "apply_temperature",
    "bernoulli_variance_split",
    "calibrate_conformal",
    "conformal_interval",
    "conformal_quantile",
    "conformal_rank",
    "conformity_scores",
    "ensemble_predict",
    "entropy",
    "expected_entropy",
    "fit_temperature",
    "fit_temperature_subsampled",
    "heteroscedastic_ce",
    "mc_dropout",
    "mc_dropout_predict",
    "mutual_information",
    "observed_elements",
    "predict_with_uncertainty",
    "predictive_entropy",
    "sample_softmax_with_logit_noise",
    "temperature_nll",
    "total_variance_split",
]
