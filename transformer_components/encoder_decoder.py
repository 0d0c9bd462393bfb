"""An encoder and a decoder joined: training forward pass and caption generation."""

import torch
from torch import Tensor, nn

from .generation import beam_search, greedy_search


class EncoderDecoder(nn.Module):
    """encoder(src) -> memory (B, S, C); decoder(tokens, memory, ...) -> logits (B, T, V).

    The encoder may be any module (for images src is (B, 3, H, W)). The decoder follows the
    protocol of transformer_components.generation (e.g. captioner.models.caption_decoder.CaptionDecoder):
    decoder(tokens, memory, memory_padding_mask=None, cache=None) and decoder.new_cache(); for
    `forward` with `src_index` it also takes `memory_index=` (see TransformerDecoder).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, src) -> Tensor:
        """src -> memory (B, S, C)."""
        return self.encoder(src)

    def forward(self, src, tokens: Tensor, src_index: Tensor | None = None,
                return_cross_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Teacher-forced logits (N, T, V) for tokens (N, T), right-padded.

        src_index (N,) long: row n of `tokens` belongs to source src_index[n], so a batch of U
        images is encoded once and shared by all of their captions. Without it N must equal B.
        Example: 2 images with 5 captions each -> src (2, 3, H, W), tokens (10, T),
        src_index = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1].
        The decoder's cross-attention also projects each source's keys/values once and shares
        them (memory_index), rather than once per caption.
        With return_cross_attention the decoder's attention weights come too: ``(logits, maps)``.
        """
        memory = self.encode(src)  # (B, S, C)
        extra = {"return_cross_attention": True} if return_cross_attention else {}
        if src_index is None:
            return self.decoder(tokens, memory, **extra)  # (N, T, V)
        return self.decoder(tokens, memory, memory_index=src_index, **extra)  # (N, T, V)

    @torch.no_grad()
    def generate(
        self,
        src,
        sos_id: int,
        eos_id: int,
        pad_id: int,
        max_len: int,
        beam_size: int = 1,
        alpha: float = 0.0,
        use_cache: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Decode every source: greedy when beam_size == 1, else batched beam search.

        Returns tokens (B, L) long, the best sequence per source without <sos>, including <eos>
        when it was produced, padded with pad_id, L <= max_len; and scores (B,): total
        log-probability divided by GNMT's length penalty ((5 + n) / 6) ** alpha, where n counts
        the generated tokens including <eos> (alpha = 0: plain log-probability).
        See transformer_components.generation for the details. Call .eval() first, or
        dropout stays active while decoding.
        """
        if max_len < 1 or beam_size < 1:
            raise ValueError(f"generate needs max_len >= 1 and beam_size >= 1, got {max_len} and {beam_size}")
        memory = self.encode(src)  # (B, S, C)
        if beam_size == 1:
            return greedy_search(self.decoder, memory, sos_id, eos_id, pad_id, max_len, alpha, use_cache=use_cache)
        tokens, scores = beam_search(
            self.decoder, memory, sos_id, eos_id, pad_id, max_len, beam_size, alpha, use_cache=use_cache
        )
        return tokens[:, 0], scores[:, 0]  # the best hypothesis of each source
