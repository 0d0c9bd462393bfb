"""The captioner as a whole: build it, its teacher-forcing loss, and rebuild it from a checkpoint.

The captioner is a :class:`~transformer_components.TransformerEncoderDecoder` of the ViT
(:class:`~captioner.models.vit.ImageEncoder`) and a
:class:`~captioner.models.caption_decoder.CaptionDecoder` reading the ViT's patch features through
cross-attention, so greedy decoding and beam search work on it unchanged.

Teacher forcing: the decoder reads the caption shifted right and predicts it shifted left, every
position at once::

    tokens   <sos> a  red circle <eos> <pad>
    input    <sos> a  red circle <eos>           tokens[:, :-1]
    target   a     red circle <eos> <pad>        tokens[:, 1:]

and :func:`caption_loss` averages the cross-entropy over the real (non-pad) targets only.

A captioner checkpoint is self-contained: besides the training state it stores the ViT architecture
(``"vit"``), the vocabulary size, the decoder's ``max_len`` and the tokenizer file's text, so
:func:`load_captioner` rebuilds model and tokenizer from the checkpoint alone.

A pretrained encoder comes from an MAE checkpoint (:func:`encoder_from_mae_checkpoint`), whose own
stored config gives the architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    ConfigError,
    ViTConfig,
    config_from_dict,
    config_to_dict,
)
from captioner.models.caption_decoder import CaptionDecoder
from captioner.models.vit import ImageEncoder
from captioner.text.tokenizers import PAD_ID, parse_tokenizer
from captioner.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
)
from transformer_components import TransformerEncoderDecoder

KIND = "captioner"  # the checkpoint kind of train_captioner.py


def build_captioner(vit: ViTConfig, decoder: CaptionDecoderConfig, vocab_size: int,
                    max_len: int) -> TransformerEncoderDecoder:
    """ImageEncoder(vit) + CaptionDecoder; ``max_len`` = the most token positions ever decoded.

    The decoder may be narrower or wider than the ViT: its cross-attention projects the ViT's
    ``vit.width`` features to its own width.
    """
    encoder = ImageEncoder(vit)
    caption_decoder = CaptionDecoder(
        vocab_size, decoder.width, decoder.depth, decoder.heads, int(decoder.width * decoder.mlp_ratio), max_len,
        dropout=decoder.dropout, pad_id=PAD_ID, memory_dim=vit.width,
    )
    return TransformerEncoderDecoder(encoder, caption_decoder)


def caption_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with label smoothing, averaged over the non-pad targets.

    logits (B, T, V), targets (B, T) long with PAD_ID where there is no token. A pad target adds
    nothing to the sum and is not counted in the mean (``ignore_index``; PyTorch also leaves it
    out of the smoothing term).
    """
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing)


def teacher_forcing_loss(model: TransformerEncoderDecoder, images: Tensor, tokens: Tensor, image_index: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """The training loss of a batch: images (U, 3, H, W) normalised, each encoded once; tokens (B, T)
    ``<sos> ... <eos> <pad>...``; image_index (B,) the row of ``images`` each caption describes."""
    logits = model(images, tokens[:, :-1], src_index=image_index)  # (B, T-1, V)
    return caption_loss(logits, tokens[:, 1:], label_smoothing)


def checkpoint_extras(vit: ViTConfig, vocab_size: int, max_len: int, tokenizer_text: str,
                      pretrained: str | None) -> dict:
    """What a captioner checkpoint stores besides the training state (see the module docstring);
    ``pretrained`` is the MAE checkpoint the run started from (None: from scratch)."""
    return {"vit": config_to_dict(vit), "vocab_size": vocab_size, "max_len": max_len,
            "tokenizer": tokenizer_text, "pretrained": pretrained}


def captioner_from_payload(payload: dict, source: str | Path, decoder: CaptionDecoderConfig | None = None,
                           max_len: int = 0) -> TransformerEncoderDecoder:
    """The captioner described by a checkpoint payload, with its weights (on the CPU).

    ``decoder`` replaces the stored decoder settings (a resumed run's ``--set`` overrides); weights
    that then do not fit raise CheckpointError. ``max_len`` raises the decoder's position limit
    above the stored one (its position encoding is computed, not learned, so any length works).
    """
    try:
        vit = config_from_dict(ViTConfig, payload["vit"], source=f"{source} (vit)")
        if decoder is None:
            decoder = config_from_dict(CaptionerRunConfig, payload["config"], source=f"{source} (config)").decoder
        model = build_captioner(vit, decoder, payload["vocab_size"], max(payload["max_len"], max_len))
    except KeyError as e:
        raise CheckpointError(f"{source}: the captioner checkpoint lacks its {e.args[0]!r} entry") from None
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{source}: the stored architecture is invalid: {e}") from None
    load_state_dict_checked(model, payload["model"], source)
    return model


def tokenizer_from_text(text: str, source: str | Path = "checkpoint"):
    """A tokenizer from the text of its file (as stored in a captioner checkpoint)."""
    try:
        return parse_tokenizer(text, source)
    except ValueError as e:
        raise CheckpointError(f"{source}: the stored tokenizer is unreadable: {e}") from None


def load_captioner(checkpoint_path: str | Path, device: torch.device | str = "cpu", max_len: int = 0):
    """``(model in eval mode on device, tokenizer, payload)`` from a captioner checkpoint alone.

    ``max_len``: decode up to this many positions even if training used fewer.
    Raises CheckpointError naming the file for a missing, corrupt or non-captioner checkpoint.
    """
    payload = load_checkpoint(checkpoint_path, kind=KIND)
    model = captioner_from_payload(payload, checkpoint_path, max_len=max_len).to(device).eval()
    return model, tokenizer_from_text(payload.get("tokenizer", ""), checkpoint_path), payload


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
