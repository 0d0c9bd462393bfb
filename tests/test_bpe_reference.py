"""captioner/text/bpe.py's ``train_bpe`` against a naive BPE trainer written here from scratch.

The naive trainer follows the textbook definition and uses nothing of the module but ``spell`` (how
a word is written as symbols before any merge: its characters, with or without an end-of-word
marker): repeat: count every adjacent pair of symbols over the whole corpus, each *occurrence*
weighted by the word's frequency; take the most frequent pair, the smallest pair (compared as a
tuple of strings) on a tie; rewrite every word replacing that pair left to right; until the
alphabet plus the merged tokens number ``n_tokens`` or no pair is left. It recounts everything
after each merge, so it is slow and obviously right.
"""

import pytest

from captioner.text.bpe import spell, train_bpe


def with_end_of_word(word: str) -> list[str]:
    return [*word, "</w>"]


def naive_bpe(word_counts: dict[str, int], n_tokens: int, spelling=spell) -> tuple[set[str], list[tuple[str, str]]]:
    """(the alphabet as a set, the merges in the order learned)."""
    corpus = {tuple(spelling(word)): count for word, count in word_counts.items()}
    alphabet = {symbol for symbols in corpus for symbol in symbols}
    tokens, merges = set(alphabet), []
    while len(tokens) < n_tokens:
        pair_counts = {}
        for symbols, count in corpus.items():
            for i in range(len(symbols) - 1):  # every occurrence, overlapping ones included
                pair = (symbols[i], symbols[i + 1])
                pair_counts[pair] = pair_counts.get(pair, 0) + count
        if not pair_counts:
            break
        best = max(pair_counts.values())
        pair = min(p for p, c in pair_counts.items() if c == best)  # the tie rule: smallest pair
        merges.append(pair)
        tokens.add(pair[0] + pair[1])
        rewritten = {}
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    out.append(pair[0] + pair[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            rewritten[tuple(out)] = rewritten.get(tuple(out), 0) + count
        corpus = rewritten
    return alphabet, merges


def test_naive_reference_on_a_hand_worked_corpus():
    """The reference itself, by hand: {"aaaa": 1, "abab": 2, "ab": 3}.

    Pair occurrences, weighted: (a, a) 3 in "aaaa" x 1 = 3; (a, b) 2 in "abab" x 2 + 1 in "ab" x 3 = 7;
    (b, a) 1 x 2 = 2; (b, </w>) 2 + 3 = 5; (a, </w>) 1. Merge 1: (a, b) with 7. Then "abab" is
    [ab, ab, </w>]: (ab, ab) 2, (ab, </w>) 2 + 3 = 5, (a, a) 3, (a, </w>) 1. Merge 2: (ab, </w>) with 5.
    Then (a, a) 3 beats (ab, ab</w>) 2 and (a, </w>) 1. Merge 3: (a, a); "aaaa" becomes [aa, aa, </w>].
    """
    assert naive_bpe({"aaaa": 1, "abab": 2, "ab": 3}, 6, with_end_of_word) == (
        {"</w>", "a", "b"}, [("a", "b"), ("ab", "</w>"), ("a", "a")])


# Corpora where counting a pair once per word (instead of once per occurrence) or ignoring the word
# frequencies picks another merge, and ones with ties broken by the pair order.
CORPORA = {
    # (a, a) occurs three times in "aaaa": per occurrence 3 x 2 = 6 beats (b, c) 3; per word 2 < 3
    "repeated_pair": ({"aaaa": 2, "bc": 3}, 8),
    # (a, b) occurs twice in "abab": per occurrence 2 x 5 = 10 beats (c, d) 8; per word 5 < 8
    "overlapping_words": ({"abab": 5, "cd": 8}, 9),
    # the frequencies decide: weighted, (z, w) 9 beats (x, y) 2 + 2 x 1 = 4; unweighted (x, y) 3 beats 1
    "frequency_weighted": ({"zw": 9, "xy": 2, "xyxy": 1}, 10),
    # ties everywhere: every pair occurs once; the smallest pair in tuple order goes first
    "all_ties": ({"dcba": 1, "bd": 1, "ca": 1}, 12),
    # overlapping runs: merging (a, a) left to right in "aaa" leaves [aa, a]
    "odd_runs": ({"aaa": 4, "aaaaa": 1, "baaab": 2}, 12),
    # pre-tokens as captioner/text/normalize.py writes them: a word-start marker, punctuation alone
    "pretokens": ({"\u2581a": 30, "\u2581red": 5, "\u2581circle": 4, ".": 6, "\u2581abab": 2, "'s": 3}, 40),
    # many merges on a caption-like table, until no pair is left
    "captions": ({"a": 50, "red": 12, "circle": 9, "square": 7, "green": 11, "triangle": 6, "is": 20,
                  "above": 5, "the": 40, "there": 4, "three": 3, "shapes": 8, "tree": 2}, 200),
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_train_bpe_learns_the_merges_of_the_naive_reference(name):
    word_counts, n_tokens = CORPORA[name]
    alphabet, merges = train_bpe(word_counts, n_tokens)
    expected_alphabet, expected_merges = naive_bpe(word_counts, n_tokens)
    assert merges == expected_merges
    assert len(alphabet) == len(set(alphabet)) and set(alphabet) == expected_alphabet


def test_per_occurrence_counting_matters_in_these_corpora():
    """Guards that the corpora above can tell the counting rules apart: a per-word counter (a pair
    counted once per word, weighted by frequency) learns different merges on the first two."""

    def first_merge_per_word(word_counts):
        counts = {}
        for word, count in word_counts.items():
            symbols = spell(word)
            for pair in {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}:
                counts[pair] = counts.get(pair, 0) + count
        best = max(counts.values())
        return min(p for p, c in counts.items() if c == best)

    for name in ("repeated_pair", "overlapping_words"):
        word_counts, n_tokens = CORPORA[name]
        assert naive_bpe(word_counts, n_tokens)[1][0] != first_merge_per_word(word_counts), name
