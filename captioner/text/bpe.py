"""Byte-pair encoding (BPE) on characters, trained on a pre-token frequency table.

A pre-token (`captioner.text.normalize.pretokenize`) is spelled as its characters; the
word-start marker ``▁`` that a space before it left is a character like any other, so
decoding knows where spaces go, and a pre-token without it is glued to the one before::

    "▁low"  ->  ["▁", "l", "o", "w"]        "."  ->  ["."]

Training repeatedly merges the most frequent adjacent pair of symbols into a new
symbol ("e" + "s" -> "es", "▁" + "l" -> "▁l") until the vocabulary is full. Read
`train_bpe_plain` first: it recounts every pair after each merge, as the textbook does.
`train_bpe` learns the same merges fast: because captions repeat the same few thousand
words, it counts each distinct pre-token once (with its frequency) and, after each merge,
updates the pair counts of only the pre-tokens that contained the merged pair. Merges
never cross pre-tokens. Encoding a
pre-token replays the merges in the order they were learned. (In the code below a
"word" is a pre-token.)

This module knows nothing about ids or special tokens; `captioner.text.tokenizers`
wraps it into a tokenizer.
"""

import heapq
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from captioner.text.normalize import WORD_START

Pair = tuple[str, str]


def get_stats(symbols: Sequence[str], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict[Pair, int]:
    """Count adjacent pairs of symbols, adding `weight` per occurrence to `counts`.

    >>> get_stats(["l", "o", "l", "o"])
    {('l', 'o'): 2, ('o', 'l'): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(symbols, symbols[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(symbols: Sequence[str], pair: Pair, new_symbol: str) -> list[str]:
    """Replace every occurrence of `pair`, scanning left to right, by `new_symbol`.

    >>> merge(["a", "a", "a", "b"], ("a", "a"), "aa")
    ['aa', 'a', 'b']
    """
    first, second = pair
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            merged.append(new_symbol)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def spell(word: str) -> list[str]:
    """The symbols a pre-token starts from: ``spell("▁low") == ["▁", "l", "o", "w"]``."""
    return list(word)


def train_bpe_plain(word_counts: Mapping[str, int], n_tokens: int) -> tuple[list[str], list[Pair]]:
    """BPE training as the textbook states it: slow, and obviously right.

    Repeat until the alphabet plus the merged tokens number `n_tokens`, or no pair is left:
    count every adjacent pair over the whole table, each occurrence weighted by its pre-token's
    frequency (`get_stats`); take the most frequent pair, the smallest one on a tie; rewrite every
    pre-token with it (`merge`). Returns ``(alphabet, merges)`` as `train_bpe` does, which learns
    the same merges much faster (the tests check the two against each other).

    >>> train_bpe_plain({"▁aab": 2, "▁ab": 1}, 5)
    (['a', 'b', '▁'], [('a', 'b'), ('a', 'ab')])
    """
    alphabet = sorted({ch for word in word_counts for ch in word})
    words = {tuple(spell(word)): count for word, count in word_counts.items()}
    merges: list[Pair] = []
    while len(alphabet) + len(merges) < n_tokens:
        pair_counts: dict[Pair, int] = {}
        for symbols, count in words.items():
            get_stats(symbols, pair_counts, count)
        if not pair_counts:
            break
        best = max(pair_counts.values())
        pair = min(p for p, c in pair_counts.items() if c == best)  # the tie rule: the smallest pair
        merges.append(pair)
        rewritten: dict[tuple[str, ...], int] = {}
        for symbols, count in words.items():
            new = tuple(merge(symbols, pair, pair[0] + pair[1]))
            rewritten[new] = rewritten.get(new, 0) + count
        words = rewritten
    return alphabet, merges


def train_bpe(
    word_counts: Mapping[str, int],
    n_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[Pair]]:
    """Learn BPE merges from a table ``{pre-token: frequency}``: `train_bpe_plain`'s merges, fast.

    Returns ``(alphabet, merges)``: the alphabet is every character of the pre-tokens
    (``▁`` included) in sorted order; merges are learned until alphabet plus merged
    tokens number `n_tokens`, or no pair is left. The most frequent pair wins; ties go
    to the smallest pair in string order, so training is deterministic.
    ``progress(done, total)`` is called after each merge.

    What it changes from `train_bpe_plain`: the pair counts are built once and then updated
    only where a merge changed a pre-token (an index from each pair to the pre-tokens that
    hold it), and the next pair comes from a max-heap instead of a scan of every count.

    >>> train_bpe({"▁aab": 2, "▁ab": 1}, 5)
    (['a', 'b', '▁'], [('a', 'b'), ('a', 'ab')])
    """
    alphabet = sorted({ch for word in word_counts for ch in word})
    if n_tokens < len(alphabet):
        raise ValueError(
            f"the training text has {len(alphabet)} symbols (its characters and the word-start marker), "
            f"more than the {n_tokens} tokens allowed (special tokens excluded)"
        )
    words = [spell(word) for word in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[Pair, int] = {}
    # pair -> indices of the words containing it, so a merge visits only those words.
    # Entries may go stale (the word lost the pair to an earlier merge); merge() then changes nothing.
    where: dict[Pair, set[int]] = defaultdict(set)
    for i, (symbols, freq) in enumerate(zip(words, freqs)):
        get_stats(symbols, pair_counts, freq)
        for pair in zip(symbols, symbols[1:]):
            where[pair].add(i)
    # Max-heap by count with lazy deletion: an entry is stale when its count differs from pair_counts.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    known = set(alphabet)
    merges: list[Pair] = []
    total = n_tokens - len(alphabet)
    while len(known) < n_tokens and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -neg_count:
            continue
        merges.append(pair)
        new_token = pair[0] + pair[1]
        known.add(new_token)
        delta: dict[Pair, int] = defaultdict(int)
        for i in where.pop(pair):
            old = words[i]
            new = merge(old, pair, new_token)
            if len(new) == len(old):
                continue
            words[i] = new
            get_stats(old, delta, -freqs[i])
            get_stats(new, delta, freqs[i])
            for new_pair in zip(new, new[1:]):
                if new_token in new_pair:
                    where[new_pair].add(i)
        for changed, d in delta.items():
            if d == 0:
                continue
            count = pair_counts.get(changed, 0) + d
            if count > 0:
                pair_counts[changed] = count
                heapq.heappush(heap, (-count, changed))
            else:
                del pair_counts[changed]
        if progress is not None:
            progress(len(known) - len(alphabet), total)
    return alphabet, merges


def encode_word(word: str, ranks: Mapping[Pair, int]) -> list[str]:
    """Split one pre-token into BPE tokens by replaying merges, earliest-learned first.

    `ranks` maps each merge to its position in the merge list.

    >>> encode_word("▁abab", {("a", "b"): 0, ("▁", "ab"): 1})
    ['▁ab', 'ab']
    """
    symbols = spell(word)
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, len(ranks)))
        if pair not in ranks:
            break
        symbols = merge(symbols, pair, pair[0] + pair[1])
    return symbols


def join_tokens(tokens: Sequence[str]) -> str:
    """Glue BPE tokens back into text: concatenate them, then each ``▁`` becomes one space.

    Tokens never contain whitespace and ``▁`` only ever starts a word, so this is the
    normalised text again, words separated by single spaces.

    >>> join_tokens(["▁lo", "w", "▁man", "'s", "▁t", "-", "shirt", "."])
    "low man's t-shirt."
    """
    return " ".join("".join(tokens).replace(WORD_START, " ").split())
