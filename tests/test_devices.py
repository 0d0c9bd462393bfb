"""captioner/training/devices.py: the device, the training precision, autocast and the gradient scaler."""

from pathlib import Path

import pytest
import torch

from captioner.config import CaptionerRunConfig, load_config
from captioner.training import devices
from captioner.training.devices import (
    autocast,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
    setup_device,
)

from toy_run import CPU


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_training_takes_bf16_only_on_a_cpu_with_bf16_matrix_units(monkeypatch, tmp_path, amx):
    monkeypatch.setattr(devices, "cpu_has_bf16_matrix_units", lambda: amx)
    assert resolve_precision("auto", CPU, training=True) == ("bf16" if amx else "fp32")
    assert resolve_precision("auto", CPU) == "fp32"
    train = load_config(CaptionerRunConfig, Path(__file__).parents[1] / "configs" / "shapes_captioner.yaml").train
    assert train.precision == "auto"
    assert setup_device("cpu", train.precision)[1] == ("bf16" if amx else "fp32")


def test_the_amx_probe_answers_without_failing():
    assert devices.cpu_has_bf16_matrix_units() in (True, False)


def test_devices_and_precision():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_precision("auto", CPU) == "fp32"  # inference on a CPU: fp32 on every CPU
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU, training=True) == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", CPU)
    a = torch.randn(4, 4)
    with autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32
    assert not make_grad_scaler(CPU, "fp32").is_enabled()
    assert not make_grad_scaler(CPU, "bf16").is_enabled()
