import math

import pytest
import torch

from captioner.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    MAETrainTransform,
    center_crop,
    normalize,
    random_horizontal_flip,
    random_resized_crop,
    resize,
)


def coordinate_images(b, h, w):
    """Float images whose channel 0 holds the column index and channel 1 the row index."""
    xs = torch.arange(w, dtype=torch.float32).expand(h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    return torch.stack([xs, ys, torch.zeros(h, w)]).expand(b, 3, h, w).clone()


def random_uint8(b=4, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def test_random_resized_crop_boxes_lie_inside_the_image_and_respect_scale_and_ratio():
    # Bilinear sampling reproduces a linear ramp exactly, so the sampled coordinates reveal each
    # sample's box. Output 8 < smallest box side, so no sample point falls outside a pixel centre.
    B, H, W, out = 64, 48, 64, 8
    scale, ratio = (0.3, 0.9), (3 / 4, 4 / 3)
    y = random_resized_crop(coordinate_images(B, H, W), out, scale, ratio, torch.Generator().manual_seed(1))
    assert y.shape == (B, 3, out, out)
    xs, ys = y[:, 0], y[:, 1]
    # Pixel-centre coordinates of the first and last samples: x0 + (j + 0.5) * w / out - 0.5.
    box_w = (xs[:, 0, -1] - xs[:, 0, 0]) * out / (out - 1)
    box_h = (ys[:, -1, 0] - ys[:, 0, 0]) * out / (out - 1)
    x0 = xs[:, 0, 0] + 0.5 - 0.5 * box_w / out
    y0 = ys[:, 0, 0] + 0.5 - 0.5 * box_h / out
    tol = 1e-3
    assert (x0 >= -tol).all() and (x0 + box_w <= W + tol).all()
    assert (y0 >= -tol).all() and (y0 + box_h <= H + tol).all()
    area = box_w * box_h / (H * W)
    unclamped = (box_w < W - tol) & (box_h < H - tol)
    assert unclamped.sum() > B // 2
    assert (area[unclamped] >= scale[0] - tol).all() and (area[unclamped] <= scale[1] + tol).all()
    r = box_w / box_h
    assert (r[unclamped] >= ratio[0] - tol).all() and (r[unclamped] <= ratio[1] + tol).all()
    # Each sample gets its own box.
    assert len(set(x0.round(decimals=2).tolist())) > B // 2
    # Columns are constant in x down the image, rows constant in y: no rotation or shear.
    assert torch.allclose(xs, xs[:, :1, :].expand_as(xs), atol=1e-4)


def test_random_resized_crop_is_identity_for_the_full_box_and_keeps_uint8():
    images = random_uint8()
    y = random_resized_crop(images, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert y.dtype == torch.uint8
    assert torch.equal(y, images)


def test_random_resized_crop_follows_the_generator():
    images = random_uint8(b=8, h=32, w=32)
    a = random_resized_crop(images, 16, generator=torch.Generator().manual_seed(3))
    b = random_resized_crop(images, 16, generator=torch.Generator().manual_seed(3))
    c = random_resized_crop(images, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resize_shorter_side_and_exact_size():
    images = torch.full((2, 3, 32, 64), 77, dtype=torch.uint8)
    y = resize(images, 16)
    assert y.shape == (2, 3, 16, 32) and y.dtype == torch.uint8
    assert (y == 77).all()  # a constant image stays constant
    assert resize(images, (8, 10)).shape == (2, 3, 8, 10)
    assert resize(images, 32) is images


def test_resize_averages_when_shrinking():
    # Antialiased 2x shrink of a 1-pixel checkerboard gives its mean, not a sampled pixel.
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 200).float()
    y = resize(checker.expand(1, 3, 8, 8), 4)
    assert torch.allclose(y, torch.full_like(y, 100.0), atol=3.0)  # edges: truncated filter


def test_center_crop_takes_the_middle_and_rejects_too_large():
    images = coordinate_images(1, 10, 12)
    y = center_crop(images, (4, 6))
    assert y.shape == (1, 3, 4, 6)
    assert y[0, 0, 0].tolist() == [3, 4, 5, 6, 7, 8]  # columns 3..8 of 0..11
    assert y[0, 1, :, 0].tolist() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="larger"):
        center_crop(images, 11)


def test_horizontal_flip_flips_exactly_the_chosen_samples():
    images = random_uint8(b=32)
    assert torch.equal(random_horizontal_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, p=0.0), images)
    y = random_horizontal_flip(images, p=0.5, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], images[i].flip(-1)) for i in range(32)]
    kept = [torch.equal(y[i], images[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 4 < sum(flipped) < 28


def test_normalize_values():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = normalize(images)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 2, 2)
    expected = [(0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (1 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (0.2 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    assert torch.allclose(y[0, :, 0, 0], torch.tensor(expected), atol=1e-5)
    half = normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2), 0.5, 0.5)
    assert torch.allclose(half[0, :, 0], torch.tensor([-1.0, 1.0]).expand(3, 2))


def test_mae_transform_shape_randomness_and_range():
    images = random_uint8(b=8, h=32, w=32)
    t = MAETrainTransform(24, scale=(0.2, 1.0), flip=True)
    y = t(images, torch.Generator().manual_seed(0))
    assert y.shape == (8, 3, 24, 24) and y.dtype == torch.float32
    assert torch.equal(y, t(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(y, t(images, torch.Generator().manual_seed(1)))
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert y.min() >= lo - 1e-4 and y.max() <= hi + 1e-4


def test_mae_transform_without_flip_never_mirrors():
    # Left half bright, right half dark; a full-image crop must keep it that way round.
    images = torch.zeros(16, 3, 16, 16, dtype=torch.uint8)
    images[..., :8] = 255
    t = MAETrainTransform(16, scale=(1.0, 1.0), flip=False)
    y = t(images, torch.Generator().manual_seed(0))
    assert (y[..., :8].mean(dim=(1, 2, 3)) > y[..., 8:].mean(dim=(1, 2, 3))).all()
    flipping = MAETrainTransform(16, scale=(1.0, 1.0), flip=True)(images, torch.Generator().manual_seed(0))
    assert (flipping[..., :8].mean(dim=(1, 2, 3)) < flipping[..., 8:].mean(dim=(1, 2, 3))).any()


def test_eval_transform_is_deterministic_never_flips_and_keeps_the_whole_square_image():
    images = random_uint8(b=4, h=16, w=16)
    images[..., :8] = 255  # asymmetric: a flip would show
    t = EvalTransform(16)
    outs = [t(images, torch.Generator().manual_seed(s)) for s in range(5)]
    assert all(torch.equal(outs[0], o) for o in outs)
    assert torch.equal(outs[0], normalize(images))  # no crop, no flip on a square image at its size
    bigger = EvalTransform(8)(images)
    assert bigger.shape == (4, 3, 8, 8)
    assert (bigger[..., :4] > bigger[..., 4:].mean()).all()  # the bright half stays on the left


def test_eval_transform_on_a_wide_image_crops_the_centre():
    images = coordinate_images(1, 8, 16)
    y = EvalTransform(8, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))(images)
    assert y.shape == (1, 3, 8, 8)
    assert math.isclose(y[0, 0, 0, 0].item(), 4.0, abs_tol=1e-4)  # columns 4..11 of 0..15
