"""Helpers the tests share (not a test module): untrained checkpoints of the formats that
train_captioner.py and train_retrieval.py write, and a tiny processed training split, for the tests of
the scripts that read them; tiny weights in the published formats (an official MAE checkpoint's state
dict, a torchvision ResNet's)."""

import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import torch

import process_coco

from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    ResNetConfig,
    RetrievalRunConfig,
    ViTConfig,
    config_to_dict,
)
from captioner.data.processed import FORMAT_VERSION
from captioner.models.captioner import KIND, captioner_for_config
from captioner.models.dual_encoder import KIND as RETRIEVAL_KIND
from captioner.models.dual_encoder import DualEncoder
from captioner.models.resnet import ResNetEncoder
from captioner.models.vit import position_table
from captioner.training.checkpoints import checkpoint_extras, save_checkpoint


def save_untrained_captioner(path: Path, vit: ViTConfig, decoder: CaptionDecoderConfig, cfg: CaptionerRunConfig,
                             tokenizer_text: str, vocab_size: int, max_len: int) -> Path:
    """Build a captioner with the current torch seed's random weights and save it at ``path`` with what
    a captioner checkpoint carries besides the training state: the ViT architecture, the config, the
    vocabulary size, ``max_len`` and the tokenizer's text. The decoder is ``cfg.decoder_kind``'s
    (``decoder`` configures a transformer, ``cfg.lstm`` an LSTM)."""
    cfg = dataclasses.replace(cfg, decoder=decoder)
    model = captioner_for_config(cfg, vit, vocab_size, max_len=max_len)
    payload = {"kind": KIND, "epoch": 1, "config": config_to_dict(cfg), "model": model.state_dict(),
               **checkpoint_extras(vit, vocab_size, max_len, tokenizer_text, None)}
    return save_checkpoint(path, payload)


def save_untrained_retrieval(path: Path, vit: ViTConfig, cfg: RetrievalRunConfig, tokenizer_text: str,
                             vocab_size: int) -> Path:
    """A dual encoder with the current torch seed's random weights, saved at ``path`` as train_retrieval.py
    saves one (``vit``, ``vocab_size``, ``tokenizer`` beside the model and the config)."""
    model = DualEncoder(vit, cfg.text, vocab_size, cfg.data.max_caption_len, cfg.contrastive.embed_dim)
    payload = {"kind": RETRIEVAL_KIND, "epoch": 1, "config": config_to_dict(cfg), "model": model.state_dict(),
               "vit": config_to_dict(vit), "vocab_size": vocab_size, "tokenizer": tokenizer_text, "pretrained": None}
    return save_checkpoint(path, payload)


def write_processed_train_split(folder: Path, captions: list[list[str]], tokenizer, image_size: int) -> Path:
    """A processed folder as process_coco.py leaves it, holding only a training split of black images
    with these captions (per image a list) and a ``meta.json`` with the cache's image size."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"image_size": image_size}), encoding="utf-8")
    np.save(folder / "train_images.npy", np.zeros((len(captions), image_size, image_size, 3), dtype=np.uint8))
    record = {"format_version": FORMAT_VERSION, "split": "train", "image_size": image_size,
              "image_ids": list(range(1, len(captions) + 1)),
              "file_names": [f"{i:012d}.jpg" for i in range(1, len(captions) + 1)], "captions": captions,
              "tokens": [[tokenizer.encode(c) for c in image_captions] for image_captions in captions]}
    (folder / "train.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


def official_mae_state(width: int = 192, depth: int = 1, decoder: bool = True, seed: int = 0) -> dict:
    """An official-format MAE state dict (timm's names; what ``{"model": ...}`` holds) for 32-pixel images
    in 8-pixel patches, written out by hand: random weights, MAE's fixed sin-cos position tables."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    state = {"cls_token": r(1, 1, width), "pos_embed": position_table(4, width, True),
             "patch_embed.proj.weight": r(width, 3, 8, 8), "patch_embed.proj.bias": r(width),
             "norm.weight": 1 + r(width), "norm.bias": r(width)}

    def block(prefix, w):
        for name, shape in [("norm1", (w,)), ("attn.qkv", (3 * w, w)), ("attn.proj", (w, w)), ("norm2", (w,)),
                            ("mlp.fc1", (4 * w, w)), ("mlp.fc2", (w, 4 * w))]:
            state[f"{prefix}{name}.weight"] = r(*shape) + (1 if "norm" in name else 0)
            state[f"{prefix}{name}.bias"] = r(shape[0])

    for i in range(depth):
        block(f"blocks.{i}.", width)
    if decoder:  # the official decoders' width and head count (512, 16); one block
        state.update({"decoder_embed.weight": r(512, width), "decoder_embed.bias": r(512), "mask_token": r(1, 1, 512),
                      "decoder_pos_embed": position_table(4, 512, True), "decoder_norm.weight": 1 + r(512),
                      "decoder_norm.bias": r(512), "decoder_pred.weight": r(192, 512), "decoder_pred.bias": r(192)})
        block("decoder_blocks.0.", 512)
    return state


TINY_IMAGENET_RESNET = ResNetConfig(image_size=32, block="bottleneck", stem_width=8, stem_kernel=7, stem_pool=True,
                                    widths=[4, 8], blocks=[2, 1])


def torchvision_resnet_state(config: ResNetConfig = TINY_IMAGENET_RESNET, seed: int = 0) -> dict:
    """A ResNet state dict under torchvision's key names (``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}`` /
    ``bn{k}`` / ``downsample``, ``fc``), renamed by hand from a random :class:`ResNetEncoder`'s."""
    torch.manual_seed(seed)
    renames = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
               (r"^stages\.(\d+)\.(\d+)\.conv(\d)\.0\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
               (r"^stages\.(\d+)\.(\d+)\.conv(\d)\.1\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{m[3]}."),
               (r"^stages\.(\d+)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.")]
    state = {}
    for key, tensor in ResNetEncoder(config).state_dict().items():
        for pattern, new in renames:
            key = re.sub(pattern, new, key)
        counter = key.endswith("num_batches_tracked")  # an integer, not a weight
        state[key] = tensor.clone() if counter else tensor + 0.1 * torch.rand(tensor.shape)
    width = config.widths[-1] * (4 if config.block == "bottleneck" else 1)
    state.update({"fc.weight": torch.randn(10, width), "fc.bias": torch.zeros(10)})
    return state


def tiny_processed_shapes(data_dir: Path, n_train: int = 10, n_val: int = 4) -> Path:
    """process_coco.py's tiny shapes set of 32-pixel images (a 120-token BPE); returns its processed folder."""
    process_coco.main(["--data-dir", str(data_dir), "--n-train", str(n_train), "--n-val", str(n_val), "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    return data_dir / "processed"


def saved_bytes(payload) -> bytes:
    """What ``torch.save(payload, file)`` writes: the bytes of a weights file."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()
