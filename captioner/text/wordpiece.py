"""WordPiece: merges scored by likelihood gain for training, greedy longest match for encoding.

A piece that continues a word carries the ``##`` prefix, so decoding knows where spaces go.
A pre-token (`captioner.text.normalize.pretokenize`) that starts a word, marked ``▁``, starts
with a bare piece; a pre-token glued to the one before starts with a ``##`` piece::

    "▁low"  ->  ["l", "##o", "##w"]        "'s"  ->  ["##'", "##s"]

Training merges, like BPE, one adjacent pair at a time, but picks the pair whose merge
raises the likelihood of the training text most, under a unigram model of the symbols
(each symbol s drawn independently with probability p(s) = c(s) / N, where c(s) counts
its occurrences and N all symbols). Merging a and b rewrites each of the c(ab)
occurrences of the pair as one symbol: two factors p(a) p(b) become one factor
p(ab) = c(ab) / N. Holding N and the other counts fixed (they move by at most c(ab)),
the log-likelihood changes by::

    gain(a, b) = c(ab) * [log p(ab) - log p(a) - log p(b)]
               = c(ab) * log(c(ab) * N / (c(a) * c(b)))

how often the pair occurs times how much more often than chance its parts occur together
(pointwise mutual information). Without the factor c(ab), a pair of two symbols that occur
once, and together, would score the highest ratio of all, and rare words would be built first.

Worked example: pre-tokens ▁ab x2, ▁ac x3, ▁bc x1 spell a 5, ##b 2, ##c 4, b 1 (N = 12)::

    (a, ##b)  2 * log(2 * 12 / (5 * 2)) = 2 * log 2.4 = 1.75
    (a, ##c)  3 * log(3 * 12 / (5 * 4)) = 3 * log 1.8 = 1.76   <- merged first: "ac"
    (b, ##c)  1 * log(1 * 12 / (1 * 4)) =     log 3   = 1.10

(the ratio alone, 2/10, 3/20 and 1/4, would have merged the rarest pair "bc" first). Then
N = 9, a 2, ##c 1: "ab" (2 * log 4.5 = 3.01) beats "bc" (log 9 = 2.20), and "bc" comes last.
Only the resulting vocabulary is kept: encoding ignores the merge order and cuts each
pre-token greedily into the longest vocabulary pieces, left to right.

This module knows nothing about ids or special tokens; `captioner.text.tokenizers`
wraps it into a tokenizer. (In the code below a "word" is a pre-token.)
"""

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence

from captioner.text.bpe import get_stats, merge
from captioner.text.normalize import WORD_START

CONTINUATION = "##"

Pair = tuple[str, str]


def spell(word: str) -> list[str]:
    """The pieces a pre-token starts from: ``spell("▁low") == ["l", "##o", "##w"]``, ``spell(".") == ["##."]``."""
    if word.startswith(WORD_START):
        return [word[1], *(CONTINUATION + ch for ch in word[2:])]
    return [CONTINUATION + ch for ch in word]


def glue(pair: Pair) -> str:
    """The piece a merge creates: ``glue(("l", "##o")) == "lo"``, ``glue(("##o", "##w")) == "##ow"``."""
    return pair[0] + pair[1][len(CONTINUATION) :]


def likelihood_gain(pair_count: int, count_a: int, count_b: int, n_symbols: int) -> float:
    """``c(ab) * log(c(ab) * N / (c(a) * c(b)))``: the merge score derived in the module docstring.

    >>> round(likelihood_gain(3, 5, 4, 12), 2)
    1.76
    """
    # Integers divide with correct rounding, so equal counts give bit-equal scores: ties are exact.
    return pair_count * math.log(pair_count * n_symbols / (count_a * count_b))


def train_wordpiece(
    word_counts: Mapping[str, int],
    n_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Learn a WordPiece vocabulary from a table ``{pre-token: frequency}``.

    Returns the pieces: the alphabet first (every character of the pre-tokens but
    ``▁``, sorted, then every character again with ``##``, so that any pre-token made
    of seen characters can be encoded), then the merged pieces in the order they were
    learned, until there are `n_tokens` pieces or no pair is left. Each merge takes the
    pair with the highest `likelihood_gain`, even when no gain is positive any more (the
    vocabulary size is the stopping rule). Ties in score go to the smallest pair in
    string order, so training is deterministic. ``progress(done, total)`` is called
    after each merge.

    The worked example of the module docstring:

    >>> train_wordpiece({"▁ab": 2, "▁ac": 3, "▁bc": 1}, 9)[6:]
    ['ac', 'ab', 'bc']
    """
    chars = sorted({ch for word in word_counts for ch in word.removeprefix(WORD_START)})
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

    n_symbols = sum(symbol_counts.values())

    def score(pair: Pair) -> float:
        return likelihood_gain(pair_counts[pair], symbol_counts[pair[0]], symbol_counts[pair[1]], n_symbols)

    # Max-heap by score, checked lazily: an entry is stale when it is no longer the pair's score.
    # Every pair keeps an entry at or above its true score (see the rescoring below), so an entry at
    # the top that is still exact is the best pair; a stale one is pushed back with its true score.
    heap = [(-score(pair), pair) for pair in pair_counts]
    heapq.heapify(heap)

    pieces = list(alphabet)
    known = set(alphabet)
    total = n_tokens - len(alphabet)
    while len(pieces) < n_tokens and heap:
        neg_score, pair = heapq.heappop(heap)
        if pair not in pair_counts:
            continue
        if score(pair) != -neg_score:
            heapq.heappush(heap, (-score(pair), pair))
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
        n_symbols += sum(symbol_delta.values())  # one fewer symbol per merged occurrence
        # Fresh entries for the pairs whose own count changed, and for the pairs of a symbol that became
        # rarer (their scores rose). A symbol that became commoner, like N, only lowers scores.
        rescored = {p for p, d in pair_delta.items() if d}
        for symbol, d in symbol_delta.items():
            if d < 0:
                pairs_with[symbol] = {p for p in pairs_with[symbol] if p in pair_counts}
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
    """Cut pre-token `word` greedily into the longest vocabulary pieces, left to right; None if it cannot be cut.

    `max_piece_chars` bounds the search: the longest piece's length without ``##``. A
    pre-token without ``▁`` is glued to the one before, so its first piece is a ``##`` piece too.

    >>> encode_word("▁lowest", {"low", "lo", "##est", "##e"}, 3)
    ['low', '##est']
    >>> encode_word("est", {"low", "lo", "##est", "##e"}, 3)
    ['##est']
    >>> encode_word("▁lox", {"low", "lo", "##est"}, 3) is None
    True
    """
    starts_word = word.startswith(WORD_START)
    word = word.removeprefix(WORD_START)
    pieces, start = [], 0
    while start < len(word):
        for end in range(min(len(word), start + max_piece_chars), start, -1):
            piece = word[start:end] if start == 0 and starts_word else CONTINUATION + word[start:end]
            if piece in vocab:
                break
        else:
            return None
        pieces.append(piece)
        start = end
    return pieces


def join_tokens(tokens: Sequence[str]) -> str:
    """Glue WordPiece tokens back into text: words separated by single spaces.

    A token starting with ``##`` continues the current word; any other starts a new word.
    ``#`` is a pre-token of its own, so a word-initial piece is never longer than one
    ``#`` and a piece starting with ``##`` is always a continuation (``###`` is a glued ``#``).

    >>> join_tokens(["lo", "##w", "man", "##'s", "t", "##-", "##shirt", "##."])
    "low man's t-shirt."
    """
    words: list[str] = []
    for token in tokens:
        if token.startswith(CONTINUATION) and words:
            words[-1] += token[len(CONTINUATION) :]
        else:
            words.append(token.removeprefix(CONTINUATION))
    return " ".join(words)
