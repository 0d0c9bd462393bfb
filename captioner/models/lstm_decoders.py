"""The LSTM caption decoders: Show and Tell (Vinyals et al., 2015) and Show, Attend and Tell (Xu et al., 2015).

Both read the encoder's grid of features ``memory`` (B, S, C) (a ResNet's H*W cells or a ViT's
patches) and emit next-token logits one step at a time from the handwritten
:class:`~captioner.models.lstm.LSTMCell`:

- :class:`ShowAndTellDecoder`: the image enters once. Its grid is averaged to one vector, which either
  sets the initial state ``(h0, c0)`` (``image_input: state``) or is fed as the input of a step before
  ``<sos>`` (``image_input: first_input``, the original paper's choice). After that the LSTM sees only
  words: everything it knows about the image must live in its state.
- :class:`AttendAndTellDecoder`: before every word it looks at the grid again. Additive ("Bahdanau")
  attention scores each cell against the previous hidden state::

      e_ti = w . tanh(W_a a_i + U_a h_{t-1})      alpha_t = softmax_i(e_ti)      (padding cells: -inf)
      z_t  = beta_t * sum_i alpha_ti a_i          beta_t = sigmoid(f_beta(h_{t-1})), a gating scalar
      (h_t, c_t) = LSTM([embed(y_{t-1}); z_t], (h_{t-1}, c_{t-1}))

  ``beta`` lets the decoder turn the image down for words like "of" or "the". Training adds the
  doubly stochastic regulariser :func:`doubly_stochastic_penalty`, which asks every cell to receive
  about one unit of attention over the whole caption, so no part of the image is ignored.

Both follow the decoder protocol of ``transformer_components/generation.py``, so they decode through
the very same batched beam search as the transformer: ``decoder(tokens, memory, cache=...)`` returns
logits (B, T, V), and ``new_cache()`` returns an :class:`LSTMCache`. The LSTM's "cache" is its state
(h, c) after the tokens fed so far: with it each step feeds only the newest token; without it the
whole prefix is run again from the image. Beam search reorders the cache's rows with the beams, as it
reorders the transformer's keys and values; the attention decoder also caches ``W_a a_i``, the part
of the attention that depends on the image alone (the counterpart of cross-attention's keys/values).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config import LSTMDecoderConfig
from captioner.models.lstm import LSTMCell


class LSTMCache:
    """The state of an LSTM decoder after ``len(cache)`` tokens: h, c (N, H), and the attention's
    projected memory (N, S, A) when the decoder attends."""

    def __init__(self) -> None:
        self.steps = 0
        self.h = self.c = self.memory_projection = None

    def __len__(self) -> int:
        """The number of tokens fed so far (the position of the next one)."""
        return self.steps

    def reorder(self, index: Tensor, cross_attention: bool = True) -> None:
        """Keep rows ``index`` (N,) of every cached tensor (beams expanded, or re-ranked).

        ``cross_attention=False`` leaves the projected memory alone: correct when rows only move among
        the beams of one image, which share it (the protocol of ``KVCache.reorder``).
        """
        self.h, self.c = self.h.index_select(0, index), self.c.index_select(0, index)
        if cross_attention and self.memory_projection is not None:
            self.memory_projection = self.memory_projection.index_select(0, index)


def doubly_stochastic_penalty(alphas: Tensor, real: Tensor) -> Tensor:
    """Show, Attend and Tell's regulariser ``sum_pixels (1 - sum_t alpha_ti)^2``, averaged over the batch.

    alphas (B, T, S) attention weights of each step; real (B, T) bool, False at padding steps (they
    are not part of the caption and add no attention). Example: one caption of 2 steps over 2 cells
    attending (1, 0) then (0, 1) gives 0; attending (1, 0) twice gives (1 - 2)^2 + (1 - 0)^2 = 2.
    """
    total = (alphas * real[:, :, None]).sum(dim=1)  # (B, S) attention each cell got over the caption
    return ((1.0 - total) ** 2).sum(dim=1).mean()


class LSTMDecoder(nn.Module):
    """What both LSTM decoders share: embedding, cell, output layer, and the loop over steps.

    A subclass defines ``initial_state(memory, mask)`` and ``step(x, state, memory, cache_extra, mask)``.
    """

    attends = False  # whether step() attends over the grid (and returns attention weights)

    def __init__(self, vocab_size: int, memory_dim: int, config: LSTMDecoderConfig, max_len: int, input_size: int,
                 pad_id: int = 0):
        super().__init__()
        self.config = config
        self.max_len = max_len  # positions the training and decoding use; the LSTM itself has no limit
        self.token_embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_id)
        self.cell = LSTMCell(input_size, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden, vocab_size)

    def new_cache(self) -> LSTMCache:
        """An empty cache for incremental decoding."""
        return LSTMCache()

    def project_memory(self, memory: Tensor) -> Tensor | None:
        """What a step needs from the image alone, computed once per image (None: nothing)."""
        return None

    def forward(self, tokens: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None,
                cache: LSTMCache | None = None, return_cross_attention: bool = False,
                memory_index: Tensor | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """tokens (B, T) long, memory (B, S, C) -> logits (B, T, V).

        memory_index (B,): memory is (U, S, C), one row per image, and caption b reads
        memory[memory_index[b]]. With a cache, ``tokens`` are the new ones only and the state continues
        from the cache. return_cross_attention also returns ``[alphas (B, 1, T, S)]`` (one "head", the
        transformer's layout) for an attending decoder.
        """
        if memory_index is not None:
            memory = memory.index_select(0, memory_index)  # (B, S, C)
            if memory_padding_mask is not None:
                memory_padding_mask = memory_padding_mask.index_select(0, memory_index)
        if cache is None or len(cache) == 0:
            state = self.initial_state(memory, memory_padding_mask)  # (h0, c0), (B, H) each
            projection = self.project_memory(memory)  # (B, S, A) or None
        else:
            state, projection = (cache.h, cache.c), cache.memory_projection
        x = self.token_embedding(tokens)  # (B, T, E)
        hidden, alphas = [], []
        for t in range(tokens.size(1)):
            state, alpha = self.step(x[:, t], state, memory, projection, memory_padding_mask)
            hidden.append(state[0])
            alphas.append(alpha)
        if cache is not None:
            cache.h, cache.c = state
            cache.memory_projection = projection
            cache.steps += tokens.size(1)
        logits = self.lm_head(self.dropout(torch.stack(hidden, dim=1)))  # (B, T, V)
        if not return_cross_attention:
            return logits
        if not self.attends:
            raise ValueError("this LSTM decoder does not attend: it has no attention maps")
        return logits, [torch.stack(alphas, dim=1)[:, None]]  # (B, 1, T, S)


def pooled(memory: Tensor, mask: Tensor | None) -> Tensor:
    """The mean feature over the grid cells that are not padding: (B, S, C) -> (B, C)."""
    if mask is None:
        return memory.mean(dim=1)
    keep = (~mask).to(memory.dtype)[:, :, None]  # (B, S, 1)
    return (memory * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class ShowAndTellDecoder(LSTMDecoder):
    """No attention: the pooled image sets the state, or is the input of one step before ``<sos>``."""

    def __init__(self, vocab_size: int, memory_dim: int, config: LSTMDecoderConfig, max_len: int, pad_id: int = 0):
        super().__init__(vocab_size, memory_dim, config, max_len, config.embed_dim, pad_id)
        if config.image_input == "state":
            self.init_h = nn.Linear(memory_dim, config.hidden)
            self.init_c = nn.Linear(memory_dim, config.hidden)
        else:
            self.image_embedding = nn.Linear(memory_dim, config.embed_dim)  # the image as a "word"

    def initial_state(self, memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        v = pooled(memory, mask)  # (B, C)
        if self.config.image_input == "state":
            return torch.tanh(self.init_h(v)), self.init_c(v)  # (B, H) each
        zeros = v.new_zeros(v.size(0), self.config.hidden)  # (B, H)
        return self.cell(self.image_embedding(v), (zeros, zeros))  # the step before <sos> reads the image

    def step(self, x: Tensor, state, memory, projection, mask):
        return self.cell(x, state), None


class AttendAndTellDecoder(LSTMDecoder):
    """Soft additive attention over the grid before every step, gated by a scalar beta."""

    attends = True

    def __init__(self, vocab_size: int, memory_dim: int, config: LSTMDecoderConfig, max_len: int, pad_id: int = 0):
        super().__init__(vocab_size, memory_dim, config, max_len, config.embed_dim + memory_dim, pad_id)
        self.init_h = nn.Linear(memory_dim, config.hidden)
        self.init_c = nn.Linear(memory_dim, config.hidden)
        self.memory_proj = nn.Linear(memory_dim, config.attention_dim)  # W_a
        self.hidden_proj = nn.Linear(config.hidden, config.attention_dim)  # U_a
        self.score = nn.Linear(config.attention_dim, 1)  # w
        self.gate = nn.Linear(config.hidden, 1)  # f_beta

    def initial_state(self, memory: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        v = pooled(memory, mask)  # (B, C)
        return torch.tanh(self.init_h(v)), self.init_c(v)  # (B, H) each

    def project_memory(self, memory: Tensor) -> Tensor:
        return self.memory_proj(memory)  # (B, S, A): W_a a_i, the same at every step

    def attend(self, h: Tensor, memory: Tensor, projection: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The gated context z (B, C) and the weights alpha (B, S) for the previous hidden state h (B, H)."""
        e = self.score(torch.tanh(projection + self.hidden_proj(h)[:, None])).squeeze(-1)  # (B, S)
        if mask is not None:
            e = e.masked_fill(mask, float("-inf"))  # padding cells get no attention
        # the softmax in at least float32 (bf16/fp16 sums drift), and in float64 for a float64 model
        alpha = torch.softmax(e, dim=-1, dtype=torch.promote_types(e.dtype, torch.float32))  # (B, S), sums to 1
        alpha = alpha.to(memory.dtype)
        context = (alpha[:, :, None] * memory).sum(dim=1)  # (B, C)
        beta = torch.sigmoid(self.gate(h))  # (B, 1)
        return beta * context, alpha

    def step(self, x: Tensor, state, memory, projection, mask):
        z, alpha = self.attend(state[0], memory, projection, mask)  # (B, C), (B, S)
        return self.cell(torch.cat([x, z], dim=-1), state), alpha
