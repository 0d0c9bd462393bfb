"""captioner/cli.py: the run arguments, the config from a file or a checkpoint, clean exits."""

import argparse

import pytest

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.config import ConfigError, EncoderRunConfig, config_to_dict
from captioner.training.checkpoints import CheckpointError, save_checkpoint
from captioner.training.log import NonFiniteLossError


def parse(argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser, default_config="configs/x.yaml")
    return parser.parse_args(argv)


def test_resolve_run_config_from_file_or_checkpoint(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg, payload = resolve_run_config(parse(["--config", str(path), "--set", "train.lr=0.5"]), EncoderRunConfig, "mae")
    assert payload is None and cfg.train.epochs == 3 and cfg.train.lr == 0.5
    ckpt = save_checkpoint(tmp_path / "checkpoint3.pt", {"kind": "mae", "config": config_to_dict(cfg)})
    resumed, payload = resolve_run_config(parse(["-c", str(ckpt), "--set", "train.epochs=5"]), EncoderRunConfig, "mae")
    assert payload["kind"] == "mae"
    assert resumed.train.epochs == 5 and resumed.train.lr == 0.5  # stored config + new overrides
    with pytest.raises(CheckpointError, match="'mae' checkpoint, but a 'captioner'"):
        resolve_run_config(parse(["-c", str(ckpt)]), EncoderRunConfig, "captioner")
    assert parse([]).config == "configs/x.yaml" and parse([]).device == "auto"


def test_run_script_turns_expected_errors_into_exit_status_2(capsys):
    def failing(argv):
        raise ConfigError("bad.yaml: unknown key 'x'")

    with pytest.raises(SystemExit) as info:
        run_script(failing, [])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: bad.yaml: unknown key 'x'"
    with pytest.raises(SystemExit) as info:
        run_script(lambda argv: (_ for _ in ()).throw(NonFiniteLossError(7)), [])
    assert info.value.code == 2 and "step 7" in capsys.readouterr().err


def test_a_checkpoint_without_a_stored_config_is_a_checkpoint_error(tmp_path):
    ckpt = save_checkpoint(tmp_path / "checkpoint1.pt", {"kind": "mae", "model": {}})
    with pytest.raises(CheckpointError, match="checkpoint1.pt"):
        resolve_run_config(parse(["-c", str(ckpt)]), EncoderRunConfig, "mae")
