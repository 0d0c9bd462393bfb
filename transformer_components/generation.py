"""Greedy decoding, sampling and batched beam search for any decoder that follows this protocol:

    decoder(tokens (N, T), memory (N, S, Cm), memory_padding_mask=None, cache=None) -> logits (N, T, V)
    decoder.new_cache() -> KVCache

With a cache the decoder is fed only the newest token each step; without one it recomputes the
whole prefix (and the memory's cross-attention keys/values) every step. `beam_search_plain` is the
search written for one source without any of that; `beam_search` is the fast, batched one.

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


def length_penalty(length: Tensor | float, alpha: float) -> Tensor | float:
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


def forbidden_tokens(sos_id: int, eos_id: int, pad_id: int) -> list[int]:
    return sorted({sos_id, pad_id} - {eos_id})


def _one_token_at_a_time(
    decoder: nn.Module,
    memory: Tensor,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    pick,
    memory_padding_mask: Tensor | None,
    use_cache: bool,
) -> tuple[Tensor, Tensor]:
    """The loop of greedy decoding and sampling: ``pick(logp (N, V)) -> (N,)`` chooses each row's next
    token. Returns tokens (N, L) without <sos>, pad_id after <eos>, and their total log-probability (N,).
    A finished row still gets a pick, which is then replaced by padding (so a sampler draws the same
    numbers whether or not the cache is used)."""
    N = memory.size(0)
    forbidden = forbidden_tokens(sos_id, eos_id, pad_id)
    cache = decoder.new_cache() if use_cache else None
    tokens = torch.full((N, 1), sos_id, dtype=torch.long, device=memory.device)  # (N, 1)
    finished = torch.zeros(N, dtype=torch.bool, device=memory.device)  # (N,)
    logp_total = None
    for _ in range(max_len):
        logp = _next_log_probs(decoder, tokens, memory, memory_padding_mask, cache, forbidden)  # (N, V)
        chosen = pick(logp)  # (N,)
        chosen_logp = logp.gather(1, chosen[:, None])[:, 0].masked_fill(finished, 0.0)  # (N,)
        chosen = chosen.masked_fill(finished, pad_id)  # finished rows only get padding
        logp_total = chosen_logp if logp_total is None else logp_total + chosen_logp
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (N, t + 1)
        finished = finished | (chosen == eos_id)
        if finished.all():
            break
    return tokens[:, 1:], logp_total


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
    generated, logp_total = _one_token_at_a_time(decoder, memory, sos_id, eos_id, pad_id, max_len,
                                                 lambda logp: logp.argmax(dim=-1), memory_padding_mask, use_cache)
    lengths = sequence_lengths(generated, eos_id).to(logp_total.dtype)  # (B,)
    return generated, logp_total / length_penalty(lengths, alpha)


@torch.no_grad()
def sample(
    decoder: nn.Module,
    memory: Tensor,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    generator: torch.Generator | None = None,
    memory_padding_mask: Tensor | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Draw every next token from the model's distribution (multinomial), for all N sources at once.

    Greedy decoding with ``torch.multinomial`` in place of the argmax: self-critical training (SCST)
    samples captions this way and scores them. For K samples per image, repeat each image's memory K
    times (``memory.repeat_interleave(K, dim=0)``). The draws come from ``generator`` (None: PyTorch's
    global generator); the same generator state gives the same tokens with and without the cache.

    memory (N, S, Cm) -> tokens (N, L) long without <sos>, padded with pad_id after <eos>, L <= max_len;
    and the total log-probability (N,) of each sequence (its <eos> included, the padding not), with the
    module docstring's log-probabilities: the draw itself renormalises over the tokens other than
    <sos> and <pad>.
    """
    draw = lambda logp: torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]  # noqa: E731
    return _one_token_at_a_time(decoder, memory, sos_id, eos_id, pad_id, max_len, draw, memory_padding_mask,
                                use_cache)


@torch.no_grad()
def beam_search_plain(
    decoder: nn.Module,
    memory: Tensor,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    beam_size: int,
    alpha: float = 0.0,
) -> list[tuple[list[int], float]]:
    """Beam search for one source, written plainly: no cache, no batch, no early stop.

    memory (S, Cm) -> the best `beam_size` hypotheses [(tokens without <sos>, score)], best first.
    At step t every live beam is fed again from <sos> and extended by every token; the best 2K
    continuations by total log-probability are the candidates. Those ending in <eos> join the
    pool with the score logp / lp(t); the best K others live on. At max_len the pool and the live
    beams (cut, n = max_len) are ranked together by normalised score. Needs beam_size >= 2
    (`beam_search` with K = 1 is greedy decoding). `beam_search` returns the same hypotheses.
    """
    forbidden = forbidden_tokens(sos_id, eos_id, pad_id)
    live: list[tuple[list[int], float]] = [([], 0.0)]  # (tokens, total log-probability)
    pool: list[tuple[list[int], float]] = []  # (tokens ending in <eos>, normalised score)
    for t in range(1, max_len + 1):
        prefixes = torch.tensor([[sos_id, *seq] for seq, _ in live], device=memory.device)  # (k, t)
        logp = _next_log_probs(decoder, prefixes, memory.expand(len(live), -1, -1), None, None, forbidden)
        continuations = [
            (seq + [token], score + logp[i, token].item())
            for i, (seq, score) in enumerate(live)
            for token in range(logp.size(-1))
            if token not in forbidden
        ]
        candidates = sorted(continuations, key=lambda c: -c[1])[: 2 * beam_size]
        pool += [(seq, score / length_penalty(t, alpha)) for seq, score in candidates if seq[-1] == eos_id]
        live = [(seq, score) for seq, score in candidates if seq[-1] != eos_id][:beam_size]
    ranked = pool + [(seq, score / length_penalty(max_len, alpha)) for seq, score in live]
    return sorted(ranked, key=lambda c: -c[1])[:beam_size]


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
    """Batched beam search: K = beam_size live beams and a pool of K finished hypotheses for
    each of B sources, all sources in one batch (as in GNMT, fairseq and Hugging Face).

    It returns `beam_search_plain`'s hypotheses (read that one first) and changes three things:
    all B sources are searched at once as (B*K, ...) tensors, the decoder is fed only the newest
    token over a KV cache, and a source stops as soon as nothing left can enter its pool.

    The live beams of source b are rows b*K .. b*K+K-1 of every (B*K, ...) tensor. At step t
    (the t-th generated token):
    - Every live beam is extended by every token; the best 2K continuations of each source by
      total log-probability are the candidates. (Step 1 runs on one row per source, so no beam
      is duplicated; only then are the memory and the cache expanded to B*K rows.)
    - A candidate ending in <eos> is finished: it joins the source's pool with its normalised
      score logp / lp(t), n = t counting the <eos>; the pool keeps its best K.
    - The best K candidates that do not end in <eos> are the new live beams (a beam has one
      <eos> continuation, so at most K of the 2K are <eos>); the cache follows with `reorder`.
    - Stopping bound: a live beam with total log-probability s <= 0 can only finish with some
      s' <= s at some length n in t+1 .. max_len, so its normalised score is at most
      s / max(lp(t+1), lp(max_len)) (lp grows with n for alpha > 0: the bound uses lp(max_len),
      not the current lp). A source is done when its pool holds K hypotheses and its worst
      one is >= that bound for its best live beam: nothing left could enter the pool. This is
      exact (the result equals running to max_len), but looser than fairseq's/HF's default
      "stop at K finished" heuristic, so with alpha > 0 it often runs longer.
      A done source's live beams are dropped (score -inf); the batch stops when all are done.
    - After max_len steps (or when all are done) the pool and the live beams (cut at max_len,
      n = max_len) are ranked together by normalised score.
    K = 1 is greedy_search: with a pool, a single beam would keep searching from the runner-up
    token after greedy's <eos>, which is no longer greedy decoding.
    If K exceeds the number of possible hypotheses, the surplus ones have score -inf.

    memory (B, S, Cm) -> tokens (B, K, L) long, best first, without <sos>, padded with pad_id
    after <eos>, L <= max_len; and scores (B, K), descending.
    """
    if beam_size == 1:
        tokens, scores = greedy_search(
            decoder, memory, sos_id, eos_id, pad_id, max_len, alpha, memory_padding_mask, use_cache
        )
        return tokens[:, None], scores[:, None]  # (B, 1, L), (B, 1)
    B, K = memory.size(0), beam_size
    device = memory.device
    forbidden = forbidden_tokens(sos_id, eos_id, pad_id)
    cache = decoder.new_cache() if use_cache else None
    source = torch.arange(B, device=device)[:, None]  # (B, 1)

    tokens = torch.full((B, 1), sos_id, dtype=torch.long, device=device)  # (B*k, 1 + t) live, k = 1 at first
    # float32 here; adding the first log-probs promotes scores and pool to their dtype if wider
    scores = torch.zeros(B, device=device)  # (B*k,) total log-probability of each live beam
    pool_tokens = torch.full((B, K, max_len), pad_id, dtype=torch.long, device=device)  # without <sos>
    pool_scores = torch.full((B, K), float("-inf"), device=device)  # (B, K) normalised, descending

    for t in range(1, max_len + 1):
        logp = _next_log_probs(decoder, tokens, memory, memory_padding_mask, cache, forbidden)  # (B*k, V)
        k, V = tokens.size(0) // B, logp.size(-1)
        candidates = (scores[:, None] + logp).view(B, k * V)  # (B, k*V) every continuation per source
        if k * V < 2 * K:  # fewer continuations than candidates: the rest are dead (-inf)
            candidates = F.pad(candidates, (0, 2 * K - k * V), value=float("-inf"))
        cand_scores, flat = candidates.topk(2 * K, dim=-1)  # (B, 2K) each, descending
        parent = (flat // V).clamp(max=k - 1) + source * k  # (B, 2K) row of the beam it extends
        token = torch.where(flat < k * V, flat % V, pad_id)  # (B, 2K)
        cand_tokens = torch.cat([tokens[parent], token[:, :, None]], dim=2)  # (B, 2K, 1 + t)
        is_eos = token == eos_id  # (B, 2K)

        # finished candidates join the pool, which keeps the best K by normalised score
        ended = F.pad(cand_tokens[:, :, 1:], (0, max_len - t), value=pad_id)  # (B, 2K, max_len)
        ended_scores = torch.where(is_eos, cand_scores / length_penalty(t, alpha), float("-inf"))  # (B, 2K)
        pool_scores, best = torch.cat([pool_scores, ended_scores], dim=1).topk(K, dim=1)  # (B, K)
        pool_tokens = torch.cat([pool_tokens, ended], dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))

        # the best K candidates without <eos> live on (a stable sort keeps their score order)
        keep = is_eos.to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (B, K)
        scores = cand_scores.gather(1, keep).view(B * K)  # (B*K,)
        tokens = cand_tokens.gather(1, keep[:, :, None].expand(-1, -1, t + 1)).view(B * K, t + 1)
        rows = parent.gather(1, keep).view(B * K)  # (B*K,) the row each new live beam extends
        if t == 1:  # expand each source to K beams: its memory, and its cross-attention cache
            memory = memory.index_select(0, rows)  # (B*K, S, Cm)
            if memory_padding_mask is not None:
                memory_padding_mask = memory_padding_mask.index_select(0, rows)  # (B*K, S)
        if cache is not None:
            # later, beams only move among the rows of their own source, whose memory is the same
            cache.reorder(rows, cross_attention=t == 1)

        if t == max_len:
            break
        best_live = scores.view(B, K).max(dim=1).values  # (B,)
        bound = best_live / max(length_penalty(t + 1, alpha), length_penalty(max_len, alpha))  # (B,)
        done = pool_scores[:, -1] >= bound  # (B,) a pool short of K has -inf at the end
        scores = scores.masked_fill(done.repeat_interleave(K), float("-inf"))  # (B*K,) drop their beams
        if done.all():
            break

    live = tokens[:, 1:].view(B, K, t)  # (B, K, t)
    live_scores = scores.view(B, K) / length_penalty(t, alpha)  # (B, K) n = t for a cut beam
    all_scores = torch.cat([pool_scores, live_scores], dim=1)  # (B, 2K)
    all_tokens = torch.cat([pool_tokens[:, :, :t], live], dim=1)  # (B, 2K, t)
    out_scores, order = all_scores.topk(K, dim=1)  # (B, K) descending
    return all_tokens.gather(1, order[:, :, None].expand(-1, -1, t)), out_scores
