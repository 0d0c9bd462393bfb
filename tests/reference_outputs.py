"""Reference outputs of torchvision's ResNets, timm's ViT and facebookresearch/mae's MAE, with random weights.

Run by tests/test_pretrained.py under a Python that has torchvision and timm (a separate venv: their
wheels need another torch than the project's); it imports nothing from the project. For each model it
writes the weights *in the publisher's own format* (torchvision's / timm's state dict, MAE's
``{"model": ...}``) and the reference outputs for a fixed input:

    python tests/reference_outputs.py OUT_DIR

    OUT_DIR/resnet{18,50,101,152}.pth          torchvision state dicts
    OUT_DIR/resnet{...}_out.pt                 {"images", "features"}: the grid before the pooling
    OUT_DIR/timm_vit.pth, timm_vit_out.pt      a timm VisionTransformer and its forward_features
    OUT_DIR/timm_vit_48_out.pt                 the same weights at 48 pixels (MAE's interpolate_pos_embed)
    OUT_DIR/mae.pth, mae_out.pt                MAE's encoder and decoder ({"model": ...}) and its forward
"""

import functools
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from timm.models.vision_transformer import Block, VisionTransformer


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter and batch-norm statistic random (running variances positive), so that no
    zero-initialised layer hides a mapping error."""
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if p.dtype.is_floating_point:
                values = torch.randn(p.shape, generator=generator) * 0.1
                p.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)


def resnets(out: Path, g: torch.Generator) -> None:
    images = torch.randn(2, 3, 64, 64, generator=g)
    for name in ("resnet18", "resnet50", "resnet101", "resnet152"):  # basic blocks, and the three bottleneck depths
        model = getattr(torchvision.models, name)(weights=None).eval()
        randomize(model, g)
        torch.save(model.state_dict(), out / f"{name}.pth")
        trunk = torch.nn.Sequential(*list(model.children())[:-2])  # up to layer4, before avgpool and fc
        with torch.no_grad():
            torch.save({"images": images, "features": trunk(images)}, out / f"{name}_out.pt")


def mae_interpolate_pos_embed(state: dict, model: VisionTransformer) -> None:
    """facebookresearch/mae's util/pos_embed.py interpolate_pos_embed, as main_finetune.py applies it."""
    pos_embed_checkpoint = state["pos_embed"]
    embedding_size = pos_embed_checkpoint.shape[-1]
    num_patches = model.patch_embed.num_patches
    num_extra_tokens = model.pos_embed.shape[-2] - num_patches
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    if orig_size != new_size:
        extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
        pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
        pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
        pos_tokens = torch.nn.functional.interpolate(
            pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
        pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
        state["pos_embed"] = torch.cat((extra_tokens, pos_tokens), dim=1)


def timm_vit(out: Path, g: torch.Generator) -> None:
    kwargs = dict(patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=10)
    model = VisionTransformer(img_size=32, **kwargs).eval()
    randomize(model, g)
    state = model.state_dict()
    torch.save(state, out / "timm_vit.pth")
    images = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        torch.save({"images": images, "tokens": model.forward_features(images)}, out / "timm_vit_out.pt")
    big = VisionTransformer(img_size=48, **kwargs).eval()
    state = dict(state)
    mae_interpolate_pos_embed(state, big)
    big.load_state_dict(state)
    images = torch.randn(2, 3, 48, 48, generator=g)
    with torch.no_grad():
        torch.save({"images": images, "tokens": big.forward_features(images)}, out / "timm_vit_48_out.pt")


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/mae's util/pos_embed.py, with cls_token=True: (1 + g*g, D), the class row zero."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


class MAEReference(torch.nn.Module):
    """The module layout and forward of facebookresearch/mae's MaskedAutoencoderViT, on timm's Blocks,
    with the masking noise given (its random_masking draws it inside)."""

    def __init__(self, img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, decoder_embed_dim=512,
                 decoder_depth=2, decoder_num_heads=16):
        super().__init__()
        norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
        self.patch_embed = timm.layers.PatchEmbed(img_size, patch_size, 3, embed_dim)
        n, grid = self.patch_embed.num_patches, img_size // patch_size
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = torch.nn.Parameter(torch.from_numpy(get_2d_sincos_pos_embed(embed_dim, grid)).float()[None],
                                            requires_grad=False)
        self.blocks = torch.nn.ModuleList(Block(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                          for _ in range(depth))
        self.norm = norm(embed_dim)
        self.decoder_embed = torch.nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = torch.nn.Parameter(
            torch.from_numpy(get_2d_sincos_pos_embed(decoder_embed_dim, grid)).float()[None], requires_grad=False)
        self.decoder_blocks = torch.nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, 4.0, qkv_bias=True,
                                                        norm_layer=norm) for _ in range(decoder_depth))
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = torch.nn.Linear(decoder_embed_dim, patch_size**2 * 3)
        assert n == grid * grid

    def forward(self, x, noise, mask_ratio=0.75):
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, dim=1, index=ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, D))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(N, -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        latent = self.norm(x)
        x = self.decoder_embed(latent)
        mask_tokens = self.mask_token.repeat(N, ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return latent, self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


def mae(out: Path, g: torch.Generator) -> None:
    model = MAEReference().eval()
    with torch.no_grad():  # random weights; the position tables stay MAE's fixed sin-cos ones
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    torch.save({"model": model.state_dict()}, out / "mae.pth")
    images, noise = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 16, generator=g)
    with torch.no_grad():
        latent, pred = model(images, noise)
    torch.save({"images": images, "noise": noise, "latent": latent, "pred": pred}, out / "mae_out.pt")


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    resnets(out_dir, generator)
    timm_vit(out_dir, generator)
    mae(out_dir, generator)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")
