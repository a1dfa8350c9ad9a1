"""Temperature scaling (SPEC U5 "calibrate"): one scalar ``T > 0`` that divides the logits.

Guo et al. (2017): the calibrated probabilities are ``softmax(z / T)`` (single-label, one class
axis) or ``sigmoid(z / T)`` (multi-label / binary, one logit per element). ``T`` is fitted on
held-out data by minimising the mean negative log-likelihood over the *observed* elements only
(T5: a masked voxel or a missing ``-1`` label contributes nothing, whatever its logit):

* ``kind="softmax"``: logits ``(N, C, *spatial)`` (class axis 1, ``C >= 2``; ``(M, C)`` for
  already flattened elements), integer targets ``(N, *spatial)`` or ``(N, 1, *spatial)`` in
  ``[0, C)`` where observed; ``NLL = logsumexp(z / T) - z_y / T``.
* ``kind="sigmoid"``: logits of any shape (``(N, K)`` for a multi-label classifier), targets of
  the same shape in ``{0, 1}`` or ``-1`` (missing, excluded);
  ``NLL = softplus(z / T) - y z / T``.

How the fit works. With ``beta = 1 / T = exp(-log T)`` both NLLs are convex in ``beta``
(log-sum-exp / softplus of a linear function minus a linear function), with exact first and
second derivatives ``mean(E_p[z] - z_y)`` and ``mean(Var_p[z])`` (sigmoid:
``mean((sigmoid(beta z) - y) z)`` and ``mean(p (1 - p) z^2)``). :func:`fit_temperature`
therefore searches ``log T`` through its monotone image ``beta``: a safeguarded Newton iteration
on the derivative inside a bracket (a bisection in ``log beta`` whenever a Newton step would
leave the bracket), in float64. It is deterministic (no random start, no line-search
heuristics) and converges to the unique minimiser over the allowed range.

The range is capped: ``T`` is kept in ``[T_MIN, T_MAX] = [0.05, 20]`` (``bounds``). When the
data are perfectly separable (every observed argmax right with a positive margin) the NLL keeps
falling as ``T -> 0`` and the fit returns the lower cap ``0.05``; when the logits are
anti-informative (the NLL keeps falling as ``T -> inf``, towards uniform probabilities) it
returns the upper cap ``20``. When the NLL does not depend on ``T`` at all (every observed row
of logits constant) the fit returns ``init`` (clipped to the range).

Segmentation gives millions of voxels: :func:`observed_elements` gathers the observed ones
(optionally a deterministic, seeded subsample of ``max_elements``) and
:func:`fit_temperature_subsampled` fits on that subsample. To pool several cases of different
shapes, gather each with :func:`observed_elements` and pass the concatenated ``(M, C)`` /
``(M,)`` tensors to :func:`fit_temperature`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "T_MAX",
    "T_MIN",
    "apply_temperature",
    "ensemble_nll",
    "fit_ensemble_temperature",
    "fit_temperature",
    "fit_temperature_subsampled",
    "observed_elements",
    "temperature_nll",
]

#: Default range of the fitted temperature (see the module docstring).
T_MIN = 0.05
T_MAX = 20.0
KINDS = ("softmax", "sigmoid")
MISSING = -1


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_temperature(temperature: float, name: str = "temperature") -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")
    return t


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by a temperature (then apply the usual softmax / sigmoid).

    Args:
        logits: Logits of any shape, e.g. ``(N, C, *spatial)``.
        temperature: ``T > 0`` from :func:`fit_temperature`.

    Returns:
        ``logits / T``, same shape and dtype.

    Raises:
        ValueError: ``temperature`` is not a finite positive number.
    """
    return logits / _check_temperature(temperature)


def _flat_index(observed: torch.Tensor, max_elements: int | None, seed: int) -> torch.Tensor:
    idx = torch.nonzero(observed.reshape(-1), as_tuple=False).reshape(-1)
    if max_elements is not None and idx.numel() > max_elements:
        pick = np.random.default_rng(seed).choice(idx.numel(), size=max_elements, replace=False)
        pick = torch.from_numpy(np.sort(pick)).to(idx.device)
        idx = idx[pick]
    return idx


def observed_elements(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "softmax",
    max_elements: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed elements as flat float64 logits and int64 targets.

    Args:
        logits: softmax: ``(N, C, *spatial)`` (or ``(M, C)``); sigmoid: any shape.
        targets: softmax: ``(N, *spatial)`` or ``(N, 1, *spatial)`` class indices; sigmoid: the
            shape of ``logits``, values 0/1, ``-1`` = missing.
        mask: Optional observation mask, softmax ``(N, *spatial)`` or ``(N, 1, *spatial)``,
            sigmoid the shape of ``logits``; nonzero = observed.
        kind: ``"softmax"`` or ``"sigmoid"``.
        max_elements: Keep at most this many observed elements, drawn uniformly without
            replacement by ``numpy.random.default_rng(seed)`` and kept in their original order
            (deterministic for a given ``seed`` and input, on any device); ``None`` keeps all.
        seed: Seed of the subsample.

    Returns:
        ``(z, y)``: softmax ``(M, C)`` float64 and ``(M,)`` int64; sigmoid ``(M,)`` float64 and
        ``(M,)`` int64 (0/1), on the device of ``logits``.

    Raises:
        ValueError: bad ``kind``, shapes that do not match (naming the argument), non-float
            logits, observed targets outside ``[0, C)`` (softmax) or ``{0, 1}`` (sigmoid),
            ``max_elements < 1``, or no observed element.
    """
    _check_kind(kind)
    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets, device=logits.device)
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if max_elements is not None and max_elements < 1:
        raise ValueError(f"max_elements must be >= 1 or None, got {max_elements}")
    if kind == "softmax":
        if logits.ndim < 2 or logits.shape[1] < 2:
            raise ValueError(
                f"logits must be (N, C, *spatial) with C >= 2 classes for kind='softmax', got "
                f"{tuple(logits.shape)}; use kind='sigmoid' for one logit per element"
            )
        spatial = (logits.shape[0], *logits.shape[2:])
        targets = _squeeze_channel(targets, spatial, "targets")
        obs = torch.ones(spatial, dtype=torch.bool, device=logits.device)
        if mask is not None:
            obs = _squeeze_channel(torch.as_tensor(mask, device=logits.device), spatial,
                                   "mask") != 0
    else:
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets must have the shape of logits {tuple(logits.shape)} for "
                f"kind='sigmoid', got {tuple(targets.shape)}"
            )
        obs = targets != MISSING
        if mask is not None:
            mask = torch.as_tensor(mask, device=logits.device)
            if mask.shape != logits.shape:
                raise ValueError(
                    f"mask must have the shape of logits {tuple(logits.shape)}, got "
                    f"{tuple(mask.shape)}"
                )
            obs = obs & (mask != 0)
    idx = _flat_index(obs, max_elements, seed)
    if idx.numel() == 0:
        raise ValueError("no observed element: mask (or targets, -1 = missing) excludes all")
    y = targets.reshape(-1)[idx].long()
    if kind == "softmax":
        c = logits.shape[1]
        z = logits.movedim(1, -1).reshape(-1, c)[idx].to(torch.float64)
        if bool(((y < 0) | (y >= c)).any()):
            raise ValueError(f"observed targets must be class indices in [0, {c}), got values "
                             f"{torch.unique(y[(y < 0) | (y >= c)])[:5].tolist()}")
    else:
        z = logits.reshape(-1)[idx].to(torch.float64)
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError("observed targets must be 0 or 1 (-1 = missing) for kind='sigmoid'")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("logits must be finite at observed elements")
    return z, y


def _squeeze_channel(x: torch.Tensor, spatial: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(x.shape) == spatial:
        return x
    if x.ndim == len(spatial) + 1 and x.shape[1] == 1 and (x.shape[0], *x.shape[2:]) == spatial:
        return x[:, 0]
    raise ValueError(f"{name} must have shape (N, *spatial) = {spatial} or (N, 1, *spatial), "
                     f"got {tuple(x.shape)}")


def _nll_derivatives(z: torch.Tensor, y: torch.Tensor, beta: float, kind: str
                     ) -> tuple[float, float, float]:
    """Mean NLL and its first and second derivative with respect to ``beta = 1 / T``."""
    if kind == "softmax":
        s = beta * z
        lse = torch.logsumexp(s, dim=1)
        zy = z.gather(1, y[:, None])[:, 0]
        p = torch.exp(s - lse[:, None])
        ez = (p * z).sum(1)
        f = (lse - beta * zy).mean()
        g = (ez - zy).mean()
        h = ((p * z * z).sum(1) - ez * ez).clamp_min(0).mean()
    else:
        s = beta * z
        yf = y.to(z.dtype)
        p = torch.sigmoid(s)
        f = (F.softplus(s) - yf * s).mean()
        g = ((p - yf) * z).mean()
        h = (p * (1 - p) * z * z).mean()
    return float(f), float(g), float(h)


def temperature_nll(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
    kind: str = "softmax",
) -> float:
    """Mean NLL of ``logits / temperature`` over the observed elements (the fit's objective).

    Args:
        logits: As in :func:`observed_elements`.
        targets: As in :func:`observed_elements`.
        temperature: ``T > 0``.
        mask: Optional observation mask.
        kind: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        The mean negative log-likelihood in nats (float64 arithmetic).

    Raises:
        ValueError: as :func:`observed_elements`, or a temperature that is not positive.
    """
    t = _check_temperature(temperature)
    z, y = observed_elements(logits, targets, mask, kind)
    return _nll_derivatives(z, y, 1.0 / t, kind)[0]


def fit_temperature(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "softmax",
    max_iter: int = 100,
    init: float = 1.0,
    bounds: tuple[float, float] = (T_MIN, T_MAX),
    tol: float = 1e-10,
) -> float:
    """Fit the temperature that minimises the mean NLL over the observed elements.

    See the module docstring for the method (safeguarded Newton on ``beta = 1 / T`` in a
    bracket, float64, deterministic) and for the range cap: perfectly separable data give the
    lower bound (``0.05`` by default), anti-informative logits the upper bound (``20``).

    Args:
        logits: softmax ``(N, C, *spatial)`` or ``(M, C)``; sigmoid any shape, e.g. ``(N, K)``.
        targets: softmax ``(N, *spatial)`` / ``(N, 1, *spatial)`` / ``(M,)`` class indices;
            sigmoid the shape of ``logits`` with 0/1 and ``-1`` = missing (excluded).
        mask: Optional observation mask (nonzero = observed); masked elements are excluded
            whatever their logits and targets.
        kind: ``"softmax"`` or ``"sigmoid"``.
        max_iter: Maximum number of Newton / bisection steps.
        init: Starting temperature (clipped to ``bounds``); returned when the NLL does not
            depend on ``T``.
        bounds: ``(T_min, T_max)``, ``0 < T_min < T_max``.
        tol: Stop when a step changes ``beta`` by less than ``tol * beta`` (or the bracket is
            that narrow).

    Returns:
        The fitted temperature ``T`` in ``bounds``.

    Raises:
        ValueError: as :func:`observed_elements`, bad ``bounds``, ``init``, ``max_iter`` or
            ``tol``.
    """
    lo_t, hi_t = (float(b) for b in bounds)
    if not (0 < lo_t < hi_t and math.isfinite(hi_t)):
        raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf, got {bounds!r}")
    _check_temperature(init, "init")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    z, y = observed_elements(logits, targets, mask, kind)
    lo, hi = 1.0 / hi_t, 1.0 / lo_t  # bracket on beta
    g_lo = _nll_derivatives(z, y, lo, kind)[1]
    g_hi = _nll_derivatives(z, y, hi, kind)[1]
    if g_lo >= 0 and g_hi <= 0:  # g is non-decreasing, so g == 0: the NLL is flat in T
        return min(max(float(init), lo_t), hi_t)
    if g_lo >= 0:
        return hi_t  # minimum at the smallest beta: the upper temperature cap
    if g_hi <= 0:
        return lo_t  # still falling at the largest beta: separable, the lower cap
    beta = min(max(1.0 / float(init), lo), hi)
    for _ in range(max_iter):
        _, g, h = _nll_derivatives(z, y, beta, kind)
        if g == 0:
            break
        if g < 0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > 0 else math.nan
        if abs(step - beta) <= tol * beta:  # converged (False for NaN)
            beta = min(max(step, lo), hi)
            break
        beta = step if lo < step < hi else math.sqrt(lo * hi)  # Newton, else bisect log beta
        if hi - lo <= tol * lo:
            break
    return 1.0 / beta


def fit_temperature_subsampled(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "softmax",
    max_elements: int = 1_000_000,
    seed: int = 0,
    **fit_kwargs: float | int | tuple[float, float],
) -> float:
    """:func:`fit_temperature` on a deterministic subsample of the observed elements.

    Segmentation volumes give millions of voxels; the NLL's minimiser is a smooth average, so a
    uniform subsample of ``max_elements`` observed voxels (seeded, see
    :func:`observed_elements`) fits the same temperature to within sampling error at a fraction
    of the memory. With at most ``max_elements`` observed elements it equals the full fit.

    Args:
        logits: As in :func:`fit_temperature`.
        targets: As in :func:`fit_temperature`.
        mask: Optional observation mask.
        kind: ``"softmax"`` or ``"sigmoid"``.
        max_elements: Size of the subsample.
        seed: Seed of the subsample.
        **fit_kwargs: ``max_iter``, ``init``, ``bounds``, ``tol`` of :func:`fit_temperature`.

    Returns:
        The fitted temperature.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: as :func:`fit_temperature`.
    """
    unknown = set(fit_kwargs) - {"max_iter", "init", "bounds", "tol"}
    if unknown:
        raise TypeError(f"unknown keyword argument(s) {sorted(unknown)}; expected max_iter, "
                        "init, bounds or tol")
    z, y = observed_elements(logits, targets, mask, kind, max_elements=max_elements, seed=seed)
    return fit_temperature(z, y, kind=kind, **fit_kwargs)  # type: ignore[arg-type]


def ensemble_nll(member_logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                 kind: str = "softmax") -> float:
    """Mean NLL of an ensemble whose members share one temperature.

    The ensemble's probability is the mean of its members' tempered probabilities,
    ``p = (1 / K) sum_k softmax(z_k / T)`` (``sigmoid`` per element), the way prediction
    combines them; ``NLL = -mean log p_y`` over the observed elements.

    Args:
        member_logits: softmax ``(K, M, C)``, sigmoid ``(K, M)``: ``K`` members' logits of the
            same ``M`` observed elements (gathered with :func:`observed_elements`).
        targets: ``(M,)`` class indices (softmax) or 0/1 (sigmoid).
        temperature: ``T > 0``.
        kind: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        The mean NLL (nats).
    """
    _check_kind(kind)
    _check_temperature(temperature)
    z = member_logits.double() / temperature
    k = z.shape[0]
    if kind == "softmax":
        logp = torch.log_softmax(z, dim=-1).gather(
            -1, targets.long().view(1, -1, 1).expand(k, -1, 1))[..., 0]
    else:
        y = targets.double().view(1, -1)
        logp = -(F.softplus(-z) * y + F.softplus(z) * (1.0 - y))
    return float(-(torch.logsumexp(logp, dim=0) - math.log(k)).mean())


def fit_ensemble_temperature(
    member_logits: torch.Tensor,
    targets: torch.Tensor,
    kind: str = "softmax",
    bounds: tuple[float, float] = (T_MIN, T_MAX),
    grid: int = 64,
) -> float:
    """One temperature shared by an ensemble's members, fitted on their averaged prediction.

    Minimises :func:`ensemble_nll` over ``T`` in ``bounds``: tempering each member before the
    average (as prediction does) is not the same as tempering the average, and a temperature
    fitted on one member, or on the mean of the logits, does not minimise the ensemble's NLL.
    The NLL of a mixture is not convex in ``1 / T``, so the search is a log-spaced grid of
    ``grid`` temperatures followed by a bounded Brent refinement between the grid neighbours
    of the best point (deterministic). With ``K = 1`` it is :func:`fit_temperature`'s problem.

    Args:
        member_logits: softmax ``(K, M, C)``, sigmoid ``(K, M)``.
        targets: ``(M,)``.
        kind: ``"softmax"`` or ``"sigmoid"``.
        bounds: ``(T_min, T_max)``.
        grid: Grid points in ``log T``.

    Returns:
        The fitted temperature.
    """
    from scipy.optimize import minimize_scalar

    lo, hi = (math.log(float(b)) for b in bounds)
    logs = np.linspace(lo, hi, grid)
    nll = [ensemble_nll(member_logits, targets, math.exp(v), kind) for v in logs]
    best = int(np.argmin(nll))
    a, b = logs[max(best - 1, 0)], logs[min(best + 1, grid - 1)]
    res = minimize_scalar(lambda v: ensemble_nll(member_logits, targets, math.exp(v), kind),
                          bounds=(a, b), method="bounded", options={"xatol": 1e-8})
    v = float(res.x) if res.fun <= nll[best] else float(logs[best])
    return math.exp(v)
