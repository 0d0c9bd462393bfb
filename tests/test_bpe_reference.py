"""captioner/text/bpe.py's fast ``train_bpe`` against its plain ``train_bpe_plain``.

The plain trainer follows the textbook definition: repeat: count every adjacent pair of symbols
over the whole table, each *occurrence* weighted by the word's frequency; take the most frequent
pair, the smallest pair (compared as a tuple of strings) on a tie; rewrite every word replacing that
pair left to right; until the alphabet plus the merged tokens number ``n_tokens`` or no pair is left.
It is checked here on a corpus worked by hand, then the fast trainer is checked against it.
"""

import pytest

from captioner.text.bpe import spell, train_bpe, train_bpe_plain


def test_plain_trainer_on_a_hand_worked_corpus():
    """{"aaaa$": 1, "abab$": 2, "ab$": 3}, with "$" an end-of-word character.

    Pair occurrences, weighted: (a, a) 3 in "aaaa" x 1 = 3; (a, b) 2 in "abab" x 2 + 1 in "ab" x 3 = 7;
    (b, a) 1 x 2 = 2; (b, $) 2 + 3 = 5; (a, $) 1. Merge 1: (a, b) with 7. Then "abab$" is
    [ab, ab, $]: (ab, ab) 2, (ab, $) 2 + 3 = 5, (a, a) 3, (a, $) 1. Merge 2: (ab, $) with 5.
    Then (a, a) 3 beats (ab, ab$) 2 and (a, $) 1. Merge 3: (a, a); "aaaa$" becomes [aa, aa, $].
    """
    assert train_bpe_plain({"aaaa$": 1, "abab$": 2, "ab$": 3}, 6) == (
        ["$", "a", "b"], [("a", "b"), ("ab", "$"), ("a", "a")])


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
def test_train_bpe_learns_the_merges_of_the_plain_trainer(name):
    word_counts, n_tokens = CORPORA[name]
    alphabet, merges = train_bpe(word_counts, n_tokens)
    expected_alphabet, expected_merges = train_bpe_plain(word_counts, n_tokens)
    assert merges == expected_merges
    assert alphabet == expected_alphabet


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
        assert train_bpe_plain(word_counts, n_tokens)[1][0] != first_merge_per_word(word_counts), name
