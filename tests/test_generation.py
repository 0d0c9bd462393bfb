"""Greedy decoding, batched beam search, EncoderDecoder and CaptionDecoder."""

import math
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captioner.models.caption_decoder import CaptionDecoder
from transformer_components import (
    EncoderDecoder,
    beam_search,
    beam_search_plain,
    greedy_search,
    length_penalty,
)

PAD, SOS, EOS = 0, 1, 2
V, C, S = 6, 16, 5
CONTENT = [3, 4, 5]  # the tokens other than <pad>, <sos>, <eos>


def tiny_decoder(seed=1, scale=2.0, eos_scale=2.0, max_len=8, eos_bias=0.0):
    """A random CaptionDecoder in float64 whose next-token distributions are peaky and varied.

    Default init makes a tied random model mostly repeat its input token; wider weights give
    distinct, confident distributions, and a longer <eos> vector makes <eos> likely now and then,
    so that hypotheses end at different lengths. eos_bias != 0 gives the (still tied) output
    layer a bias that is eos_bias on <eos> and 0 elsewhere.
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
        if eos_bias:
            dec.lm_head = nn.Linear(C, V).double()
            dec.lm_head.weight = dec.token_embedding.weight
            dec.lm_head.bias.zero_()
            dec.lm_head.bias[EOS] = eos_bias
    return dec


def late_eos_decoder():
    """tiny_decoder with <eos> made unlikely: greedy captions run 5-6 tokens, not 1."""
    return tiny_decoder(eos_scale=0.5, eos_bias=-2.0)


def gnmt_lp(n, alpha):
    """GNMT's length penalty, written here rather than imported: ((5 + n) / 6) ** alpha."""
    return ((5 + n) / 6) ** alpha


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
    return logp.sum(1) / gnmt_lp(lengths.double(), alpha)


def model(dec):
    return EncoderDecoder(nn.Identity(), dec).eval()


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
    dec, mem, max_len = late_eos_decoder(), memories(5), 7
    g_tokens, g_scores = greedy_search(dec, mem, SOS, EOS, PAD, max_len=max_len, alpha=alpha)
    b_tokens, b_scores = beam_search(dec, mem, SOS, EOS, PAD, max_len=max_len, beam_size=1, alpha=alpha)
    seqs = [strip(t) for t in g_tokens]
    assert min(len(seq) for seq in seqs) > 2  # several steps are compared, not one <eos>
    assert any(seq[-1] == EOS for seq in seqs) and any(len(seq) == max_len for seq in seqs)
    assert torch.equal(b_tokens[:, 0], g_tokens)
    torch.testing.assert_close(b_scores[:, 0], g_scores)


class NoCache:
    """MarkovDecoder reads only the newest token, so its cache holds nothing."""

    def reorder(self, index, cross_attention=True):
        pass


class MarkovDecoder(nn.Module):
    """A fake decoder whose next-token log-probabilities depend only on the last token.

    memory (N, V, V) is each source's table: row = the last token (<sos> at first), column =
    the next token. It counts its calls, i.e. the decoding steps.
    """

    calls = 0

    def forward(self, tokens, memory, memory_padding_mask=None, cache=None):
        MarkovDecoder.calls += 1
        return memory.gather(1, tokens[:, :, None].expand(-1, -1, V))  # (N, T, V) rows tokens[n, t] of table n

    def new_cache(self):
        return NoCache()


def markov_tables(n, seed, scale=1.5):
    """n random tables (n, V, V) of log-probabilities in which <pad> and <sos> never come next."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, V, V, generator=g, dtype=torch.float64)
    logits[:, :, [PAD, SOS]] = float("-inf")
    return logits.log_softmax(-1)


def table_from(rows):
    """A (1, V, V) table from {state: {token: probability}}; unlisted states are uniform."""
    probs = torch.zeros(V, V, dtype=torch.float64)
    probs[:, [EOS, *CONTENT]] = 0.25
    for state, row in rows.items():
        probs[state] = 0.0
        for token, p in row.items():
            probs[state, token] = p
    return probs.log()[None]


def brute_force(table, max_len, alpha):
    """{sequence: normalised score} for every sequence up to max_len, by enumeration."""
    out = {}
    for seq in all_sequences(max_len):
        logp = sum(table[prev, tok].item() for prev, tok in zip((SOS,) + seq, seq))
        out[seq] = logp / gnmt_lp(len(seq), alpha)
    return out


def found(tokens, scores):
    """[(sequence, score)] of one source's finite hypotheses, best first."""
    return [(strip(t), s) for t, s in zip(tokens, scores.tolist()) if s > float("-inf")]


@pytest.mark.parametrize("use_cache", [True, False])
def test_markov_search_is_exhaustive_when_the_beam_holds_every_sequence(use_cache):
    tables = markov_tables(3, seed=0)
    checked, best_lengths = 0, set()
    for max_len, K, alpha in product([1, 2, 3], [2, 4, 13, 40, 50], [0.0, 0.6, 1.0, 2.0]):
        tokens, scores = beam_search(MarkovDecoder(), tables, SOS, EOS, PAD, max_len, K, alpha, use_cache=use_cache)
        for b in range(3):
            expected = brute_force(tables[b], max_len, alpha)
            hyps = found(tokens[b], scores[b])
            for seq, score in hyps:  # whatever is returned carries its true score
                assert score == pytest.approx(expected[seq], abs=1e-12)
            if K >= len(expected):  # 4, 13, 40 sequences for max_len 1, 2, 3
                best = max(expected, key=expected.get)
                assert hyps[0][0] == best and hyps[0][1] == pytest.approx(expected[best], abs=1e-12)
                assert sorted(seq for seq, _ in hyps) == sorted(expected)  # every sequence, once
                checked += 1
                best_lengths.add(len(best))
    assert checked == 9 * 4 * 3 and len(best_lengths) > 1


def test_plain_search_is_exhaustive_when_the_beam_holds_every_sequence():
    tables = markov_tables(2, seed=3)
    for max_len, alpha in product([1, 2, 3], [0.0, 0.6, 2.0]):
        for b in range(2):
            expected = brute_force(tables[b], max_len, alpha)
            hyps = beam_search_plain(MarkovDecoder(), tables[b], SOS, EOS, PAD, max_len, 50, alpha)
            assert sorted(tuple(seq) for seq, _ in hyps) == sorted(expected)  # every sequence, once
            for seq, score in hyps:
                assert score == pytest.approx(expected[tuple(seq)], abs=1e-12)
            assert [score for _, score in hyps] == sorted(expected.values(), reverse=True)


def test_batched_search_equals_the_plain_one():
    """K below the number of sequences: the batched search with its cache, which stops a source
    once no live beam can beat its pool, returns what beam_search_plain, which runs each source
    alone to max_len, returns.
    (A real decoder, not the Markov one, whose permuted sequences tie.)"""
    stopped_early, steps = 0, []
    for dec in [tiny_decoder(), late_eos_decoder()]:
        dec.register_forward_hook(lambda mod, inp, out: steps.append(1))
        mem = memories(4, seed=11)
        for max_len, K, alpha in product([4, 7], [2, 3, 5], [0.0, 0.6, 1.5]):
            tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, max_len, K, alpha)
            for b in range(4):
                expected = [(tuple(seq), score) for seq, score in beam_search_plain(
                    dec, mem[b], SOS, EOS, PAD, max_len, K, alpha)]
                hyps = found(tokens[b], scores[b])
                assert [seq for seq, _ in hyps] == [seq for seq, _ in expected]
                assert [s for _, s in hyps] == pytest.approx([s for _, s in expected], abs=1e-10)
                steps.clear()
                beam_search(dec, mem[b : b + 1], SOS, EOS, PAD, max_len, K, alpha)
                stopped_early += len(steps) < max_len
    assert stopped_early > 10  # the stopping bound is exercised, not only max_len


def test_early_eos_beams_no_longer_crowd_out_a_better_longer_caption():
    """K = 3, alpha = 0.6, with C, D, E = 3, 4, 5 and these transition probabilities:
    <sos> -> <eos> .2, C .5, D .13, E .17;  C -> C .65, D .3, <eos> .05;
    D -> E .95, <eos> .05;                  E -> <eos> .95, C .05.
    The old search froze [<eos>] (.2) and [E <eos>] (.17 * .95 = .1615) in two of its three
    slots at step 2, above [C D] (.5 * .3 = .15); [C C ...] went on alone and [<eos>] won.
    By hand: [C D E <eos>] log(.5 * .3 * .95 * .95) / 1.5 ** .6 = -1.5679
             [<eos>]       log(.2) / 1                          = -1.6094
             [E <eos>]     log(.1615) / (7 / 6) ** .6           = -1.6622
    and every other sequence is below: [D E <eos>] -1.803, [C C C C C] -1.778 (at max_len 5).
    """
    C_, D_, E_ = CONTENT
    table = table_from({
        SOS: {EOS: 0.2, C_: 0.5, D_: 0.13, E_: 0.17},
        C_: {C_: 0.65, D_: 0.3, EOS: 0.05},
        D_: {E_: 0.95, EOS: 0.05},
        E_: {EOS: 0.95, C_: 0.05},
    })
    tokens, scores = beam_search(MarkovDecoder(), table, SOS, EOS, PAD, 5, beam_size=3, alpha=0.6)
    hyps = found(tokens[0], scores[0])
    assert [seq for seq, _ in hyps] == [(C_, D_, E_, EOS), (EOS,), (E_, EOS)]
    plain = beam_search_plain(MarkovDecoder(), table[0], SOS, EOS, PAD, 5, beam_size=3, alpha=0.6)
    assert [(tuple(seq), score) for seq, score in plain] == pytest.approx(hyps, abs=1e-12)
    expected = [math.log(0.5 * 0.3 * 0.95 * 0.95) / 1.5**0.6, math.log(0.2), math.log(0.17 * 0.95) / (7 / 6) ** 0.6]
    assert [s for _, s in hyps] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([-1.5679, -1.6094, -1.6622], abs=1e-4)


def test_length_penalty_values():
    n = torch.tensor([1.0, 7.0, 13.0, 19.0, 3.0], dtype=torch.float64)
    by_hand = {  # lp(n) = ((5 + n) / 6) ** alpha: 1, 2, 3, 4 and 4/3 to the power alpha
        0.0: [1.0, 1.0, 1.0, 1.0, 1.0],
        0.5: [1.0, 2**0.5, 3**0.5, 2.0, (4 / 3) ** 0.5],
        0.6: [1.0, 2**0.6, 3**0.6, 4**0.6, (4 / 3) ** 0.6],
        1.0: [1.0, 2.0, 3.0, 4.0, 4 / 3],
    }
    for alpha, expected in by_hand.items():
        torch.testing.assert_close(length_penalty(n, alpha), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_length_penalty_decides_between_a_short_and_a_long_caption(alpha):
    """<sos> -> <eos> .5, C .375, D .125; then C -> D -> E -> <eos> with probability 1.
    [<eos>]: log .5 = -0.693 for every alpha (n = 1, lp = 1).
    [C D E <eos>]: log .375 = -0.981 over lp(4) = 1.5 ** alpha: -0.981, -0.801, -0.654 for
    alpha = 0, 0.5, 1, so the short caption wins at 0 and 0.5 and the long one at 1. An lp(4) of
    1.5 ** (2 alpha), 2.5 ** alpha or 4 ** alpha would hand alpha = 0.5 to the long one too.
    """
    C_, D_, E_ = CONTENT
    table = table_from({SOS: {EOS: 0.5, C_: 0.375, D_: 0.125}, C_: {D_: 1.0}, D_: {E_: 1.0}, E_: {EOS: 1.0}})
    tokens, scores = beam_search(MarkovDecoder(), table, SOS, EOS, PAD, 5, beam_size=3, alpha=alpha)
    if alpha < 1:
        assert strip(tokens[0, 0]) == (EOS,) and scores[0, 0].item() == pytest.approx(math.log(0.5), abs=1e-12)
    else:
        assert strip(tokens[0, 0]) == (C_, D_, E_, EOS)
        assert scores[0, 0].item() == pytest.approx(math.log(0.375) / 1.5, abs=1e-12)


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


@pytest.mark.parametrize("alpha", [0.8, 1.5])
def test_greedy_score_is_the_log_probability_over_the_penalty_of_a_length_counting_eos(alpha):
    """The score of each greedy caption, recomputed by teacher forcing and divided by ((5 + n) / 6) ** alpha
    written here, n counting the <eos>: captions that end and captions cut at max_len, all at alpha > 0."""
    dec, mem, max_len = late_eos_decoder(), memories(8), 7
    tokens, scores = greedy_search(dec, mem, SOS, EOS, PAD, max_len=max_len, alpha=alpha)
    seqs = [strip(t) for t in tokens]
    assert any(seq[-1] == EOS for seq in seqs) and any(len(seq) == max_len and EOS not in seq for seq in seqs)
    for b, seq in enumerate(seqs):
        logp = teacher_forced_scores(dec, mem[b], [seq], 0.0)[0].item()  # the plain sum of log-probabilities
        assert scores[b].item() == pytest.approx(logp / gnmt_lp(len(seq), alpha), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_cached_decoding_is_token_identical_to_recomputation(beam_size):
    m, mem = model(late_eos_decoder()), memories(4)
    cached = m.generate(mem, SOS, EOS, PAD, max_len=7, beam_size=beam_size, alpha=0.6, use_cache=True)
    full = m.generate(mem, SOS, EOS, PAD, max_len=7, beam_size=beam_size, alpha=0.6, use_cache=False)
    assert max(len(strip(t)) for t in cached[0]) > 2  # several steps are compared
    assert torch.equal(cached[0], full[0])
    torch.testing.assert_close(cached[1], full[1])


def test_batched_sources_equal_each_source_alone():
    dec = late_eos_decoder()
    mem = memories(4, seed=5)
    lengths = [5, 2, 4, 3]
    pad_mask = torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]  # (4, S) True = padding
    mem = mem.masked_fill(pad_mask[:, :, None], 1e3)  # padding that would show if it leaked
    tokens, scores = beam_search(dec, mem, SOS, EOS, PAD, 7, beam_size=4, alpha=0.7, memory_padding_mask=pad_mask)
    assert max(len(strip(t)) for t in tokens[:, 0]) > 2  # several steps are compared
    for b, n in enumerate(lengths):
        alone_tokens, alone_scores = beam_search(dec, mem[b : b + 1, :n], SOS, EOS, PAD, 7, beam_size=4, alpha=0.7)
        L = alone_tokens.size(-1)
        assert torch.equal(tokens[b, :, :L], alone_tokens[0]) and (tokens[b, :, L:] == PAD).all()
        torch.testing.assert_close(scores[b], alone_scores[0])
    m = model(dec)
    batched = m.generate(mem, SOS, EOS, PAD, max_len=7, beam_size=3)
    for b in range(4):
        alone = m.generate(mem[b : b + 1], SOS, EOS, PAD, max_len=7, beam_size=3)
        assert strip(batched[0][b]) == strip(alone[0][0])


def test_finished_hypotheses_keep_their_score_and_none_repeats():
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
    m = EncoderDecoder(encoder, tiny_decoder())
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
