"""The handwritten ResNet encoder (captioner/models/resnet.py) and its unfreezing groups."""

import pytest
import torch
import torch.nn.functional as F

from captioner.config import CaptionDecoderConfig, CaptionerRunConfig, ResNetConfig, load_config
from captioner.models.captioner import build_captioner
from captioner.models.resnet import BasicBlock, BottleneckBlock, ResNetEncoder
from captioner.training.unfreeze import unfreeze_groups, unfreeze_schedule


@pytest.mark.parametrize("config, grid, width, stride", [
    (ResNetConfig(image_size=64), 8, 128, 8),  # the shapes ladder's: three basic stages, stem stride 2
    (ResNetConfig(image_size=32, block="bottleneck", stem_width=8, stem_kernel=7, stem_pool=True,
                  widths=[4, 8, 8, 16], blocks=[1, 1, 1, 1]), 1, 64, 32),  # ResNet-50's layout, tiny widths
    (ResNetConfig(image_size=48, stem_width=8, widths=[8, 16], blocks=[2, 1]), 12, 16, 4),
])
def test_output_shape_and_stride(config, grid, width, stride):
    encoder = ResNetEncoder(config)
    out = encoder(torch.randn(2, 3, config.image_size, config.image_size))
    assert out.shape == (2, grid * grid, width)
    assert (encoder.stride, encoder.grid_size, encoder.width) == (stride, grid, width)


def test_grid_is_row_major():
    """Cell (r, c) of the sequence is feature-map position (r, c): compare with the stages run by hand."""
    torch.manual_seed(0)
    encoder = ResNetEncoder(ResNetConfig(image_size=32, stem_width=8, widths=[8, 16], blocks=[1, 1])).eval()
    x = torch.randn(1, 3, 32, 32)
    feature_map = encoder.stages[1](encoder.stages[0](encoder.stem(x)))  # (1, 16, 8, 8)
    out = encoder(x)  # (1, 64, 16)
    torch.testing.assert_close(out[0, 2 * 8 + 5], feature_map[0, :, 2, 5])


def test_image_size_must_fit_the_stride():
    with pytest.raises(ValueError, match="resnet.image_size"):
        ResNetEncoder(ResNetConfig(image_size=60))


@pytest.mark.parametrize("block", [BasicBlock, BottleneckBlock])
def test_fresh_block_is_the_identity(block):
    """Zero-initialised last batch norm: a new block passes a non-negative input through unchanged."""
    c = 4 * block.expansion
    x = torch.rand(2, c, 6, 6)
    torch.testing.assert_close(block(c, 4).eval()(x), x)


def batch_norm(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def test_bottleneck_strides_on_the_3x3_convolution():
    """ResNet v1.5: 1x1 (stride 1), 3x3 (stride s, padding 1), 1x1, written out with F.conv2d; a stride on
    the first 1x1 (v1) gives the same shape but other values."""
    torch.manual_seed(0)
    block = BottleneckBlock(8, 4, stride=2).eval()
    with torch.no_grad():
        block.conv3[1].weight.fill_(1.0)  # not the identity, so the residual path shows
    x = torch.randn(2, 8, 6, 6)
    conv = [block.conv1[0].weight, block.conv2[0].weight, block.conv3[0].weight]
    out = F.relu(batch_norm(F.conv2d(x, conv[0]), block.conv1[1]))  # (2, 4, 6, 6)
    out = F.relu(batch_norm(F.conv2d(out, conv[1], stride=2, padding=1), block.conv2[1]))  # (2, 4, 3, 3)
    out = batch_norm(F.conv2d(out, conv[2]), block.conv3[1])  # (2, 16, 3, 3)
    expected = F.relu(out + block.shortcut(x))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("block, last", [(BasicBlock, "conv2"), (BottleneckBlock, "conv3")])
def test_only_the_last_batch_norm_starts_at_zero_and_the_block_is_the_identity_in_training(block, last):
    """In train mode a zero first batch norm also gives the identity (zeros flow on), so the test checks which
    norm is zero, the identity under batch statistics, and that the last norm's scale gets a gradient."""
    torch.manual_seed(0)
    c = 4 * block.expansion
    module = block(c, 4).train()
    norms = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for name, norm in norms.items():
        expected = 0.0 if name == f"{last}.1" else 1.0
        assert (norm.weight == expected).all(), name
    x = torch.rand(4, c, 6, 6)
    out = module(x)
    torch.testing.assert_close(out, x)
    out.pow(2).sum().backward()
    assert norms[f"{last}.1"].weight.grad.abs().sum() > 0  # the residual branch can start learning


def test_resnet50_preset_has_resnet50s_parameters():
    """torchvision's ResNet-50 has 25,557,032 parameters, 2,049,000 of them in its 1000-class fc layer."""
    cfg = load_config(CaptionerRunConfig, "configs/coco_resnet50_attention_lstm.yaml")
    encoder = ResNetEncoder(cfg.resnet)
    assert sum(p.numel() for p in encoder.parameters()) == 25_557_032 - 2_049_000
    assert encoder.width == 2048 and encoder.grid_size == 7


def test_unfreezing_groups_are_the_stem_and_the_stages():
    config = ResNetConfig(image_size=32, stem_width=8, widths=[8, 16], blocks=[1, 1])
    model = build_captioner(config, CaptionDecoderConfig(width=16, depth=1, heads=2), 20, 8)
    groups = unfreeze_groups(model)
    assert list(groups) == ["patch_embed", "encoder_layer0", "encoder_layer1", "decoder"]
    names = {g: {n for n, _ in params} for g, params in groups.items()}
    assert all(n.startswith("encoder.stem.") for n in names["patch_embed"])
    assert all(n.startswith("encoder.stages.1.") for n in names["encoder_layer1"])
    covered = sorted(n for params in names.values() for n in params)
    assert covered == sorted(n for n, _ in model.named_parameters())  # every parameter exactly once
    states = unfreeze_schedule(2, 0, 0, 0.5)
    assert states["encoder_layer1"].trainable and not states["encoder_layer0"].trainable
