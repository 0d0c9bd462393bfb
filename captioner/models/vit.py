"""The Vision Transformer: patches, the patch embedding and the encoder.

1. :func:`patchify` cuts images into flattened patches (:func:`unpatchify` puts them back);
2. :class:`PatchEmbedding` maps each patch to a ``width``-dimensional token (a strided convolution
   is the same linear map on every patch), optionally seeing a few pixels of the neighbouring
   patches too (``patch_overlap``);
3. :class:`ImageEncoder` is the ViT: patch tokens + fixed 2-D sin-cos position embeddings, then a
   stack of pre-norm transformer layers with a final LayerNorm. MAE pretrains it
   (``captioner/models/mae.py``) and the captioner reuses it unchanged
   (``captioner/models/captioner.py``).

Shapes: B images, 3 channels, H = W = image_size, p = patch_size, L = (H / p)^2 patches,
D = p * p * 3 pixel values per patch, C the encoder width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config import ViTConfig
from transformer_components import TransformerEncoder, sincos_2d_position_encoding


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


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")  # PyTorch >= 2.4
    except TypeError:
        return torch.is_autocast_cpu_enabled()


class PatchEmbedding(nn.Module):
    """Image -> one ``width``-dimensional token per patch: (B, 3, H, W) -> (B, L, C).

    A Conv2d whose kernel and stride both equal the patch size sees each patch exactly once, so it is
    the same map as a Linear layer applied to :func:`patchify`'s output: the Linear weight is the
    conv weight (C, 3, p, p) permuted to (C, p, p, 3) and flattened to (C, p*p*3). The convolution is
    used because it skips the explicit reshuffle of pixels.

    **Overlap.** With ``overlap`` = o > 0 the kernel grows to p + 2o while the stride stays p (and
    the image is zero-padded by o): token (i, j) is still one linear map, now of the
    (p + 2o) x (p + 2o) window centred on its patch, so it sees o pixels of each neighbour. The grid,
    the number of tokens and the transformer are unchanged; only this layer grows. Why it helps: a
    shape drawn across patch borders (a corner here, an edge there) is seen whole by the tokens near
    it instead of in disjoint pieces that attention must first reassemble. On the shapes data this was
    the cheapest way found to make the captioner name shapes (docs/results.md#how-the-presets-were-chosen).
    MAE must not let a visible token see a hidden patch's pixels, or reconstructing them becomes
    copying: it blanks the masked patches before this layer (``MaskedAutoencoder.forward_encoder``).
    """

    def __init__(self, image_size: int, patch_size: int, width: int, channels: int = 3, overlap: int = 0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if not 0 <= overlap <= patch_size:
            raise ValueError(f"model.patch_overlap must be between 0 and the patch size {patch_size}, got {overlap}")
        self.image_size, self.patch_size, self.overlap = image_size, patch_size, overlap
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size + 2 * overlap, stride=patch_size, padding=overlap)
        # MAE initialises the patch projection like a Linear layer on the flattened patch (window).
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        if images.device.type == "cpu" and _cpu_autocast_enabled():
            # bf16 on a CPU: PyTorch's bf16 convolution of this shape backpropagates slower than its
            # fp32 one (docs/benchmarks.md#precision-on-a-cpu-bf16-and-fused-adamw)
            with torch.autocast("cpu", enabled=False):
                x = self.proj(images.float())  # (B, C, h, w) fp32
        else:
            x = self.proj(images)  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, L, C), patches row-major like patchify

    def as_linear_weight(self) -> Tensor:
        """The equivalent Linear weight (C, p*p*3) acting on :func:`patchify` output (no overlap only)."""
        if self.overlap:
            raise ValueError("an overlapping patch embedding is not a linear map of patchify's patches")
        return self.proj.weight.permute(0, 2, 3, 1).flatten(1)


def init_linear_and_norm(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, LayerNorm = identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def position_table(grid_size: int, width: int, class_token: bool) -> Tensor:
    """MAE's fixed 2-D sin-cos table for a ``grid_size`` x ``grid_size`` grid: (1, [1 +] L, C), with an
    all-zero row in front for the class token when there is one (as facebookresearch/mae stores it)."""
    table = sincos_2d_position_encoding(grid_size, grid_size, width)  # (L, C)
    if class_token:
        table = torch.cat([torch.zeros(1, width), table])  # (1 + L, C)
    return table[None]


class ImageEncoder(nn.Module):
    """The Vision Transformer: images (B, 3, H, W) -> patch features (B, L, C).

    ``embed`` (patches + position embedding) and ``transformer`` (pre-norm layers + final norm) are
    separate steps so that MAE can drop the masked tokens in between: they never reach a transformer
    layer.

    The project's own ViT has no class token and a fixed sin-cos position embedding. The published
    ViTs it loads (``captioner/models/pretrained.py``) have a class token (``vit.class_token``): it goes
    through the transformer ahead of the patches (:meth:`with_class_token`), and :meth:`forward` returns
    the L patch features only, so a decoder still attends over a grid. timm's ViTs learn their position
    embedding (``vit.position_embedding: learned``): a parameter of shape (1, [1 +] L, C).
    """

    def __init__(self, vit: ViTConfig):
        super().__init__()
        if vit.width % 4:
            raise ValueError(f"the ViT width must be divisible by 4 for 2-D sin-cos positions, got {vit.width}")
        self.config = vit
        self.patch_embed = PatchEmbedding(vit.image_size, vit.patch_size, vit.width, overlap=vit.patch_overlap)
        self.num_patches = self.patch_embed.num_patches
        self.width = vit.width  # C, what a decoder reads
        self.n_prefix = 1 if vit.class_token else 0  # tokens ahead of the patches
        grid = self.grid_size = self.patch_embed.grid_size
        table = position_table(grid, vit.width, vit.class_token)  # (1, n_prefix + L, C)
        if vit.position_embedding == "learned":
            self.pos_embed = nn.Parameter(table)
        else:  # fixed, derived from the config: not a parameter, and not stored in checkpoints
            self.register_buffer("pos_embed", table, persistent=False)
        if vit.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, vit.width))
            nn.init.normal_(self.cls_token, std=0.02)  # as MAE
        else:
            self.register_parameter("cls_token", None)
        self.transformer = TransformerEncoder(vit.depth, vit.width, vit.heads, int(vit.width * vit.mlp_ratio),
                                              vit.dropout, norm_eps=vit.norm_eps)
        init_linear_and_norm(self.transformer)

    def layer_groups(self) -> list[list[nn.Module]]:
        """The unfreezing groups above the patch embedding, from the input side: one per transformer
        layer, the final LayerNorm joining the top one."""
        layers = self.transformer.layers
        return [[layer] for layer in layers[:-1]] + [[layers[-1], self.transformer.norm]]

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens with their position embedding: (B, 3, H, W) -> (B, L, C)."""
        return self.patch_embed(images) + self.pos_embed[:, self.n_prefix:]  # (B, L, C)

    def with_class_token(self, x: Tensor) -> Tensor:
        """(B, N, C) patch tokens -> (B, n_prefix + N, C): the class token (with its position) in front."""
        if self.cls_token is None:
            return x
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, C)
        return torch.cat([cls, x], dim=1)

    def forward_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, n_prefix + L, C): every token after the final LayerNorm, class token first."""
        return self.transformer(self.with_class_token(self.embed(images)))

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, L, C): features of every patch, after the final LayerNorm."""
        return self.forward_tokens(images)[:, self.n_prefix:]
