"""Every registered network, 2D and 3D: the ONNX file run by onnxruntime equals eager PyTorch.

Two input sizes per network: one file with dynamic spatial axes run at both where the network
allows it, else one file per size (``fixed_spatial_reason``). Batch 1 and 2 each (the batch axis
is always dynamic). A variance-head network exports both outputs by name.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from export_helpers import SIZES, write_model_folder

from medseg.export import (
    export_model,
    fixed_spatial_reason,
    load_for_export,
    onnx_session,
    run_onnx,
)
from medseg.networks import list_models, model_spatial_dims

pytest.importorskip("onnxruntime")

TOL = 1e-4
#: The fixed-width ResNets (no width option; ``resnet_classifier`` is the same code at tiny
#: widths and runs by default) cost 1-3 s each, the slowest cases here: slow.
SLOW = {("resnet18_cls", 2), ("resnet18_cls", 3), ("resnet10_cls", 2), ("resnet10_cls", 3)}
CASES = [pytest.param(name, d, marks=[pytest.mark.slow] if (name, d) in SLOW else [],
                      id=f"{name}-{d}d")
         for name in list_models() for d in model_spatial_dims(name)]


def _max_diff(session, net: torch.nn.Module, x: torch.Tensor) -> float:
    got = run_onnx(session, {"image": x.numpy()})
    with torch.no_grad():
        ref = net(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    return max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_onnxruntime_equals_eager(name: str, dims: int, tmp_path) -> None:
    first, second = SIZES[dims]
    folder = write_model_folder(tmp_path / "m1", name, dims, first)
    _, net = load_for_export(folder)
    dynamic = fixed_spatial_reason(net, "onnx") is None
    out = tmp_path / "m1.onnx"
    result = export_model(folder, "onnx", out, dynamic=dynamic)
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    info = json.loads(result.sidecar.read_text())
    assert info["dynamic"]["spatial"] is dynamic and info["dynamic"]["batch"] is True
    files = {tuple(first): (out, net)}
    if dynamic:
        files[tuple(second)] = (out, net)
    else:  # one file per size; a fixed positional grid learnt at that size
        folder2 = write_model_folder(tmp_path / "m2", name, dims, second)
        out2 = tmp_path / "m2.onnx"
        export_model(folder2, "onnx", out2)
        files[tuple(second)] = (out2, load_for_export(folder2)[1])
    g = torch.Generator().manual_seed(0)
    for size, (f, n) in files.items():
        f = onnx_session(f)
        for batch in (1, 2):
            x = torch.randn(batch, 1, *size, generator=g)
            diff = _max_diff(f, n, x)
            _record(name, dims, size, batch, dynamic, diff)
            assert diff <= TOL, (size, batch)


def _record(name: str, dims: int, size: tuple[int, ...], batch: int, dynamic: bool,
            diff: float) -> None:
    """With ``MEDSEG_ONNX_TABLE=FILE``: one Markdown row per comparison (the issue's table)."""
    table = os.environ.get("MEDSEG_ONNX_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as f:
            f.write(f"| {name} | {dims}D | {'x'.join(map(str, size))} | {batch} | "
                    f"{'dynamic' if dynamic else 'fixed'} | {diff:.2e} |\n")


def test_variance_head_exports_both_outputs_by_name(tmp_path) -> None:
    folder = write_model_folder(tmp_path / "m", "unet", 2, [32, 32], variance_head=True)
    result = export_model(folder, "onnx", tmp_path / "m.onnx", dynamic=True)
    assert result.info["output_names"] == ["logits", "log_var"]
    assert [o["name"] for o in result.info["outputs"]] == ["logits", "log_var"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "log_var"]
    _, net = load_for_export(folder)
    x = torch.randn(2, 1, 48, 40)
    with torch.no_grad():
        assert net(x)[1].abs().max() > 0.01
    assert _max_diff(result.path, net, x) <= TOL
