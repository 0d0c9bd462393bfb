"""WordPiece: likelihood-scored merges for training, greedy longest match for encoding.

A piece that continues a word carries the ``##`` prefix, so decoding knows where
words start::

    "low"  ->  ["l", "##o", "##w"]

Training merges, like BPE, one adjacent pair at a time, but picks the pair with the
highest score ``freq(ab) / (freq(a) * freq(b))``: how much more often the two appear
together than their separate frequencies predict. A pair of rare symbols that always
occur together beats a pair of common ones. Only the resulting vocabulary is kept:
encoding ignores the merge order and cuts each word greedily into the longest
vocabulary pieces, left to right.

This module knows nothing about ids or special tokens; `captioner.text.tokenizers`
wraps it into a tokenizer.
"""

import heapq
from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence

from captioner.text.bpe import get_stats, merge

CONTINUATION = "##"

Pair = tuple[str, str]


def spell(word: str) -> list[str]:
    """The pieces a word starts from: ``spell("low") == ["l", "##o", "##w"]``."""
    return [word[0], *(CONTINUATION + ch for ch in word[1:])]


def glue(pair: Pair) -> str:
    """The piece a merge creates: ``glue(("l", "##o")) == "lo"``, ``glue(("##o", "##w")) == "##ow"``."""
    return pair[0] + pair[1][len(CONTINUATION) :]


def train_wordpiece(
    word_counts: Mapping[str, int],
    n_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Learn a WordPiece vocabulary from a table ``{word: frequency}``.

    Returns the pieces: the alphabet first (every character of the words, sorted,
    then every character again with ``##``, so that any word made of seen characters
    can be encoded), then the merged pieces in the order they were learned, until
    there are `n_tokens` pieces or no pair is left. Ties in score go to the smallest
    pair in string order, so training is deterministic. ``progress(done, total)``
    is called after each merge.

    Worked example: in ``{"ab": 2, "b": 1}`` the symbols are a (2), b (1), ##b (2) and
    the only pair (a, ##b) occurs twice: score 2 / (2 * 2) = 0.5.

    >>> train_wordpiece({"ab": 2, "b": 1}, 5)
    ['a', 'b', '##a', '##b', 'ab']
    """
    chars = sorted({ch for word in word_counts for ch in word})
    alphabet = chars + [CONTINUATION + ch for ch in chars]
    if n_tokens < len(alphabet):
        raise ValueError(
            f"the training text has {len(alphabet)} pieces (each character alone and with ##), "
            f"more than the {n_tokens} tokens allowed (special tokens excluded)"
        )
    words = [spell(word) for word in word_counts]
    freqs = list(word_counts.values())
    symbol_counts: dict[str, int] = defaultdict(int)
    pair_counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> words containing it (may go stale)
    pairs_with: dict[str, set[Pair]] = defaultdict(set)  # symbol -> pairs it is part of (may go stale)
    for i, (symbols, freq) in enumerate(zip(words, freqs)):
        for symbol in symbols:
            symbol_counts[symbol] += freq
        get_stats(symbols, pair_counts, freq)
        for pair in zip(symbols, symbols[1:]):
            where[pair].add(i)
            pairs_with[pair[0]].add(pair)
            pairs_with[pair[1]].add(pair)

    def score(pair: Pair) -> float:
        # Ints divide with correct rounding, so equal ratios give equal floats: the heap check below is exact.
        return pair_counts[pair] / (symbol_counts[pair[0]] * symbol_counts[pair[1]])

    # Max-heap by score with lazy deletion: an entry is stale when its score is no longer the pair's score.
    heap = [(-score(pair), pair) for pair in pair_counts]
    heapq.heapify(heap)

    pieces = list(alphabet)
    known = set(alphabet)
    total = n_tokens - len(alphabet)
    while len(pieces) < n_tokens and heap:
        neg_score, pair = heapq.heappop(heap)
        if pair not in pair_counts or score(pair) != -neg_score:
            continue
        new_piece = glue(pair)
        if new_piece not in known:
            known.add(new_piece)
            pieces.append(new_piece)
        pair_delta: dict[Pair, int] = defaultdict(int)
        symbol_delta: dict[str, int] = defaultdict(int)
        for i in where.pop(pair):
            old = words[i]
            new = merge(old, pair, new_piece)
            if len(new) == len(old):
                continue
            words[i] = new
            freq = freqs[i]
            get_stats(old, pair_delta, -freq)
            get_stats(new, pair_delta, freq)
            for symbol in old:
                symbol_delta[symbol] -= freq
            for symbol in new:
                symbol_delta[symbol] += freq
            for new_pair in zip(new, new[1:]):
                if new_piece in new_pair:
                    where[new_pair].add(i)
                    pairs_with[new_pair[0]].add(new_pair)
                    pairs_with[new_pair[1]].add(new_pair)
        _apply(pair_counts, pair_delta)
        _apply(symbol_counts, symbol_delta)
        # A pair's score changes when its own count changes or when either of its symbols' counts does.
        rescored = {p for p, d in pair_delta.items() if d}
        for symbol, d in symbol_delta.items():
            if d:
                rescored |= pairs_with[symbol]
        for p in rescored:
            if p in pair_counts:
                heapq.heappush(heap, (-score(p), p))
        if progress is not None:
            progress(len(pieces) - len(alphabet), total)
    return pieces


def _apply(counts: dict, delta: Mapping) -> None:
    """Add `delta` to `counts`, dropping entries that reach zero."""
    for key, d in delta.items():
        count = counts.get(key, 0) + d
        if count > 0:
            counts[key] = count
        else:
            counts.pop(key, None)


def encode_word(word: str, vocab: Container[str], max_piece_chars: int) -> list[str] | None:
    """Cut `word` greedily into the longest vocabulary pieces, left to right; None if it cannot be cut.

    `max_piece_chars` bounds the search: the longest piece's length without ``##``.

    >>> encode_word("lowest", {"low", "lo", "##est", "##e"}, 3)
    ['low', '##est']
    >>> encode_word("lox", {"low", "lo", "##est"}, 3) is None
    True
    """
    pieces, start = [], 0
    while start < len(word):
        for end in range(min(len(word), start + max_piece_chars), start, -1):
            piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
            if piece in vocab:
                break
        else:
            return None
        pieces.append(piece)
        start = end
    return pieces


def join_tokens(tokens: Sequence[str]) -> str:
    """Glue WordPiece tokens back into words separated by single spaces.

    A token starting with ``##`` continues the current word. Normalised words never
    contain ``#`` next to other characters, so a word-initial piece never starts with ``##``.

    >>> join_tokens(["lo", "##w", "est"])
    'low est'
    """
    words: list[str] = []
    for token in tokens:
        if token.startswith(CONTINUATION) and words:
            words[-1] += token[len(CONTINUATION) :]
        else:
            words.append(token.removeprefix(CONTINUATION))
    return " ".join(words)
