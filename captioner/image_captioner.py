"""The Vision Transformer and the masked autoencoder (MAE) that pretrains it.

Reading order, following facebookresearch/mae:

1. :func:`patchify` cuts images into flattened patches; :class:`PatchEmbedding` maps each patch to a
   ``width``-dimensional token.
2. :class:`ImageEncoder` is the ViT: patch tokens + fixed 2-D sin-cos position embeddings, then a
   stack of pre-norm transformer layers with a final LayerNorm. The captioner reuses it unchanged.
3. :func:`random_masking` hides most patches *before* the encoder: it sorts random noise, keeps the
   tokens with the smallest noise (so every kept patch is distinct, no sampling with replacement)
   and remembers the inverse permutation.
4. :class:`ImageDecoder` (light) embeds the visible tokens, appends a learned mask token for every
   hidden patch, puts all tokens back in patch order with ``gather`` and predicts the pixels of
   every patch.
5. :class:`ImageAutoEncoder` ties them together; :meth:`ImageAutoEncoder.forward_loss` is the mean
   squared error on the masked patches only.

Shapes: B images, 3 channels, H = W = image_size, p = patch_size, L = (H / p)^2 patches,
D = p * p * 3 pixel values per patch, C encoder width, Cd decoder width.

Compute per image (forward matrix-multiply GFLOP from :func:`flops_per_image` and :func:`encoder_flops`;
a training step costs about 3x the forward pass). The MAE encoder sees only the visible quarter of the
patches while the decoder sees all of them, so the decoder is kept narrow and shallow: per token it
costs about a sixth (coco) to a third (shapes) of what an encoder token costs::

    preset               encoder (25% visible)   decoder (all patches)   MAE total   encoder on all patches
    shapes_encoder.yaml          0.029                  0.034               0.063           0.112
    coco_encoder.yaml            2.24                   1.48                3.72            9.15

The last column is what the captioner pays per image, since it encodes every patch.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config import ConfigError, MAEConfig, ViTConfig, config_from_dict
from captioner.training import CheckpointError, load_state_dict_checked
from transformer_components import TransformerEncoder, sincos_2d_position_encoding

# --------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping patches, row-major, each flattened as (row, column, channel).

    images (B, 3, H, W) -> (B, L, p*p*3) with L = (H/p) * (W/p).

    Example: a (1, 3, 4, 4) image with p = 2 gives 4 patches of 12 values; patch 1 is the top-right
    2x2 block, and its first 3 values are the RGB of pixel (0, 2).
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)  # (B, L, D)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """The exact inverse of :func:`patchify` for square images: (B, L, p*p*C) -> (B, C, H, W)."""
    B, L, _ = patches.shape
    p = patch_size
    h = w = int(round(L**0.5))
    if h * w != L:
        raise ValueError(f"{L} patches do not form a square grid")
    x = patches.reshape(B, h, w, p, p, channels)  # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, h * p, w * p)  # (B, C, H, W)


class PatchEmbedding(nn.Module):
    """Image -> one ``width``-dimensional token per patch: (B, 3, H, W) -> (B, L, C).

    A Conv2d whose kernel and stride both equal the patch size sees each patch exactly once, so it is
    the same map as a Linear layer applied to :func:`patchify`'s output: the Linear weight is the
    conv weight (C, 3, p, p) permuted to (C, p, p, 3) and flattened to (C, p*p*3). The convolution is
    used because it skips the explicit reshuffle of pixels.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        # MAE initialises the patch projection like a Linear layer on the flattened patch.
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        x = self.proj(images)  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, L, C), patches row-major like patchify

    def as_linear_weight(self) -> Tensor:
        """The equivalent Linear weight (C, p*p*3) acting on :func:`patchify` output."""
        return self.proj.weight.permute(0, 2, 3, 1).flatten(1)


def _init_linear_and_norm(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, LayerNorm = identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# The encoder (the ViT)
# --------------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """The Vision Transformer: images (B, 3, H, W) -> patch features (B, L, C).

    ``embed`` (patches + fixed position embedding) and ``transformer`` (pre-norm layers + final
    norm) are separate steps so that MAE can drop the masked tokens in between: they never reach
    a transformer layer. There is no class token; the captioner attends over all patch features.
    """

    def __init__(self, vit: ViTConfig):
        super().__init__()
        if vit.width % 4:
            raise ValueError(f"the ViT width must be divisible by 4 for 2-D sin-cos positions, got {vit.width}")
        self.config = vit
        self.patch_embed = PatchEmbedding(vit.image_size, vit.patch_size, vit.width)
        self.num_patches = self.patch_embed.num_patches
        grid = self.patch_embed.grid_size
        # Fixed, derived from the config: not a parameter, and not stored in checkpoints.
        self.register_buffer("pos_embed", sincos_2d_position_encoding(grid, grid, vit.width)[None], persistent=False)
        self.transformer = TransformerEncoder(vit.depth, vit.width, vit.heads, int(vit.width * vit.mlp_ratio), vit.dropout)
        _init_linear_and_norm(self.transformer)

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens with their position embedding: (B, 3, H, W) -> (B, L, C)."""
        return self.patch_embed(images) + self.pos_embed  # (B, L, C)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, L, C): features of every patch, after the final LayerNorm."""
        return self.transformer(self.embed(images))


# --------------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------------


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
        draw_device = generator.device if generator is not None else x.device
        noise = torch.rand(B, L, generator=generator, device=draw_device).to(x.device)  # (B, L)
    ids_shuffle = noise.argsort(dim=1)  # (B, L): token ids, ascending noise
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, L): position of each token in ids_shuffle
    ids_keep = ids_shuffle[:, :n_keep]  # (B, n_keep)
    x_visible = x.gather(1, ids_keep[..., None].expand(-1, -1, C))  # (B, n_keep, C)
    mask = torch.ones(B, L, device=x.device)  # (B, L), in shuffled order
    mask[:, :n_keep] = 0
    mask = mask.gather(1, ids_restore)  # (B, L), in patch order
    return x_visible, mask, ids_restore


# --------------------------------------------------------------------------------------------------
# The MAE decoder and the autoencoder
# --------------------------------------------------------------------------------------------------


class ImageDecoder(nn.Module):
    """The light MAE decoder: visible tokens (B, n_keep, C) + ids_restore (B, L) -> pixels (B, L, D).

    It works in its own, narrower width Cd and has its own fixed position embedding: the encoder's
    was added before the shuffle, and the mask tokens need to know where they are.
    """

    def __init__(self, vit: ViTConfig, mae: MAEConfig):
        super().__init__()
        if mae.decoder_width % 4:
            raise ValueError(f"mae.decoder_width must be divisible by 4, got {mae.decoder_width}")
        grid = vit.image_size // vit.patch_size
        width = mae.decoder_width
        self.embed = nn.Linear(vit.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_2d_position_encoding(grid, grid, width)[None], persistent=False)
        self.transformer = TransformerEncoder(
            mae.decoder_depth, width, mae.decoder_heads, int(width * vit.mlp_ratio), vit.dropout
        )
        self.head = nn.Linear(width, vit.patch_size**2 * 3)
        _init_linear_and_norm(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.embed(latent)  # (B, n_keep, Cd)
        B, n_keep, width = x.shape
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(B, L - n_keep, width)  # (B, L - n_keep, Cd)
        x = torch.cat([x, mask_tokens], dim=1)  # (B, L, Cd), in shuffled order
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, width))  # (B, L, Cd), in patch order
        x = self.transformer(x + self.pos_embed)  # (B, L, Cd)
        return self.head(x)  # (B, L, D)


class ImageAutoEncoder(nn.Module):
    """MAE: mask most patches, encode the rest, reconstruct the masked pixels.

    ``forward(images, noise=None, generator=None) -> (loss, pred, mask)`` with images (B, 3, H, W)
    normalised, pred (B, L, D) (per-patch normalised pixels when ``norm_pix_loss``), mask (B, L)
    with 1 = masked. ``noise`` (B, L) fixes which patches are masked (see :func:`random_masking`).

    The checkpoint's ``encoder.*`` weights are a plain :class:`ImageEncoder` (see
    :func:`encoder_from_mae_checkpoint`).
    """

    def __init__(self, vit: ViTConfig, mae: MAEConfig):
        super().__init__()
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
        """images (B, 3, H, W) -> latent (B, n_keep, C), mask (B, L), ids_restore (B, L)."""
        x = self.encoder.embed(images)  # (B, L, C)
        x, mask, ids_restore = random_masking(x, self.mask_ratio, generator, noise)  # (B, n_keep, C)
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


# --------------------------------------------------------------------------------------------------
# Reusing the pretrained encoder
# --------------------------------------------------------------------------------------------------


def encoder_from_mae_checkpoint(payload: dict, source: str | Path = "checkpoint") -> ImageEncoder:
    """The pretrained :class:`ImageEncoder` in an MAE checkpoint payload (from ``load_checkpoint``).

    The architecture comes from the checkpoint's own config (``config["model"]``), never from a
    second YAML file, and the weights from the ``encoder.`` entries of ``payload["model"]``.
    Raises CheckpointError naming ``source`` when the payload is not an MAE checkpoint or its
    weights do not fit the architecture it describes.
    """
    if payload.get("kind") != "mae":
        raise CheckpointError(f"{source}: this is a {payload.get('kind')!r} checkpoint, not an MAE ('mae') checkpoint")
    config, state = payload.get("config"), payload.get("model")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(state, dict):
        raise CheckpointError(f"{source}: the checkpoint lacks its 'config' (with a 'model' section) or 'model' weights")
    try:
        vit = config_from_dict(ViTConfig, config["model"], source=f"{source} (config.model)")
        encoder = ImageEncoder(vit)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{source}: the stored ViT architecture is invalid: {e}") from None
    prefix = "encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise CheckpointError(f"{source}: the checkpoint holds no 'encoder.' weights")
    load_state_dict_checked(encoder, encoder_state, source)
    return encoder


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------


def transformer_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> int:
    """Forward matmul FLOPs (2 per multiply-add) of ``depth`` pre-norm layers on one sequence.

    Per layer: Q, K, V and output projections 4 * 2*S*C*C; attention scores and weighted sum
    2 * 2*S*S*C; MLP 2 * 2*S*C*F with F = C * mlp_ratio. Norms, softmax and GELU are ignored.
    """
    S, C, F_ = tokens, width, int(width * mlp_ratio)
    return depth * (8 * S * C * C + 4 * S * S * C + 4 * S * C * F_)


def encoder_flops(vit: ViTConfig, tokens: int | None = None) -> int:
    """Forward FLOPs of :class:`ImageEncoder` on one image: patch embedding of all L patches plus the
    transformer on ``tokens`` tokens (default: all L, as in the captioner)."""
    L = (vit.image_size // vit.patch_size) ** 2
    patch = 2 * L * (vit.patch_size**2 * 3) * vit.width
    return patch + transformer_flops(L if tokens is None else tokens, vit.width, vit.depth, vit.mlp_ratio)


def decoder_flops(vit: ViTConfig, mae: MAEConfig) -> int:
    """Forward FLOPs of :class:`ImageDecoder` on one image (embedding, L-token layers, pixel head)."""
    L = (vit.image_size // vit.patch_size) ** 2
    n_keep = num_visible(L, mae.mask_ratio)
    embed = 2 * n_keep * vit.width * mae.decoder_width
    head = 2 * L * mae.decoder_width * vit.patch_size**2 * 3
    return embed + transformer_flops(L, mae.decoder_width, mae.decoder_depth, vit.mlp_ratio) + head


def flops_per_image(vit: ViTConfig, mae: MAEConfig) -> dict[str, int]:
    """Forward FLOPs of one MAE image: ``{"encoder", "decoder", "total"}``; training is ~3x "total".

    The encoder term counts only the visible tokens, which is where MAE saves its compute.
    """
    L = (vit.image_size // vit.patch_size) ** 2
    encoder = encoder_flops(vit, tokens=num_visible(L, mae.mask_ratio))
    decoder = decoder_flops(vit, mae)
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}
