"""Epistemic sampling (SPEC U2, U3): MC Dropout passes and deep-ensemble members.

Both samplers return stacked predictions ``(T, B, C, *spatial)`` that the functions of
:mod:`medseg.uncertainty.decompose` consume; :func:`predict_with_uncertainty` runs one of them
and returns the usual maps.

    >>> net = create_model("unet", channels=(8, 16), num_classes=3, dropout=0.2)
    >>> maps = predict_with_uncertainty(net, torch.zeros(1, 1, 32, 32), n_samples=8)
    >>> maps["mutual_information"].shape   # (1, 32, 32)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from medseg.networks.common import dropout_modules
from medseg.uncertainty.decompose import (
    expected_entropy,
    mutual_information,
    predictive_entropy,
)

__all__ = ["ensemble_predict", "mc_dropout", "mc_dropout_predict", "predict_with_uncertainty"]

ACTIVATIONS = ("softmax", "sigmoid", None)


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put only the dropout modules of ``model`` in train mode (everything else in eval).

    Normalisation layers keep their eval behaviour (running statistics), so the passes differ
    only by their dropout masks. Every module's previous ``training`` flag is restored on exit,
    also when the block raises.

    Args:
        model: A network with dropout layers of ``p > 0``.

    Yields:
        ``model`` itself.

    Raises:
        ValueError: ``model`` has no dropout layer with ``p > 0``.
    """
    drops = dropout_modules(model)
    if not drops:
        raise ValueError(
            f"{type(model).__name__} has no dropout layer with p > 0, so MC Dropout would "
            "return identical passes; build the model with dropout > 0 (e.g. "
            "create_model(..., dropout=0.2)) or use an ensemble"
        )
    previous = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in drops:
            m.train()
        yield model
    finally:
        for m, flag in previous:
            m.training = flag


def _split_output(out: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network output -> ``(logits, log_var or None)``."""
    if isinstance(out, tuple) and len(out) == 2:
        logits, log_var = out
    else:
        logits, log_var = out, None
    if not isinstance(logits, torch.Tensor) or not (
        log_var is None or isinstance(log_var, torch.Tensor)
    ):
        raise ValueError(
            "expected the model to return a tensor or a (logits, log_var) pair of tensors "
            "(deep-supervision lists are returned only in training mode; call model.eval())"
        )
    return logits, log_var


def _activate(logits: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation is None:
        return logits
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _mc_passes(
    model: nn.Module, x: torch.Tensor, n_samples: int, generator_seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    devices = [x.device] if x.device.type == "cuda" else []
    logits, log_vars = [], []
    with mc_dropout(model), torch.no_grad(), torch.random.fork_rng(devices=devices):
        for t in range(n_samples):
            torch.manual_seed(generator_seed + t)
            lg, lv = _split_output(model(x))
            logits.append(lg)
            log_vars.append(lv)
    lv_stack = None if log_vars[0] is None else torch.stack(log_vars)
    return torch.stack(logits), lv_stack


def mc_dropout_predict(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int,
    generator_seed: int = 0,
    activation: str | None = "softmax",
) -> torch.Tensor:
    """``n_samples`` stochastic forward passes with dropout active (MC Dropout, U2).

    Pass ``t`` runs under ``torch.manual_seed(generator_seed + t)`` inside
    ``torch.random.fork_rng``, so results are reproducible by seed and the global random state
    is unchanged afterwards. Runs under ``torch.no_grad``. For a variance-head model only the
    logits are used.

    Args:
        model: Network with dropout ``p > 0``, returning ``(B, C, *spatial)`` logits or a
            ``(logits, log_var)`` pair.
        x: ``(B, C_in, *spatial)`` input.
        n_samples: Number of passes ``T``.
        generator_seed: Seed of the first pass.
        activation: ``"softmax"`` (over the class axis), ``"sigmoid"`` or ``None`` (logits).

    Returns:
        ``(T, B, C, *spatial)``.

    Raises:
        ValueError: no dropout with ``p > 0``, bad ``n_samples`` or ``activation``.
    """
    _activate(x.new_zeros(1, 1), activation)  # validate before running the model
    logits, _ = _mc_passes(model, x, n_samples, generator_seed)
    return torch.stack([_activate(lg, activation) for lg in logits])


def _ensemble_passes(
    models: Sequence[nn.Module], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if len(models) == 0:
        raise ValueError("an ensemble needs at least one member")
    logits, log_vars = [], []
    for i, m in enumerate(models):
        previous = [(mod, mod.training) for mod in m.modules()]
        try:
            m.eval()
            with torch.no_grad():
                lg, lv = _split_output(m(x))
        finally:
            for mod, flag in previous:
                mod.training = flag
        if logits and (lg.shape != logits[0].shape or (lv is None) != (log_vars[0] is None)):
            raise ValueError(
                f"ensemble member {i} ({type(m).__name__}) returns shape {tuple(lg.shape)}"
                f"{' with' if lv is not None else ' without'} a variance head, member 0 "
                f"returns {tuple(logits[0].shape)}"
                f"{' with' if log_vars[0] is not None else ' without'} one; members must "
                "share their output"
            )
        logits.append(lg)
        log_vars.append(lv)
    lv_stack = None if log_vars[0] is None else torch.stack(log_vars)
    return torch.stack(logits), lv_stack


def ensemble_predict(
    models: Sequence[nn.Module], x: torch.Tensor, activation: str | None = "softmax"
) -> torch.Tensor:
    """One eval-mode forward pass per ensemble member (deep ensembles, U3).

    Each member runs in eval mode under ``torch.no_grad``; its modes are restored afterwards.

    Args:
        models: ``M`` members with the same output shape.
        x: ``(B, C_in, *spatial)`` input.
        activation: ``"softmax"``, ``"sigmoid"`` or ``None``.

    Returns:
        ``(M, B, C, *spatial)``.

    Raises:
        ValueError: no members, members with different output shapes, bad ``activation``.
    """
    _activate(x.new_zeros(1, 1), activation)
    logits, _ = _ensemble_passes(models, x)
    return torch.stack([_activate(lg, activation) for lg in logits])


def predict_with_uncertainty(
    model_or_models: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    n_samples: int = 8,
    variance_head: bool = False,
    generator_seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Softmax prediction and uncertainty maps by MC Dropout (one model) or an ensemble.

    Args:
        model_or_models: One network with dropout ``p > 0`` (MC Dropout, ``n_samples`` passes)
            or a sequence of ensemble members (one pass each; ``n_samples`` unused).
        x: ``(B, C_in, *spatial)`` input.
        n_samples: MC Dropout passes ``T``.
        variance_head: The model(s) return ``(logits, log_var)`` (see
            :func:`medseg.networks.heads.add_variance_head`).
        generator_seed: Seed of the first MC Dropout pass.

    Returns:
        Dict with ``mean`` ``(B, C, *spatial)`` mean probabilities, ``predictive_entropy``,
        ``expected_entropy`` (aleatoric), ``mutual_information`` (epistemic), each
        ``(B, *spatial)`` in nats, and with ``variance_head`` also ``aleatoric_logit_variance``
        ``(B, C, *spatial)``, the mean over samples of ``exp(log_var)``.

    Raises:
        ValueError: ``variance_head`` does not match what the model returns, or as
            :func:`mc_dropout_predict` / :func:`ensemble_predict`.
    """
    if isinstance(model_or_models, nn.Module):
        logits, log_var = _mc_passes(model_or_models, x, n_samples, generator_seed)
    else:
        logits, log_var = _ensemble_passes(list(model_or_models), x)
    if variance_head != (log_var is not None):
        raise ValueError(
            f"variance_head={variance_head} but the model returns "
            f"{'a (logits, log_var) pair' if log_var is not None else 'logits only'}; "
            f"pass variance_head={log_var is not None}"
        )
    probs = torch.softmax(logits, dim=2)
    maps = {
        "mean": probs.mean(dim=0),
        "predictive_entropy": predictive_entropy(probs),
        "expected_entropy": expected_entropy(probs),
        "mutual_information": mutual_information(probs),
    }
    if log_var is not None:
        maps["aleatoric_logit_variance"] = torch.exp(log_var).mean(dim=0)
    return maps
