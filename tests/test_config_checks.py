"""Config keys that the chosen settings never read (captioner/config.py's only_when fields): an error in
the file, a warning when an override leaves one of the file's keys unread. And every preset loads."""

import warnings
from pathlib import Path

import pytest
import yaml

from captioner.config import (
    CaptionerRunConfig,
    ConfigError,
    ConfigWarning,
    EncoderRunConfig,
    RetrievalRunConfig,
    SCSTRunConfig,
    load_config,
    read_yaml,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def run_config_class(path: Path):
    sections = read_yaml(path)  # with its base, if it names one
    if "contrastive" in sections:
        return RetrievalRunConfig
    if "scst" in sections:
        return SCSTRunConfig
    return EncoderRunConfig if "mae" in sections else CaptionerRunConfig


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads_without_an_unread_key(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConfigWarning either
        load_config(run_config_class(path), path)


@pytest.mark.parametrize("cls, data, key, choice", [
    (CaptionerRunConfig, {"train": {"schedule": "inverse-sqrt", "min_lr": 1e-6}}, "train.min_lr",
     "train.schedule=inverse-sqrt"),
    (EncoderRunConfig, {"train": {"schedule": "inverse-sqrt", "min_lr": 0.0}}, "train.min_lr",
     "train.schedule=inverse-sqrt"),
    (RetrievalRunConfig, {"contrastive": {"margin": 0.2}}, "contrastive.margin", "contrastive.loss=info_nce"),
    (CaptionerRunConfig, {"decoder_kind": "attention-lstm", "lstm": {"image_input": "first_input"}},
     "lstm.image_input", "decoder_kind=attention-lstm"),
    (CaptionerRunConfig, {"decoder_kind": "lstm", "lstm": {"attention_reg": 0.1}}, "lstm.attention_reg",
     "decoder_kind=lstm"),
    (CaptionerRunConfig, {"lstm": {"attention_dim": 64}}, "lstm.attention_dim", "decoder_kind=transformer"),
])
def test_a_key_the_files_own_choice_never_reads_is_an_error(tmp_path, cls, data, key, choice):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"run.yaml: {key} is set, but {choice} never reads it"):
        load_config(cls, path)


def test_the_same_key_with_the_choice_that_reads_it_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"schedule": "cosine", "min_lr": 1e-6},
                                    "decoder_kind": "lstm", "lstm": {"image_input": "first_input"}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(CaptionerRunConfig, path)
    assert cfg.train.min_lr == 1e-6 and cfg.lstm.image_input == "first_input"


def test_an_override_that_leaves_a_key_of_the_file_unread_warns(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"min_lr": 1e-6}}))  # cosine, the default: read
    with pytest.warns(ConfigWarning, match="train.min_lr is set, but train.schedule=inverse-sqrt never reads it"):
        cfg = load_config(CaptionerRunConfig, path, ["train.schedule=inverse-sqrt"])
    assert cfg.train.schedule == "inverse-sqrt"
    with pytest.warns(ConfigWarning, match="train.min_lr is set"):  # an override that sets an unread key
        load_config(CaptionerRunConfig, None, ["train.schedule=inverse-sqrt", "train.min_lr=0"])
