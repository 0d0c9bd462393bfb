"""The captioner as a whole: build it, its teacher-forcing loss, and rebuild it from a checkpoint.

The captioner is a :class:`~transformer_components.EncoderDecoder` of an image encoder and a
caption decoder, so greedy decoding and beam search work on every combination unchanged:

    encoder_kind  vit     :class:`~captioner.models.vit.ImageEncoder`, patch features (B, L, C)
                  resnet  :class:`~captioner.models.resnet.ResNetEncoder`, a grid of features (B, H*W, C)
    decoder_kind  transformer     :class:`~captioner.models.caption_decoder.CaptionDecoder` (cross-attention)
                  lstm            :class:`~captioner.models.lstm_decoders.ShowAndTellDecoder` (pooled image)
                  attention-lstm  :class:`~captioner.models.lstm_decoders.AttendAndTellDecoder` (soft attention)

Teacher forcing: the decoder reads the caption shifted right and predicts it shifted left, every
position at once::

    tokens   <sos> a  red circle <eos> <pad>
    input    <sos> a  red circle <eos>           tokens[:, :-1]
    target   a     red circle <eos> <pad>        tokens[:, 1:]

and :func:`caption_loss` averages the cross-entropy over the real (non-pad) targets only.

A captioner checkpoint is self-contained: besides the training state (with the run config, which names
the encoder and decoder kinds and the decoder's settings) it stores the encoder architecture
(``"vit"`` or ``"resnet"``), the vocabulary size, the decoder's ``max_len`` and the tokenizer file's text, so
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
    LSTMDecoderConfig,
    ResNetConfig,
    ViTConfig,
    config_from_dict,
    config_to_dict,
)
from captioner.models.caption_decoder import CaptionDecoder
from captioner.models.lstm_decoders import AttendAndTellDecoder, ShowAndTellDecoder
from captioner.models.resnet import ResNetEncoder
from captioner.models.vit import ImageEncoder
from captioner.text.tokenizers import EOS_ID, PAD_ID, parse_tokenizer
from captioner.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
)
from transformer_components import EncoderDecoder

KIND = "captioner"  # the checkpoint kind of train_captioner.py


ENCODERS = {ViTConfig: ("vit", ImageEncoder), ResNetConfig: ("resnet", ResNetEncoder)}  # config type -> kind, class
LSTM_DECODERS = {"lstm": ShowAndTellDecoder, "attention-lstm": AttendAndTellDecoder}


def build_captioner(encoder_config: ViTConfig | ResNetConfig, decoder: CaptionDecoderConfig, vocab_size: int,
                    max_len: int, decoder_kind: str = "transformer",
                    lstm: LSTMDecoderConfig | None = None) -> EncoderDecoder:
    """An encoder (ViT or ResNet, by the type of ``encoder_config``) + a caption decoder of ``decoder_kind``
    (``decoder`` configures a transformer, ``lstm`` an LSTM); ``max_len`` = the most token positions ever decoded.

    The decoder may be narrower or wider than the encoder: it projects the encoder's ``width`` features
    to its own sizes.
    """
    encoder = ENCODERS[type(encoder_config)][1](encoder_config)
    if decoder_kind == "transformer":
        caption_decoder = CaptionDecoder(
            vocab_size, decoder.width, decoder.depth, decoder.heads, int(decoder.width * decoder.mlp_ratio), max_len,
            dropout=decoder.dropout, pad_id=PAD_ID, memory_dim=encoder.width,
        )
    elif decoder_kind in LSTM_DECODERS:
        caption_decoder = LSTM_DECODERS[decoder_kind](vocab_size, encoder.width, lstm or LSTMDecoderConfig(), max_len,
                                                      pad_id=PAD_ID)
    else:
        raise ValueError(f"decoder_kind: expected transformer, lstm or attention-lstm, got {decoder_kind!r}")
    return EncoderDecoder(encoder, caption_decoder)


def captioner_for_config(cfg: CaptionerRunConfig, encoder_config: ViTConfig | ResNetConfig, vocab_size: int,
                         max_len: int) -> EncoderDecoder:
    """:func:`build_captioner` with the decoder named by a run config."""
    return build_captioner(encoder_config, cfg.decoder, vocab_size, max_len, cfg.decoder_kind, cfg.lstm)


def caption_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with label smoothing, averaged over the non-pad targets.

    logits (B, T, V), targets (B, T) long with PAD_ID where there is no token. A pad target adds
    nothing to the sum and is not counted in the mean (``ignore_index``; PyTorch also leaves it
    out of the smoothing term).
    """
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing)


def eos_suppression_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The mean probability the model puts on ``<eos>`` where the caption has not ended yet.

    logits (B, T, V), targets (B, T). Positions whose target is a real token other than ``<eos>``
    count; the ``<eos>`` target itself and padding do not. Added to the loss with a weight
    (``eos_suppression``), it pushes against captions that stop too early. Example: a target
    ``a circle <eos> <pad>`` counts the first two positions.
    """
    before_end = (targets != PAD_ID) & (targets != EOS_ID)  # (B, T)
    p_eos = torch.exp(logits[..., EOS_ID].float() - logits.float().logsumexp(dim=-1))  # (B, T)
    return (p_eos * before_end).sum() / before_end.sum().clamp(min=1)


def teacher_forcing_loss(model: EncoderDecoder, images: Tensor, tokens: Tensor, image_index: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """The training loss of a batch: images (U, 3, H, W) normalised, each encoded once; tokens (B, T)
    ``<sos> ... <eos> <pad>...``; image_index (B,) the row of ``images`` each caption describes."""
    logits = model(images, tokens[:, :-1], src_index=image_index)  # (B, T-1, V)
    return caption_loss(logits, tokens[:, 1:], label_smoothing)


def checkpoint_extras(encoder_config: ViTConfig | ResNetConfig, vocab_size: int, max_len: int, tokenizer_text: str,
                      pretrained: str | None) -> dict:
    """What a captioner checkpoint stores besides the training state (see the module docstring): the
    encoder architecture under its kind (``"vit"`` or ``"resnet"``); ``pretrained`` is the MAE
    checkpoint the run started from (None: from scratch)."""
    return {ENCODERS[type(encoder_config)][0]: config_to_dict(encoder_config), "vocab_size": vocab_size,
            "max_len": max_len, "tokenizer": tokenizer_text, "pretrained": pretrained}


def captioner_from_payload(payload: dict, source: str | Path, cfg: CaptionerRunConfig | None = None,
                           max_len: int = 0) -> EncoderDecoder:
    """The captioner described by a checkpoint payload, with its weights (on the CPU).

    ``cfg`` replaces the stored run config's decoder settings (a resumed run's ``--set`` overrides);
    weights that then do not fit raise CheckpointError. ``max_len`` raises the decoder's position
    limit above the stored one (its position encoding is computed, not learned, so any length works).
    Checkpoints written before ResNets and LSTMs existed hold ``"vit"`` and a transformer decoder.
    """
    try:
        if "resnet" in payload:
            encoder_config = config_from_dict(ResNetConfig, payload["resnet"], source=f"{source} (resnet)")
        else:
            encoder_config = config_from_dict(ViTConfig, payload["vit"], source=f"{source} (vit)")
        if cfg is None:
            cfg = config_from_dict(CaptionerRunConfig, payload["config"], source=f"{source} (config)")
        stored_kind = ENCODERS[type(encoder_config)][0]
        if cfg.encoder_kind != stored_kind:
            raise ConfigError(f"encoder_kind is {cfg.encoder_kind!r}, but the checkpoint holds a {stored_kind!r} encoder")
        model = captioner_for_config(cfg, encoder_config, payload["vocab_size"], max(payload["max_len"], max_len))
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
