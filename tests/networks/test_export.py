"""Every registered segmentation network exports with ``torch.export`` and matches eager."""

from __future__ import annotations

import pytest
import torch

from medseg.networks import create_model, list_models, model_signature, model_spatial_dims

SIZES = {2: (32, 32), 3: (16, 16, 16)}
SMALL = {  # smallest widths that keep export fast; the architecture is the registered one
    "unet": {"channels": (4, 8, 16)},
    "unetpp": {"channels": (4, 8, 16)},
    "deeplabv3plus": {"channels": (4, 8, 16, 16), "decoder_channels": 8,
                      "low_level_channels": 4},
    "transunet": {"channels": (4, 8, 16), "embed_dim": 16, "num_heads": 2, "num_layers": 1},
}
CASES = [
    (name, d, kw)
    for name in list_models("segmentation")
    for d in model_spatial_dims(name)
    for kw in ([{}, {"deep_supervision": False}] if name == "unetpp" else [{}])
]


@pytest.mark.parametrize(("name", "dims", "extra"), CASES)
def test_export_matches_eager(name: str, dims: int, extra: dict) -> None:
    torch.manual_seed(0)
    cfg = {"in_channels": 1, "num_classes": 2, **SMALL.get(name, {}), **extra}
    if "spatial_dims" in model_signature(name).parameters:
        cfg["spatial_dims"] = dims
    model = create_model(name, **cfg).eval()
    # An odd size exercises the padding / cropping path as well.
    x = torch.randn(1, 1, *(s - 3 for s in SIZES[dims]))
    with torch.no_grad():
        eager = model(x)
        program = torch.export.export(model, (x,), strict=False)
        exported = program.module()(x)
        other = torch.randn_like(x)
        torch.testing.assert_close(program.module()(other), model(other), rtol=0, atol=1e-5)
    assert exported.shape == eager.shape == (1, 2, *x.shape[2:])
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)
