"""The masked autoencoder (MAE) that pretrains the ViT, following facebookresearch/mae.

1. :func:`random_masking` hides most patches *before* the encoder: it sorts random noise, keeps the
   tokens with the smallest noise (so every kept patch is distinct, no sampling with replacement)
   and remembers the inverse permutation ``ids_restore``.
2. The encoder (:class:`~captioner.models.vit.ImageEncoder`) runs on the visible tokens only.
3. :class:`ImageDecoder` (light) embeds the visible tokens, appends a learned mask token for every
   hidden patch, puts all tokens back in patch order with ``gather`` over ``ids_restore``, adds its
   own position embedding and predicts the pixels of every patch.
4. :meth:`MaskedAutoencoder.forward_loss` is the mean squared error on the masked patches only
   (per-patch normalised targets with ``norm_pix_loss``).

Shapes: B images, L patches, D = p * p * 3 pixel values per patch, C encoder width, Cd decoder width.
FLOP counts per image are in ``bench/flops.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config import MAEConfig, ViTConfig
from captioner.models.vit import (
    ImageEncoder,
    init_linear_and_norm,
    patchify,
    position_table,
    unpatchify,
)
from transformer_components import TransformerEncoder


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """How many patches MAE keeps: ``int(L * (1 - mask_ratio))``, at least 1 and fewer than L.

    >>> num_visible(196, 0.75), num_visible(64, 0.75)
    (49, 16)
    """
    n_keep = int(num_patches * (1 - mask_ratio))
    if not 1 <= n_keep < num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {n_keep} of {num_patches} patches; "
                         "at least one patch must be kept and at least one masked")
    return n_keep


def draw_noise(batch: int, num_patches: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The masking noise (B, L): uniform numbers drawn with ``generator`` on its own device, moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(batch, num_patches, generator=generator, device=draw_device).to(device)


def random_masking(
    x: Tensor, mask_ratio: float, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``1 - mask_ratio`` of the tokens of every sample, without replacement.

    Each token gets a random number; ``argsort`` ranks them and the ``n_keep`` smallest are kept.
    A permutation never repeats an index, so the kept and the masked sets are disjoint and exact
    in size. ``ids_restore`` is the inverse permutation: ``gather(shuffled, ids_restore)`` puts
    shuffled tokens back in patch order.

    Args:
        x: (B, L, C) tokens.
        mask_ratio: fraction of tokens to hide; ``n_keep = int(L * (1 - mask_ratio))``.
        generator: draws the noise (on its own device) when ``noise`` is not given.
        noise: (B, L) ranking values to use instead of drawing them (keeps torch.compile graphs
            free of generators, and makes the masking reproducible).

    Returns:
        x_visible (B, n_keep, C), mask (B, L) float with 1 = masked and 0 = kept, ids_restore (B, L).

    Example: noise [[0.3, 0.9, 0.1, 0.5]] with mask_ratio 0.5 keeps tokens 2 and 0 (in that order),
    mask = [[0, 1, 0, 1]], ids_restore = [[1, 3, 0, 2]].
    """
    B, L, C = x.shape
    n_keep = num_visible(L, mask_ratio)
    if noise is None:
        noise = draw_noise(B, L, generator, x.device)  # (B, L)
    ids_shuffle = noise.argsort(dim=1)  # (B, L): token ids, ascending noise
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, L): position of each token in ids_shuffle
    ids_keep = ids_shuffle[:, :n_keep]  # (B, n_keep)
    x_visible = x.gather(1, ids_keep[..., None].expand(-1, -1, C))  # (B, n_keep, C)
    mask = torch.ones(B, L, device=x.device)  # (B, L), in shuffled order
    mask[:, :n_keep] = 0
    mask = mask.gather(1, ids_restore)  # (B, L), in patch order
    return x_visible, mask, ids_restore


class ImageDecoder(nn.Module):
    """The light MAE decoder: visible tokens (B, n_keep, C) + ids_restore (B, L) -> pixels (B, L, D).

    It works in its own, narrower width Cd and has its own fixed position embedding: the encoder's
    was added before the shuffle, and the mask tokens need to know where they are. With a class token
    (``vit.class_token``, the official MAE weights) ``latent`` has it in front, (B, 1 + n_keep, C): it
    passes through the decoder's layers at its own position and is dropped before the prediction.
    """

    def __init__(self, vit: ViTConfig, mae: MAEConfig):
        super().__init__()
        if mae.decoder_width % 4:
            raise ValueError(f"mae.decoder_width must be divisible by 4, got {mae.decoder_width}")
        grid = vit.image_size // vit.patch_size
        width = mae.decoder_width
        self.embed = nn.Linear(vit.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.n_prefix = 1 if vit.class_token else 0
        self.register_buffer("pos_embed", position_table(grid, width, vit.class_token), persistent=False)
        self.transformer = TransformerEncoder(
            mae.decoder_depth, width, mae.decoder_heads, int(width * vit.mlp_ratio), vit.dropout, norm_eps=vit.norm_eps
        )
        self.head = nn.Linear(width, vit.patch_size**2 * 3)
        init_linear_and_norm(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.embed(latent)  # (B, n_prefix + n_keep, Cd)
        prefix, x = x[:, :self.n_prefix], x[:, self.n_prefix:]  # (B, n_prefix, Cd), (B, n_keep, Cd)
        B, n_keep, width = x.shape
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(B, L - n_keep, width)  # (B, L - n_keep, Cd)
        x = torch.cat([x, mask_tokens], dim=1)  # (B, L, Cd), in shuffled order
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, width))  # (B, L, Cd), in patch order
        x = self.transformer(torch.cat([prefix, x], dim=1) + self.pos_embed)  # (B, n_prefix + L, Cd)
        return self.head(x[:, self.n_prefix:])  # (B, L, D)


class MaskedAutoencoder(nn.Module):
    """MAE: mask most patches, encode the rest, reconstruct the masked pixels.

    ``forward(images, noise=None, generator=None) -> (loss, pred, mask)`` with images (B, 3, H, W)
    normalised, pred (B, L, D) (per-patch normalised pixels when ``norm_pix_loss``), mask (B, L)
    with 1 = masked. ``noise`` (B, L) fixes which patches are masked (see :func:`random_masking`).

    The checkpoint's ``encoder.*`` weights are a plain :class:`ImageEncoder` (see
    :func:`~captioner.training.checkpoints.encoder_from_mae_checkpoint`).
    """

    def __init__(self, vit: ViTConfig, mae: MAEConfig):
        super().__init__()
        self.mae_config = mae
        self.encoder = ImageEncoder(vit)
        self.decoder = ImageDecoder(vit, mae)
        self.patch_size = vit.patch_size
        self.num_patches = self.encoder.num_patches
        self.mask_ratio = mae.mask_ratio
        self.norm_pix_loss = mae.norm_pix_loss
        self.n_keep = num_visible(self.num_patches, mae.mask_ratio)

    def forward_encoder(
        self, images: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, H, W) -> latent (B, n_prefix + n_keep, C), mask (B, L), ids_restore (B, L)."""
        if self.encoder.patch_embed.overlap:
            # An overlapping patch embedding would let a visible token see the edges of its hidden
            # neighbours: blank the masked patches (0 = the mean colour after normalisation) first.
            if noise is None:  # drawn here instead of in random_masking, which then uses the same noise
                noise = draw_noise(images.shape[0], self.num_patches, generator, images.device)  # (B, L)
            visible = noise.argsort(dim=1).argsort(dim=1) < self.n_keep  # (B, L): rank among the n_keep smallest
            per_pixel = visible[..., None].expand(-1, -1, self.patch_size**2 * images.shape[1])  # (B, L, D)
            images = images * unpatchify(per_pixel.to(images.dtype), self.patch_size, images.shape[1])
        x = self.encoder.embed(images)  # (B, L, C)
        x, mask, ids_restore = random_masking(x, self.mask_ratio, generator, noise)  # (B, n_keep, C)
        x = self.encoder.with_class_token(x)  # (B, n_prefix + n_keep, C): a class token joins after masking
        return self.encoder.transformer(x), mask, ids_restore

    def patch_targets(self, images: Tensor) -> Tensor:
        """What the decoder regresses: (B, 3, H, W) -> (B, L, D), per-patch normalised if configured."""
        target = patchify(images, self.patch_size).float()  # (B, L, D)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
            var = target.var(dim=-1, keepdim=True)  # (B, L, 1)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches only; visible patches cannot affect it.

        The masked positions are gathered out of ``pred`` and the targets (a stable sort of the
        mask puts its L - n_keep ones first), so a visible patch's prediction is never read.
        """
        n_masked = self.num_patches - self.n_keep
        ids_masked = mask.argsort(dim=1, descending=True, stable=True)[:, :n_masked]  # (B, M)
        index = ids_masked[..., None].expand(-1, -1, pred.shape[-1])  # (B, M, D)
        pred_masked = pred.float().gather(1, index)  # (B, M, D)
        target_masked = self.patch_targets(images).gather(1, index)  # (B, M, D)
        return F.mse_loss(pred_masked, target_masked)

    def forward(
        self, images: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        latent, mask, ids_restore = self.forward_encoder(images, noise, generator)  # (B, n_keep, C)
        pred = self.decoder(latent, ids_restore)  # (B, L, D)
        return self.forward_loss(images, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Predicted images and the pixel mask, for pictures.

        Returns reconstruction (B, 3, H, W) in the input's normalisation (a norm_pix prediction is
        mapped back with each true patch's mean and std) and mask (B, 1, H, W), 1 = masked pixel.
        """
        _, pred, mask = self(images, noise, generator)
        pred = pred.float()  # (B, L, D)
        if self.norm_pix_loss:
            patches = patchify(images, self.patch_size).float()  # (B, L, D)
            pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt() + patches.mean(dim=-1, keepdim=True)
        D = pred.shape[-1]
        pixel_mask = unpatchify(mask[..., None].expand(-1, -1, D), self.patch_size)[:, :1]  # (B, 1, H, W)
        return unpatchify(pred, self.patch_size), pixel_mask
