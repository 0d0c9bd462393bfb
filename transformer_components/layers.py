"""Pre-norm transformer layers and stacks.

Pre-norm (x + f(LN(x))) keeps an untouched residual path from input to output, which trains
stably without learning-rate warm-up tricks; the stacks therefore end with one more LayerNorm.
"""

from torch import Tensor, nn

from .attention import KVCache, MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> GELU -> Dropout -> Linear. (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    """x + attn(LN(x)), then x + ff(LN(x)). (B, S, C) -> (B, S, C).

    ``norm_eps`` is the LayerNorms' epsilon (timm's and MAE's ViTs use 1e-6; PyTorch's default is 1e-5).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x (B, S, C); key_padding_mask (B, S) bool, True = padding."""
        x = x + self.dropout(self.attn(self.norm1(x), key_padding_mask=key_padding_mask))  # (B, S, C)
        return x + self.dropout(self.ff(self.norm2(x)))  # (B, S, C)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the memory, feed-forward; each pre-norm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, memory_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, kv_dim=memory_dim)
        self.norm3 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
        need_weights: bool = False,
        memory_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C); memory (B, S, Cm); memory_padding_mask (B, S) bool, True = padding.

        With memory_index (B,) long, memory (U, S, Cm) and its mask (U, S) hold each memory once and
        row b of x reads memory[memory_index[b]] (its keys/values are projected once per memory).

        `cache` is the whole stack's KVCache; this layer uses its entries at `layer_index`.
        Returns x (B, T, C), or (x, cross-attention weights (B, H, T, S)) when need_weights.
        """
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = cache.self_attention[layer_index]
            cross_cache = cache.cross_attention[layer_index]
        x = x + self.dropout(self.self_attn(self.norm1(x), causal=True, cache=self_cache))  # (B, T, C)
        h = self.cross_attn(
            self.norm2(x), memory, key_padding_mask=memory_padding_mask, cache=cross_cache, need_weights=need_weights,
            key_value_index=memory_index,
        )
        h, weights = h if need_weights else (h, None)
        x = x + self.dropout(h)  # (B, T, C)
        x = x + self.dropout(self.ff(self.norm3(x)))  # (B, T, C)
        return (x, weights) if need_weights else x


class TransformerEncoder(nn.Module):
    """A stack of pre-norm EncoderLayers and a final LayerNorm. (B, S, C) -> (B, S, C).

    Attributes `layers` (nn.ModuleList of EncoderLayer) and `norm` are public so that callers can
    freeze or unfreeze single layers.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout, norm_eps) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x (B, S, C); key_padding_mask (B, S) bool, True = padding. Returns (B, S, C)."""
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """A stack of pre-norm DecoderLayers and a final LayerNorm.

    Attributes `layers` (nn.ModuleList of DecoderLayer) and `norm`. `memory_dim` is the width of
    the memory if it differs from d_model.
    """

    def __init__(
        self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, memory_dim: int | None = None
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, n_heads, d_ff, dropout, memory_dim) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def new_cache(self) -> KVCache:
        """An empty KVCache for incremental decoding with this stack."""
        return KVCache(len(self.layers))

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_cross_attention: bool = False,
        memory_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Decode target embeddings x (B, T, C) against memory (B, S, Cm), causally.

        memory_index (B,) long: memory (U, S, Cm) holds each memory once and row b of x reads
        memory[memory_index[b]]; see DecoderLayer.

        With a cache, x holds only the new positions: their self-attention keys/values are
        appended to the cache, and the memory's cross-attention keys/values are computed on the
        first call and reused afterwards (memory is then not read again).

        Returns (B, T, C), or with return_cross_attention also a list with one (B, H, T, S)
        weight tensor per layer.
        """
        maps = []
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, memory_padding_mask, cache, i, need_weights=return_cross_attention,
                      memory_index=memory_index)
            if return_cross_attention:
                x, weights = x
                maps.append(weights)
        x = self.norm(x)  # (B, T, C)
        return (x, maps) if return_cross_attention else x
