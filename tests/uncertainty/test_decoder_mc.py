"""Decoder-only MC Dropout (SPEC U2): encode once, sample the decoder T times.

Checked: the samples equal full MC Dropout's (same seed) when the encoder has no dropout, for
every registered segmentation network, batched or not; normalisation layers stay in eval mode
(BatchNorm running statistics untouched; with p = 0 every sample is the deterministic output);
the encoder runs once per input against T times for full MC; encoder dropout is refused unless
allowed; seeding, restored modes and the variance head.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medseg.networks import add_variance_head, create_model, list_models, model_spatial_dims
from medseg.uncertainty import mc_dropout_predict, predict_with_uncertainty
from medseg.uncertainty.sampling import mc_dropout_decoder_predict

SMALL = {
    "unet": {"channels": (4, 8, 16)},
    "unetpp": {"channels": (4, 8, 16)},
    "deeplabv3plus": {"channels": (4, 8, 16, 16), "decoder_channels": 8,
                      "low_level_channels": 4},
    "transunet": {"channels": (4, 8, 16), "embed_dim": 16, "num_heads": 2, "num_layers": 1},
}
SIZES = {2: (30, 37), 3: (13, 11, 14)}
CASES = [(name, d) for name in list_models("segmentation") for d in model_spatial_dims(name)]


def _net(name: str = "unet", spatial_dims: int = 2, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    cfg = {"in_channels": 1, "num_classes": 3, "dropout": 0.3, "dropout_where": "decoder",
           **SMALL[name], **kw}
    return create_model(name, spatial_dims=spatial_dims, **cfg)


def _x(spatial_dims: int = 2, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *SIZES[spatial_dims], generator=g)


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_decoder_only_equals_full_mc_without_encoder_dropout(name: str, spatial_dims: int) -> None:
    net = _net(name, spatial_dims)
    x = _x(spatial_dims)
    full = mc_dropout_predict(net, x, n_samples=4, generator_seed=7)
    one_by_one = mc_dropout_decoder_predict(net, x, 4, generator_seed=7, batch_samples=False)
    batched = mc_dropout_decoder_predict(net, x, 4, generator_seed=7, batch_samples=True)
    groups = mc_dropout_decoder_predict(net, x, 4, generator_seed=7, batch_samples=3)  # 3 + 1
    assert full.shape == batched.shape == groups.shape == (4, 2, 3, *x.shape[2:])
    assert torch.equal(one_by_one, full)  # same masks, same encoder features: exact
    torch.testing.assert_close(batched, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(groups, full, rtol=0, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])  # the masks differ between samples


def test_cli_samplers_mc_and_mc_decoder_draw_the_same_masks() -> None:
    """``medseg predict --uncertainty mc`` and ``mc_decoder`` at one seed give one set of
    samples when the encoder has no dropout (the seed + t stream rule of both)."""
    from medseg.uncertainty.samplers import decoder_group, sample_probs

    for d in (2, 3):
        net = _net("unet", d).eval()
        x = _x(d)
        mc, _ = sample_probs([net], x, "mc", n_samples=5, seed=11)
        dec, _ = sample_probs([net], x, "mc_decoder", n_samples=5, seed=11)
        torch.testing.assert_close(dec, mc, rtol=0, atol=1e-6)
        torch.testing.assert_close(mc, mc_dropout_predict(net, x, 5, generator_seed=11),
                                   rtol=0, atol=0)
    # the decoder batch is bounded: 4 maps of the first level's width per sample
    net = _net("unet", 3, channels=(16, 32))
    big = torch.zeros(1, 1, 64, 64, 64)
    assert decoder_group(net, big, 10) == 512 * 2**20 // (4 * 64**3 * 16 * 4)  # 8
    assert decoder_group(net, big[..., :16], 10) == 10


def test_unet_bottleneck_and_pruned_unetpp_are_sampled_too() -> None:
    x = _x()
    bottleneck = _net("unet", dropout_where="bottleneck")
    torch.testing.assert_close(mc_dropout_decoder_predict(bottleneck, x, 3),
                               mc_dropout_predict(bottleneck, x, 3), rtol=0, atol=1e-6)
    pruned = _net("unetpp", prune_depth=1)
    torch.testing.assert_close(mc_dropout_decoder_predict(pruned, x, 3),
                               mc_dropout_predict(pruned, x, 3), rtol=0, atol=1e-6)


def test_encoder_runs_once_against_t_times_for_full_mc() -> None:
    """Timing-free cost check: forward hooks count encoder and decoder calls."""
    net = _net("unet")
    calls = {"encoder": [], "head": []}
    net.encoder[0].register_forward_hook(lambda m, i, o: calls["encoder"].append(i[0].shape[0]))
    net.head.register_forward_hook(lambda m, i, o: calls["head"].append(i[0].shape[0]))
    x, t = _x(batch=2), 6
    mc_dropout_decoder_predict(net, x, t)
    assert calls == {"encoder": [2], "head": [2 * t]}  # 1 encoder pass, 1 batched decoder call
    calls = {"encoder": [], "head": []}
    mc_dropout_decoder_predict(net, x, t, batch_samples=False)
    assert calls == {"encoder": [2], "head": [2] * t}
    calls = {"encoder": [], "head": []}
    mc_dropout_predict(net, x, t)
    assert calls == {"encoder": [2] * t, "head": [2] * t}
    # TransUNet: the Transformer (the expensive part of its encoder) runs once as well.
    tnet = _net("transunet")
    blocks: list[int] = []
    tnet.blocks[0].register_forward_hook(lambda m, i, o: blocks.append(1))
    mc_dropout_decoder_predict(tnet, x, t)
    assert len(blocks) == 1


def test_batchnorm_stays_in_eval_and_p0_gives_the_deterministic_output() -> None:
    net = _net("unet", norm="batch")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    with torch.no_grad():
        for i, bn in enumerate(bns):  # non-default statistics, so using them is visible
            bn.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(i))
            bn.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(i))
    before = copy.deepcopy(net.state_dict())
    net.train()
    x = _x(batch=3)
    p = mc_dropout_decoder_predict(net, x, 4)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert all(m.training for m in net.modules())  # modes restored
    assert not torch.allclose(p[0], p[1])
    for m in net.dropout_layers():
        m.p = 0.0
    net.eval()
    with torch.no_grad():
        ref = torch.softmax(net(x), dim=1)
    one_by_one = mc_dropout_decoder_predict(net, x, 4, batch_samples=False)
    assert torch.equal(one_by_one, ref.expand(4, *ref.shape))
    torch.testing.assert_close(mc_dropout_decoder_predict(net, x, 4),
                               ref.expand(4, *ref.shape), rtol=0, atol=1e-6)


def test_seeding_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    net = _net("unet")
    x = _x()
    state = torch.random.get_rng_state()
    p = mc_dropout_decoder_predict(net, x, 4, generator_seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(p, mc_dropout_decoder_predict(net, x, 4, generator_seed=5))
    # Sample t uses seed generator_seed + t, whatever the number of samples.
    assert torch.equal(p[1:], mc_dropout_decoder_predict(net, x, 3, generator_seed=6))
    assert not torch.allclose(p, mc_dropout_decoder_predict(net, x, 4, generator_seed=50))
    torch.testing.assert_close(p.sum(2), torch.ones(4, 2, *SIZES[2]))
    s = torch.sigmoid(mc_dropout_decoder_predict(net, x, 2, activation=None))
    torch.testing.assert_close(s, mc_dropout_decoder_predict(net, x, 2, activation="sigmoid"))


def test_encoder_dropout_is_refused_unless_allowed() -> None:
    x = _x()
    net = _net("unet", dropout_where="all")
    with pytest.raises(ValueError, match=r"encoder \(encoder\.0\.1.*dropout_where='decoder'"):
        mc_dropout_decoder_predict(net, x, 2)
    with pytest.raises(ValueError, match="encoder"):
        mc_dropout_decoder_predict(_net("transunet", dropout_where="all"), x, 2)
    allowed = mc_dropout_decoder_predict(net, x, 3, allow_encoder_dropout=True)
    # Allowed: the encoder runs without dropout, i.e. as if its dropout had p = 0.
    quiet = copy.deepcopy(net)
    for stage in quiet.encoder[:-1]:
        stage[-1].p = 0.0
    torch.testing.assert_close(allowed, mc_dropout_predict(quiet, x, 3), rtol=0, atol=1e-6)
    assert all(m.p == 0.3 for m in net.dropout_layers())


def test_bad_models_and_arguments() -> None:
    x = _x()
    with pytest.raises(ValueError, match="no dropout layer in its decoder"):
        mc_dropout_decoder_predict(_net("unet", dropout=0.0), x, 2)
    with pytest.raises(ValueError, match="encode/decode"):
        mc_dropout_decoder_predict(nn.Sequential(nn.Conv2d(1, 3, 1), nn.Dropout2d(0.5)), x, 2)
    with pytest.raises(ValueError, match="n_samples"):
        mc_dropout_decoder_predict(_net(), x, 0)
    with pytest.raises(ValueError, match="activation"):
        mc_dropout_decoder_predict(_net(), x, 2, activation="relu")


def test_variance_head_and_predict_with_uncertainty() -> None:
    x = _x()
    vnet = add_variance_head(_net("unet"))
    p = mc_dropout_decoder_predict(vnet, x, 3)
    torch.testing.assert_close(p, mc_dropout_predict(vnet, x, 3), rtol=0, atol=1e-6)
    maps = predict_with_uncertainty(vnet, x, n_samples=3, variance_head=True, decoder_only=True)
    full = predict_with_uncertainty(vnet, x, n_samples=3, variance_head=True)
    assert set(maps) == set(full)
    for k in maps:
        torch.testing.assert_close(maps[k], full[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_head_dropout_samples_only_the_head(spatial_dims: int) -> None:
    """``dropout_where="head"``: decoder-only MC runs the encoder and the decoder's trunk once
    and the head T times, and its samples are full MC's (same seed)."""
    from medseg.uncertainty.samplers import sample_probs

    net = _net("unet", spatial_dims, dropout_where="head").eval()
    assert isinstance(net.head_dropout, nn.modules.dropout._DropoutNd)
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.decoder.modules())
    x = _x(spatial_dims)
    calls = {"encoder": 0, "decoder": 0, "head": 0}
    hooks = [net.encoder[0].register_forward_hook(lambda *a: calls.__setitem__(
                 "encoder", calls["encoder"] + 1)),
             net.decoder[-1].register_forward_hook(lambda *a: calls.__setitem__(
                 "decoder", calls["decoder"] + 1)),
             net.head.register_forward_hook(lambda *a: calls.__setitem__(
                 "head", calls["head"] + 1))]
    full = mc_dropout_predict(net, x, n_samples=6, generator_seed=5)
    assert calls == {"encoder": 6, "decoder": 6, "head": 6}
    for k in calls:
        calls[k] = 0
    one = mc_dropout_decoder_predict(net, x, 6, generator_seed=5, batch_samples=False)
    assert calls == {"encoder": 1, "decoder": 1, "head": 6}
    for k in calls:
        calls[k] = 0
    batched = mc_dropout_decoder_predict(net, x, 6, generator_seed=5)
    assert calls == {"encoder": 1, "decoder": 1, "head": 1}  # 6 samples in one head call
    for h in hooks:
        h.remove()
    assert torch.equal(one, full)
    torch.testing.assert_close(batched, full, rtol=0, atol=1e-6)
    assert not torch.allclose(full[0], full[1])
    # the CLI's sampler: the same samples
    cli, _ = sample_probs([net], x, "mc_decoder", n_samples=6, seed=5)
    torch.testing.assert_close(cli, full, rtol=0, atol=1e-6)
    # forward is unchanged by the split: eval output = deterministic decode
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.decode_head(net.decode_trunk(net.encode(x)),
                                                           net.encode(x)), rtol=0, atol=0)
