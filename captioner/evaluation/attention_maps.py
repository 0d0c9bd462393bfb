"""Where the caption decoder looks: its cross-attention over the image patches, word by word.

Beam search runs on the KV cache and keeps no attention weights. To see them, the generated caption
is fed back through the decoder *teacher-forced*, all positions at once: with causal self-attention,
position i sees exactly ``<sos> t_0 .. t_{i-1}``, the prefix from which beam search chose ``t_i``, so
its cross-attention is the one that produced ``t_i``::

    decoder input   <sos>  a      red    circle
    attention row   0      1      2      3
    predicts        a      red    circle <eos>

Words can span several subword tokens ("dodec" "ahedron"); a word's map is the mean of its tokens'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captioner.text.tokenizers import EOS_ID, SOS_ID
from transformer_components import EncoderDecoder


@torch.no_grad()
def cross_attention_maps(model: EncoderDecoder, images: Tensor, tokens: Tensor) -> Tensor:
    """Last decoder layer's cross-attention, heads averaged, for every generated token.

    images (B, 3, H, W) normalised; tokens (B, L) generated ids without ``<sos>`` (what
    ``generate`` returns). Returns (B, L, gh, gw) float32 on the CPU: row i is the attention over
    the gh x gw patch grid while predicting ``tokens[:, i]``; each map sums to 1.
    """
    memory = model.encode(images)  # (B, S, C)
    sos = torch.full_like(tokens[:, :1], SOS_ID)  # (B, 1)
    inputs = torch.cat([sos, tokens[:, :-1]], dim=1)  # (B, L): shifted right, as in training
    _, maps = model.decoder(inputs, memory, return_cross_attention=True)
    weights = maps[-1].float().mean(dim=1)  # (B, L, S): last layer, mean over heads
    grid = model.encoder.grid_size  # ViT patches or ResNet cells per side
    return weights.reshape(*weights.shape[:2], grid, grid).cpu()  # (B, L, gh, gw)


def token_words(token_ids: list[int], tokenizer) -> list[tuple[str, list[int]]]:
    """Group generated token ids into the words of their caption: ``[(word, token positions)]``.

    Decoding stops at the first ``<eos>``. Token i belongs to the word that the decoded prefix
    ``token_ids[:i + 1]`` ends in, so this works for any tokenizer whose ``decode`` joins subwords
    (BPE's end-of-word marker, WordPiece's ``##``). A token that decodes to nothing (``<unk>``)
    joins the word before it, or is dropped at the start; a word that no token starts (which a
    tokenizer whose tokens never span two words cannot produce) is left out.

    Example with BPE tokens ``▁a ▁dode cahedron <eos>``: ``[("a", [0]), ("dodecahedron", [1, 2])]``.
    """
    if EOS_ID in token_ids:
        token_ids = token_ids[: token_ids.index(EOS_ID)]
    words = tokenizer.decode(token_ids).split()
    positions: list[list[int]] = [[] for _ in words]
    for i in range(len(token_ids)):
        n_words = len(tokenizer.decode(token_ids[: i + 1]).split())
        if n_words:
            positions[n_words - 1].append(i)
    return [(word, where) for word, where in zip(words, positions) if where]


def word_attention(model: EncoderDecoder, images: Tensor, tokens: Tensor,
                   tokenizer) -> list[tuple[list[str], Tensor]]:
    """Per image: its caption's words and one attention map per word, ``(words, (n_words, gh, gw))``.

    images (B, 3, H, W) normalised, tokens (B, L) generated ids (see :func:`cross_attention_maps`).
    """
    maps = cross_attention_maps(model, images, tokens)  # (B, L, gh, gw)
    result = []
    for b, row in enumerate(tokens.tolist()):
        groups = token_words(row, tokenizer)
        word_maps = [maps[b, positions].mean(dim=0) for _, positions in groups]  # n_words x (gh, gw)
        stacked = torch.stack(word_maps) if word_maps else maps.new_zeros(0, *maps.shape[2:])
        result.append(([word for word, _ in groups], stacked))
    return result
