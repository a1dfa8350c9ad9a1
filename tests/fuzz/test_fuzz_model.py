"""Fuzzing what a model folder holds: the YAML config, plan.json and checkpoints (issue 10).

* YAML: the legacy fixture's ``config.yaml`` with keys set to any YAML value or deleted, hostile
  snippets (aliases, alias bombs, ``!!python`` tags, tabs, unclosed brackets), byte mutations;
  read by ``ExperimentConfig.load``.
* plan.json: the fixture's plan with keys set to any JSON value, deleted or added, byte mutations;
  read by ``ModelFolder.open`` on a folder holding it.
* checkpoint: the fixture's ``checkpoint_last.pt`` mutated as bytes, or one member of its zip
  (``data.pkl``, a tensor record ...) mutated and the archive rebuilt, or a ``torch.save`` of
  random structures; read by ``load_checkpoint``.

Property: only ``MedsegError`` escapes, in time and bounded memory.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from functools import cache
from pathlib import Path

import torch
import yaml
from fuzz_harness import fuzz_pair, mutated_bytes, random_bytes
from hypothesis import strategies as st
from test_fuzz_tables import JSON_VALUES, dump_json, mutated_json

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1" / "segmentation" / "model"


# ------------------------------------------------------------------------------------ YAML

YAML_SNIPPETS = [
    "a: &x [1, 2]\nb: *x\n",
    "x: &a [&b [&c [1, 1], *c], *b]\n" + "".join(f"y{i}: [*a, *a, *a]\n" for i in range(5)),
    "data: !!python/object/apply:os.system ['true']\n",
    "train: !!python/name:os.system\n",
    "model:\n\tname: unet\n",
    "data: {dataset: [unclosed\n",
    "? [complex, key]\n: 1\n",
    "\ufeffdata: {}\n",
    "--- \n--- \n",
    "train: {epochs: 1e400}\n",
    "train: {epochs: .nan}\n",
    "model: {options: {channels: [1000000000, 1000000000]}}\n",
    "data: " + "[" * 2000 + "]" * 2000 + "\n",
]


@cache
def config_seed() -> dict:
    return yaml.safe_load((FIXTURE / "config.yaml").read_text())


@st.composite
def yaml_case(draw):
    kind = draw(st.sampled_from(["keys", "keys", "snippet", "bytes", "random"]))
    if kind == "keys":
        return yaml.safe_dump(draw(mutated_json(config_seed())), allow_unicode=True).encode(
            "utf-8", "replace")
    text = (FIXTURE / "config.yaml").read_bytes()
    if kind == "snippet":
        snip = draw(st.sampled_from(YAML_SNIPPETS)).encode()
        return snip + text if draw(st.booleans()) else text + b"\n" + snip
    if kind == "bytes":
        return draw(mutated_bytes(text, hot=len(text)))
    return draw(random_bytes())


def write_yaml_case(d: Path, raw: bytes) -> Path:
    p = d / "config.yaml"
    p.write_bytes(raw)
    return p


test_yaml_config, test_yaml_config_long = fuzz_pair(yaml_case(), "yaml", write_yaml_case)


# ------------------------------------------------------------------------------- plan.json


@cache
def plan_seed() -> dict:
    return json.loads((FIXTURE / "plan.json").read_text())


@st.composite
def plan_case(draw):
    kind = draw(st.sampled_from(["keys", "keys", "members", "bytes", "random"]))
    if kind == "keys":
        return dump_json(draw(mutated_json(plan_seed())))
    if kind == "members":
        plan = copy.deepcopy(plan_seed())
        plan["members"] = draw(st.lists(st.sampled_from(["member_0", "..", "/", "../model",
                                                         ".", "a\x00b", "x" * 300])
                                        | JSON_VALUES, max_size=3))
        return dump_json(plan)
    raw = (FIXTURE / "plan.json").read_bytes()
    if kind == "bytes":
        return draw(mutated_bytes(raw, hot=len(raw)))
    return draw(random_bytes())


def write_plan_case(d: Path, raw: bytes) -> Path:
    folder = d / "model"
    folder.mkdir()
    (folder / "plan.json").write_bytes(raw)
    (folder / "config.yaml").write_bytes((FIXTURE / "config.yaml").read_bytes())
    return folder


test_plan_json, test_plan_json_long = fuzz_pair(plan_case(), "plan", write_plan_case)


# ------------------------------------------------------------------------------ checkpoint


@cache
def checkpoint_seed() -> bytes:
    return (FIXTURE / "checkpoint_last.pt").read_bytes()


def rezip(raw: bytes, member: str, data: bytes) -> bytes:
    """The zip archive ``raw`` with one member's content replaced (names and order kept)."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            zf.writestr(info.filename, data if info.filename == member else src.read(info))
    return out.getvalue()


TENSORS = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.uint8]))
PAYLOADS = st.recursive(
    st.none() | st.integers() | st.floats() | st.text(max_size=10) | TENSORS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["model", "optimizer", "epoch", "plan", "x"]), inner, max_size=4),
    max_leaves=8)


@st.composite
def checkpoint_case(draw):
    raw = checkpoint_seed()
    kind = draw(st.sampled_from(["member", "member", "bytes", "save", "random"]))
    if kind == "member":
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        name = draw(st.sampled_from(names))
        body = zipfile.ZipFile(io.BytesIO(raw)).read(name)
        return rezip(raw, name, draw(mutated_bytes(body, hot=max(len(body), 1))))
    if kind == "bytes":
        return draw(mutated_bytes(raw, hot=len(raw)))
    if kind == "save":
        b = io.BytesIO()
        torch.save(draw(PAYLOADS), b)
        return b.getvalue()
    return draw(random_bytes())


def write_checkpoint_case(d: Path, raw: bytes) -> Path:
    p = d / "checkpoint_last.pt"
    p.write_bytes(raw)
    return p


test_checkpoint, test_checkpoint_long = fuzz_pair(checkpoint_case(), "checkpoint",
                                                  write_checkpoint_case)
