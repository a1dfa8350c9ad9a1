"""UNet++ (A6): nested nodes, deep-supervision heads, implicit ensemble, pruning.

Timing helper (not run by pytest; one training step at batch 8 of 1x256x256, default channels)::

    import time, torch
    from medseg.networks.unetpp import UNetPlusPlus
    torch.set_num_threads(2)
    net = UNetPlusPlus(2, 1, 2).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(8, 1, 256, 256)
    for _ in range(2):
        t = time.perf_counter(); opt.zero_grad()
        sum(o.square().mean() for o in net(x)).backward(); opt.step()
        print(time.perf_counter() - t)
"""

from __future__ import annotations

import pytest
import torch

from medseg.networks import create_model, list_models, model_spatial_dims
from medseg.networks.unetpp import UNetPlusPlus

CH = (4, 8, 16, 16)  # L = 3 heads


def _net(**kw: object) -> UNetPlusPlus:
    torch.manual_seed(0)
    cfg: dict = {"spatial_dims": 2, "in_channels": 1, "num_classes": 3, "channels": CH}
    cfg.update(kw)
    return UNetPlusPlus(**cfg).double()


def _count_nodes(net: UNetPlusPlus) -> tuple[list[str], list]:
    called: list[str] = []
    handles = []
    for name, mod in [*((f"enc{i}", m) for i, m in enumerate(net.encoder)),
                      *net.nodes.items()]:
        handles.append(mod.register_forward_hook(
            lambda _m, _i, _o, n=name: called.append(n)))
    return called, handles


def test_registered() -> None:
    assert "unetpp" in list_models()
    assert model_spatial_dims("unetpp") == (2, 3)
    assert isinstance(create_model("unetpp", channels=CH), UNetPlusPlus)


def test_node_count_and_head_shapes() -> None:
    net = _net()
    assert net.num_heads == 3 and net.depth == 3 and net.size_divisor == (8, 8)
    # Nodes X^{i,j}, j >= 1, i + j <= 3: 3 + 2 + 1 = 6; plus 4 encoder nodes.
    assert sorted(net.nodes.keys()) == sorted(
        ["x0_1", "x1_1", "x2_1", "x0_2", "x1_2", "x0_3"])
    assert len(net.node_order()) == 10 and len(net.node_order(2)) == 6
    # Node X^{i,j} takes (j + 1) * channels[i] input channels.
    assert net.nodes["x0_3"][0][0].conv.in_channels == 4 * CH[0]
    assert net.nodes["x1_2"][0][0].conv.in_channels == 3 * CH[1]
    called, _ = _count_nodes(net)
    outs = net.train()(torch.randn(2, 1, 16, 24, dtype=torch.float64))
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == (2, 3, 16, 24) for o in outs)
    assert len(called) == 10 and len(set(called)) == 10  # every node computed exactly once


def test_eval_is_mean_of_training_heads() -> None:
    net = _net()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        heads = net.train()(x)
        mean = net.eval()(x)
    assert mean.shape == (2, 3, 16, 16)
    torch.testing.assert_close(mean, sum(heads) / 3, rtol=0, atol=1e-12)
    # The heads differ, so the mean is not trivially one of them.
    assert (heads[0] - heads[2]).abs().max() > 1e-3


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pruned_equals_head_and_computes_fewer_nodes(depth: int) -> None:
    net = _net()
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        full = net.train()(x)
        net.eval().prune_depth = depth
        called, handles = _count_nodes(net)
        pruned = net(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(pruned, full[depth - 1], rtol=0, atol=1e-6)
    assert len(called) == (depth + 1) * (depth + 2) // 2
    expect = {f"enc{i}" for i in range(depth + 1)} | {
        f"x{i}_{j}" for i in range(depth + 1) for j in range(1, depth + 1) if i + j <= depth}
    assert set(called) == expect
    net.prune_depth = None
    with torch.no_grad():
        torch.testing.assert_close(net(x), sum(full) / 3, rtol=0, atol=1e-12)


def test_prune_depth_validation() -> None:
    with pytest.raises(ValueError, match="prune_depth"):
        _net(prune_depth=4)
    with pytest.raises(ValueError, match="deep_supervision"):
        _net(deep_supervision=False, prune_depth=1)
    with pytest.raises(ValueError, match="channels"):
        UNetPlusPlus(channels=(8,))
    with pytest.raises(ValueError, match="expects"):
        _net()(torch.zeros(1, 2, 8, 8, dtype=torch.float64))


def test_odd_input_sizes_are_padded_and_cropped() -> None:
    net = _net()
    x = torch.randn(1, 1, 13, 21, dtype=torch.float64)
    with torch.no_grad():
        outs = net.train()(x)
        assert all(o.shape == (1, 3, 13, 21) for o in outs)
        # Same as padding by hand to 16 x 24 and cropping.
        padded = torch.nn.functional.pad(x, (0, 3, 0, 3))
        ref = net(padded)
    for o, r in zip(outs, ref, strict=True):
        torch.testing.assert_close(o, r[..., :13, :21], rtol=0, atol=1e-12)


def test_3d_and_no_deep_supervision() -> None:
    net = _net(spatial_dims=3, channels=(2, 4, 8), strides=((1, 2, 2), 2))
    assert net.size_divisor == (2, 4, 4)
    x = torch.randn(1, 1, 5, 9, 7, dtype=torch.float64)
    outs = net.train()(x)
    assert len(outs) == 2 and all(o.shape == (1, 3, 5, 9, 7) for o in outs)
    single = _net(spatial_dims=3, channels=(2, 4, 8), deep_supervision=False)
    assert single.num_heads == 1
    assert single.train()(x).shape == (1, 3, 5, 9, 7)


def test_every_parameter_gets_gradient() -> None:
    net = _net(dropout=0.2)
    assert len(net.dropout_layers()) == 6
    outs = net.train()(torch.randn(2, 1, 16, 16, dtype=torch.float64))
    torch.manual_seed(1)
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in net.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_deep_supervision_weights_are_equal_over_heads():
    """Training averages the heads' losses (every head is a full segmentation, none auxiliary)."""
    from medseg.losses.modules import DeepSupervisionLoss, DiceCELoss
    from medseg.training.config import ExperimentConfig

    torch.manual_seed(0)
    net = UNetPlusPlus(2, 1, 3, channels=(4, 8, 16, 32)).train()
    assert net.deep_supervision_weights == [1.0, 1.0, 1.0]
    outs = net(torch.randn(2, 1, 16, 16))
    target = torch.randint(0, 3, (2, 16, 16))
    base = DiceCELoss()
    ds = DeepSupervisionLoss(base, net.deep_supervision_weights)(outs, target)
    torch.testing.assert_close(ds, sum(base(o, target) for o in outs) / 3)
    with pytest.raises(Exception, match="deep_supervision_weights"):
        ExperimentConfig.from_dict({"loss": {"deep_supervision_weights": [-1.0, 1.0]}})
