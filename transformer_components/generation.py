"""Greedy decoding and batched beam search for any decoder that follows this protocol:

    decoder(tokens (N, T), memory (N, S, Cm), memory_padding_mask=None, cache=None) -> logits (N, T, V)
    decoder.new_cache() -> KVCache

With a cache the decoder is fed only the newest token each step; without one it recomputes the
whole prefix (and the memory's cross-attention keys/values) every step.

Scoring. A sequence's score is its total log-probability log p(y_1..y_n | memory), where the
sequence ends with <eos> or is cut at max_len; n counts the generated tokens *including* <eos>
(not <sos>, not padding). With alpha > 0 the score is length-normalised as in GNMT:

    score = logp / lp(n),   lp(n) = ((5 + n) / 6) ** alpha       (alpha = 0: lp = 1)

<sos> and <pad> are never generated: their log-probabilities are set to -inf (the others keep
the model's log-softmax values).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's lp(n) = ((5 + n) / 6) ** alpha. Example: lp(1) = 1, lp(7) = 2 ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def sequence_lengths(tokens: Tensor, eos_id: int) -> Tensor:
    """Generated tokens up to and including the first <eos>, else all of them. (..., L) -> (...)."""
    is_eos = tokens == eos_id  # (..., L)
    first = is_eos.int().argmax(dim=-1)  # (...) index of the first <eos>, 0 if none
    return torch.where(is_eos.any(dim=-1), first + 1, tokens.size(-1))


def _next_log_probs(
    decoder: nn.Module,
    tokens: Tensor,
    memory: Tensor,
    memory_padding_mask: Tensor | None,
    cache,
    forbidden: list[int],
) -> Tensor:
    """Log-probabilities of the next token after each row of `tokens` (N, T). Returns (N, V)."""
    fed = tokens[:, -1:] if cache is not None else tokens  # the cache already holds the prefix
    logits = decoder(fed, memory, memory_padding_mask=memory_padding_mask, cache=cache)[:, -1]  # (N, V)
    if logits.element_size() < 4:  # scores accumulate over steps: sum them at least in float32
        logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)  # (N, V)
    logp[:, forbidden] = float("-inf")
    return logp


def _forbidden(sos_id: int, eos_id: int, pad_id: int) -> list[int]:
    return sorted({sos_id, pad_id} - {eos_id})


@torch.no_grad()
def greedy_search(
    decoder: nn.Module,
    memory: Tensor,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    alpha: float = 0.0,
    memory_padding_mask: Tensor | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Pick the most likely token at every step, for all B sources at once.

    memory (B, S, Cm) -> tokens (B, L) long without <sos>, padded with pad_id after <eos>,
    L <= max_len; and scores (B,) as described in the module docstring.
    """
    B = memory.size(0)
    forbidden = _forbidden(sos_id, eos_id, pad_id)
    cache = decoder.new_cache() if use_cache else None
    tokens = torch.full((B, 1), sos_id, dtype=torch.long, device=memory.device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=memory.device)  # (B,)
    logp_total = None
    for _ in range(max_len):
        logp = _next_log_probs(decoder, tokens, memory, memory_padding_mask, cache, forbidden)  # (B, V)
        best_logp, best = logp.max(dim=-1)  # (B,), (B,)
        best = best.masked_fill(finished, pad_id)  # finished rows only get padding
        best_logp = best_logp.masked_fill(finished, 0.0)
        logp_total = best_logp if logp_total is None else logp_total + best_logp
        tokens = torch.cat([tokens, best[:, None]], dim=1)  # (B, t + 1)
        finished = finished | (best == eos_id)
        if finished.all():
            break
    generated = tokens[:, 1:]  # (B, L)
    lengths = sequence_lengths(generated, eos_id).to(logp_total.dtype)  # (B,)
    return generated, logp_total / length_penalty(lengths, alpha)


@torch.no_grad()
def beam_search(
    decoder: nn.Module,
    memory: Tensor,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    beam_size: int,
    alpha: float = 0.0,
    memory_padding_mask: Tensor | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Batched beam search: K = beam_size hypotheses for each of B sources, all in one batch.

    The beams of source b are rows b*K .. b*K+K-1 of every (B*K, ...) tensor.
    - Step 1 runs on one row per source and takes its top K tokens, so no beam is duplicated;
      only then are the memory and the cache (its cross-attention keys/values included)
      expanded to B*K rows.
    - Each later step scores every (beam, token) continuation by total log-probability and
      keeps the best K per source; the cache follows with `reorder`.
    - A finished beam (it produced <eos>) is frozen: its only continuation is <pad> at +0, so
      its score never changes; it stays in the beam and competes with the live ones.
    - The search stops when every beam is finished or after max_len generated tokens; the
      final K hypotheses are ranked by the length-normalised score (module docstring).
    If K exceeds the number of possible hypotheses, the surplus beams have score -inf.

    memory (B, S, Cm) -> tokens (B, K, L) long, best first, without <sos>, padded with pad_id
    after <eos>, L <= max_len; and scores (B, K), descending.
    """
    B, K = memory.size(0), beam_size
    device = memory.device
    forbidden = _forbidden(sos_id, eos_id, pad_id)
    cache = decoder.new_cache() if use_cache else None

    tokens = torch.full((B, 1), sos_id, dtype=torch.long, device=device)  # (B, 1)
    logp = _next_log_probs(decoder, tokens, memory, memory_padding_mask, cache, forbidden)  # (B, V)
    V = logp.size(-1)
    if V < K:  # fewer first tokens than beams: the rest start dead (-inf)
        logp = F.pad(logp, (0, K - V), value=float("-inf"))  # (B, K)
    scores, first = logp.topk(K, dim=-1)  # (B, K) each
    first = first.masked_fill(first >= V, pad_id)  # dead beams' token is a placeholder

    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) source of each beam
    memory = memory.index_select(0, expand)  # (B*K, S, Cm)
    if memory_padding_mask is not None:
        memory_padding_mask = memory_padding_mask.index_select(0, expand)  # (B*K, S)
    if cache is not None:
        cache.reorder(expand)
    tokens = torch.cat([tokens.index_select(0, expand), first.view(B * K, 1)], dim=1)  # (B*K, 2)
    scores = scores.view(B * K)  # (B*K,)
    finished = (tokens[:, -1] == eos_id) | scores.isneginf()  # (B*K,)

    # the single continuation of a finished beam: <pad> at log-probability 0
    frozen = torch.full((V,), float("-inf"), dtype=scores.dtype, device=device)  # (V,)
    frozen[pad_id] = 0.0
    beam_offset = (torch.arange(B, device=device) * K)[:, None]  # (B, 1) first row of each source

    for _ in range(1, max_len):
        if finished.all():
            break
        logp = _next_log_probs(decoder, tokens, memory, memory_padding_mask, cache, forbidden)  # (B*K, V)
        logp = torch.where(finished[:, None], frozen, logp)  # (B*K, V)
        candidates = (scores[:, None] + logp).view(B, K * V)  # (B, K*V) all continuations per source
        scores, flat = candidates.topk(K, dim=-1)  # (B, K) each
        parent = (flat // V + beam_offset).view(B * K)  # (B*K,) row of the beam each one extends
        token = (flat % V).view(B * K, 1)  # (B*K, 1)
        tokens = torch.cat([tokens.index_select(0, parent), token], dim=1)  # (B*K, t + 1)
        scores = scores.view(B * K)
        finished = finished.index_select(0, parent) | (token[:, 0] == eos_id)
        if cache is not None:
            # beams only move among the rows of their own source, whose memory is the same
            cache.reorder(parent, cross_attention=False)

    generated = tokens[:, 1:].view(B, K, -1)  # (B, K, L)
    lengths = sequence_lengths(generated, eos_id).to(scores.dtype)  # (B, K)
    normalised = scores.view(B, K) / length_penalty(lengths, alpha)  # (B, K)
    normalised, order = normalised.sort(dim=-1, descending=True)  # (B, K)
    generated = generated.gather(1, order[:, :, None].expand_as(generated))  # (B, K, L)
    return generated, normalised
