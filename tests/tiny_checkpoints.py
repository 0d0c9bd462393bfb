"""A helper the tests share (not a test module): untrained checkpoints of the formats that
train_captioner.py and train_retrieval.py write, and a tiny processed training split, for the tests of
the scripts that read them."""

import dataclasses
import json
from pathlib import Path

import numpy as np

from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    RetrievalRunConfig,
    ViTConfig,
    config_to_dict,
)
from captioner.data.processed import FORMAT_VERSION
from captioner.models.captioner import KIND, captioner_for_config, checkpoint_extras
from captioner.models.dual_encoder import KIND as RETRIEVAL_KIND
from captioner.models.dual_encoder import DualEncoder
from captioner.training.checkpoints import save_checkpoint


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
