"""Published weights in the handwritten models (captioner/models/pretrained.py).

The reference tests compare against torchvision's ResNets, timm's VisionTransformer and
facebookresearch/mae's MAE (on timm's blocks), each with random weights that the reference itself saves
in its own format (tests/reference_outputs.py). torchvision and timm need another torch than the
project's, so they run in a subprocess under a reference Python: ``$CAPTIONER_REFERENCE_PYTHON``, else the
repository's ``.venv-ref`` (which .ci/run creates), else this Python if it can import both.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.models.mae import MaskedAutoencoder
from captioner.models.pretrained import (
    mae_from_official,
    read_state_dict,
    resample_position_table,
    resnet_from_torchvision,
    timm_vit_config,
    torchvision_resnet_config,
    vit_from_timm,
)
from captioner.models.vit import position_table
from captioner.training.checkpoints import CheckpointError
from tiny_checkpoints import official_mae_state, torchvision_resnet_state

ROOT = Path(__file__).resolve().parent.parent


def reference_python() -> str | None:
    """A Python that imports torchvision and timm, or None."""
    candidates = [os.environ.get("CAPTIONER_REFERENCE_PYTHON"), str(ROOT / ".venv-ref" / "bin" / "python"),
                  sys.executable]
    for python in filter(None, candidates):
        if Path(python).exists() and subprocess.run([python, "-c", "import torchvision, timm"],
                                                    capture_output=True).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The folder of reference weights and outputs (see tests/reference_outputs.py)."""
    python = reference_python()
    if python is None:
        pytest.skip("no reference Python with torchvision and timm (set CAPTIONER_REFERENCE_PYTHON, or create "
                    ".venv-ref as .ci/run does)")
    out = tmp_path_factory.mktemp("reference")
    run = subprocess.run([python, str(ROOT / "tests" / "reference_outputs.py"), str(out)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101", "resnet152"])
def test_resnet_equals_torchvision(reference, name):
    expected = torch.load(reference / f"{name}_out.pt")
    encoder = resnet_from_torchvision(read_state_dict(reference / f"{name}.pth"), image_size=64).eval()
    with torch.no_grad():
        features = encoder(expected["images"])  # (B, H*W, C)
    grid = expected["features"].flatten(2).transpose(1, 2)  # torchvision's (B, C, H, W) read row-major
    torch.testing.assert_close(features, grid, rtol=1e-4, atol=1e-4)


def test_resnet_architecture_read_off_the_weights(reference):
    config = torchvision_resnet_config(read_state_dict(reference / "resnet101.pth"))
    assert (config.block, config.blocks, config.widths, config.stem_kernel) == ("bottleneck", [3, 4, 23, 3],
                                                                                  [64, 128, 256, 512], 7)


def test_timm_vit_equals_timm(reference):
    expected = torch.load(reference / "timm_vit_out.pt")
    encoder = vit_from_timm(read_state_dict(reference / "timm_vit.pth")).eval()
    assert encoder.config.position_embedding == "learned" and encoder.config.class_token
    with torch.no_grad():
        tokens = encoder.forward_tokens(expected["images"])  # (B, 1 + L, C)
        patches = encoder(expected["images"])  # (B, L, C)
    torch.testing.assert_close(tokens, expected["tokens"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(patches, expected["tokens"][:, 1:])


def test_timm_vit_at_another_size_equals_maes_interpolation(reference):
    expected = torch.load(reference / "timm_vit_48_out.pt")
    encoder = vit_from_timm(read_state_dict(reference / "timm_vit.pth"), image_size=48).eval()
    with torch.no_grad():
        tokens = encoder.forward_tokens(expected["images"])
    torch.testing.assert_close(tokens, expected["tokens"], rtol=1e-4, atol=1e-4)


def test_official_mae_equals_mae(reference):
    """Encoder and decoder of an official-format MAE checkpoint: the latent (class token first) and the
    pixel predictions of MAE's own forward, for the same masking noise."""
    expected = torch.load(reference / "mae_out.pt")
    state = read_state_dict(reference / "mae.pth")
    model = mae_from_official(state).eval()
    assert model.encoder.config.position_embedding == "sincos"  # MAE's fixed table was recognised
    with torch.no_grad():
        latent, _, ids_restore = model.forward_encoder(expected["images"], noise=expected["noise"])
        pred = model.decoder(latent, ids_restore)
    torch.testing.assert_close(latent, expected["latent"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred, expected["pred"], rtol=1e-4, atol=1e-4)
    encoder = vit_from_timm(state).eval()  # the encoder alone, the decoder keys left out
    with torch.no_grad():
        torch.testing.assert_close(encoder(expected["images"]), model.encoder(expected["images"]))


# ---- without the reference: formats, errors, interpolation -------------------------------------------

def test_mae_checkpoint_format_is_unwrapped_and_the_architecture_read(tmp_path):
    torch.save({"model": official_mae_state()}, tmp_path / "mae.pth")
    state = read_state_dict(tmp_path / "mae.pth")
    vit = timm_vit_config(state)
    assert (vit.image_size, vit.patch_size, vit.width, vit.depth, vit.heads, vit.norm_eps) == (32, 8, 192, 1, 3, 1e-6)
    model = mae_from_official(state)
    assert isinstance(model, MaskedAutoencoder) and model.decoder.transformer.layers[0].attn.n_heads == 16
    torch.testing.assert_close(model.encoder.transformer.layers[0].attn.k_proj.weight,
                               state["blocks.0.attn.qkv.weight"][192:384])  # q, k, v in that order


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"blocks.0.extra.weight": torch.zeros(1)}), "'blocks.0.extra.weight' is not a key"),
    (lambda s: s.pop("blocks.0.mlp.fc2.bias"), "no weights for transformer.layers.0.ff.fc2.bias"),
    (lambda s: s.update({"norm.weight": torch.zeros(65)}), r"'norm.weight' has shape \(65,\), but 'transformer.norm.weight' needs \(192,\)"),
])
def test_a_key_or_shape_that_does_not_fit_is_named(change, message):
    state = official_mae_state(decoder=False)
    change(state)
    with pytest.raises(CheckpointError, match=message):
        vit_from_timm(state, source="w.pth")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"layer1.0.bnX.weight": torch.zeros(4)}), "'layer1.0.bnX.weight' is not a key of a torchvision"),
    (lambda s: s.pop("layer2.0.downsample.1.running_var"), "no weights for stages.1.0.shortcut.1.running_var"),
    (lambda s: s.update({"bn1.bias": torch.zeros(3)}), r"'bn1.bias' has shape \(3,\), but 'stem.1.bias' needs"),
])
def test_a_resnet_key_or_shape_that_does_not_fit_is_named(change, message):
    state = torchvision_resnet_state()
    assert torchvision_resnet_config(state).blocks == [2, 1]
    resnet_from_torchvision(dict(state), 32)  # the unchanged file loads
    change(state)
    with pytest.raises(CheckpointError, match=message):
        resnet_from_torchvision(state, 32)


def test_learned_table_resampling_keeps_the_class_row_and_a_constant_grid():
    """A constant grid stays constant under bicubic resampling; the class row is copied, not resampled."""
    table = torch.cat([torch.full((1, 1, 8), 7.0), torch.full((1, 16, 8), 2.0)], dim=1)  # 4x4 grid
    out = resample_position_table(table, 1, 6)
    assert out.shape == (1, 37, 8)
    torch.testing.assert_close(out[:, 0], torch.full((1, 8), 7.0))
    torch.testing.assert_close(out[:, 1:], torch.full((1, 36, 8), 2.0))


def test_sincos_table_is_recomputed_for_another_size():
    encoder = vit_from_timm(official_mae_state(decoder=False), image_size=48)
    assert encoder.config.position_embedding == "sincos" and encoder.pos_embed.shape == (1, 37, 192)
    torch.testing.assert_close(encoder.pos_embed, position_table(6, 192, True))
