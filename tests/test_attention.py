"""MultiHeadAttention, the KV cache, the layers and the position encodings."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from transformer_components import (
    KVCache,
    MultiHeadAttention,
    TransformerDecoder,
    TransformerEncoder,
    sincos_2d_position_encoding,
    sinusoidal_position_encoding,
)

B, T, C, H = 3, 6, 16, 4


def _pair(kv_dim=None, dtype=torch.float64, seed=0):
    """Our attention and torch's, holding the same weights."""
    torch.manual_seed(seed)
    kdim = kv_dim or C
    ref = nn.MultiheadAttention(C, H, batch_first=True, kdim=kdim, vdim=kdim).to(dtype)
    with torch.no_grad():  # torch zero-initialises biases; random ones test that they are copied right
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    ours = MultiHeadAttention(C, H, kv_dim=kv_dim).to(dtype)
    ours.load_torch_mha(ref)
    return ours, ref


def _padding(lengths, total):
    """(B, total) bool, True beyond each row's length."""
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


CASES = {
    "self": dict(kv_dim=None, causal=False, lengths=None),
    "self_padding": dict(kv_dim=None, causal=False, lengths=[6, 4, 1]),
    "causal": dict(kv_dim=None, causal=True, lengths=None),
    "causal_padding": dict(kv_dim=None, causal=True, lengths=[6, 5, 3]),
    "cross_padding": dict(kv_dim=12, causal=False, lengths=[9, 2, 5]),
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_multihead_attention_forward_and_backward(case, fused):
    kv_dim, causal, lengths = CASES[case]["kv_dim"], CASES[case]["causal"], CASES[case]["lengths"]
    ours, ref = _pair(kv_dim)
    ours.fused = fused
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    Tk = 9 if kv_dim else T
    mem = torch.randn(B, Tk, kv_dim, dtype=torch.float64, requires_grad=True) if kv_dim else None
    pad = _padding(lengths, Tk) if lengths else None
    # causal queries never see later keys, so a padded key only empties rows of padded queries;
    # torch gives NaN there, which is what the "no NaN" test below is about, so compare the rest
    keep = torch.ones(B, T, 1, dtype=torch.bool)
    if causal and pad is not None:
        keep = ~pad[:, :, None]
    target = torch.randn(B, T, C, dtype=torch.float64)

    out = ours(x, mem, key_padding_mask=pad, causal=causal)
    (out * target * keep).sum().backward()
    ours_grads = _grads(ours)
    ours_dx = x.grad.clone()
    ours_dmem = mem.grad.clone() if kv_dim else None
    x.grad = None
    if kv_dim:
        mem.grad = None

    kv = mem if kv_dim else x
    mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None  # torch: True = not allowed
    expected, _ = ref(x, kv, kv, key_padding_mask=pad, attn_mask=mask, need_weights=False)
    (expected.nan_to_num() * target * keep).sum().backward()

    torch.testing.assert_close(out * keep, expected.nan_to_num() * keep)
    torch.testing.assert_close(ours_dx, x.grad)
    if kv_dim:
        torch.testing.assert_close(ours_dmem, mem.grad)
        ref_w = [ref.q_proj_weight.grad, ref.k_proj_weight.grad, ref.v_proj_weight.grad]
    else:
        ref_w = list(ref.in_proj_weight.grad.chunk(3))
    for name, g in zip(["q_proj", "k_proj", "v_proj"], ref_w):
        torch.testing.assert_close(ours_grads[f"{name}.weight"], g)
    for name, g in zip(["q_proj", "k_proj", "v_proj"], ref.in_proj_bias.grad.chunk(3)):
        torch.testing.assert_close(ours_grads[f"{name}.bias"], g)
    torch.testing.assert_close(ours_grads["out_proj.weight"], ref.out_proj.weight.grad)


def test_attention_weights_match_torch_and_respect_masks():
    ours, ref = _pair()
    x = torch.randn(B, T, C, dtype=torch.float64)
    pad = _padding([6, 4, 2], T)
    out, w = ours(x, key_padding_mask=pad, need_weights=True)
    expected, w_ref = ref(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    assert w.shape == (B, H, T, T)
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(out, expected)
    assert (w[2, :, :, 2:] == 0).all()  # padded keys get exactly zero weight
    _, w_causal = ours(x, causal=True, need_weights=True)
    assert (w_causal.triu(1) == 0).all() and torch.allclose(w_causal.sum(-1), torch.ones(()).double())


def test_fused_equals_manual_in_float32():
    ours, _ = _pair(dtype=torch.float32)
    x = torch.randn(B, T, C)
    pad = _padding([6, 3, 1], T)
    for causal in (False, True):
        fused = ours(x, key_padding_mask=pad, causal=causal)
        ours.fused = False
        manual = ours(x, key_padding_mask=pad, causal=causal)
        ours.fused = True
        torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


def test_cpu_bf16_autocast_takes_the_manual_path_and_matches_fp32(monkeypatch):
    """PyTorch's fused CPU attention backpropagates slowly in bf16, so bf16 on a CPU must not call it."""
    ours, _ = _pair(dtype=torch.float32)
    x = torch.randn(B, T, C, requires_grad=True)
    memory = torch.randn(B, T + 2, C)
    pad = _padding([6, 3, 1], T)
    expected = [ours(x, key_padding_mask=pad, causal=True), ours(x, memory), ours(x, causal=True)]

    def refuse(*args, **kwargs):
        raise AssertionError("fused attention called in CPU bf16")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [ours(x, key_padding_mask=pad, causal=True), ours(x, memory), ours(x, causal=True)]
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e, atol=5e-2, rtol=5e-2)
    got[0].float().sum().backward()  # and it backpropagates
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_stay_finite(dtype):
    ours, _ = _pair(dtype=dtype)
    x = torch.randn(B, T, C, dtype=dtype)
    pad = torch.ones(B, T, dtype=torch.bool)  # every key of every row is padding
    fused = ours(x, key_padding_mask=pad)
    ours.fused = False
    manual = ours(x, key_padding_mask=pad)
    assert torch.isfinite(fused).all() and torch.isfinite(manual).all()
    # all keys equally (un)allowed: the result is the plain average, as with no mask at all
    average = ours.out_proj(ours.v_proj(x).mean(1, keepdim=True)).expand_as(manual)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(manual, average, atol=tol, rtol=tol)
    torch.testing.assert_close(fused, manual, atol=tol, rtol=tol)


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_autocast_runs_and_stays_close(fused):
    ours, _ = _pair(dtype=torch.float32)
    ours.fused = fused
    x = torch.randn(B, T, C)
    pad = _padding([6, 4, 2], T)
    expected = ours(x, key_padding_mask=pad, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x, key_padding_mask=pad, causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def _decoder(seed=0, memory_dim=None):
    torch.manual_seed(seed)
    return TransformerDecoder(n_layers=2, d_model=C, n_heads=H, d_ff=32, memory_dim=memory_dim).double().eval()


@pytest.mark.parametrize("fused", [True, False])
def test_kv_cache_matches_full_recomputation(fused):
    dec = _decoder(memory_dim=10)
    for layer in dec.layers:
        layer.self_attn.fused = layer.cross_attn.fused = fused
    x = torch.randn(B, 7, C, dtype=torch.float64)
    memory = torch.randn(B, 5, 10, dtype=torch.float64)
    mem_pad = _padding([5, 3, 4], 5)
    full = dec(x, memory, mem_pad)  # (B, 7, C)
    cache = dec.new_cache()
    pieces = []
    for start, stop in [(0, 1), (1, 3), (3, 4), (4, 7)]:  # single steps and chunks
        pieces.append(dec(x[:, start:stop], memory, mem_pad, cache=cache))
        assert len(cache) == stop
    torch.testing.assert_close(torch.cat(pieces, 1), full)


def test_cross_attention_keys_values_are_computed_once():
    dec = _decoder()
    x = torch.randn(B, 4, C, dtype=torch.float64)
    memory = torch.randn(B, 5, C, dtype=torch.float64)
    calls = []
    for layer in dec.layers:
        layer.cross_attn.k_proj.register_forward_hook(lambda *args: calls.append(1))
    cache = dec.new_cache()
    for t in range(4):
        dec(x[:, t : t + 1], memory, cache=cache)
    assert len(calls) == len(dec.layers)  # once per layer, not once per step


@pytest.mark.parametrize("fused", [True, False])
def test_key_value_index_equals_gathered_memory_with_one_projection_per_memory(fused):
    """Cross-attention over U memories shared by B queries: keys/values are projected for the U
    memories only, and outputs and gradients equal those of the memories gathered row by row."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(C, H, kv_dim=12).double()
    attn.fused = fused
    query = torch.randn(5, 4, C, dtype=torch.float64)
    memory = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    mask = _padding([7, 3], 7)  # (U, S): the second memory has 3 real positions
    index = torch.tensor([0, 1, 1, 0, 1])
    rows = []
    attn.k_proj.register_forward_hook(lambda mod, inp, out: rows.append(out.size(0)))
    shared = attn(query, memory, key_padding_mask=mask, key_value_index=index)
    shared.square().sum().backward()
    shared_grads, memory_grad = _grads(attn), memory.grad.clone()
    attn.zero_grad()
    memory.grad = None
    gathered = attn(query, memory[index], key_padding_mask=mask[index])
    gathered.square().sum().backward()
    assert rows == [2, 5]  # U rows projected with the index, B without
    torch.testing.assert_close(shared, gathered)
    torch.testing.assert_close(memory_grad, memory.grad)
    for name, grad in _grads(attn).items():
        torch.testing.assert_close(shared_grads[name], grad, msg=name)
    with pytest.raises(ValueError, match="key_value_index"):
        attn(query, None, key_value_index=index)


def test_cache_reorder_selects_batch_rows():
    cache = KVCache(n_layers=2)
    for entry in cache.self_attention + cache.cross_attention:
        entry.k = torch.arange(3.0)[:, None, None, None].expand(3, H, 2, 4)
        entry.v = -entry.k
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    for entry in cache.self_attention + cache.cross_attention:
        assert entry.k[:, 0, 0, 0].tolist() == [2, 2, 0, 1]
        assert entry.v[:, 0, 0, 0].tolist() == [-2, -2, 0, -1]
    cache.reorder(torch.tensor([1, 0, 3, 2]), cross_attention=False)
    assert cache.self_attention[0].k[:, 0, 0, 0].tolist() == [2, 2, 1, 0]
    assert cache.cross_attention[0].k[:, 0, 0, 0].tolist() == [2, 2, 0, 1]
    assert len(cache) == 2


def test_return_cross_attention_gives_one_map_per_layer():
    dec = _decoder()
    x = torch.randn(B, 4, C, dtype=torch.float64)
    memory = torch.randn(B, 5, C, dtype=torch.float64)
    out, maps = dec(x, memory, _padding([5, 2, 4], 5), return_cross_attention=True)
    torch.testing.assert_close(out, dec(x, memory, _padding([5, 2, 4], 5)))
    assert len(maps) == 2 and maps[0].shape == (B, H, 4, 5)
    assert (maps[1][1, :, :, 2:] == 0).all()


def test_encoder_padding_does_not_leak_between_rows():
    torch.manual_seed(0)
    enc = TransformerEncoder(n_layers=2, d_model=C, n_heads=H, d_ff=32).double().eval()
    lengths = [5, 2, 4]
    x = torch.randn(B, 5, C, dtype=torch.float64)
    batched = enc(x, _padding(lengths, 5))
    for b, n in enumerate(lengths):
        alone = enc(x[b : b + 1, :n])
        torch.testing.assert_close(batched[b : b + 1, :n], alone)


def test_sinusoidal_position_encoding_known_values():
    pe = sinusoidal_position_encoding(50, 8)
    assert pe.shape == (50, 8) and pe.dtype == torch.float32
    assert pe[0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    torch.testing.assert_close(pe[1, :2], torch.tensor([math.sin(1), math.cos(1)]))
    p, i = 37, 2  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)
    angle = p / 10000 ** (2 * i / 8)
    torch.testing.assert_close(pe[p, 2 * i : 2 * i + 2], torch.tensor([math.sin(angle), math.cos(angle)]))
    with pytest.raises(ValueError):
        sinusoidal_position_encoding(4, 7)


def _mae_2d_sincos(grid_h, grid_w, dim):
    """facebookresearch/mae's get_2d_sincos_pos_embed, generalised to a grid_h x grid_w grid."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))  # w first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_2d_position_encoding_matches_mae_and_is_row_major():
    pe = sincos_2d_position_encoding(3, 4, 16)
    assert pe.shape == (12, 16) and pe.dtype == torch.float32
    assert pe[0].tolist() == [0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4
    torch.testing.assert_close(pe, torch.from_numpy(_mae_2d_sincos(3, 4, 16)).float())
    # patch 5 is row 1, column 1; patch 4 is row 1, column 0: same row half, different column half
    assert torch.equal(pe[5, 8:], pe[4, 8:]) and not torch.equal(pe[5, :8], pe[4, :8])
    torch.testing.assert_close(pe[1, :2], torch.tensor([math.sin(1), math.sin(1 / 10000 ** 0.25)]))
    with pytest.raises(ValueError):
        sincos_2d_position_encoding(2, 2, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_fused_kernels_match_manual_path_and_cache():
    ours, _ = _pair(dtype=torch.float32)
    ours = ours.cuda()
    x = torch.randn(B, T, C, device="cuda")
    pad = _padding([6, 4, 0], T).cuda()  # the last row is entirely padding
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for causal, mask in [(True, None), (False, pad), (True, pad)]:
            fused = ours(x, key_padding_mask=mask, causal=causal)
            ours.fused = False
            manual = ours(x, key_padding_mask=mask, causal=causal)
            ours.fused = True
            assert torch.isfinite(fused).all()
            torch.testing.assert_close(fused.float(), manual.float(), atol=3e-2, rtol=3e-2)
    dec = _decoder().float().cuda()
    x = torch.randn(B, 5, C, device="cuda")
    memory = torch.randn(B, 7, C, device="cuda")
    full = dec(x, memory)
    cache = dec.new_cache()
    steps = [dec(x[:, t : t + 1], memory, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
