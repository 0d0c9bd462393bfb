"""captioner/config.py: typed YAML configs, overrides, and errors that name the file and key."""

from dataclasses import dataclass, field

import pytest

from captioner.config import (
    ConfigError,
    EncoderRunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_dir: runs/x\ntrain:\n  lr: 3e-4\n  epochs: 3\nmodel:\n  width: 64\n")
    cfg = load_config(EncoderRunConfig, path, ["train.epochs=5", "mae.norm_pix_loss=false", "splits=[train, unlabeled]"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML reads "3e-4" as a string
    assert cfg.train.epochs == 5 and cfg.model.width == 64 and cfg.model.depth == 6  # defaults fill the rest
    assert cfg.mae.norm_pix_loss is False and cfg.splits == ["train", "unlabeled"]
    assert config_from_dict(EncoderRunConfig, config_to_dict(cfg)) == cfg  # what checkpoints store round-trips


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 1.0\n", "unknown key 'lrr'"),
    ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer"),
    ("train:\n  compile: 1\n", "train.compile: expected true or false"),
    ("train:\n  compile_mode: fast\n", "train.compile_mode: expected one of default, reduce-overhead, max-autotune"),
    ("model: 3\n", "model: expected a mapping"),
    ("splits: train\n", "splits: expected a list"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(EncoderRunConfig, path)
    assert "bad.yaml" in str(info.value)


def test_bad_overrides_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(EncoderRunConfig, None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(EncoderRunConfig, None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(EncoderRunConfig, tmp_path / "absent.yaml")


def test_apply_overrides_does_not_mutate_its_input():
    data = {"train": {"lr": 1.0}}
    out = apply_overrides(data, ["train.lr=2.0", "model.width=8"])
    assert out == {"train": {"lr": 2.0}, "model": {"width": 8}}
    assert data == {"train": {"lr": 1.0}}


def test_optional_and_int_to_float_fields():
    @dataclass
    class Example:
        maybe: int | None = None
        ratio: float = 0.5
        names: list[str] = field(default_factory=list)

    assert config_from_dict(Example, {"maybe": None, "ratio": 1}).ratio == 1.0
    assert config_from_dict(Example, {"maybe": 3}).maybe == 3
    with pytest.raises(ConfigError, match="names\\[1\\]: expected a string"):
        config_from_dict(Example, {"names": ["a", 2]})
    with pytest.raises(ConfigError, match="ratio: expected a number"):
        config_from_dict(Example, {"ratio": True})
