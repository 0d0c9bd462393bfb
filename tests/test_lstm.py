"""The handwritten LSTM cell and the Show-and-Tell / Show-Attend-Tell decoders (captioner/models/lstm*.py)."""

import math

import pytest
import torch

from captioner.config import LSTMDecoderConfig
from captioner.models.captioner import eos_suppression_loss
from captioner.models.lstm import LSTMCell
from captioner.models.lstm_decoders import AttendAndTellDecoder, ShowAndTellDecoder, doubly_stochastic_penalty
from transformer_components.generation import beam_search

CONFIG = LSTMDecoderConfig(embed_dim=8, hidden=12, attention_dim=6, dropout=0.0)


def test_cell_equals_torch_lstm_cell_forward_and_backward():
    torch.manual_seed(0)
    ours, reference = LSTMCell(5, 7).double(), torch.nn.LSTMCell(5, 7).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(reference, name).copy_(getattr(ours, name))
    x, h, c = (torch.randn(3, n, dtype=torch.double) for n in (5, 7, 7))
    inputs = [t.clone().requires_grad_() for t in (x, h, c)]
    ref_inputs = [t.clone().requires_grad_() for t in (x, h, c)]
    out = ours(inputs[0], (inputs[1], inputs[2]))
    ref = reference(ref_inputs[0], (ref_inputs[1], ref_inputs[2]))
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    weights = torch.randn(7, dtype=torch.double)
    ((out[0] * weights).sum() + out[1].pow(2).sum()).backward()
    ((ref[0] * weights).sum() + ref[1].pow(2).sum()).backward()
    for a, b in zip(inputs, ref_inputs):
        torch.testing.assert_close(a.grad, b.grad)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(reference, name).grad)


def test_doubly_stochastic_penalty_worked_example():
    spread = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # (1, 3, 2); the third step is padding
    same = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]])
    real = torch.tensor([[True, True, False]])
    assert doubly_stochastic_penalty(spread, real).item() == 0.0  # each cell got 1
    assert doubly_stochastic_penalty(same, real).item() == 2.0  # (1 - 2)^2 + (1 - 0)^2
    both = doubly_stochastic_penalty(torch.cat([spread, same]), real.repeat(2, 1))
    assert both.item() == 1.0  # the mean over the batch


def test_eos_suppression_counts_positions_before_the_end():
    logits = torch.randn(2, 4, 6)
    targets = torch.tensor([[4, 5, 2, 0], [5, 2, 0, 0]])  # EOS_ID = 2, PAD_ID = 0
    p_eos = logits.softmax(-1)[..., 2]
    expected = (p_eos[0, 0] + p_eos[0, 1] + p_eos[1, 0]) / 3
    torch.testing.assert_close(eos_suppression_loss(logits, targets), expected)


def test_attention_sums_to_one_and_masked_cells_get_none():
    torch.manual_seed(0)
    decoder = AttendAndTellDecoder(20, 10, CONFIG, max_len=8).eval()
    memory = torch.randn(2, 5, 10)
    mask = torch.tensor([[False, False, False, True, True], [False] * 5])
    tokens = torch.randint(3, 20, (2, 4))
    logits, (alphas,) = decoder(tokens, memory, memory_padding_mask=mask, return_cross_attention=True)
    alphas = alphas[:, 0]  # (B, T, S)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(2, 4))
    assert (alphas[0, :, 3:] == 0).all() and (alphas[1] > 0).all()
    changed = memory.clone()
    changed[0, 3:] = 100.0  # what sits in masked cells cannot matter
    torch.testing.assert_close(decoder(tokens, changed, memory_padding_mask=mask)[0], logits[0])


@pytest.mark.parametrize("make", [
    lambda: ShowAndTellDecoder(20, 10, CONFIG, max_len=8),
    lambda: ShowAndTellDecoder(20, 10, LSTMDecoderConfig(embed_dim=8, hidden=12, image_input="first_input"), 8),
    lambda: AttendAndTellDecoder(20, 10, CONFIG, max_len=8),
], ids=["show-tell-state", "show-tell-first-input", "attend-tell"])
def test_cache_steps_equal_one_pass_and_memory_index(make):
    torch.manual_seed(0)
    decoder = make().eval()
    memory = torch.randn(2, 5, 10)
    tokens = torch.randint(3, 20, (4, 6))
    index = torch.tensor([0, 1, 1, 0])
    whole = decoder(tokens, memory.index_select(0, index))  # (4, 6, V)
    torch.testing.assert_close(decoder(tokens, memory, memory_index=index), whole)
    cache = decoder.new_cache()
    steps = [decoder(tokens[:, t : t + 1], memory.index_select(0, index), cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole)
    assert len(cache) == 6


@pytest.mark.parametrize("decoder_class", [ShowAndTellDecoder, AttendAndTellDecoder])
@pytest.mark.parametrize("beam_size, alpha", [(1, 0.0), (3, 0.0), (4, 0.7)])
def test_lstm_beam_search_cached_equals_uncached(decoder_class, beam_size, alpha):
    torch.manual_seed(1)
    decoder = decoder_class(9, 10, CONFIG, max_len=12).eval()
    memory = torch.randn(3, 5, 10)
    cached = beam_search(decoder, memory, 1, 2, 0, 10, beam_size, alpha, use_cache=True)
    uncached = beam_search(decoder, memory, 1, 2, 0, 10, beam_size, alpha, use_cache=False)
    assert torch.equal(cached[0], uncached[0])
    torch.testing.assert_close(cached[1], uncached[1])


def test_lstm_beam_search_finds_the_exhaustive_best():
    """With more beams than sequences nothing is pruned: the best of a brute-force enumeration must win."""
    torch.manual_seed(2)
    decoder = AttendAndTellDecoder(5, 10, CONFIG, max_len=4).eval()  # tokens 0 pad, 1 sos, 2 eos, 3, 4
    memory = torch.randn(1, 5, 10)
    sequences = [[2]] + [[a, b] for a in (3, 4) for b in (2, 3, 4)]  # every caption of at most 2 tokens
    totals = []
    for seq in sequences:
        logp = decoder(torch.tensor([[1] + seq[:-1]]), memory)[0].log_softmax(-1)  # (len, V)
        totals.append(sum(logp[i, t].item() for i, t in enumerate(seq)))
    best = max(range(len(sequences)), key=totals.__getitem__)
    tokens, scores = beam_search(decoder, memory, 1, 2, 0, 2, beam_size=7)
    assert [t for t in tokens[0, 0].tolist() if t != 0] == sequences[best]
    assert scores[0, 0].item() == pytest.approx(totals[best], abs=1e-5)


def test_forget_gate_bias_starts_at_one_in_the_second_quarter():
    # nn.LSTMCell's layout, which the cell shares (the test above): gates i, f, g, o, each H rows
    torch.manual_seed(0)
    H = 7
    cell = LSTMCell(5, H)
    bound = H ** -0.5
    torch.testing.assert_close(cell.bias_ih[H : 2 * H], torch.ones(H))
    torch.testing.assert_close(cell.bias_hh[H : 2 * H], torch.zeros(H))
    for bias in (cell.bias_ih, cell.bias_hh):
        others = torch.cat([bias[:H], bias[2 * H :]])  # i, g, o: PyTorch's uniform(+-1/sqrt(H))
        assert others.abs().max() <= bound and others.abs().max() > bound / 2
    # at x = 0, h = 0 the forget gate is sigmoid(1): a unit cell keeps sigmoid(1) of itself, plus i * g
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_ih[2 * H : 3 * H] = 0.0  # g = tanh(b_ig + b_hg): only b_hg is left
        cell.bias_hh[2 * H : 3 * H] = 0.0  # g = 0: the new cell is f * c alone
    _, c = cell(torch.zeros(1, 5), (torch.zeros(1, H), torch.ones(1, H)))
    torch.testing.assert_close(c, torch.full((1, H), 1 / (1 + torch.e ** -1)))


def naive_attend(decoder, h, memory):
    """Show, Attend and Tell's attention for one image and one hidden state, in float64 with loops:
    e_i = w . tanh(W_a a_i + b_a + U_a h + b_u) + b_w, alpha = softmax(e),
    z = sigmoid(f_beta . h + b_f) sum_i alpha_i a_i."""
    W = {name: p.detach().double() for name, p in decoder.named_parameters()}
    h, memory = h.double(), memory.double()
    scores = []
    for a in memory:
        hidden = (W["memory_proj.weight"] @ a + W["memory_proj.bias"]
                  + W["hidden_proj.weight"] @ h + W["hidden_proj.bias"])
        scores.append(float(W["score.weight"][0] @ torch.tanh(hidden) + W["score.bias"][0]))
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    alpha = torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64)
    beta = 1 / (1 + math.exp(-float(W["gate.weight"][0] @ h + W["gate.bias"][0])))
    return beta * sum(alpha[i] * memory[i] for i in range(len(memory))), alpha, beta


def test_attention_gates_the_context_like_a_naive_loop():
    torch.manual_seed(0)
    decoder = AttendAndTellDecoder(20, 10, CONFIG, max_len=8).eval()
    with torch.no_grad():
        decoder.gate.bias.fill_(-1.0)  # beta well away from 1, so a missing gate shows
    memory, h = torch.randn(2, 5, 10), torch.randn(2, CONFIG.hidden)
    z, alpha = decoder.attend(h, memory, decoder.project_memory(memory), None)
    for b in range(2):
        expected_z, expected_alpha, beta = naive_attend(decoder, h[b], memory[b])
        assert beta < 0.6
        torch.testing.assert_close(alpha[b].double(), expected_alpha, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z[b].double(), expected_z, rtol=1e-5, atol=1e-6)


def test_a_float64_decoder_attends_in_float64():
    torch.manual_seed(0)
    decoder = AttendAndTellDecoder(20, 10, CONFIG, max_len=8).double().eval()
    memory, h = torch.randn(3, 49, 10, dtype=torch.float64), torch.randn(3, CONFIG.hidden, dtype=torch.float64)
    z, alpha = decoder.attend(h, memory, decoder.project_memory(memory), None)
    assert alpha.dtype == torch.float64
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-14)
    for b in range(3):  # a float32 softmax would be off by about 1e-8 here
        expected_z, expected_alpha, _ = naive_attend(decoder, h[b], memory[b])
        torch.testing.assert_close(alpha[b], expected_alpha, rtol=0, atol=1e-14)
        torch.testing.assert_close(z[b], expected_z, rtol=0, atol=1e-13)
