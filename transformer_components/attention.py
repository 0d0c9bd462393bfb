"""Multi-head attention, written out, with a KV cache for incremental decoding.

Shapes: B batch, Tq query length, Tk key length, C model width, H heads, D = C / H head width.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionCache:
    """Keys and values of one attention module, each (B, H, T, D); None before the first call.

    Self-attention appends the keys/values of every new position; cross-attention stores the
    keys/values of the memory once and reuses them on every later call.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N,) long of the batch dimension: (B, H, T, D) -> (N, H, T, D)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class KVCache:
    """The cache of a whole decoder stack: one self- and one cross-attention entry per layer.

    Create it with `TransformerDecoder.new_cache()`, pass it to every decoding call, and feed
    only the new positions each time; `len(cache)` is then the position of the next token.

    Example:
        cache = decoder.new_cache()
        decoder(x[:, :3], memory, cache=cache)   # len(cache) == 3
        decoder(x[:, 3:4], memory, cache=cache)  # len(cache) == 4; memory's K/V are reused
    """

    def __init__(self, n_layers: int) -> None:
        self.self_attention = [AttentionCache() for _ in range(n_layers)]
        self.cross_attention = [AttentionCache() for _ in range(n_layers)]

    def __len__(self) -> int:
        """Number of cached self-attention time steps (the position of the next token)."""
        k = self.self_attention[0].k
        return 0 if k is None else k.size(2)

    def reorder(self, index: Tensor, cross_attention: bool = True) -> None:
        """index_select rows `index` (N,) long along the batch dim of every cached tensor.

        Used to expand a batch (e.g. each source to K beams) and to follow beams when they are
        re-ranked. `cross_attention=False` leaves the cross-attention keys/values alone: correct
        when `index` only moves rows among copies of the same memory (beams of one source), and
        it saves copying (B, H, S, D) per layer per step.
        """
        entries = self.self_attention + (self.cross_attention if cross_attention else [])
        for entry in entries:
            entry.reorder(index)


def attention_mask(
    q_len: int,
    k_len: int,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean mask of allowed (query, key) pairs, True = may attend; None when all are allowed.

    key_padding_mask (B, Tk) bool, True = padding. With `causal`, the queries are the *last*
    q_len of k_len positions (the earlier ones are in a KV cache), so query i may see keys
    j <= i + (k_len - q_len). Returns (B or 1, 1, Tq, Tk).

    Example: q_len=2, k_len=3, causal, no padding -> [[[[True, True, False],
                                                         [True, True, True]]]];
    q_len=1 with causal and no padding -> None (the newest query may see every key).
    """
    mask = None
    if causal and q_len > 1:
        past = k_len - q_len
        i = torch.arange(q_len, device=device)[:, None]  # (Tq, 1)
        j = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
        mask = (j <= i + past)[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        mask = keep if mask is None else mask & keep  # (B, 1, Tq, Tk)
    return mask


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention: softmax(Q K^T / sqrt(D)) V, per head.

    Two paths compute the same thing: `fused` (default) calls F.scaled_dot_product_attention;
    setting `self.fused = False` runs the manual path that spells out the math. Separate
    q_proj/k_proj/v_proj/out_proj layers mirror torch.nn.MultiheadAttention's weights, see
    `load_torch_mha`.

    Masked scores are filled with the dtype's most negative finite value rather than -inf, so a
    query whose keys are all masked gets a uniform average instead of NaN (both paths).

    Args:
        d_model: width C of the queries and of the output.
        n_heads: H; must divide d_model.
        dropout: dropout on the attention weights (training only).
        bias: biases in the four projections.
        kv_dim: width of the key/value input if it differs from d_model (cross-attention).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, kv_dim: int | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        kv_dim = d_model if kv_dim is None else kv_dim
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.v_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.fused = True

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, T, D)"""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def _keys_values(self, query: Tensor, key_value: Tensor | None, cache: AttentionCache | None,
                     key_value_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, Tk, D), computed, appended to or taken from the cache.

        key_value_index (B,) long: query row b reads key_value row key_value_index[b]; the keys and
        values are projected once per key_value row and then gathered (cross-attention only).
        """
        if key_value is None:  # self-attention: the new positions' K/V extend the cached ones
            k = self._split_heads(self.k_proj(query))  # (B, H, Tq, D)
            v = self._split_heads(self.v_proj(query))  # (B, H, Tq, D)
            if cache is not None:
                if cache.k is not None:
                    k = torch.cat([cache.k, k], dim=2)  # (B, H, T_past + Tq, D)
                    v = torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
            return k, v
        if cache is not None and cache.k is not None:  # cross-attention: the memory never changes
            return cache.k, cache.v
        k, v = self.k_proj(key_value), self.v_proj(key_value)  # (U, Tk, C) each, U = key_value rows
        if key_value_index is not None:
            # project each memory once (e.g. an image), then share it by all of its queries (its captions);
            # gathered while still contiguous (before the heads are split), which is a plain row copy
            k, v = k.index_select(0, key_value_index), v.index_select(0, key_value_index)  # (B, Tk, C)
        k, v = self._split_heads(k), self._split_heads(v)  # (B, H, Tk, D)
        if cache is not None:
            cache.k, cache.v = k, v
        return k, v

    def forward(
        self,
        query: Tensor,
        key_value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: AttentionCache | None = None,
        need_weights: bool = False,
        key_value_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from `query` to `key_value` (or to itself).

        Args:
            query: (B, Tq, C).
            key_value: (B, Tk, kv_dim), or None for self-attention. Ignored once a
                cross-attention `cache` holds the memory's keys/values.
            key_padding_mask: (B, Tk) bool, True = padding (that key is ignored).
            causal: query i sees only keys at positions <= its own; with a cache the queries
                are the newest positions.
            cache: an AttentionCache (see KVCache) for incremental decoding.
            need_weights: also return the attention weights (B, H, Tq, Tk); uses the manual path.
            key_value_index: (B,) long, cross-attention only: query row b attends to key_value row
                key_value_index[b], so key_value (U, Tk, kv_dim) and key_padding_mask (U, Tk) hold
                each memory once and its keys/values are projected once, however many queries share
                it. Same result as passing key_value.index_select(0, key_value_index), with fewer FLOPs.

        Returns:
            out (B, Tq, C), or (out, weights) when need_weights.
        """
        B, Tq, C = query.shape
        if key_value_index is not None:
            if key_value is None:
                raise ValueError("key_value_index needs a key_value (it selects rows of the memory)")
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.index_select(0, key_value_index)  # (B, Tk)
        q = self._split_heads(self.q_proj(query))  # (B, H, Tq, D)
        k, v = self._keys_values(query, key_value, cache, key_value_index)  # (B, H, Tk, D) each
        Tk = k.size(2)
        p_drop = self.dropout if self.training else 0.0
        weights = None
        # bf16 on a CPU takes the manual path: PyTorch's fused CPU kernel backpropagates slowly in bf16,
        # while the manual path's matmuls run on the matrix units (docs/benchmarks.md#precision-on-a-cpu-bf16-and-fused-adamw)
        cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
        if self.fused and not need_weights and not cpu_bf16:
            if causal and Tq == Tk and key_padding_mask is None:
                # the plain square causal case has its own (faster, flash) kernel
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
            else:
                allowed = attention_mask(Tq, Tk, key_padding_mask, causal, q.device)
                bias = None
                if allowed is not None:
                    # additive float mask rather than a boolean one: a fully masked row then stays
                    # finite (uniform weights), exactly as in the manual path below
                    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
                    bias.masked_fill_(~allowed, torch.finfo(q.dtype).min)  # (B|1, 1, Tq, Tk)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop)  # (B, H, Tq, D)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, Tq, Tk)
            allowed = attention_mask(Tq, Tk, key_padding_mask, causal, q.device)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)  # (B, H, Tq, Tk), each row sums to 1
            y = F.dropout(weights, p_drop, self.training) @ v  # (B, H, Tq, D)
        y = y.transpose(1, 2).reshape(B, Tq, C)  # (B, Tq, C): heads side by side again
        out = self.out_proj(y)  # (B, Tq, C)
        return (out, weights) if need_weights else out

    @torch.no_grad()
    def load_torch_mha(self, mha: nn.MultiheadAttention) -> None:
        """Copy the weights of a torch.nn.MultiheadAttention of the same shape into this module."""
        if mha.num_heads != self.n_heads or mha.embed_dim != self.q_proj.out_features:
            raise ValueError("torch MultiheadAttention has a different width or number of heads")
        if (mha.in_proj_bias is None) != (self.q_proj.bias is None):
            raise ValueError("torch MultiheadAttention and this module disagree on biases")
        if mha.in_proj_weight is not None:  # packed [q; k; v]
            w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        for proj, w in ((self.q_proj, w_q), (self.k_proj, w_k), (self.v_proj, w_v)):
            proj.weight.copy_(w)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None:
            for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                proj.bias.copy_(b)
            self.out_proj.bias.copy_(mha.out_proj.bias)
