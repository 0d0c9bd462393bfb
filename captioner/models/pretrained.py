"""The field's published weights in the handwritten models, by key mapping.

Two families of files load here (``docs/pretrained.md`` lists the named ones and their sources):

- **torchvision's ResNets** (a plain state dict: ``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{k}`` /
  ``bn{k}`` / ``downsample.{0,1}``, ``fc``) into :class:`~captioner.models.resnet.ResNetEncoder`.
  The architecture is read off the weights (bottleneck or basic blocks, blocks per stage); the
  classifier ``fc`` is dropped, since the captioner reads the grid before the pooling.
- **The official MAE checkpoints** (``{"model": state}``) and **timm's ViTs** (a plain state dict),
  both with timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``; MAE's decoder as ``decoder_embed``,
  ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``, ``decoder_pred``) into
  :class:`~captioner.models.vit.ImageEncoder` and MAE's :class:`~captioner.models.mae.ImageDecoder`.
  timm's fused ``qkv`` projection (3C, C) is split into the q, k and v projections; a classifier
  ``head`` is dropped.

Every key of the file must find its place and every weight of the model must be filled, with the same
shape: anything else is a :class:`CheckpointError` naming the file, the key and the shapes.

**Position embeddings at another image size.** MAE's table is its fixed 2-D sin-cos one (with a zero
row for the class token): it is recognised and recomputed for the new grid, which is exact. A learned
table (timm's) is resampled as MAE's ``interpolate_pos_embed`` does it: the grid part bicubically
(``align_corners=False``), the class token's row kept as it is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config import MAEConfig, ResNetConfig, ViTConfig
from captioner.models.mae import MaskedAutoencoder
from captioner.models.resnet import ResNetEncoder
from captioner.models.vit import ImageEncoder, position_table
from captioner.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    encoder_from_checkpoint,
    load_checkpoint,
    read_torch_file,
)

# timm's ViT widths and their head counts (64 dimensions a head; 80 for ViT-H); the weights do not say
VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
MAE_DECODER_HEADS = {512: 16}  # every official MAE decoder: width 512, 16 heads
PUBLISHED_NORM_EPS = 1e-6  # the LayerNorm epsilon of timm's and MAE's ViTs
CLASSIFIER_KEYS = re.compile(r"(fc|head)\.(weight|bias)")  # the classifiers, dropped


def _read(path: Path) -> object:
    return read_torch_file(path, "no such weights file", "not a readable PyTorch weights file (")


def _state_dict_of(payload: object, path: str | Path) -> dict[str, Tensor]:
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict) and "kind" not in payload:
        payload = payload["model"]  # the official MAE checkpoints wrap the state dict
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (nor MAE's {{'model': state dict}})")
    return payload


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a published weights file (``weights_only``): a plain one, or MAE's ``{"model": ...}``."""
    return _state_dict_of(_read(Path(path)), path)


def load_mapped(module: nn.Module, mapped: dict[str, tuple[str, Tensor]], source: str | Path) -> None:
    """Load ``{our key: (their key, tensor)}`` into ``module``: every weight filled, every shape equal."""
    own = module.state_dict()
    for ours, (theirs, tensor) in mapped.items():
        if ours not in own:
            raise CheckpointError(f"{source}: {theirs!r} has no place in this model (it would be {ours!r})")
        if tensor.shape != own[ours].shape:
            raise CheckpointError(f"{source}: {theirs!r} has shape {tuple(tensor.shape)}, but {ours!r} needs "
                                  f"{tuple(own[ours].shape)}")
    missing = [k for k in own if k not in mapped]
    if missing:
        raise CheckpointError(f"{source}: the file has no weights for {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    module.load_state_dict({ours: tensor for ours, (_, tensor) in mapped.items()})


# ---- torchvision ResNets -------------------------------------------------------------------------

def is_torchvision_resnet(state: dict) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def torchvision_resnet_config(state: dict[str, Tensor], image_size: int = 224,
                              source: str | Path = "weights") -> ResNetConfig:
    """The :class:`ResNetConfig` of a torchvision ResNet state dict (7x7 stem, max pool, 4 stages)."""
    if not is_torchvision_resnet(state):
        raise CheckpointError(f"{source}: not a torchvision ResNet state dict (no 'conv1.weight' / 'layer1.0...')")
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    stages = sorted({int(m[1]) for k in state if (m := re.match(r"layer(\d+)\.", k))})
    blocks = [len({int(m[1]) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in stages]
    widths = [state[f"layer{i}.0.conv1.weight"].shape[0] for i in stages]
    conv1 = state["conv1.weight"]
    return ResNetConfig(image_size=image_size, block=block, stem_width=conv1.shape[0], stem_kernel=conv1.shape[-1],
                        stem_pool=True, widths=widths, blocks=blocks)


def torchvision_resnet_key(key: str) -> str | None:
    """Our name for a torchvision ResNet key; None for the classifier ``fc``.

    >>> torchvision_resnet_key("layer2.0.bn3.running_mean"), torchvision_resnet_key("layer1.0.downsample.0.weight")
    ('stages.1.0.conv3.1.running_mean', 'stages.0.0.shortcut.0.weight')
    """
    if CLASSIFIER_KEYS.fullmatch(key):
        return None
    if m := re.fullmatch(r"(conv|bn)1\.(\w+)", key):
        return f"stem.{0 if m[1] == 'conv' else 1}.{m[2]}"
    if m := re.fullmatch(r"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key):
        return f"stages.{int(m[1]) - 1}.{m[2]}.conv{m[4]}.{0 if m[3] == 'conv' else 1}.{m[5]}"
    if m := re.fullmatch(r"layer(\d+)\.(\d+)\.downsample\.([01])\.(\w+)", key):
        return f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"
    raise KeyError(key)


def resnet_from_torchvision(state: dict[str, Tensor], image_size: int = 224,
                            source: str | Path = "weights") -> ResNetEncoder:
    """A :class:`ResNetEncoder` with the weights of a torchvision ResNet state dict."""
    encoder = ResNetEncoder(torchvision_resnet_config(state, image_size, source))
    load_torchvision_resnet(encoder, state, source)
    return encoder


def load_torchvision_resnet(encoder: ResNetEncoder, state: dict[str, Tensor], source: str | Path = "weights") -> None:
    """Load a torchvision ResNet state dict into ``encoder``, whose architecture must be the file's."""
    mapped = {}
    for key, tensor in state.items():
        try:
            ours = torchvision_resnet_key(key)
        except KeyError:
            raise CheckpointError(f"{source}: {key!r} is not a key of a torchvision ResNet") from None
        if ours is not None:
            mapped[ours] = (key, tensor)
    load_mapped(encoder, mapped, source)


# ---- ViTs: the official MAE checkpoints and timm ----------------------------------------------------

def is_timm_vit(state: dict) -> bool:
    return "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def _count(state: dict, prefix: str) -> int:
    """How many ``{prefix}N.`` blocks the state dict holds."""
    return len({int(m[1]) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))})


def _heads(width: int, table: dict[int, int], what: str, source: str | Path) -> int:
    if width not in table:
        raise CheckpointError(f"{source}: no known head count for a {what} of width {width} "
                              f"(known: {', '.join(f'{w}: {h}' for w, h in table.items())})")
    return table[width]


def _grid_of(table: Tensor, n_prefix: int) -> int:
    grid = math.isqrt(table.shape[1] - n_prefix)
    if grid * grid != table.shape[1] - n_prefix:
        raise ValueError(f"{table.shape[1] - n_prefix} position rows do not form a square grid")
    return grid


def is_sincos_table(table: Tensor, class_token: bool) -> bool:
    """Whether a (1, [1 +] L, C) position table is MAE's fixed 2-D sin-cos one (with a zero class row)."""
    grid = _grid_of(table, int(class_token))
    expected = position_table(grid, table.shape[-1], class_token)
    return expected.shape == table.shape and torch.allclose(table.float(), expected, atol=1e-5)


def timm_vit_config(state: dict[str, Tensor], image_size: int | None = None,
                    source: str | Path = "weights") -> ViTConfig:
    """The :class:`ViTConfig` of a timm / MAE ViT state dict; ``image_size`` None keeps the file's own."""
    if not is_timm_vit(state):
        raise CheckpointError(f"{source}: not a timm / MAE ViT state dict (no 'patch_embed.proj.weight' / "
                              "'blocks.0.attn.qkv.weight')")
    proj = state["patch_embed.proj.weight"]  # (C, 3, p, p)
    width, patch = proj.shape[0], proj.shape[-1]
    class_token = "cls_token" in state
    try:
        grid = _grid_of(state["pos_embed"], int(class_token))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: 'pos_embed' is missing or not a square grid ({e})") from None
    learned = not is_sincos_table(state["pos_embed"], class_token)
    return ViTConfig(image_size=image_size or grid * patch, patch_size=patch, width=width,
                     depth=_count(state, "blocks."), heads=_heads(width, VIT_HEADS, "ViT", source),
                     mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width, dropout=0.0,
                     class_token=class_token, position_embedding="learned" if learned else "sincos",
                     norm_eps=PUBLISHED_NORM_EPS)


def resample_position_table(table: Tensor, n_prefix: int, grid: int) -> Tensor:
    """A learned (1, n_prefix + g*g, C) table resampled to ``grid`` x ``grid``, as MAE's interpolate_pos_embed:
    the prefix rows kept, the grid bicubic (align_corners=False)."""
    old = _grid_of(table, n_prefix)
    if old == grid:
        return table
    prefix, rows = table[:, :n_prefix], table[:, n_prefix:]  # (1, n_prefix, C), (1, g*g, C)
    width = table.shape[-1]
    image = rows.reshape(1, old, old, width).permute(0, 3, 1, 2)  # (1, C, g, g)
    image = F.interpolate(image.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, image.permute(0, 2, 3, 1).reshape(1, grid * grid, width).to(table.dtype)], dim=1)


_VIT_PARTS = {"patch_embed.proj.weight": "patch_embed.proj.weight", "patch_embed.proj.bias": "patch_embed.proj.bias",
              "cls_token": "cls_token", "norm.weight": "transformer.norm.weight", "norm.bias": "transformer.norm.bias"}
_BLOCK_PARTS = {"norm1": "norm1", "attn.proj": "attn.out_proj", "norm2": "norm2", "mlp.fc1": "ff.fc1",
                "mlp.fc2": "ff.fc2"}


def _map_block(their_prefix: str, our_prefix: str, state: dict, mapped: dict, used: set) -> None:
    """One timm ``Block`` into one :class:`EncoderLayer`: the fused qkv split in three."""
    for part in ("weight", "bias"):
        key = f"{their_prefix}attn.qkv.{part}"
        if key in state:
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), state[key].chunk(3, dim=0)):
                mapped[f"{our_prefix}attn.{name}.{part}"] = (key, chunk)
            used.add(key)
        for theirs, ours in _BLOCK_PARTS.items():
            key = f"{their_prefix}{theirs}.{part}"
            if key in state:
                mapped[f"{our_prefix}{ours}.{part}"] = (key, state[key])
                used.add(key)


def _map_vit(state: dict, vit: ViTConfig, ours: str, mapped: dict, used: set) -> None:
    """The encoder's keys, under our prefix ``ours`` ("" for an ImageEncoder, "encoder." inside MAE)."""
    for theirs, name in _VIT_PARTS.items():
        if theirs in state:
            mapped[ours + name] = (theirs, state[theirs])
            used.add(theirs)
    for i in range(_count(state, "blocks.")):
        _map_block(f"blocks.{i}.", f"{ours}transformer.layers.{i}.", state, mapped, used)
    used.add("pos_embed")
    if vit.position_embedding == "learned":
        table = resample_position_table(state["pos_embed"], int(vit.class_token), vit.image_size // vit.patch_size)
        mapped[ours + "pos_embed"] = ("pos_embed", table)


def _unused(state: dict, used: set, source: str | Path) -> None:
    """A key that found no place (other than a classifier's) is an error."""
    for key in state:
        if key not in used and not CLASSIFIER_KEYS.fullmatch(key):
            raise CheckpointError(f"{source}: {key!r} is not a key this ViT loader knows")


def vit_from_timm(state: dict[str, Tensor], image_size: int | None = None,
                  source: str | Path = "weights") -> ImageEncoder:
    """An :class:`ImageEncoder` with the weights of an official MAE / timm ViT state dict (MAE's decoder
    keys, where present, are left out: see :func:`mae_from_official`)."""
    vit = timm_vit_config(state, image_size, source)
    encoder = ImageEncoder(vit)
    mapped, used = {}, set()
    _map_vit(state, vit, "", mapped, used)
    _unused(state, used | {k for k in state if k.startswith("decoder_") or k == "mask_token"}, source)
    load_mapped(encoder, mapped, source)
    return encoder


def mae_from_official(state: dict[str, Tensor], image_size: int | None = None, mask_ratio: float = 0.75,
                      norm_pix_loss: bool = True, source: str | Path = "weights") -> MaskedAutoencoder:
    """A :class:`MaskedAutoencoder` with an official MAE checkpoint's encoder *and* decoder, so that MAE
    pretraining can continue from it. ``mask_ratio`` and ``norm_pix_loss`` are not in the weights."""
    if "decoder_embed.weight" not in state:
        raise CheckpointError(f"{source}: the file holds no MAE decoder ('decoder_embed.weight'); the "
                              "mae_pretrain_* files have the encoder alone, the mae_visualize_* files both")
    vit = timm_vit_config(state, image_size, source)
    decoder_width = state["decoder_embed.weight"].shape[0]
    mae = MAEConfig(mask_ratio=mask_ratio, decoder_width=decoder_width, decoder_depth=_count(state, "decoder_blocks."),
                    decoder_heads=_heads(decoder_width, MAE_DECODER_HEADS, "MAE decoder", source),
                    norm_pix_loss=norm_pix_loss)
    model = MaskedAutoencoder(vit, mae)
    mapped, used = {}, set()
    _map_vit(state, vit, "encoder.", mapped, used)
    for theirs, ours in (("decoder_embed", "embed"), ("decoder_norm", "transformer.norm"), ("decoder_pred", "head")):
        for part in ("weight", "bias"):
            mapped[f"decoder.{ours}.{part}"] = (f"{theirs}.{part}", state.get(f"{theirs}.{part}"))
            used.add(f"{theirs}.{part}")
    mapped["decoder.mask_token"] = ("mask_token", state.get("mask_token"))
    used.add("mask_token")
    for i in range(mae.decoder_depth):
        _map_block(f"decoder_blocks.{i}.", f"decoder.transformer.layers.{i}.", state, mapped, used)
    absent = [theirs for theirs, tensor in mapped.values() if tensor is None]
    if absent:
        raise CheckpointError(f"{source}: the MAE decoder lacks {', '.join(absent)}")
    if "decoder_pos_embed" in state and not is_sincos_table(state["decoder_pos_embed"], vit.class_token):
        raise CheckpointError(f"{source}: 'decoder_pos_embed' is not MAE's fixed sin-cos table")
    used.add("decoder_pos_embed")
    _unused(state, used, source)
    load_mapped(model, mapped, source)
    return model


# ---- what the training scripts call ----------------------------------------------------------------

def encoder_from_pretrained(path: str | Path, image_size: int | None = None) -> ImageEncoder:
    """The ViT encoder in ``path``: this project's MAE checkpoint or retrieval checkpoint (its image tower),
    or their run folder, an official MAE checkpoint or a timm ViT state dict (``image_size``: a size other
    than the file's own; published weights only)."""
    path = Path(path)
    payload = load_checkpoint(path) if path.is_dir() else _read(path)
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        return vit_from_timm(_state_dict_of(payload, path), image_size, path)
    encoder = encoder_from_checkpoint(payload, path)
    if image_size and image_size != encoder.config.image_size:
        raise CheckpointError(f"{path}: this project's {payload['kind']!r} checkpoint was trained at "
                              f"{encoder.config.image_size} pixels; another size ({image_size}) is for published "
                              "weights only")
    return encoder
