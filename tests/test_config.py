"""captioner/config.py: typed YAML configs, overrides, and errors that name the file and key."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from captioner.config import (
    CaptionerRunConfig,
    ConfigError,
    EncoderRunConfig,
    RetrievalRunConfig,
    SCSTRunConfig,
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
    assert cfg.train.epochs == 5 and cfg.model.width == 64 and cfg.model.depth == 4  # defaults fill the rest
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


def test_a_config_extends_its_base_relative_to_its_own_file(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "root.yaml").write_text("run_dir: runs/a\ntrain:\n  lr: 0.5\n  epochs: 4\nsplits: [train]\n")
    (tmp_path / "presets" / "middle.yaml").write_text("base: root.yaml\ntrain:\n  epochs: 8\n")
    (tmp_path / "leaf.yaml").write_text("base: presets/middle.yaml\nsplits: [train, unlabeled]\n")
    cfg = load_config(EncoderRunConfig, tmp_path / "leaf.yaml", ["train.seed=3"])
    assert (cfg.run_dir, cfg.train.lr, cfg.train.epochs, cfg.train.seed) == ("runs/a", 0.5, 8, 3)
    assert cfg.splits == ["train", "unlabeled"]  # a list replaces the base's, it is not appended to
    assert cfg.train.beta2 == 0.95  # neither file names it: the built-in default


@pytest.mark.parametrize("text, message", [
    ("base: missing.yaml\n", "missing.yaml: cannot read"),
    ("base: [a.yaml]\n", "base: expected the path of another config file"),
    ("base: self.yaml\n", "a cycle of bases"),
])
def test_bad_bases_name_the_file(tmp_path, text, message):
    (tmp_path / "self.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(EncoderRunConfig, tmp_path / "self.yaml")


def test_the_shapes8k_presets_change_only_what_they_say():
    configs = Path(__file__).parents[1] / "configs"

    def changed(cls, name, base):
        new, old = config_to_dict(load_config(cls, configs / name)), config_to_dict(load_config(cls, configs / base))
        return {(section, key) for section in new for key in (new[section] if isinstance(new[section], dict) else [None])
                if (new[section][key] if key else new[section]) != (old[section][key] if key else old[section])}

    data_and_epochs = {("run_dir", None), ("data", "processed_dir"), ("train", "epochs")}
    assert changed(EncoderRunConfig, "shapes8k_encoder.yaml", "shapes_encoder.yaml") == data_and_epochs
    assert changed(CaptionerRunConfig, "shapes8k_captioner.yaml", "shapes_captioner.yaml") == data_and_epochs | {
        ("encoder_config", None)}
    assert load_config(CaptionerRunConfig, configs / "shapes8k_captioner.yaml").train.epochs == 14
    assert load_config(EncoderRunConfig, configs / "shapes8k_encoder.yaml").train.epochs == 12


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("cls, preset", [(EncoderRunConfig, "shapes_encoder.yaml"),
                                         (CaptionerRunConfig, "shapes_captioner.yaml"),
                                         (SCSTRunConfig, "shapes_scst.yaml"),
                                         (RetrievalRunConfig, "shapes_retrieval.yaml")])
def test_a_runs_built_in_defaults_are_its_shapes_preset(cls, preset):
    defaults, file = config_to_dict(cls()), config_to_dict(load_config(cls, CONFIGS / preset))
    if cls is CaptionerRunConfig:
        # the one deliberate difference: the built-in selection is the field's (CIDEr-D on 1000 val images),
        # the shapes preset's is the truth score on all 500
        assert (defaults["eval"]["select_by"], defaults["eval"]["select_images"]) == ("CIDEr-D", 1000)
        assert (file["eval"]["select_by"], file["eval"]["select_images"]) == ("captions_true", 500)
        defaults["eval"].update(select_by="captions_true", select_images=500)
    assert defaults == file


def test_a_key_a_file_leaves_out_keeps_its_runs_default_not_its_sections(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("train:\n  epochs: 3\n")
    train = load_config(CaptionerRunConfig, path).train
    preset = load_config(CaptionerRunConfig, CONFIGS / "shapes_captioner.yaml").train
    assert train.epochs == 3
    assert (train.lr, train.warmup_epochs, train.beta2) == (preset.lr, preset.warmup_epochs, preset.beta2) == (
        2e-3, 0.5, 0.98)
    encoder = load_config(EncoderRunConfig, path)
    assert (encoder.train.epochs, encoder.train.precision, encoder.model.patch_overlap) == (3, "fp32", 4)
