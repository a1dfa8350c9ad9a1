"""One sampling interface for every uncertainty method (U1-U3) and flip TTA.

:func:`sample_probs` turns one input batch into ``T`` probability samples, whatever the method:

* ``"mc"`` — MC Dropout (U2): only the dropout layers in train mode (norm layers keep their
  running statistics), ``T`` passes (one forward each: on a CPU a ``T`` times larger batch is
  slower);
* ``"mc_decoder"`` — MC Dropout of the decoder only: the encoder runs once, the decoder ``T``
  times (:func:`medseg.uncertainty.sampling.mc_dropout_decoder_predict`; networks that split
  into ``encode`` / ``decode``);
* ``"ensemble"`` — Deep Ensembles (U3): one deterministic pass per member;
* ``"tta"`` — flip test-time augmentation: every combination of flips of the spatial axes;
* ``"none"`` — the single deterministic prediction (``T = 1``).

A network with a variance head (U1) returns ``(logits, log_var)``; each of its samples is then
the probability averaged over ``noise_samples`` draws of the logit noise
``logits + exp(log_var / 2) * eps`` (the aleatoric part enters the sample's own probability),
and the sample's logit variance ``exp(log_var)`` is returned beside it.

Every method is seeded (``seed``) inside ``torch.random.fork_rng``: results are reproducible
and the caller's random state is untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from medseg.uncertainty.sampling import mc_dropout

METHODS = ("none", "mc", "mc_decoder", "ensemble", "tta")


def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes (``2^d`` flips, the identity first)."""
    axes = list(range(spatial_dims))
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def _split(out: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, list):  # deep supervision in train mode: the full-resolution output
        out = out[0]
    if isinstance(out, tuple) and len(out) == 2:
        lg, lv = out
        if isinstance(lg, list):
            lg, lv = lg[0], lv[0]
        return lg.float(), lv.float()
    if not isinstance(out, torch.Tensor):
        raise ValueError("the model must return logits or a (logits, log_var) pair")
    return out.float(), None


def _activate(logits: torch.Tensor, log_var: torch.Tensor | None, activation: str,
              noise_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    act = (lambda z: torch.softmax(z, dim=1)) if activation == "softmax" else torch.sigmoid
    if log_var is None:
        return act(logits), None
    sigma = torch.exp(0.5 * log_var)
    acc = torch.zeros_like(logits)
    for _ in range(noise_samples):
        acc += act(logits + sigma * torch.randn_like(logits))
    return acc / noise_samples, torch.exp(log_var)


def sample_probs(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    method: str,
    n_samples: int = 10,
    seed: int = 0,
    activation: str = "softmax",
    noise_samples: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``T`` probability samples of one input batch.

    Args:
        models: The network (or the ensemble's members, for ``"ensemble"``), in eval mode.
        x: ``(B, C_in, *spatial)`` input.
        method: One of :data:`METHODS`.
        n_samples: ``T`` for ``"mc"`` / ``"mc_decoder"`` (ignored otherwise: an ensemble gives
            one sample per member, TTA ``2^d`` flips, ``"none"`` one).
        seed: Seed of the dropout masks and of the logit noise.
        activation: ``"softmax"`` (class axis 1) or ``"sigmoid"`` (independent labels).
        noise_samples: Draws of the logit noise per sample for a variance-head network.

    Returns:
        ``(probs, logit_var)``: ``(T, B, C, *spatial)`` probabilities and, for a variance-head
        network, ``(T, B, C, *spatial)`` logit variances (else ``None``).

    Raises:
        ValueError: unknown method or activation, ``n_samples < 1``, no dropout for MC, an
            ensemble of one.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if method == "ensemble" and len(models) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(models)}")
    devices = [x.device] if x.device.type == "cuda" else []
    outs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = models[0]
        if method == "mc":
            # one pass per sample (on a CPU a T-times larger batch through the whole network
            # is slower than T passes); sample t draws its masks from the stream seeded
            # seed + t, the rule of mc_dropout_predict and of "mc_decoder", so the two methods
            # give the same samples when the encoder has no dropout
            with mc_dropout(model):
                for t in range(n_samples):
                    torch.manual_seed(seed + t)
                    out = model(x)
                    torch.manual_seed(seed + n_samples + t)  # the logit noise's own stream
                    outs.append(_activate(*_split(out), activation, noise_samples))
        elif method == "mc_decoder":
            from medseg.uncertainty.sampling import mc_dropout_decoder_predict

            logits = mc_dropout_decoder_predict(model, x, n_samples, generator_seed=seed,
                                                activation=None,
                                                batch_samples=decoder_group(model, x,
                                                                            n_samples))
            outs = [_activate(lg, None, activation, noise_samples) for lg in logits]
        elif method == "ensemble":
            outs = [_activate(*_split(m(x)), activation, noise_samples) for m in models]
        elif method == "tta":
            for flips in flip_sets(x.ndim - 2):
                dims = [a + 2 for a in flips]
                xi = torch.flip(x, dims) if dims else x
                lg, lv = _split(model(xi))
                if dims:
                    lg = torch.flip(lg, dims)
                    lv = None if lv is None else torch.flip(lv, dims)
                outs.append(_activate(lg, lv, activation, noise_samples))
        else:
            outs = [_activate(*_split(model(x)), activation, noise_samples)]
    probs = torch.stack([p for p, _ in outs])
    var = None if outs[0][1] is None else torch.stack([v for _, v in outs])  # type: ignore[misc]
    return probs, var


#: Memory of the encoder features tiled for one batched decoder call (decoder-only MC).
DECODER_BATCH_BYTES = 512 * 2**20


def decoder_group(model: nn.Module, x: torch.Tensor, n_samples: int) -> int:
    """Samples per decoder call of decoder-only MC: all ``T`` at once (measured faster than one
    by one on CPU and GPU) unless one call would hold more than :data:`DECODER_BATCH_BYTES`.

    A sample's memory is estimated as 4 full-resolution maps of the first level's width
    (``model.channels[0]``, 32 if the network does not say): its skip features plus the
    decoder's concatenation and output at full resolution; the deeper levels of a U-Net add
    less than one more such map, since each halves every axis and at most doubles the width.
    """
    channels = getattr(model, "channels", None) or [32]
    voxels = x[0, 0].numel()
    per_sample = 4 * voxels * int(channels[0]) * x.element_size() * x.shape[0]
    return max(1, min(n_samples, DECODER_BATCH_BYTES // max(per_sample, 1)))


def n_samples_of(method: str, n_samples: int, n_members: int, spatial_dims: int) -> int:
    """``T`` that :func:`sample_probs` returns for these settings."""
    return {"mc": n_samples, "mc_decoder": n_samples, "ensemble": n_members,
            "tta": 2 ** spatial_dims, "none": 1}[method]
