"""A small, readable transformer: attention with a KV cache, pre-norm layers, position
encodings, and greedy / sampled / beam-search generation. Knows nothing about images or captions."""

from .attention import AttentionCache, KVCache, MultiHeadAttention, attention_mask
from .encoder_decoder import EncoderDecoder
from .generation import beam_search, beam_search_plain, greedy_search, length_penalty, sample
from .layers import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    TransformerDecoder,
    TransformerEncoder,
)
from .position import sincos_2d_position_encoding, sinusoidal_position_encoding

__all__ = [
    "AttentionCache",
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "TransformerDecoder",
    "TransformerEncoder",
    "EncoderDecoder",
    "attention_mask",
    "beam_search",
    "beam_search_plain",
    "greedy_search",
    "length_penalty",
    "sample",
    "sincos_2d_position_encoding",
    "sinusoidal_position_encoding",
]
