"""captioner/data/augment_ramp.py: each operation against an expectation worked out by hand (or by the
standard library's colorsys, or by torchvision where a reference Python has it), the ramp against its
formula, and the batch's augmentation as a pure function of (seed, epoch, step, micro-batch, rank)."""

import colorsys
import math
import subprocess
from pathlib import Path

import pytest
import torch

from captioner.config import CaptionAugmentConfig, CaptionerRunConfig, ConfigError, load_config
from captioner.data.augment_ramp import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_batch,
    check_augment_config,
    gaussian_blur,
    grayscale,
    ramp_strength,
)
from captioner.training.seeding import AUGMENT_STREAM, seeded_generator
from test_pretrained import reference_python

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def generator(*where):
    """The generator train_captioner.py gives a batch: where = (epoch, step[, micro-batch, rank]), seed 0."""
    return seeded_generator(torch.device("cpu"), 0, AUGMENT_STREAM, *where)


def random_images(b=4, h=16, w=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).to(dtype)


def ones(b, value):
    return torch.full((b,), float(value))


def test_grayscale_is_the_itu_r_601_luma():
    x = torch.tensor([200.0, 100.0, 50.0]).reshape(1, 3, 1, 1)
    # 0.299 * 200 + 0.587 * 100 + 0.114 * 50 = 59.8 + 58.7 + 5.7
    assert torch.allclose(grayscale(x), torch.full((1, 3, 1, 1), 124.2), atol=1e-4)


def test_brightness_factor_one_is_the_identity_and_others_scale_and_clamp():
    x = random_images()
    assert torch.equal(adjust_brightness(x, ones(4, 1.0)), x)
    assert torch.allclose(adjust_brightness(x, ones(4, 0.5)), x / 2)
    assert torch.equal(adjust_brightness(x, ones(4, 2.0)), (2 * x).clamp(max=255))


def test_contrast_zero_is_the_mean_grey_level_and_one_the_identity():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0] = 255.0  # one red pixel of four: the mean grey is 0.299 * 255 / 4
    flat = adjust_contrast(x, ones(1, 0.0))
    assert torch.allclose(flat, torch.full_like(x, 0.299 * 255 / 4), atol=1e-4)
    assert torch.allclose(adjust_contrast(x, ones(1, 1.0)), x)
    half = adjust_contrast(x, ones(1, 0.5))
    assert torch.allclose(half[0, 0, 0, 0], torch.tensor(0.5 * 255 + 0.5 * 0.299 * 255 / 4), atol=1e-4)


def test_saturation_zero_is_grey_and_one_the_identity():
    x = random_images()
    assert torch.allclose(adjust_saturation(x, ones(4, 0.0)), grayscale(x), atol=1e-4)
    assert torch.allclose(adjust_saturation(x, ones(4, 1.0)), x, atol=1e-4)


@pytest.mark.parametrize("shift", [0.0, 0.02, 0.25, -0.1, 0.5])
def test_hue_rotation_equals_colorsys_pixel_by_pixel(shift):
    x = random_images(b=2, h=5, w=7, seed=3)
    x[0, :, 0, 0] = torch.tensor([80.0, 80.0, 80.0])  # grey has no hue and stays grey
    y = adjust_hue(x, ones(2, shift))
    expected = torch.empty_like(x)
    for b in range(2):
        for i in range(5):
            for j in range(7):
                h, s, v = colorsys.rgb_to_hsv(*(x[b, :, i, j] / 255).tolist())
                expected[b, :, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
    assert torch.allclose(y, expected, atol=1e-3)


def test_hue_of_pure_red_by_a_third_turn_is_pure_green():
    red = torch.tensor([255.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    assert torch.allclose(adjust_hue(red, ones(1, 1 / 3)).flatten(), torch.tensor([0.0, 255.0, 0.0]), atol=1e-3)


def test_blur_of_an_impulse_is_the_normalised_kernel_per_sample():
    size, n = 7, 15
    x = torch.zeros(2, 3, n, n)
    x[:, :, n // 2, n // 2] = 1.0
    sigmas = [1.0, 0.6]
    y = gaussian_blur(x, torch.tensor(sigmas), size)
    for b, sigma in enumerate(sigmas):
        taps = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-3, 4)]
        k = torch.tensor(taps) / sum(taps)
        expected = torch.zeros(n, n)
        expected[n // 2 - 3 : n // 2 + 4, n // 2 - 3 : n // 2 + 4] = torch.outer(k, k)
        for c in range(3):
            assert torch.allclose(y[b, c], expected, atol=1e-6)


def test_blur_keeps_a_constant_image_up_to_the_border():
    x = torch.full((1, 3, 9, 9), 77.0)
    assert torch.allclose(gaussian_blur(x, torch.tensor([2.0]), 7), x, atol=1e-4)


def test_ramp_values_against_the_formula_by_hand():
    # exp(-5 (1 - t)^2), t = min(epoch / ramp_epochs, 1)
    assert ramp_strength(0, 8) == pytest.approx(0.006737947)  # exp(-5)
    assert ramp_strength(2, 8) == pytest.approx(0.060054667)  # exp(-5 * 0.5625) = exp(-2.8125)
    assert ramp_strength(4, 8) == pytest.approx(0.286504797)  # exp(-1.25)
    assert ramp_strength(6, 8) == pytest.approx(0.731615629)  # exp(-0.3125)
    assert ramp_strength(8, 8) == 1.0
    assert ramp_strength(15, 8) == 1.0
    assert ramp_strength(0, 0) == 1.0  # no ramp: full strength from the start


def test_strength_zero_changes_nothing():
    images = random_images(b=6, h=32, w=32, dtype=torch.uint8)
    out = augment_batch(images, 0.0, CaptionAugmentConfig(enabled=True), generator(0, 0, 0))
    assert out.dtype == torch.uint8
    assert torch.equal(out, images)


def test_crop_at_scale_one_and_ratio_one_is_the_identity_at_full_strength():
    cfg = CaptionAugmentConfig(crop_scale_min=1.0, crop_ratio_max=1.0, brightness=0, contrast=0, saturation=0,
                               hue=0, grayscale_p=0, blur_p=0)
    images = random_images(b=3, h=24, w=24, dtype=torch.uint8)
    assert torch.equal(augment_batch(images, 1.0, cfg, generator(0, 3, 5)), images)


def test_full_strength_never_mirrors():
    # channel 0 holds the column index: after any crop it must still grow from left to right
    cfg = CaptionAugmentConfig(crop_scale_min=0.5, brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0,
                               blur_p=0)
    xs = torch.arange(32, dtype=torch.float32).expand(32, 32)
    images = torch.stack([xs * 8, torch.zeros(32, 32), torch.zeros(32, 32)]).expand(64, 3, 32, 32).clone()
    out = augment_batch(images, 1.0, cfg, generator(1, 2, 3))
    assert (out[:, 0, :, 1:] >= out[:, 0, :, :-1] - 1e-3).all()


def test_the_augmentation_is_a_pure_function_of_where_the_batch_sits():
    images = random_images(b=8, h=32, w=32, dtype=torch.uint8)
    cfg = CaptionAugmentConfig(enabled=True)

    def aug(*where):
        return augment_batch(images, 1.0, cfg, generator(*where))

    assert torch.equal(aug(0, 3, 40), aug(0, 3, 40))
    for other in [(1, 3, 40), (0, 4, 40), (0, 3, 41), (0, 3, 40, 1), (0, 3, 40, 0, 1)]:
        assert not torch.equal(aug(0, 3, 40), aug(*other)), other
    # full strength changes about every image, at the amounts of the config
    assert (aug(0, 0, 0).float() - images.float()).abs().mean() > 5


def test_every_probability_and_amount_grows_with_strength():
    images = random_images(b=64, h=16, w=16, dtype=torch.uint8)
    cfg = CaptionAugmentConfig(enabled=True)
    change = [(augment_batch(images, s, cfg, generator(0, 0, 0)).float() - images.float()).abs().mean()
              for s in (0.0, 0.1, 0.5, 1.0)]
    assert change == sorted(change) and change[0] == 0


def test_config_is_off_by_default_and_checked():
    assert CaptionerRunConfig().augment.enabled is False
    check_augment_config(CaptionAugmentConfig())
    with pytest.raises(ConfigError, match=r"augment\.hue: 0\.7"):
        check_augment_config(CaptionAugmentConfig(hue=0.7))
    with pytest.raises(ConfigError, match=r"augment\.crop_scale_min"):
        check_augment_config(CaptionAugmentConfig(crop_scale_min=0.0))
    with pytest.raises(ConfigError, match="flip"):  # captions are never mirrored: there is no such key
        load_config(CaptionerRunConfig, CONFIGS / "shapes_captioner.yaml", ["augment.flip=true"])


# A script for a Python with torchvision: torchvision's functional ops on the saved float images in [0, 1]
TORCHVISION_OPS = """
import sys, torch
import torchvision.transforms.functional as TF
x = torch.load(sys.argv[1])
torch.save({"brightness": TF.adjust_brightness(x, 1.3), "contrast": TF.adjust_contrast(x, 0.6),
            "saturation": TF.adjust_saturation(x, 1.4), "hue": TF.adjust_hue(x, 0.1),
            "grayscale": TF.rgb_to_grayscale(x, num_output_channels=3),
            "blur": TF.gaussian_blur(x, [7, 7], [1.2, 1.2])}, sys.argv[2])
"""


def test_operations_equal_torchvisions_functional_ops(tmp_path):
    python = reference_python()
    if python is None:
        pytest.skip("no reference Python with torchvision (set CAPTIONER_REFERENCE_PYTHON, or create .venv-ref "
                    "as .ci/run does)")
    x = random_images(b=3, h=12, w=12, seed=5)
    torch.save(x / 255, tmp_path / "x.pt")
    run = subprocess.run([python, "-c", TORCHVISION_OPS, str(tmp_path / "x.pt"), str(tmp_path / "ref.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = {k: v * 255 for k, v in torch.load(tmp_path / "ref.pt").items()}
    assert torch.allclose(adjust_brightness(x, ones(3, 1.3)), ref["brightness"], atol=1e-3)
    assert torch.allclose(adjust_contrast(x, ones(3, 0.6)), ref["contrast"], atol=0.05)  # luma 0.2989 vs 0.299
    assert torch.allclose(adjust_saturation(x, ones(3, 1.4)), ref["saturation"], atol=0.05)
    assert torch.allclose(adjust_hue(x, ones(3, 0.1)), ref["hue"], atol=1e-2)
    assert torch.allclose(grayscale(x), ref["grayscale"], atol=0.05)
    assert torch.allclose(gaussian_blur(x, ones(3, 1.2), 7), ref["blur"], atol=1e-3)
