"""Forward matrix-multiply FLOPs of the ViT, the MAE decoder and an MAE image, for MFU estimates.

Compute per image (forward GFLOP from :func:`flops_per_image` and :func:`encoder_flops`; a training
step costs about 3x the forward pass). The MAE encoder sees only the visible quarter of the patches
while the decoder sees all of them, so the decoder is kept narrow and shallow: per token it costs
about a sixth of what an encoder token costs. (The shapes preset's patch embedding sees a 16 px window
around each 8 px patch, ``patch_overlap`` 4: 4x the pixels of a plain one, still 0.013 GFLOP)::

    preset               encoder (25% visible)   decoder (all patches)   MAE total   encoder on all patches
    shapes_encoder.yaml          0.038                  0.018               0.057           0.122
    coco_encoder.yaml            2.24                   1.48                3.72            9.15

The last column is what the captioner pays per image, since it encodes every patch.
"""

from __future__ import annotations

from captioner.config import MAEConfig, ViTConfig
from captioner.models.mae import num_visible


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
    patch = 2 * L * ((vit.patch_size + 2 * vit.patch_overlap) ** 2 * 3) * vit.width  # the window each token sees
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
