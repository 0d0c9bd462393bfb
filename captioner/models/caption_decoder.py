"""The caption decoder: token embedding + fixed position encoding + transformer decoder + tied
output layer. It follows the decoder protocol of transformer_components.generation."""

import math

import torch
from torch import Tensor, nn

from transformer_components import (
    KVCache,
    TransformerDecoder,
    sinusoidal_position_encoding,
)


class CaptionDecoder(nn.Module):
    """Caption tokens (B, T) + image memory (B, S, Cm) -> next-token logits (B, T, V).

    The output layer shares its weight with the token embedding (weight tying: a token's input
    and output vectors are the same). Embeddings start at std d_model**-0.5 and are scaled by
    sqrt(d_model) on input, as in "Attention is all you need": inputs then have unit scale like
    the sinusoidal position encoding, while the tied output logits start near unit scale.

    Tokens must be right-padded: causal self-attention then never lets a real token see a pad.

    Args:
        vocab_size: V. d_model: C. n_layers, n_heads, d_ff: the TransformerDecoder's shape.
        max_len: the most positions (tokens incl. <sos>) ever decoded.
        dropout: dropout everywhere in the decoder.
        pad_id: the padding token, whose embedding stays zero.
        memory_dim: Cm, the memory's width if it differs from d_model.
    """

    attends = True  # it has cross-attention maps (return_cross_attention); see lstm_decoders.py for one without

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        max_len: int,
        dropout: float = 0.0,
        pad_id: int = 0,
        memory_dim: int | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.token_embedding.weight, std=d_model**-0.5)
        with torch.no_grad():
            self.token_embedding.weight[pad_id].zero_()
        # derived from the config, so it is not saved in checkpoints
        self.register_buffer("position_encoding", sinusoidal_position_encoding(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.decoder = TransformerDecoder(n_layers, d_model, n_heads, d_ff, dropout, memory_dim)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied: (V, C)

    def new_cache(self) -> KVCache:
        """An empty KVCache for incremental decoding."""
        return self.decoder.new_cache()

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_cross_attention: bool = False,
        memory_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """tokens (B, T) long, memory (B, S, Cm) -> logits (B, T, V).

        memory_index (B,) long: memory is (U, S, Cm), one row per image, and caption b reads
        memory[memory_index[b]]; each image's cross-attention keys/values are then computed once.

        With a cache, `tokens` are the new positions only, starting at position len(cache).
        return_cross_attention also returns one (B, H, T, S) weight tensor per layer.
        """
        start = 0 if cache is None else len(cache)
        T = tokens.size(1)
        if start + T > self.max_len:
            raise ValueError(f"positions up to {start + T} exceed the decoder's max_len={self.max_len}")
        x = self.token_embedding(tokens) * math.sqrt(self.d_model)  # (B, T, C)
        x = self.dropout(x + self.position_encoding[start : start + T])  # (B, T, C)
        out = self.decoder(x, memory, memory_padding_mask, cache, return_cross_attention, memory_index)
        h, maps = out if return_cross_attention else (out, None)
        logits = self.lm_head(h)  # (B, T, V)
        return (logits, maps) if return_cross_attention else logits
