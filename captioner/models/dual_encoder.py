"""The dual encoder: an image tower and a text tower that meet in one embedding space.

Retrieval does not generate a caption; it ranks existing ones. Both towers map their input to a
unit vector of the same dimension E, and the score of an (image, caption) pair is the cosine of the
angle between the two vectors, i.e. their dot product::

    image (3, H, W) --ViT--> patch features (L, C) --mean--> (C,) --Linear--> (E,) --L2 norm--> u
    caption tokens (T,) --embed + transformer encoder--> (T, Ct) --mean over real tokens--> (Ct,)
                                                               --Linear--> (E,) --L2 norm--> v
    score(image, caption) = u . v   in [-1, 1]

The image tower is the project's ViT (:class:`~captioner.models.vit.ImageEncoder`), random or taken
from an MAE checkpoint. The text tower is a bidirectional transformer encoder from
``transformer_components`` (every token sees every other; padding is masked out of the attention and
out of the mean). ``logit_scale`` is the learned inverse temperature of the InfoNCE loss
(``captioner/training/contrastive.py``), stored as a log so it stays positive; CLIP starts it at
1 / 0.07 and caps it at 100. The cap is applied to the parameter after each optimiser step
(:meth:`DualEncoder.cap_logit_scale`, called by ``train_retrieval.py``), not inside the forward pass:
a clamp there would give the parameter a gradient of 0 above the cap, so it could never come back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config import TextEncoderConfig, ViTConfig
from captioner.models.vit import ImageEncoder, init_linear_and_norm
from captioner.text.tokenizers import PAD_ID
from transformer_components import TransformerEncoder, sinusoidal_position_encoding

KIND = "retrieval"  # the checkpoint kind of train_retrieval.py
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1 / temperature: keeps the softmax from becoming a hard max


def masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of x (B, T, C) over the positions where keep (B, T) is True -> (B, C).

    Example: x = [[[1.], [3.], [100.]]], keep = [[True, True, False]] -> [[2.]].
    """
    keep = keep.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, C)


class TextEncoder(nn.Module):
    """Caption tokens (B, T) ``<sos> ids <eos> <pad>...`` -> one feature per caption (B, Ct).

    Token embedding (scaled by sqrt(Ct), like the caption decoder's) + fixed sinusoidal positions,
    a stack of pre-norm bidirectional transformer layers with a final LayerNorm, then the mean over
    the non-pad tokens.
    """

    def __init__(self, vocab_size: int, text: TextEncoderConfig, max_len: int):
        super().__init__()
        self.width, self.max_len = text.width, max_len
        self.token_embedding = nn.Embedding(vocab_size, text.width, padding_idx=PAD_ID)
        nn.init.normal_(self.token_embedding.weight, std=text.width**-0.5)
        with torch.no_grad():
            self.token_embedding.weight[PAD_ID].zero_()
        self.register_buffer("position_encoding", sinusoidal_position_encoding(max_len, text.width),
                             persistent=False)
        self.transformer = TransformerEncoder(text.depth, text.width, text.heads, int(text.width * text.mlp_ratio),
                                              text.dropout)
        init_linear_and_norm(self.transformer)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        if T > self.max_len:
            raise ValueError(f"captions of {T} tokens exceed the text encoder's max_len={self.max_len}")
        pad = tokens == PAD_ID  # (B, T) True where there is no token
        x = self.token_embedding(tokens) * math.sqrt(self.width) + self.position_encoding[:T]  # (B, T, Ct)
        x = self.transformer(x, key_padding_mask=pad)  # (B, T, Ct)
        return masked_mean(x, ~pad)  # (B, Ct)


class DualEncoder(nn.Module):
    """Image tower + text tower + one linear projection each into the shared E-dimensional space."""

    def __init__(self, vit: ViTConfig, text: TextEncoderConfig, vocab_size: int, max_len: int, embed_dim: int,
                 init_temperature: float = 0.07):
        super().__init__()
        self.image_encoder = ImageEncoder(vit)
        self.text_encoder = TextEncoder(vocab_size, text, max_len)
        self.image_projection = nn.Linear(vit.width, embed_dim, bias=False)
        self.text_projection = nn.Linear(text.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def encode_images(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> unit embeddings (B, E)."""
        features = self.image_encoder(images).mean(1)  # (B, C): the mean over the patches
        return F.normalize(self.image_projection(features), dim=-1)  # (B, E)

    def encode_texts(self, tokens: Tensor) -> Tensor:
        """Caption tokens (B, T) -> unit embeddings (B, E)."""
        return F.normalize(self.text_projection(self.text_encoder(tokens)), dim=-1)  # (B, E)

    def scale(self) -> Tensor:
        """The inverse temperature exp(logit_scale); :meth:`cap_logit_scale` keeps it at most MAX_LOGIT_SCALE."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def cap_logit_scale(self) -> None:
        """Clamp the parameter to log(MAX_LOGIT_SCALE), after an optimiser step (as CLIP does)."""
        self.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(image embeddings (U, E), caption embeddings (B, E)); each image of the batch encoded once."""
        return self.encode_images(images), self.encode_texts(tokens)
