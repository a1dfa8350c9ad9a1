"""Mixed precision, channels-last and compilation: numerics, resolution, wiring, configs.

Tolerance of bf16 autocast against fp32 (stated once): bf16 keeps 8 significant bits (unit
round-off 2^-8 = 0.39%), and rounding errors of a few dozen layers add up roughly like a random
walk, so the relative L2 error ``||y_bf16 - y_fp32|| / ||y_fp32||`` of a network's output is
required to be below ``BF16_RTOL = 5%`` (measured with these seeds and sizes: 0.15% for
resnet18_cls 2D up to 3.6% for the U-Net 2D, whose randomly initialised logits are small).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

from medseg.errors import ConfigError, InputError
from medseg.inference import predict_probs, sliding_window_inference
from medseg.inference.precision import (
    autocast,
    describe,
    maybe_compile,
    model_to_channels_last,
    to_channels_last,
    use_channels_last,
)
from medseg.losses import DiceCELoss
from medseg.networks import create_model, list_models, model_signature, model_spatial_dims
from medseg.training import device as device_mod
from medseg.training.config import ExperimentConfig
from medseg.training.device import cpu_has_native_bf16, resolve_precision

BF16_RTOL = 0.05
SIZES = {2: (64, 64), 3: (32, 32, 32)}  # the registry walk's sizes (tests/networks)
#: U-Net runs in the quick suite; the other networks' default widths take seconds each on two
#: cores, so they run with ``-m slow``.
CASES = [pytest.param(name, d, marks=() if name == "unet" else pytest.mark.slow)
         for name in list_models() for d in model_spatial_dims(name)]


def _build(name: str, spatial_dims: int) -> torch.nn.Module:
    cfg = {"in_channels": 1, "num_classes": 3}
    if "spatial_dims" in model_signature(name).parameters:
        cfg["spatial_dims"] = spatial_dims
    return create_model(name, **cfg)


def _first(out: object) -> torch.Tensor:
    while isinstance(out, list | tuple):
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize(("name", "spatial_dims"), CASES)
def test_bf16_autocast_matches_fp32_for_every_network(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    model = _build(name, spatial_dims).eval()
    x = torch.randn(1, 1, *SIZES[spatial_dims])
    with torch.inference_mode():
        ref = _first(model(x))
        with autocast("bf16", "cpu"):
            low = _first(model(x))
    assert ref.dtype == torch.float32
    assert low.dtype == torch.bfloat16, f"{name}: autocast did not reach the network"
    err = float((low.float() - ref).norm() / ref.norm())
    assert err < BF16_RTOL, f"{name} {spatial_dims}D: relative error {err:.4f}"


def test_fp32_is_no_autocast_and_bad_precision_refused() -> None:
    conv = torch.nn.Conv2d(1, 2, 3)
    with autocast("fp32", "cpu"):
        assert conv(torch.randn(1, 1, 8, 8)).dtype == torch.float32
    with pytest.raises(ValueError, match="resolve 'auto'"), autocast("auto", "cpu"):
        pass


def test_losses_stay_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    net = create_model("unet", spatial_dims=2, in_channels=1, num_classes=3,
                       channels=[8, 16])
    x = torch.randn(2, 1, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    loss_fn = DiceCELoss()
    with autocast("bf16", "cpu"):
        logits = net(x)
        assert logits.dtype == torch.bfloat16
        inside = loss_fn(logits.float(), target)  # what every task's loss does
    outside = loss_fn(logits.detach().float(), target)
    assert inside.dtype == torch.float32
    # the loss's own arithmetic (softmax, sums) ran in fp32 inside the autocast region
    torch.testing.assert_close(inside.detach(), outside, rtol=1e-6, atol=1e-7)
    inside.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in net.parameters())


def test_accumulator_stays_fp32_with_a_bf16_predictor() -> None:
    img = torch.rand(1, 1, 40, 24)

    def bf16(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1 - x], 1).to(torch.bfloat16)

    out = sliding_window_inference(img, bf16, (16, 16), overlap=0.5)
    ref = sliding_window_inference(img, lambda x: bf16(x).float(), (16, 16), overlap=0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # stitched in fp32 either way
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    probs = predict_probs(net, img, 16, precision="bf16")
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 24), rtol=0, atol=1e-6)


def test_auto_never_picks_bf16_on_a_cpu_without_native_support() -> None:
    cpu = torch.device("cpu")
    with mock.patch.object(device_mod, "cpu_has_native_bf16", return_value=False):
        assert resolve_precision("auto", cpu) == "fp32"
    with mock.patch.object(device_mod, "cpu_has_native_bf16", return_value=True):
        assert resolve_precision("auto", cpu) == "bf16"
    cuda = torch.device("cuda")
    with mock.patch.object(torch.cuda, "is_bf16_supported", return_value=False):
        assert resolve_precision("auto", cuda) == "fp16"
    with mock.patch.object(torch.cuda, "is_bf16_supported", return_value=True):
        assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, cpu) == p
    with pytest.raises(InputError, match="unknown precision 'half'"):
        resolve_precision("half", cpu)


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu vme avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx512f amx_tile amx_bf16", True),
    ("fpu sse4_2 avx2 avx512f avx512_vnni", False),
])
def test_cpu_bf16_detection_reads_the_cpu_flags(flags: str, expected: bool) -> None:
    text = f"processor\t: 0\nflags\t\t: {flags}\n"
    with mock.patch("builtins.open", mock.mock_open(read_data=text)):
        assert cpu_has_native_bf16() is expected


def test_channels_last_settings_and_layout() -> None:
    # auto: on for prediction on a CPU, off for training and on a GPU (see the docstring)
    assert use_channels_last("auto", 3, "bf16") is False
    assert use_channels_last("auto", 2, "fp32", training=True) is False
    assert use_channels_last("auto", 3, "bf16", training=False) is True
    assert use_channels_last("auto", 2, "fp32", training=False) is True
    assert use_channels_last("auto", 1, "fp32", training=False) is False
    assert use_channels_last("auto", 3, "bf16", training=False, device_type="cuda") is False
    assert use_channels_last(True, 2, "fp32") is True
    assert use_channels_last(True, 1, "fp32") is False
    with pytest.raises(ValueError):
        use_channels_last("sometimes", 2, "fp32")
    x = to_channels_last(torch.randn(1, 2, 4, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    torch.manual_seed(0)
    net = create_model("unet", spatial_dims=3, in_channels=1, num_classes=2, channels=[4, 8])
    img = torch.randn(1, 1, 24, 24, 24)
    ref = predict_probs(net, img, 16, precision="fp32")
    out = predict_probs(net, img, 16, precision="fp32", channels_last=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    w = next(p for p in net.parameters() if p.ndim == 5)
    assert w.is_contiguous()  # predict_probs put the weights back
    model_to_channels_last(net, 3)
    assert w.is_contiguous(memory_format=torch.channels_last_3d)
    assert describe("bf16", True, False) == "bf16 autocast, channels-last"


def test_compile_falls_back_to_eager_with_one_warning() -> None:
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 8, 8)

    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("InductorError: no working C compiler\nmore detail")

    with mock.patch.object(torch, "compile", return_value=broken):
        wrapped = maybe_compile(net, True, "the test network")
        with pytest.warns(RuntimeWarning, match="torch.compile failed for the test network"):
            y = wrapped(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y2 = wrapped(x)  # eager from now on, no second warning
    torch.testing.assert_close(y, net(x))
    torch.testing.assert_close(y2, net(x))
    assert maybe_compile(net, False) is net
    with mock.patch.object(torch, "compile", side_effect=RuntimeError("unsupported")), \
            pytest.warns(RuntimeWarning, match="unavailable"):
        assert maybe_compile(net, True) is net


# ----------------------------------------------------------------------------- configs
def test_precision_configs_round_trip(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_dict({
        "train": {"precision": "bf16", "channels_last": True, "compile": True},
        "inference": {"precision": "fp32", "channels_last": "auto", "skip_background": True},
    })
    cfg.save(tmp_path / "c.yaml")
    back = ExperimentConfig.load(tmp_path / "c.yaml")
    assert back == cfg
    assert (back.train.precision, back.train.channels_last, back.train.compile) == \
        ("bf16", True, True)
    assert (back.inference.precision, back.inference.skip_background) == ("fp32", True)
    assert ExperimentConfig().train.precision == "auto"
    assert ExperimentConfig().inference.skip_background is False
    over = ExperimentConfig().override(["inference.precision=bf16", "train.channels_last=false"])
    assert over.inference.precision == "bf16" and over.train.channels_last is False


def test_legacy_amp_key_still_loads() -> None:
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1" / "segmentation" \
        / "model" / "config.yaml"
    cfg = ExperimentConfig.load(legacy)
    assert cfg.train.amp is True and cfg.train.precision == "auto"
    off = ExperimentConfig.from_dict({"train": {"amp": False}})
    assert off.train.precision == "fp32"  # the deprecated switch maps to fp32
    kept = ExperimentConfig.from_dict({"train": {"amp": False, "precision": "bf16"}})
    assert kept.train.precision == "bf16"


@pytest.mark.parametrize(("section", "value", "match"), [
    ("train", {"precision": "int8"}, "train.precision must be auto, fp32, bf16 or fp16"),
    ("inference", {"precision": "half"}, "inference.precision must be"),
    ("train", {"channels_last": "yes"}, "train.channels_last must be true, false or auto"),
    ("inference", {"compile": "maybe"}, "expected true/false"),
])
def test_bad_precision_settings(section: str, value: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        ExperimentConfig.from_dict({section: value})
    assert "\n" not in str(e.value).strip()


# ----------------------------------------------------------- train in one, predict in other
def _train(tmp_path: Path, train_precision: str, inference_precision: str) -> Path:
    from medseg.physics import PhantomSpec, write_phantom_dataset
    from medseg.training.engine import train

    data = tmp_path / "data"
    if not data.exists():
        write_phantom_dataset(data, PhantomSpec(shape=(32, 32), modality="mr",
                                                lesion_fraction=0.02), n_train=4, n_test=1,
                              seed=0)
    cfg = ExperimentConfig()
    cfg.data.dataset = str(data)
    cfg.output_dir = str(tmp_path / f"model_{train_precision}")
    cfg.model.options = {"channels": [8, 16]}
    cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.batch_size = 1, 2, 2
    cfg.train.calibrate, cfg.train.prefetch = False, False
    cfg.train.precision, cfg.inference.precision = train_precision, inference_precision
    cfg.train.channels_last = train_precision == "bf16"  # the engine's channels-last path too
    logs: list[str] = []
    train(cfg, log=logs.append)
    said = describe(train_precision, train_precision == "bf16", False)
    assert any(f"precision: {said} (train.precision={train_precision}" in m for m in logs), logs
    return Path(cfg.output_dir)


@pytest.mark.parametrize(("trained", "predicts"), [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_model_trained_in_one_precision_predicts_in_the_other(
        tmp_path: Path, trained: str, predicts: str) -> None:
    from medseg.io import read_image
    from medseg.model_folder import ModelFolder
    from medseg.tasks.segmentation import SegmentationModel

    folder = _train(tmp_path, trained, predicts)
    plan = ModelFolder.open(folder).plan
    assert plan["train_precision"] == trained
    assert plan["inference"]["precision"] == predicts
    model = SegmentationModel.load(folder, device="cpu")
    assert model.speed()["precision"] == predicts
    image, meta = read_image(next((tmp_path / "data" / "imagesTs").iterdir()))
    got = model.predict(image, meta).probs
    x = model.network_input(image, meta)[None]
    for precision in ("fp32", "bf16"):
        direct = predict_probs(model.model, x, tuple(plan["patch_size"]), precision=precision,
                               channels_last=model.speed()["channels_last"],
                               output_device="cpu")[0]
        if precision == predicts:
            torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)
        else:
            assert not torch.equal(got, direct)  # the other precision differs a little ...
            torch.testing.assert_close(got, direct, rtol=0, atol=0.05)  # ... not much
    model.precision = trained  # ``medseg predict --precision``
    assert model.speed()["precision"] == trained
    # a plan written before these entries existed predicts as before: fp32, contiguous, eager
    model.precision = None
    for key in ("precision", "channels_last", "compile", "skip_background"):
        del model.info.entries["inference"][key]
    assert model.speed() == {"precision": "fp32", "channels_last": False, "compile": False}

