"""The captioner's training augmentation: batch operations whose strength ramps up with the epoch.

Off by default (``augment.enabled`` in the captioner config). When on, each training batch of uint8
images ``(U, 3, S, S)`` goes through, in this order and on the training device:

1. a random resized crop back to ``S x S`` (``transforms.random_resized_crop``): the kept area is
   ``U(1 - s (1 - crop_scale_min), 1)`` of the image, the aspect ratio log-uniform in
   ``[crop_ratio_max ** -s, crop_ratio_max ** s]``;
2. colour jitter, each sample its own factors: brightness ``x * f``, contrast (blend with the image's
   mean grey level), saturation (blend with the image's own grey version), each ``f ~ U(1 - s a, 1 + s a)``
   for the key's amount ``a``; then a hue rotation by ``U(-s hue, s hue)`` turns of the colour circle;
3. grayscale (ITU-R 601 luma) with probability ``s grayscale_p``;
4. a Gaussian blur (separable, reflected borders) with probability ``s blur_p``, sigma ``U(0.1, blur_sigma)``.

``s`` is the epoch's strength, :func:`ramp_strength`. At ``s = 0`` every operation is the identity.

No horizontal flip, ever: a mirrored scene makes "the square is left of the circle" false, so the
caption would teach the wrong word (transforms.py says the same of the captioner's other transforms).
Crops and colour changes can also make a caption wrong (a cut-off shape, a red turned orange); the
amounts are therefore small, and docs/augmentation.md measures whether they help at all.

Every random number of a batch comes from the generator it is given: train_captioner.py makes a fresh one
per batch with ``seeding.seeded_generator(device, seed, AUGMENT_STREAM, epoch, step, micro-batch, rank)``,
so a batch's augmentation is a pure function of where it sits in training, and a run resumed from a
checkpoint augments every later batch exactly as the straight run did, with no generator state to store.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from captioner.config import CaptionAugmentConfig, ConfigError
from captioner.data.transforms import _as_float, _like_input, _uniform, random_resized_crop

LUMA_601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in the grey level


def ramp_strength(epoch: int, ramp_epochs: float) -> float:
    """The augmentation strength of a 0-based epoch: ``exp(-5 (1 - t)^2)`` with ``t = min(epoch / ramp_epochs, 1)``.

    The exponential ramp-up of Laine and Aila (arXiv:1610.02242): it starts near zero (``exp(-5)``, 0.0067),
    is a half at ``t = 0.63`` and reaches 1 at ``epoch = ramp_epochs``, then stays there. ``ramp_epochs`` 0
    means full strength from the first epoch.

    >>> round(ramp_strength(0, 10), 4), round(ramp_strength(5, 10), 4), ramp_strength(12, 10)
    (0.0067, 0.2865, 1.0)
    """
    if ramp_epochs <= 0:
        return 1.0
    t = min(epoch / ramp_epochs, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


# --------------------------------------------------------------------------------------------------
# The operations: float batches (B, 3, H, W) on the 0..255 scale, per-sample factors of shape (B,)
# --------------------------------------------------------------------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """The ITU-R 601 grey level ``0.299 R + 0.587 G + 0.114 B``, repeated over the 3 channels. (B, 3, H, W)."""
    w = torch.tensor(LUMA_601, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)  # (B, 3, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to 0..255; factor (B,)."""
    f = factor.reshape(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * other).clamp(0, 255)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Every pixel times its sample's factor (blend with black). Factor 1 is the identity."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level: factor 0 is a flat grey image, 1 the identity."""
    mean = grayscale(x)[:, :1].mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's own grey version: factor 0 is grey, 1 the identity, > 1 more colourful."""
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1) turns, saturation in [0, 1], value (the largest channel, on x's scale); each (B, H, W)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)  # (B, H, W)
    c = v - x.amin(1)  # chroma
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    # Which sixth of the circle: measured from red, green or blue, whichever channel is the largest
    h = torch.where(v == r, ((g - b) / safe_c) % 6,
                    torch.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv`: (B, H, W) each -> (B, 3, H, W)."""
    # Each channel n in (5, 3, 1) for (R, G, B): v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device).reshape(1, 3, 1, 1)
    k = (n + 6 * h[:, None]) % 6  # (B, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return v[:, None] * (1 - s[:, None] * ramp)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate every pixel's hue by its sample's ``shift`` turns (0.5: opposite colours); grey stays grey."""
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb((h + shift.reshape(-1, 1, 1).to(h.dtype)) % 1.0, s, v)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) sigmas -> (B, size) normalised 1-D Gaussian kernels centred on the middle tap."""
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2  # (size,)
    k = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)  # (B, size)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Blur each sample with its own Gaussian: one row pass and one column pass (the 2-D kernel is separable).

    All samples at once as a grouped convolution, one group per (sample, channel); borders reflected.
    x: (B, C, H, W) float; sigma: (B,); size: odd kernel width, smaller than H and W.
    """
    B, C, H, W = x.shape
    k = gaussian_kernels(sigma.to(x.dtype), size).repeat_interleave(C, 0)  # (B*C, size)
    pad = size // 2
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=B * C)  # rows
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=B * C)  # columns
    return y.reshape(B, C, H, W)


# --------------------------------------------------------------------------------------------------
# The whole augmentation of one batch
# --------------------------------------------------------------------------------------------------


def check_augment_config(cfg: CaptionAugmentConfig) -> None:
    """Raise ConfigError naming the ``augment.*`` key whose value is out of range."""
    bounds = {"crop_scale_min": (0.01, 1.0), "crop_ratio_max": (1.0, 4.0), "brightness": (0.0, 1.0),
              "contrast": (0.0, 1.0), "saturation": (0.0, 1.0), "hue": (0.0, 0.5), "grayscale_p": (0.0, 1.0),
              "blur_p": (0.0, 1.0), "blur_sigma": (0.1, 10.0), "ramp_epochs": (0.0, math.inf)}
    for key, (low, high) in bounds.items():
        value = getattr(cfg, key)
        if not low <= value <= high:
            raise ConfigError(f"augment.{key}: {value} is outside [{low}, {high}]")


def augment_batch(images: torch.Tensor, strength: float, cfg: CaptionAugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The whole augmentation (see the module docstring) at ``strength`` in [0, 1].

    images: (B, 3, H, W) uint8 or float on the 0..255 scale. Returns the same shape and dtype.
    """
    B, _, H, W = images.shape
    device, s = images.device, float(strength)
    ratio = cfg.crop_ratio_max ** s
    x = random_resized_crop(_as_float(images), (H, W), (1 - s * (1 - cfg.crop_scale_min), 1.0),
                            (1 / ratio, ratio), generator)  # (B, 3, H, W) float

    def factors(amount):  # (B,) in [1 - s a, 1 + s a]
        return _uniform(B, 1 - s * amount, 1 + s * amount, generator, device)

    x = adjust_brightness(x, factors(cfg.brightness))
    x = adjust_contrast(x, factors(cfg.contrast))
    x = adjust_saturation(x, factors(cfg.saturation))
    if cfg.hue > 0:
        x = adjust_hue(x, _uniform(B, -s * cfg.hue, s * cfg.hue, generator, device))
    gray = _uniform(B, 0.0, 1.0, generator, device) < s * cfg.grayscale_p  # (B,) bool
    x = torch.where(gray[:, None, None, None], grayscale(x), x)
    blur = _uniform(B, 0.0, 1.0, generator, device) < s * cfg.blur_p  # (B,) bool
    sigma = _uniform(B, 0.1, cfg.blur_sigma, generator, device)  # (B,)
    if cfg.blur_p > 0:
        size = min(2 * math.ceil(3 * cfg.blur_sigma) + 1, (min(H, W) - 1) | 1)  # 3 sigma each side, odd, fits
        x = torch.where(blur[:, None, None, None], gaussian_blur(x, sigma, size), x)
    return _like_input(x, images)
