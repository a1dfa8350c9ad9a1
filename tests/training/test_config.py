"""Configuration as data: YAML round trip, overrides, unknown keys rejected."""

from __future__ import annotations

import pytest
import yaml

from medseg.errors import ConfigError
from medseg.training.config import ExperimentConfig


def test_yaml_round_trip(tmp_path):
    cfg = ExperimentConfig().override(
        ["train.epochs=7", "model.options.channels=[8,16,32]", "augment.rotation_deg=15",
         "preprocess.target_spacing=[1.5,2]"])
    path = tmp_path / "c.yaml"
    cfg.save(path)
    back = ExperimentConfig.load(path)
    assert back == cfg
    assert back.train.epochs == 7
    assert back.model.options == {"channels": [8, 16, 32]}
    assert back.preprocess.target_spacing == [1.5, 2.0]
    assert back.augment.scale_range == (0.7, 1.4)  # tuples survive YAML as lists -> tuples
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 7


def test_partial_yaml_takes_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n")
    cfg = ExperimentConfig.load(p)
    assert cfg.train.epochs == 3 and cfg.train.batch_size == ExperimentConfig().train.batch_size


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  epoch: 3\n", "epoch"),           # misspelt key
        ("trian:\n  epochs: 3\n", "trian"),          # misspelt section
        ("train:\n  epochs: three\n", "integer"),    # wrong type
        ("train:\n  amp: 2\n", "true/false"),
        ("- 1\n- 2\n", "mapping"),
        ("train: [\n", "YAML"),
        ("augment:\n  p_flip: 2\n", "p_flip"),       # validated by AugmentConfig
        ("train:\n  epochs: 0\n", "epochs"),
        ("train:\n  fg_oversample: 1.5\n", "fg_oversample"),
        ("inference:\n  overlap: 1.0\n", "overlap"),
    ],
)
def test_bad_yaml_names_the_problem(tmp_path, text, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        ExperimentConfig.load(p)


def test_override_errors():
    cfg = ExperimentConfig()
    with pytest.raises(ConfigError, match="valid keys"):
        cfg.override(["train.epoch=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        cfg.override(["train.epochs"])
    # free-form model options accept new keys; the model constructor validates them later
    assert cfg.override(["model.options.dropout=0.1"]).model.options == {"dropout": 0.1}


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, message", [
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
    ("train: {epochs: !!python/object/apply:os.system [echo hi]}\n", "not a valid medseg"),
    ("train: [unclosed\n", "not a valid medseg"),
])
def test_config_file_refuses_aliases_tags_and_syntax_errors(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        ExperimentConfig.load(p)
    assert e.value.path == p


def test_alias_bomb_is_refused_at_once(tmp_path):
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        ExperimentConfig.load(p)
    assert time.perf_counter() - t0 < 1.0  # (9^10 nodes if expanded)


def test_set_with_a_python_tag_or_bad_yaml_and_a_binary_config(tmp_path):
    cfg = ExperimentConfig()
    with pytest.raises(ConfigError, match="--set train.epochs"):
        cfg.override(["train.epochs=!!python/name:os.system"])
    with pytest.raises(ConfigError, match="not a valid medseg"):
        cfg.override(["train.patch_size=[1, 2"])
    b = tmp_path / "c.yaml"
    b.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a text file"):
        ExperimentConfig.load(b)
