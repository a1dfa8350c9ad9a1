"""Model registry: every network is reachable by name (timm-style).

    >>> from medseg.networks import create_model, list_models
    >>> net = create_model("unet", spatial_dims=2, in_channels=1, num_classes=3)

Unknown keyword arguments raise :class:`TypeError` (they are passed straight to the
constructor, which has no ``**kwargs``), so a misspelt option never silently falls back to a
default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}
_DIMS: dict[str, tuple[int, ...]] = {}


def register_model(
    name: str, task: str = "segmentation", spatial_dims: tuple[int, ...] = (2, 3)
) -> Callable:
    """Decorator registering a model class or factory under ``name``.

    Args:
        name: Registry key (lower case).
        task: ``"segmentation"``, ``"classification"`` or ``"instance"``; used by tests that
            walk the registry and by the CLI to check a config.
        spatial_dims: The spatial dimensionalities the model supports, e.g. ``(2,)`` for a
            2D-only model; the registry test builds and runs the model for each of them.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        _TASKS[key] = task
        _DIMS[key] = tuple(spatial_dims)
        return fn

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally only those of one task."""
    return sorted(k for k in _REGISTRY if task is None or _TASKS[k] == task)


def model_task(name: str) -> str:
    """The task a registered model solves."""
    return _TASKS[_key(name)]


def model_spatial_dims(name: str) -> tuple[int, ...]:
    """The spatial dimensionalities (2 and/or 3) a registered model supports."""
    return _DIMS[_key(name)]


def _key(name: str) -> str:
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return key


def model_signature(name: str) -> inspect.Signature:
    """The constructor signature of a registered model (its configurable fields)."""
    return inspect.signature(_REGISTRY[_key(name)])


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model.

    Raises:
        KeyError: ``name`` is not registered.
        TypeError: ``cfg`` has a keyword the model does not take.
    """
    fn = _REGISTRY[_key(name)]
    sig = inspect.signature(fn)
    unknown = [k for k in cfg if k not in sig.parameters]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        raise TypeError(
            f"{name}: unknown option(s) {unknown}; accepted: {sorted(sig.parameters)}"
        )
    return fn(**cfg)
