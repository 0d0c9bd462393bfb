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

Rebuilding a captioner from its checkpoint (``load_captioner``) and taking a pretrained encoder from
an MAE checkpoint (``encoder_from_mae_checkpoint``) live in :mod:`captioner.training.checkpoints`; published
weights (torchvision ResNets, official MAE and timm ViTs) load through ``captioner/models/pretrained.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    LSTMDecoderConfig,
    ResNetConfig,
    ViTConfig,
)
from captioner.models.caption_decoder import CaptionDecoder
from captioner.models.lstm_decoders import AttendAndTellDecoder, ShowAndTellDecoder
from captioner.models.resnet import ResNetEncoder
from captioner.models.vit import ImageEncoder
from captioner.text.tokenizers import EOS_ID, PAD_ID
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

    The original ResNet-101 + transformer project penalised ``<eos>`` at the first 15 positions of
    every caption instead. Here the caption's own end decides: shapes captions are 12 tokens long on
    average, so a fixed 15 would push against the true end of most of them.
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
