"""Greedy decoding, batched beam search, TransformerEncoderDecoder and CaptionDecoder."""

from itertools import product

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captioner.models.caption_decoder import CaptionDecoder
from transformer_components import TransformerEncoderDecoder, beam_search, greedy_search, length_penalty

PAD, SOS, EOS = 0, 1, 2
V, C, S = 6, 16, 5
CONTENT = [3, 4, 5]  # the tokens other than <pad>, <sos>, <eos>


def tiny_decoder(seed=1, scale=2.0, eos_scale=2.0, max_len=8):
    """A random CaptionDecoder in float64 whose next-token distributions are peaky and varied.

    Default init makes a tied random model mostly repeat its input token; wider weights give
    distinct, confident distributions, and a longer <eos> vector makes <eos> likely now and then,
    so that hypotheses end at different lengths.
    """
    torch.manual_seed(seed)
    dec = CaptionDecoder(V, C, n_layers=2, n_heads=4, d_ff=32, max_len=max_len, pad_id=PAD).double().eval()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if p.dim() > 1:
                p.normal_(0, scale / p.shape[1] ** 0.5)
            elif "norm" not in name:
                p.normal_(0, 0.5)
        dec.token_embedding.weight[PAD] = 0
        dec.token_embedding.weight[EOS] *= eos_scale
    return dec


def memories(n, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, S, C, dtype=torch.float64)


def strip(seq):
    """Token list without the padding after <eos>."""
    return tuple(t for t in seq.tolist() if t != PAD)


def all_sequences(max_len):
    """Every sequence beam search can return: content tokens then <eos>, or max_len content tokens."""
    ended = [c + (EOS,) for n in range(max_len) for c in product(CONTENT, repeat=n)]
    return ended + list(product(CONTENT, repeat=max_len))


def teacher_forced_scores(dec, memory, seqs, alpha):
    """score(seq) = sum log p(token | prefix) / lp(len), computed independently of the search.

    memory (S, C) for one source; seqs: list of tuples. Returns (len(seqs),) float64.
    """
    L = max(len(s) for s in seqs)
    targets = torch.tensor([list(s) + [PAD] * (L - len(s)) for s in seqs])  # (N, L)
    inputs = torch.cat([torch.full((len(seqs), 1), SOS), targets[:, :-1]], dim=1)  # (N, L)
    logits = dec(inputs, memory.expand(len(seqs), -1, -1))  # (N, L, V)
    logp = F.log_softmax(logits, dim=-1).gather(2, targets[:, :, None])[:, :, 0]  # (N, L)
    lengths = torch.tensor([len(s) for s in seqs])
    logp = logp.masked_fill(torch.arange(L)[None, :] >= lengths[:, None], 0.0)
    return logp.sum(1) / length_penalty(lengths.double(), alpha)


def model(dec):
    return TransformerEncoderDecoder(nn.Identity(), dec).eval()


@pytest.mark.parametrize("alpha", [0.0, 0.9])
def test_wide_beam_returns_every_sequence_with_its_exact_score(alpha):
    """With K = the number of possible sequences, beam search must be exhaustive."""
    dec, max_len = tiny_decoder(), 4
    seqs = all_sequences(max_len)
    assert len(seqs) == 121
    mem = memories(2)
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, max_len, beam_size=len(seqs), alpha=alpha)
    assert tokens.shape == (2, 121, max_len)
    for b in range(2):
        expected = teacher_forced_scores(dec, mem[b], seqs, alpha)  # (121,)
        found = {strip(t): s for t, s in zip(tokens[b], scores[b].tolist())}
        assert set(found) == set(seqs)  # all 121 distinct sequences, so none twice
        found_scores = torch.tensor([found[s] for s in seqs], dtype=torch.float64)
        torch.testing.assert_close(found_scores, expected, rtol=1e-12, atol=1e-12)
        assert strip(tokens[b, 0]) == seqs[int(expected.argmax())]
        assert (scores[b, :-1] >= scores[b, 1:]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_narrow_beam_finds_the_exhaustive_best_on_a_peaky_model(alpha):
    dec, max_len = tiny_decoder(scale=3.0), 4
    seqs = all_sequences(max_len)
    mem = memories(4, seed=3)
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, max_len, beam_size=3, alpha=alpha)
    best_lengths = set()
    for b in range(4):
        exhaustive = teacher_forced_scores(dec, mem[b], seqs, alpha)
        best = seqs[int(exhaustive.argmax())]
        best_lengths.add(len(best))
        assert strip(tokens[b, 0]) == best
        assert scores[b, 0].item() == pytest.approx(exhaustive.max().item(), abs=1e-9)
    assert len(best_lengths) > 1  # the winners are of different lengths: <eos> matters


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_beam_size_one_equals_greedy(alpha):
    dec, mem = tiny_decoder(), memories(5)
    g_tokens, g_scores = greedy_search(dec, mem, SOS, EOS, PAD, max_len=6, alpha=alpha)
    b_tokens, b_scores = beam_search(dec, mem, SOS, EOS, PAD, max_len=6, beam_size=1, alpha=alpha)
    assert torch.equal(b_tokens[:, 0], g_tokens)
    torch.testing.assert_close(b_scores[:, 0], g_scores)


def test_greedy_picks_the_argmax_and_pads_after_eos():
    dec, mem = tiny_decoder(eos_scale=1.0), memories(6, seed=2)
    tokens, scores = greedy_search(dec, mem, SOS, EOS, PAD, max_len=6)
    lengths = []
    for b in range(6):
        seq = strip(tokens[b])
        lengths.append(len(seq))
        assert EOS not in seq[:-1] and PAD not in tokens[b, : len(seq)]
        assert (tokens[b, len(seq) :] == PAD).all()
        # each token is the argmax after its prefix
        prefix = torch.tensor([[SOS, *seq[:-1]]])
        step_logits = dec(prefix, mem[b : b + 1])[0]  # (len, V)
        step_logits[:, [PAD, SOS]] = float("-inf")
        assert step_logits.argmax(-1).tolist() == list(seq)
        torch.testing.assert_close(scores[b], teacher_forced_scores(dec, mem[b], [seq], 0.0)[0])
    assert min(lengths) < 6 == max(lengths)  # some stopped at <eos>, some ran to max_len


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_cached_decoding_is_token_identical_to_recomputation(beam_size):
    m, mem = model(tiny_decoder()), memories(4)
    cached = m.generate(mem, SOS, EOS, PAD, max_len=7, beam_size=beam_size, alpha=0.6, use_cache=True)
    full = m.generate(mem, SOS, EOS, PAD, max_len=7, beam_size=beam_size, alpha=0.6, use_cache=False)
    assert torch.equal(cached[0], full[0])
    torch.testing.assert_close(cached[1], full[1])


def test_batched_sources_equal_each_source_alone():
    dec = tiny_decoder()
    mem = memories(4, seed=5)
    lengths = [5, 2, 4, 3]
    pad_mask = torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]  # (4, S) True = padding
    mem = mem.masked_fill(pad_mask[:, :, None], 1e3)  # padding that would show if it leaked
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, 6, beam_size=4, alpha=0.7, memory_padding_mask=pad_mask)
    for b, n in enumerate(lengths):
        alone_tokens, alone_scores = beam_search(dec, mem[b : b + 1, :n], SOS, EOS, PAD, 6, beam_size=4, alpha=0.7)
        L = alone_tokens.size(-1)
        assert torch.equal(tokens[b, :, :L], alone_tokens[0]) and (tokens[b, :, L:] == PAD).all()
        torch.testing.assert_close(scores[b], alone_scores[0])
    m = model(dec)
    batched = m.generate(mem, SOS, EOS, PAD, max_len=6, beam_size=3)
    for b in range(4):
        alone = m.generate(mem[b : b + 1], SOS, EOS, PAD, max_len=6, beam_size=3)
        assert strip(batched[0][b]) == strip(alone[0][0])


def test_finished_beams_keep_their_score_and_no_hypothesis_repeats():
    dec, mem = tiny_decoder(), memories(3, seed=7)
    max_len = 6
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, max_len, beam_size=6, alpha=0.5)
    n_finished_early = 0
    for b in range(3):
        seqs = [strip(t) for t in tokens[b]]
        assert len(set(seqs)) == len(seqs)
        for seq in seqs:
            assert len(seq) <= max_len and (seq[-1] == EOS or len(seq) == max_len)
            n_finished_early += seq[-1] == EOS and len(seq) < tokens.size(-1)
        # a score that kept growing after <eos> would differ from the teacher-forced one
        torch.testing.assert_close(scores[b], teacher_forced_scores(dec, mem[b], seqs, 0.5), rtol=1e-10, atol=1e-10)
    assert n_finished_early >= 3


def test_first_step_expands_one_beam_per_source():
    dec, mem = tiny_decoder(), memories(3)
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, max_len=1, beam_size=4)
    for b in range(3):
        assert sorted(tokens[b, :, 0].tolist()) == sorted(CONTENT + [EOS])  # 4 distinct first tokens
        assert torch.isfinite(scores[b]).all()


def test_cross_attention_memory_is_projected_once_per_generation():
    dec, mem = tiny_decoder(), memories(3)
    rows = []
    for layer in dec.decoder.layers:
        layer.cross_attn.k_proj.register_forward_hook(lambda mod, inp, out: rows.append(out.size(0)))
    model(dec).generate(mem, SOS, EOS, PAD, max_len=6, beam_size=4)
    assert rows == [3, 3]  # once per layer, on the 3 sources before they are expanded to beams
    rows.clear()
    model(dec).generate(mem, SOS, EOS, PAD, max_len=6, beam_size=4, use_cache=False)
    assert len(rows) > 2  # the reference recomputes it every step


def test_generate_under_bf16_autocast():
    dec = tiny_decoder().float()
    mem = memories(2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, scores = model(dec).generate(mem, SOS, EOS, PAD, max_len=5, beam_size=3, alpha=0.6)
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 5 and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores < 0).all()


def test_forward_with_src_index_shares_each_encoded_source():
    torch.manual_seed(0)
    calls = []
    encoder = nn.Linear(C, C).double()
    encoder.register_forward_hook(lambda mod, inp, out: calls.append(out.size(0)))
    m = TransformerEncoderDecoder(encoder, tiny_decoder())
    src = memories(2)
    tokens = torch.randint(3, V, (5, 4))
    src_index = torch.tensor([0, 0, 1, 1, 1])
    kv_rows = []
    m.decoder.decoder.layers[0].cross_attn.k_proj.register_forward_hook(lambda mod, inp, out: kv_rows.append(out.size(0)))
    logits = m(src, tokens, src_index)
    assert logits.shape == (5, 4, V) and calls == [2]
    assert kv_rows == [2]  # the cross-attention keys/values too: once per source, not per caption
    expected = m.decoder(tokens, encoder(src)[src_index])
    torch.testing.assert_close(logits, expected)


def test_caption_decoder_ties_weights_and_continues_positions_from_the_cache():
    dec = tiny_decoder(max_len=5)
    assert dec.lm_head.weight is dec.token_embedding.weight
    assert "position_encoding" not in dec.state_dict()
    mem, tokens = memories(2), torch.randint(3, V, (2, 5))
    full, maps = dec(tokens, mem, return_cross_attention=True)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 5, S)
    cache = dec.new_cache()
    steps = [dec(tokens[:, :2], mem, cache=cache), dec(tokens[:, 2:3], mem, cache=cache)]
    steps.append(dec(tokens[:, 3:], mem, cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full)
    with pytest.raises(ValueError, match="max_len"):
        dec(tokens[:, :1], mem, cache=cache)
    with pytest.raises(ValueError):
        model(dec).generate(mem, SOS, EOS, PAD, max_len=0)
