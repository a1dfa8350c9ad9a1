"""Variance head (heteroscedastic output) for every registered network, one mechanism."""

from __future__ import annotations

import copy

import pytest
import torch

from medseg.networks import (
    add_variance_head,
    create_model,
    list_models,
    model_signature,
    model_spatial_dims,
    model_task,
)
from medseg.networks.heads import MeanAndLogVar
from medseg.networks.unet import UNet

SIZES = {2: (16, 16), 3: (8, 8, 8)}
SMALL = {  # narrow widths keep the walk fast; the architectures are the registered ones
    "unet": {"channels": (4, 8, 16)},
    "unetpp": {"channels": (4, 8, 16)},
    "deeplabv3plus": {"channels": (4, 8, 8, 8), "decoder_channels": 8, "low_level_channels": 4},
    "transunet": {"channels": (4, 8, 16), "embed_dim": 16, "num_heads": 2, "num_layers": 1},
    "resnet_classifier": {"channels": (4, 8), "blocks_per_stage": (1, 1)},
    "vit_classifier": {"dim": 16, "depth": 1, "heads": 2, "patch_size": 4, "image_size": 16},
}
# Every registered segmentation and classification network (instance models return sets).
CASES = [
    (n, d)
    for n in list_models("segmentation") + list_models("classification")
    for d in model_spatial_dims(n)
]


def _build(name: str, dims: int) -> torch.nn.Module:
    cfg = {"in_channels": 1, "num_classes": 3, **SMALL.get(name, {})}
    if "spatial_dims" in model_signature(name).parameters:
        cfg["spatial_dims"] = dims
    # Batch norm so that train mode works at batch 2 and eval is a fixed affine map.
    if "norm" in model_signature(name).parameters:
        cfg["norm"] = "batch"
    return create_model(name, **cfg)


def _expected_shape(name: str, dims: int) -> tuple[int, ...]:
    if model_task(name) == "classification":
        return (2, 3)
    return (2, 3, *SIZES[dims])


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_every_model_gets_a_variance_head(name: str, dims: int) -> None:
    torch.manual_seed(0)
    plain = _build(name, dims).eval()
    net = add_variance_head(copy.deepcopy(plain)).eval()
    x = torch.randn(2, 1, *SIZES[dims])
    with torch.no_grad():
        logits, log_var = net(x)
        ref = plain(x)
    assert logits.shape == log_var.shape == _expected_shape(name, dims)
    # The logits are the unwrapped network's; log_var starts at 0 (variance 1).
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(log_var, torch.zeros_like(log_var))

    net.train()
    logits, log_var = net(x)
    logits_l = logits if isinstance(logits, list) else [logits]
    log_var_l = log_var if isinstance(log_var, list) else [log_var]
    assert len(logits_l) == len(log_var_l) >= 1
    assert all(a.shape == b.shape for a, b in zip(logits_l, log_var_l, strict=True))
    # Gaussian NLL on the logits: 0.5 * (exp(-s) (z - y)^2 + s); every variance parameter and
    # every network parameter feeding the logits gets a gradient.
    loss = sum(
        (0.5 * (torch.exp(-s) * (z - torch.randn_like(z)) ** 2 + s)).mean()
        for z, s in zip(logits_l, log_var_l, strict=True)
    )
    loss.backward()
    var_params = net.variance_parameters()
    assert var_params
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in var_params)


def test_log_var_learns_the_noise_variance() -> None:
    """On constant features the log variance is one number ``s`` per channel; the Gaussian
    NLL ``mean(0.5 (exp(-s) r^2 + s))`` over fixed residuals ``r`` is minimised at
    ``s* = log(mean(r^2))`` (closed form), which gradient descent on the zero-initialised
    variance layer reaches."""
    mv = MeanAndLogVar(torch.nn.Conv2d(4, 2, kernel_size=1))
    feats = torch.ones(1, 4, 16, 16)
    r = 2.0 * torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.log((r**2).mean(dim=(0, 2, 3), keepdim=True))  # one s* per channel
    opt = torch.optim.SGD(mv.log_var.parameters(), lr=0.1)
    for _ in range(200):
        s = mv(feats)[:, 2:]
        loss = (0.5 * (torch.exp(-s) * r**2 + s)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = mv(feats)[:, 2:]
    torch.testing.assert_close(s, target.expand_as(s), rtol=0, atol=1e-3)
    assert (target - torch.log(torch.tensor(4.0))).abs().max() < 0.2  # sigma^2 = 4


def test_unet_deep_supervision_lists_and_channel_split() -> None:
    net = add_variance_head(UNet(2, 1, 3, channels=(4, 8, 16), deep_supervision=True))
    logits, log_var = net.train()(torch.randn(1, 1, 16, 16))
    assert [t.shape[1:] for t in logits] == [(3, 16, 16), (3, 8, 8)]
    assert [t.shape for t in log_var] == [t.shape for t in logits]
    inner = net.model(torch.randn(1, 1, 16, 16))
    assert inner[0].shape[1] == 6  # the wrapped network now emits [logits, log_var]


def test_model_without_head_attrs_is_rejected() -> None:
    with pytest.raises(TypeError, match="head_attrs"):
        add_variance_head(torch.nn.Conv2d(1, 2, 1))
    with pytest.raises(TypeError, match="convolution or linear"):
        MeanAndLogVar(torch.nn.Identity())
