"""Handwritten image transforms for whole uint8 batches on the training device.

The loaders deliver the pre-resized cache as uint8 batches ``(B, 3, S, S)``. Moving
those bytes to the GPU and transforming them there, one batched call per step, is
much cheaper than decoding and augmenting image by image in loader workers. Every
function here takes a batch, uses only torch ops (no PIL, no torchvision), and works
on any device.

Which transform for which model:

- MAE pretraining (:class:`MAETrainTransform`): random resized crop + horizontal flip.
  The encoder only has to rebuild masked patches, and a flipped image is as good a
  picture as the original, so both augmentations are safe there.
- Captioner training and evaluation (:class:`EvalTransform`): resize + centre crop,
  nothing random. A caption describes the *whole* scene: a random crop can cut out the
  "red circle" a caption mentions, and a horizontal flip turns "the square is to the
  left of the circle" into a false caption. So the captioner never sees either.

Randomness comes from an optional ``torch.Generator``; the random numbers are drawn
on the generator's device and then moved to the batch's device, so a CPU generator
(whose state is easy to checkpoint for an exact resume) works for CUDA batches too.

Example::

    >>> images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    >>> g = torch.Generator().manual_seed(0)
    >>> MAETrainTransform(48)(images, g).shape
    torch.Size([8, 3, 48, 48])
"""

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size):
    """``64 -> (64, 64)``; ``(48, 64) -> (48, 64)``."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _uniform(n, low, high, generator, device):
    """(n,) float32 uniform in [low, high), drawn on the generator's device."""
    draw_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=draw_device)  # (n,)
    return (low + (high - low) * u).to(device)


def _as_float(images):
    return images if images.is_floating_point() else images.float()


def _like_input(result, images):
    """Cast a float result back to uint8 (rounded, clamped) when the input was uint8."""
    if images.dtype == torch.uint8:
        return result.round_().clamp_(0, 255).to(torch.uint8)
    return result.to(images.dtype)


def random_resized_crop(images, size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """Crop a random box from each image and resize it to ``size``, all in one ``grid_sample``.

    Each sample gets its own box: its area is a fraction ``U(scale)`` of the image and its
    aspect ratio (width / height) is log-uniform in ``ratio``; a box that would not fit is
    shrunk to the image's width or height, then placed uniformly at random inside the
    image. Boxes have real-valued corners, so bilinear sampling needs no rounding.

    images: (B, C, H, W) uint8 or float. Returns (B, C, size, size) of the input's dtype.

    No antialiasing: when a box is much larger than ``size`` (e.g. a whole 256-pixel image
    into a 64-pixel output) fine detail aliases. The training resolutions used here keep
    that factor small.
    """
    out_h, out_w = _pair(size)
    B, C, H, W = images.shape
    device = images.device
    area = _uniform(B, scale[0], scale[1], generator, device) * (H * W)  # (B,)
    log_r = _uniform(B, math.log(ratio[0]), math.log(ratio[1]), generator, device)  # (B,)
    r = torch.exp(log_r)  # (B,) width / height
    box_w = torch.sqrt(area * r).clamp(max=W)  # (B,) pixels
    box_h = torch.sqrt(area / r).clamp(max=H)  # (B,)
    x0 = _uniform(B, 0.0, 1.0, generator, device) * (W - box_w)  # (B,) left edge
    y0 = _uniform(B, 0.0, 1.0, generator, device) * (H - box_h)  # (B,) top edge

    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1],
    # where (align_corners=False) -1 is the left edge of pixel 0 and +1 the right edge of
    # pixel W-1. A box [x0, x0 + w] is therefore centred at 2 * (x0 + w/2) / W - 1 with a
    # half-width of w / W in those units.
    theta = torch.zeros(B, 2, 3, device=device)  # (B, 2, 3)
    theta[:, 0, 0] = box_w / W
    theta[:, 0, 2] = 2 * (x0 + box_w / 2) / W - 1
    theta[:, 1, 1] = box_h / H
    theta[:, 1, 2] = 2 * (y0 + box_h / 2) / H - 1
    x = _as_float(images)
    grid = F.affine_grid(theta.to(x.dtype), [B, C, out_h, out_w], align_corners=False)  # (B, h, w, 2)
    # "border" only matters within half a pixel of the image edge, where bilinear
    # sampling would otherwise blend in zeros from outside the image.
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, h, w)
    return _like_input(out, images)


def resize(images, size):
    """Bilinear (antialiased) resize of a batch.

    size: an int resizes the *shorter* side to ``size`` and keeps the aspect ratio (like
    torchvision); ``(h, w)`` gives the exact output size. A batch already at that size is
    returned as is.

    images: (B, C, H, W) uint8 or float. Returns (B, C, h, w) of the input's dtype.
    """
    H, W = images.shape[-2:]
    if isinstance(size, int):
        short = min(H, W)
        out_h, out_w = round(H * size / short), round(W * size / short)
    else:
        out_h, out_w = _pair(size)
    if (out_h, out_w) == (H, W):
        return images
    out = F.interpolate(_as_float(images), size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
    return _like_input(out, images)


def center_crop(images, size):
    """Cut the central ``size`` box out of every image (a view, no copy).

    images: (B, C, H, W). Returns (B, C, h, w). Raises ValueError if the crop is larger
    than the images.
    """
    out_h, out_w = _pair(size)
    H, W = images.shape[-2:]
    if out_h > H or out_w > W:
        raise ValueError(f"centre crop {out_h}x{out_w} is larger than the images ({H}x{W})")
    top, left = (H - out_h) // 2, (W - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]


def random_horizontal_flip(images, p=0.5, generator=None):
    """Mirror each image left-right with probability ``p``.

    For MAE pretraining only: on a captioned image a flip turns "left of" into a false
    caption, so captioner transforms never flip.

    images: (B, C, H, W). Returns a new tensor of the same shape and dtype.
    """
    flip = _uniform(images.shape[0], 0.0, 1.0, generator, images.device) < p  # (B,) bool
    return torch.where(flip[:, None, None, None], images.flip(-1), images)  # (B, C, H, W)


def normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Pixel values on the 0..255 scale -> float32 ``(x / 255 - mean) / std`` per channel.

    images: (B, 3, H, W) uint8 (or float on the 0..255 scale). Returns (B, 3, H, W) float32.

    Example: with mean 0.5 and std 0.5 for every channel, 0 -> -1.0, 255 -> 1.0.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)  # (3 or 1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)  # (3 or 1, 1, 1)
    # One multiply-add: x * 1/(255 std) - mean/std.
    return torch.addcmul(-mean / std, images.float(), 1.0 / (255.0 * std))  # (B, 3, H, W)


class MAETrainTransform:
    """MAE pretraining augmentation: random resized crop, optional flip, normalisation.

    Call with a uint8 batch (B, 3, H, W) on any device and an optional torch.Generator;
    returns float32 (B, 3, size, size). Normalisation runs first: it is a per-channel
    affine map, which commutes with bilinear resampling and flipping, so the crop then
    works on floats and nothing is rounded twice.
    """

    def __init__(self, size, scale=(0.2, 1.0), flip=True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.scale, self.flip = size, tuple(scale), flip
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images, generator=None):
        x = normalize(images, self.mean, self.std)  # (B, 3, H, W) float
        x = random_resized_crop(x, self.size, self.scale, generator=generator)  # (B, 3, size, size)
        if self.flip:
            x = random_horizontal_flip(x, generator=generator)
        return x

    def __repr__(self):
        return f"MAETrainTransform(size={self.size}, scale={self.scale}, flip={self.flip})"


class EvalTransform:
    """Deterministic processing for the captioner (training and evaluation) and MAE evaluation.

    Resizes the shorter side to ``size``, cuts the central ``size`` x ``size`` square and
    normalises. On the square cache images the crop removes nothing, so the whole scene a
    caption describes stays in view; there is no flip, so "left of" stays true.

    Call with a uint8 batch (B, 3, H, W) and an (ignored) generator, for the same call
    signature as MAETrainTransform; returns float32 (B, 3, size, size).
    """

    def __init__(self, size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def for_encoder(cls, config):
        """The transform an encoder's weights expect: its config's ``image_size``, ``mean`` and ``std``
        (a ViTConfig or ResNetConfig, as stored in every checkpoint)."""
        return cls(config.image_size, config.mean, config.std)

    def __call__(self, images, generator=None):
        x = normalize(images, self.mean, self.std)  # (B, 3, H, W) float
        x = resize(x, self.size)  # (B, 3, >=size, >=size)
        return center_crop(x, self.size).contiguous()  # (B, 3, size, size)

    def __repr__(self):
        return f"EvalTransform(size={self.size})"
