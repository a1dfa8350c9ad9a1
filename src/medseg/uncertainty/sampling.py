"""Epistemic sampling (SPEC U2, U3): MC Dropout passes and deep-ensemble members.

The samplers return stacked predictions ``(T, B, C, *spatial)`` that the functions of
:mod:`medseg.uncertainty.decompose` consume; :func:`predict_with_uncertainty` runs one of them
and returns the usual maps.

    >>> net = create_model("unet", channels=(8, 16), num_classes=3, dropout=0.2)
    >>> maps = predict_with_uncertainty(net, torch.zeros(1, 1, 32, 32), n_samples=8)
    >>> maps["mutual_information"].shape   # (1, 32, 32)

Decoder-only MC Dropout (:func:`mc_dropout_decoder_predict`) runs a segmentation network's
``encode`` once and samples only its ``decode`` ``T`` times, batched into one decoder call, so
``T`` samples cost one encoder pass plus ``T`` decoder passes instead of ``T`` full passes.
Build the network with its dropout in the decoder (``dropout_where="decoder"``, the default
of every registered segmentation network but TransUNet). With the same seed it returns the
samples of :func:`mc_dropout_predict` whenever the encoder has no active dropout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from medseg.networks.common import EncoderFeatures, dropout_modules
from medseg.uncertainty.decompose import (
    expected_entropy,
    mutual_information,
    predictive_entropy,
)

__all__ = [
    "ensemble_predict",
    "mc_dropout",
    "mc_dropout_decoder_predict",
    "mc_dropout_predict",
    "predict_with_uncertainty",
]

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


def _is_dropout(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd)


def _repeat_batch(features: object, n: int) -> object:
    """``features`` with every tensor tiled ``n`` times along the batch axis (copy ``t`` is the
    block ``[t * B, (t + 1) * B)``)."""

    def tile(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(n, *([1] * (t.ndim - 1)))

    if isinstance(features, torch.Tensor):
        return tile(features)
    if isinstance(features, EncoderFeatures):
        return features.map(tile)
    if isinstance(features, list | tuple) and all(
        isinstance(t, torch.Tensor) for t in features
    ):
        return type(features)(tile(t) for t in features)
    raise TypeError(
        f"cannot repeat encoder features of type {type(features).__name__} along the batch "
        "axis (expected EncoderFeatures, a tensor or a list/tuple of tensors); pass "
        "batch_samples=False"
    )


def _rng_accessors(
    device: torch.device,
) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]] | None:
    """Get / set the state of the generator that random ops on ``device`` draw from."""
    if device.type == "cpu":
        return torch.get_rng_state, torch.set_rng_state
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device),
                lambda state: torch.cuda.set_rng_state(state, device))
    return None


@contextlib.contextmanager
def _per_sample_dropout(
    drops: Sequence[nn.Module],
    states: list[torch.Tensor],
    batch: int,
    rng: tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]],
) -> Iterator[None]:
    """Make each dropout module draw block ``t`` of a ``(T * batch, ...)`` input from stream
    ``t`` (RNG state ``states[t]``, updated in place), in the same order and with the same
    shapes as ``T`` separate passes of batch ``batch`` would."""
    get_state, set_state = rng
    n = len(states)

    def per_sample(forward: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable:
        def run(inp: torch.Tensor) -> torch.Tensor:
            if inp.shape[0] != n * batch:
                raise RuntimeError(
                    f"decoder-only MC Dropout: dropout {name!r} got batch {inp.shape[0]}, "
                    f"expected n_samples * B = {n * batch}; pass batch_samples=False"
                )
            outs = []
            for t in range(n):
                set_state(states[t])
                outs.append(forward(inp[t * batch:(t + 1) * batch]))
                states[t] = get_state()
            return torch.cat(outs)

        return run

    saved = [(m, m.__dict__.get("forward")) for m in drops]
    try:
        for i, m in enumerate(drops):
            m.forward = per_sample(m.forward, f"{type(m).__name__} #{i}")
        yield
    finally:
        for m, own in saved:
            if own is None:
                del m.forward
            else:
                m.forward = own


def _decoder_mc_passes(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int,
    generator_seed: int,
    batch_samples: bool | int,
    allow_encoder_dropout: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))):
        raise ValueError(
            f"{type(model).__name__} has no encode/decode split, so its decoder cannot be "
            "sampled alone; use mc_dropout_predict (every registered segmentation network "
            "has the split)"
        )
    names = {m: name or "<model>" for name, m in model.named_modules()}
    drops = [m for m in model.modules() if _is_dropout(m)]
    previous = [(m, m.training) for m in model.modules()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            # Encoder once, in eval mode; note which dropout modules it runs through.
            in_encoder: set[nn.Module] = set()
            hooks = [m.register_forward_pre_hook(lambda mod, _: in_encoder.add(mod))
                     for m in drops]
            try:
                features = model.encode(x)
            finally:
                for h in hooks:
                    h.remove()
            active = [names[m] for m in drops if m in in_encoder and m.p > 0]
            if active and not allow_encoder_dropout:
                shown = ", ".join(active[:4]) + (", ..." if len(active) > 4 else "")
                raise ValueError(
                    f"{type(model).__name__} has dropout with p > 0 in its encoder ({shown}), "
                    "which decoder-only MC Dropout does not sample; build it with "
                    "dropout_where='decoder', use mc_dropout_predict, or pass "
                    "allow_encoder_dropout=True to run the encoder without dropout"
                )
            decoder_drops = [m for m in drops if m not in in_encoder]
            if not decoder_drops:
                raise ValueError(
                    f"{type(model).__name__} has no dropout layer in its decoder, so "
                    "decoder-only MC Dropout would return identical samples; build it with "
                    "dropout > 0 and dropout_where='decoder' (e.g. create_model(..., "
                    "dropout=0.2, dropout_where='decoder'))"
                )
            # Only the head samples (dropout_where="head"): run the decoder's trunk once too
            # and sample the head alone (the trunk holds no active dropout).
            head = getattr(model, "head_dropout", None)
            head_drops = set(head.modules()) if isinstance(head, nn.Module) else set()
            active_dec = [m for m in decoder_drops if m.p > 0]
            decode: Callable[[object], object] = model.decode
            if (active_dec and callable(getattr(model, "decode_trunk", None))
                    and all(m in head_drops for m in active_dec)):
                encoded = features
                features = model.decode_trunk(encoded)

                def decode(h: object) -> object:
                    return model.decode_head(h, encoded)
            for m in decoder_drops:
                m.train()
            used: set[nn.Module] = set()
            hooks = [m.register_forward_pre_hook(lambda mod, _: used.add(mod))
                     for m in decoder_drops]
            rng = _rng_accessors(x.device)
            try:
                group = n_samples if batch_samples is True else int(batch_samples)
                if group > 1 and rng is not None:
                    batch = x.shape[0]
                    lgs, lvs = [], []
                    for start in range(0, n_samples, group):
                        ts = range(start, min(start + group, n_samples))
                        states = []
                        for t in ts:
                            torch.manual_seed(generator_seed + t)
                            states.append(rng[0]())
                        with _per_sample_dropout(decoder_drops, states, batch, rng):
                            lg, lv = _split_output(decode(_repeat_batch(features, len(ts))))
                        lgs.append(lg.reshape(len(ts), batch, *lg.shape[1:]))
                        lvs.append(None if lv is None else
                                   lv.reshape(len(ts), batch, *lv.shape[1:]))
                    logits = torch.cat(lgs)
                    log_var = None if lvs[0] is None else torch.cat(lvs)
                else:
                    lgs, lvs = [], []
                    for t in range(n_samples):
                        torch.manual_seed(generator_seed + t)
                        lg, lv = _split_output(decode(features))
                        lgs.append(lg)
                        lvs.append(lv)
                    logits = torch.stack(lgs)
                    log_var = None if lvs[0] is None else torch.stack(lvs)
            finally:
                for h in hooks:
                    h.remove()
            if not used:
                raise ValueError(
                    f"{type(model).__name__}.decode ran through no dropout layer, so "
                    "decoder-only MC Dropout would return identical samples; build it with "
                    "dropout > 0 and dropout_where='decoder'"
                )
    finally:
        for m, flag in previous:
            m.training = flag
    return logits, log_var


def mc_dropout_decoder_predict(
    model: nn.Module,
    x: torch.Tensor,
    n_samples: int,
    generator_seed: int = 0,
    activation: str | None = "softmax",
    batch_samples: bool | int = True,
    allow_encoder_dropout: bool = False,
) -> torch.Tensor:
    """Decoder-only MC Dropout (U2): encode once, sample the decoder ``n_samples`` times.

    ``model.encode(x)`` runs once, in eval mode; then ``model.decode`` runs ``T`` times with
    only the decoder's dropout modules in train mode (every other module, normalisation
    layers included, stays in eval mode, so BatchNorm running statistics are neither used
    from the batch nor updated). ``T`` samples cost one encoder pass and ``T`` decoder passes.
    Runs under ``torch.no_grad``; every module's ``training`` flag is restored afterwards. For
    a variance-head model (:func:`~medseg.networks.heads.add_variance_head`) only the logits
    are used.

    Which dropout is the decoder's: every dropout module that :meth:`encode` does not run
    through (found with forward pre-hooks during the single encoder pass). The encoder's
    dropout is never sampled: it runs in eval mode (identity). If it has ``p > 0`` this is a
    different model from the one trained, so it raises unless ``allow_encoder_dropout``. Only
    dropout *modules* are sampled (not functional dropout such as an attention's
    ``dropout_p``).

    Seeding (the rule of :func:`mc_dropout_predict`): sample ``t`` draws its dropout masks from
    torch's global RNG seeded with ``generator_seed + t``, inside ``torch.random.fork_rng``, so
    results are reproducible by seed and the global random state is unchanged. With
    ``batch_samples`` the ``T`` samples run as one decoder call on the features tiled ``T``
    times along the batch axis (sample ``t`` is the block ``[t * B, (t + 1) * B)``), and each
    dropout module draws block ``t``'s mask from stream ``t`` (the RNG state is swapped per
    block), in the same order and with the same shapes as ``T`` separate passes. So the samples
    are those of ``batch_samples=False`` and, when the encoder draws no random numbers (no
    active dropout), those of ``mc_dropout_predict(model, x, T, generator_seed)``: exactly
    with ``batch_samples=False``, up to the rounding of batched against unbatched kernels with
    ``batch_samples=True``. On devices other than CPU and CUDA the samples run one by one.

    Args:
        model: A network with an ``encode``/``decode`` split (every registered segmentation
            network, or a :class:`~medseg.networks.heads.VarianceHead` around one) and dropout
            in its decoder, returning ``(B, C, *spatial)`` logits or a ``(logits, log_var)``
            pair in eval mode.
        x: ``(B, C_in, *spatial)`` input (one window of a sliding-window run, for instance).
        n_samples: Number of decoder samples ``T``.
        generator_seed: Seed of the first sample.
        activation: ``"softmax"`` (over the class axis), ``"sigmoid"`` or ``None`` (logits).
        batch_samples: Run the ``T`` decoder passes as one call on a ``T * B`` batch (``T``
            times the decoder's activation memory; faster on a GPU and, measured, on this
            project's CPU too); an integer ``g`` runs groups of ``g`` samples per call (bounded
            memory); ``False`` (or 1): one call per sample.
        allow_encoder_dropout: Accept a model with dropout ``p > 0`` in its encoder and run
            the encoder without it.

    Returns:
        ``(T, B, C, *spatial)``.

    Raises:
        ValueError: the model has no ``encode``/``decode`` split, no dropout in its decoder,
            dropout ``p > 0`` in its encoder (without ``allow_encoder_dropout``), bad
            ``n_samples`` or ``activation``.
    """
    _activate(x.new_zeros(1, 1), activation)  # validate before running the model
    logits, _ = _decoder_mc_passes(
        model, x, n_samples, generator_seed, batch_samples, allow_encoder_dropout
    )
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
    decoder_only: bool = False,
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
        decoder_only: MC Dropout samples only the decoder, encoding once
            (:func:`mc_dropout_decoder_predict` with its defaults).

    Returns:
        Dict with ``mean`` ``(B, C, *spatial)`` mean probabilities, ``predictive_entropy``,
        ``expected_entropy`` (aleatoric), ``mutual_information`` (epistemic), each
        ``(B, *spatial)`` in nats, and with ``variance_head`` also ``aleatoric_logit_variance``
        ``(B, C, *spatial)``, the mean over samples of ``exp(log_var)``.

    Raises:
        ValueError: ``variance_head`` does not match what the model returns, or as
            :func:`mc_dropout_predict` / :func:`mc_dropout_decoder_predict` /
            :func:`ensemble_predict`.
    """
    if isinstance(model_or_models, nn.Module) and decoder_only:
        logits, log_var = _decoder_mc_passes(
            model_or_models, x, n_samples, generator_seed, True, False
        )
    elif isinstance(model_or_models, nn.Module):
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
