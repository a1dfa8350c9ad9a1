"""Walk the whole model registry (timm-style): every registered network, tiny inputs.

Contract checked for every model: it is built by ``create_model(name, spatial_dims=d,
in_channels=1, num_classes=2)`` for each ``d`` in ``model_spatial_dims(name)``; a forward and
backward pass on a 64x64 (2D) or 32^3 (3D) input gives finite outputs of the task's shape,
every parameter receives a non-zero gradient, eval mode is deterministic, an unknown option is a
``TypeError`` and an unknown name a ``KeyError``.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from medseg.networks import (
    create_model,
    list_models,
    model_signature,
    model_spatial_dims,
    model_task,
)

NUM_CLASSES = 2
SIZES = {2: (64, 64), 3: (32, 32, 32)}

CASES = [(name, d) for name in list_models() for d in model_spatial_dims(name)]


def _build(name: str, spatial_dims: int) -> torch.nn.Module:
    cfg = {"in_channels": 1, "num_classes": NUM_CLASSES}
    if "spatial_dims" in model_signature(name).parameters:
        cfg["spatial_dims"] = spatial_dims
    return create_model(name, **cfg)


def _tensors(out: object) -> list[torch.Tensor]:
    """Every tensor in a (possibly nested) model output."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for o in out for t in _tensors(o)]
    return []


def test_registry_is_not_empty() -> None:
    assert "unet" in list_models()
    assert model_task("unet") == "segmentation"
    assert model_spatial_dims("unet") == (2, 3)


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_forward_backward(name: str, spatial_dims: int) -> None:
    model = _build(name, spatial_dims).train()
    x = torch.randn(1, 1, *SIZES[spatial_dims])
    out = model(x)
    tensors = _tensors(out)
    assert tensors, f"{name}: forward returned no tensor"
    for t in tensors:
        assert torch.isfinite(t).all(), f"{name}: non-finite output"
    first = tensors[0]
    task = model_task(name)
    if task == "segmentation":
        assert first.shape == (1, NUM_CLASSES, *SIZES[spatial_dims])
    elif task == "classification":
        assert first.shape == (1, NUM_CLASSES)
    # Random weights on every output so no gradient can cancel by symmetry.
    loss = sum((t.float() * torch.randn_like(t, dtype=torch.float32)).sum() for t in tensors)
    loss.backward()
    missing = [
        n for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not missing, f"{name}: parameters without gradient: {missing}"
    nan = [n for n, p in model.named_parameters() if p.grad is not None
           and not torch.isfinite(p.grad).all()]
    assert not nan, f"{name}: non-finite gradients in {nan}"


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_eval_is_deterministic(name: str, spatial_dims: int) -> None:
    model = _build(name, spatial_dims).eval()
    x = torch.randn(1, 1, *SIZES[spatial_dims])
    with torch.no_grad():
        a, b = _tensors(model(x)), _tensors(model(x))
    assert len(a) == len(b) > 0
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta, tb)


@pytest.mark.parametrize("name", list_models())
def test_unknown_option_is_type_error(name: str) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        create_model(name, no_such_option=1)


def test_unknown_name_is_key_error() -> None:
    with pytest.raises(KeyError, match="unet"):  # the message lists what is registered
        create_model("no_such_model")


def test_signatures_take_the_common_fields() -> None:
    for name in list_models():
        params = model_signature(name).parameters
        assert "in_channels" in params and "num_classes" in params, name
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), (
            f"{name} takes **kwargs, so a misspelt option would be swallowed"
        )
