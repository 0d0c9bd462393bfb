"""BLEU and CIDEr-D: hand-computed cases, and agreement with the COCO caption toolkit."""

import doctest
import math
import random

import pytest

from captioner.evaluation import metrics
from captioner.evaluation.metrics import bleu, cider_d, evaluate_captions, longest_common_subsequence, rouge_l
from captioner.evaluation.ptb_tokenizer import tokenize_caption

TINY, SMALL = 1e-15, 1e-9  # the toolkit's zero-count guards, added to matched and candidate counts


def test_docstring_examples():
    failed, attempted = doctest.testmod(metrics)
    assert attempted >= 8 and failed == 0


# ---------------------------------------------------------------- tokenization


# Expected outputs are what the toolkit's Java tokenizer (CoreNLP 3.4.1) plus its punctuation
# filter produced for these inputs when run by hand.
@pytest.mark.parametrize("raw, expected", [
    ("A Dog RUNS.", "a dog runs"),
    ("a man's hat", "a man 's hat"),  # PTB splits the possessive clitic
    ("he doesn't, they can't", "he does n't they ca n't"),
    ("I cannot, gonna go", "i can not gon na go"),
    ("a black-and-white t-shirt", "a black-and-white t-shirt"),  # inner hyphens stay
    ("at 3.5 o'clock, 1,000 birds at 8:30", "at 3.5 o'clock 1,000 birds at 8:30"),
    ("a dog -- or a cat ... ; really ? yes !", "a dog or a cat really yes"),
    ("wow!! what?!", "wow !! what ?!"),  # runs are not on the toolkit's list
    ('the "red" bus', "the red bus"),
    ("the (red) bus [left] {x}", "the -lrb- red -rrb- bus -lsb- left -rsb- -lcb- x -rcb-"),
    ("a U.S. flag at 3 p.m. near Dr. Who.", "a u.s. flag at 3 p.m. near dr. who"),
    ("fish & chips w/ 3/4 and/or $5", "fish & chips w / 3/4 and/or $ 5"),
    ("\u201cquoted\u201d \u2013 it\u2019s\u2026", "quoted it 's"),
    ("  spaced\tout\n", "spaced out"),
    ("", ""),
    ("...", ""),
])
def test_tokenize_caption(raw, expected):
    assert tokenize_caption(raw) == expected
    assert tokenize_caption(expected) == expected  # idempotent


# ---------------------------------------------------------------- BLEU, by hand


def test_bleu_perfect_match_is_one():
    refs = {1: ["a cat sits on the mat", "something else entirely here"]}
    scores = bleu(refs, {1: "a cat sits on the mat"})
    # Each precision is (c + 1e-15) / (c + 1e-9): one to within 1e-9.
    assert scores == pytest.approx([1.0] * 4, abs=1e-9)


def test_bleu_no_overlap_is_zero():
    scores = bleu({1: ["a cat sits"]}, {1: "dogs run fast"})
    # No matches: BLEU-1 = (0 + 1e-15) / (3 + 1e-9); equal lengths, so no brevity penalty.
    assert scores[0] == pytest.approx(TINY / (3 + SMALL), rel=1e-12)
    assert max(scores) < 1e-12


def test_bleu_brevity_penalty_and_the_toolkit_zero_count_guard():
    scores = bleu({1: ["a cat sat on the mat"]}, {1: "a cat"})
    # c = 2 words, r = 6: BP = exp(1 - r/c) = exp(-2), with the guards in r/c as well.
    # p1 = 2/2, p2 = 1/1 (plus the guards); there are no trigrams or 4-grams to match at all,
    # so p3 = p4 = (0 + 1e-15) / (0 + 1e-9) = 1e-6 instead of 0 or an error.
    bp = math.exp(1 - (6 + SMALL) / (2 + TINY))
    p1, p2, p3 = (2 + TINY) / (2 + SMALL), (1 + TINY) / (1 + SMALL), TINY / SMALL
    assert scores[0] == pytest.approx(p1 * bp, rel=1e-12)
    assert scores[1] == pytest.approx((p1 * p2) ** (1 / 2) * bp, rel=1e-12)
    assert scores[2] == pytest.approx((p1 * p2 * p3) ** (1 / 3) * bp, rel=1e-12)  # ~0.01 * BP
    assert scores[3] == pytest.approx((p1 * p2 * p3 * p3) ** (1 / 4) * bp, rel=1e-12)  # ~1e-3 * BP


def test_bleu_clips_by_the_reference_with_the_most_occurrences():
    refs = {1: ["the cat is on the mat", "there is a cat on the mat"]}
    scores = bleu(refs, {1: "the the the the the the the"})
    # "the" occurs at most twice in one reference (not 2 + 1 = 3 summed over references):
    # p1 = 2/7. Lengths 6 and 7, hypothesis 7: the closest is 7, no brevity penalty.
    assert scores[0] == pytest.approx(2 / 7, rel=1e-9)


def test_bleu_clip_limits_come_from_different_references():
    refs = {1: ["a cat sat", "a dog and a cat"]}
    scores = bleu(refs, {1: "a cat a cat"})
    # Limits: "a" -> 2 (second reference), "cat" -> 1 (either): matched 2 + 1 = 3 of 4.
    # Bigrams: "a cat" x2 limited to 1, "cat a" x1 absent: 1 of 3.
    # Lengths 3 and 5 are both 1 away from 4; the tie goes to 3 < 4, so no brevity penalty.
    assert scores[0] == pytest.approx(3 / 4, rel=1e-9)
    assert scores[1] == pytest.approx(math.sqrt(3 / 4 * 1 / 3), rel=1e-9)


def test_bleu_closest_length_tie_takes_the_shorter_reference():
    scores = bleu({1: ["a b c", "a b c d e"]}, {1: "a b c d"})
    # 3 and 5 are equally close to 4; the toolkit takes 3, so c = 4 > r = 3 and BP = 1.
    # Taking 5 would give BP = exp(1 - 5/4) = 0.78.
    assert scores[0] == pytest.approx(1.0, abs=1e-9)


def test_bleu_uses_the_closest_not_the_shortest_reference_length():
    scores = bleu({1: ["a b", "a b c d e"]}, {1: "a b c d"})
    # 5 is closer to 4 than 2 is: BP = exp(1 - 5/4). The "shortest" rule would give r = 2, BP = 1.
    assert scores[0] == pytest.approx(math.exp(1 - 5 / 4), rel=1e-9)


def test_bleu_pools_counts_over_the_corpus():
    refs = {1: ["a b c d"], 2: ["x z"]}
    scores = bleu(refs, {1: "a b c d", 2: "x y"})
    # Matched unigrams 4 + 1 over 4 + 2 candidates: 5/6, lengths 6 = 6.
    # (The mean of per-image BLEU-1 would be (1 + 1/2) / 2 = 0.75.)
    assert scores[0] == pytest.approx(5 / 6, rel=1e-9)


def test_bleu_scores_an_empty_hypothesis_instead_of_dropping_it():
    refs = {1: ["a b c d"], 2: ["x y"]}
    scores = bleu(refs, {1: "a b c d", 2: ""})
    # The empty caption adds no n-grams but its reference length: c = 4, r = 4 + 2 = 6,
    # BP = exp(1 - 6/4). Dropping image 2 would give 1.0.
    assert scores[0] == pytest.approx(math.exp(-0.5), rel=1e-9)
    assert scores[3] == pytest.approx(math.exp(-0.5), rel=1e-9)


def test_bleu_all_empty_is_zero():
    assert bleu({1: ["a b"], 2: ["c"]}, {1: "", 2: ""}) == [0.0, 0.0, 0.0, 0.0]


def test_bleu_max_n():
    assert len(bleu({1: ["a b c"]}, {1: "a b c"}, max_n=2)) == 2


# ---------------------------------------------------------------- CIDEr-D, by hand


def test_cider_d_tiny_corpus_by_hand():
    refs = {1: ["a cat sat", "a cat"], 2: ["a dog"]}
    hyps = {1: "a cat cat", 2: "a dog"}
    # N = 2 images, L = log 2. "a" is in both images' references: idf = log 2 - log 2 = 0.
    # Every other reference n-gram is in one image: idf = L - log 1 = L. The hypothesis n-grams
    # "cat cat" and "a cat cat" are in no reference: idf = L - log(max(1, 0)) = L.
    #
    # Image 1, hypothesis "a cat cat": 1-grams {a: 0, cat: 2L}, 2-grams {a cat: L, cat cat: L},
    # 3-gram {a cat cat: L}; norms 2L, sqrt(2) L, L.
    #  reference "a cat sat": 1-grams {a: 0, cat: L, sat: L}, norm sqrt(2) L
    #    n=1: min(2L, L) * L / (2L * sqrt(2) L) = 1 / (2 sqrt 2)   <- clipping: 2L counts as L
    #    n=2: min(L, L) * L / (sqrt(2) L * sqrt(2) L) = 1/2        ("cat sat" is not in h)
    #    n=3: "a cat cat" vs "a cat sat": 0;  n=4: no 4-grams: 0
    #    3 words vs 3 words: penalty 1
    #  reference "a cat": 1-grams {a: 0, cat: L}, norm L; 2-grams {a cat: L}, norm L
    #    n=1: L * L / (2L * L) = 1/2;  n=2: L * L / (sqrt(2) L * L) = 1 / sqrt 2;  n=3, 4: 0
    #    3 words vs 2 words: penalty exp(-1 / (2 * 6**2)) = exp(-1/72)
    #  score = 10 * (sum over references and n) / 4 orders / 2 references
    image_1 = 10 * ((1 / (2 * math.sqrt(2)) + 1 / 2)
                    + (1 / 2 + 1 / math.sqrt(2)) * math.exp(-1 / 72)) / 4 / 2  # 2.555013...
    # Image 2, "a dog" = its only reference: cosine 1 for n = 1 and 2, nothing for n = 3, 4.
    image_2 = 10 * (1 + 1) / 4 / 1  # 5.0
    assert cider_d(refs, hyps) == pytest.approx((image_1 + image_2) / 2, rel=1e-12)  # 3.777506...


def test_cider_d_is_ten_for_perfect_captions_with_distinct_ngrams():
    refs = {1: ["a red bus on the street"], 2: ["two dogs play with balls"]}
    # Every n-gram is in one image (idf log 2 > 0), each caption has all four orders: cos = 1.
    assert cider_d(refs, {1: refs[1][0], 2: refs[2][0]}) == pytest.approx(10.0, rel=1e-12)


def test_cider_d_single_image_corpus_is_zero():
    # With N = 1 every idf is log 1 - log 1 = 0: CIDEr-D is relative to the evaluated corpus.
    assert cider_d({1: ["a cat"]}, {1: "a cat"}) == 0.0


def test_cider_d_scores_an_empty_hypothesis_as_zero_and_keeps_it_in_the_mean():
    refs = {1: ["a red bus on the street"], 2: ["two dogs play with balls"]}
    assert cider_d(refs, {1: refs[1][0], 2: ""}) == pytest.approx(5.0, rel=1e-12)


def test_cider_d_sigma_controls_the_length_penalty():
    refs = {1: ["a red bus on the street"], 2: ["two dogs play"]}
    hyps = {1: "a red bus", 2: "two dogs play"}
    # Only image 1 differs in length (3 vs 6 words); a huge sigma switches the penalty off.
    loose, strict = cider_d(refs, hyps, sigma=1e9), cider_d(refs, hyps, sigma=6.0)
    image_1_loose = 2 * loose - 10 * (3 / 4)  # image 2: cosine 1 for n = 1, 2, 3
    assert 2 * strict - 10 * (3 / 4) == pytest.approx(image_1_loose * math.exp(-9 / 72), rel=1e-12)


# ---------------------------------------------------------------- ROUGE-L


@pytest.mark.parametrize("a, b, expected", [
    ("a cat on the mat", "the cat on a mat", 3),  # cat on mat
    ("a b c d", "d c b a", 1),  # order matters: one word at most
    ("a b a b", "b a b a", 3),  # b a b
    ("x y", "p q", 0),
    ("", "a b", 0),
    ("a b c", "a b c", 3),
])
def test_longest_common_subsequence_by_hand(a, b, expected):
    assert longest_common_subsequence(a.split(), b.split()) == expected
    assert longest_common_subsequence(b.split(), a.split()) == expected


def test_rouge_l_takes_the_best_precision_and_recall_from_different_references():
    # "the cat on a mat" (5 words) against
    #   "a cat on the mat": LCS "cat on mat" = 3, P = 3/5, R = 3/5
    #   "the cat":          LCS "the cat" = 2,    P = 2/5, R = 2/2
    # The toolkit maximises P and R separately: P = 3/5 (first), R = 1 (second), so with beta = 1.2
    # F = (1 + 1.44) * 0.6 * 1 / (1 + 1.44 * 0.6) = 1.464 / 1.864; the best per-reference F would be
    # only 2.44 * 0.4 / (1 + 1.44 * 0.4) = 0.976 / 1.576 (the second reference).
    refs = {1: ["a cat on the mat", "the cat"]}
    assert rouge_l(refs, {1: "the cat on a mat"}) == pytest.approx(1.464 / 1.864, rel=1e-12)
    assert rouge_l(refs, {1: "the cat on a mat"}, beta=1.0) == pytest.approx(2 * 0.6 / 1.6, rel=1e-12)


def test_rouge_l_is_a_mean_over_images_with_zero_for_no_match():
    refs = {1: ["a b c d", "a b"], 2: ["x y z"], 3: ["p q"]}
    hyps = {1: "a b x", 2: "", 3: "q"}
    # image 1: LCS 2 with both references; P = 2/3, R = max(2/4, 2/2) = 1
    one = 2.44 * (2 / 3) * 1 / (1 + 1.44 * (2 / 3))
    # image 2: empty, 0. image 3: "q" (1 word) vs "p q": P = 1, R = 1/2
    three = 2.44 * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert rouge_l(refs, hyps) == pytest.approx((one + 0 + three) / 3, rel=1e-12)


def test_rouge_l_splits_empty_captions_as_the_toolkit_does():
    # "".split(" ") is [""]: one empty word, which matches an empty reference in full.
    assert rouge_l({1: ["", "a b"]}, {1: ""}) == pytest.approx(1.0)
    assert rouge_l({1: ["a b"]}, {1: ""}) == 0.0


def test_evaluate_captions_scores_rouge_l_on_ptb_tokens():
    result = evaluate_captions({1: ["The cat, on the mat."]}, {1: "the CAT on the mat!"})
    assert result["ROUGE-L"] == pytest.approx(1.0)


# ---------------------------------------------------------------- evaluate_captions, errors


def test_evaluate_captions_tokenizes_both_sides():
    result = evaluate_captions({7: ["A red bus, on the street."]}, {7: "a RED bus on the street!"})
    assert [result[f"BLEU-{k}"] for k in (1, 2, 3, 4)] == pytest.approx([1.0] * 4, abs=1e-9)
    assert result["n_images"] == 1 and result["n_empty"] == 0


def test_evaluate_captions_counts_empty_hypotheses_and_scores_them():
    refs = {"a": ["A cat sat down."], "b": ["x y"]}
    result = evaluate_captions(refs, {"a": "a cat sat down", "b": " ... "})  # empty once tokenized
    assert result["n_empty"] == 1 and result["n_images"] == 2
    assert result["BLEU-1"] == pytest.approx(math.exp(-0.5), rel=1e-9)  # as in the bleu test
    assert set(result) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "n_images",
                           "n_empty"}


def test_mismatched_ids_name_what_is_missing():
    with pytest.raises(ValueError, match=r"references but no hypothesis \(first: \[2\]\)"):
        bleu({1: ["a"], 2: ["b"]}, {1: "a"})
    with pytest.raises(ValueError, match=r"hypothesis but no references \(first: \[3\]\)"):
        cider_d({1: ["a"]}, {1: "a", 3: "c"})


@pytest.mark.parametrize("refs, hyps, error", [
    ({1: "a cat"}, {1: "a cat"}, TypeError),  # a string, not a list of strings
    ({1: []}, {1: "a cat"}, ValueError),
    ({1: ["a cat"]}, {1: ["a cat"]}, TypeError),  # the toolkit's [caption] form
    ({}, {}, ValueError),
])
def test_bad_inputs_raise(refs, hyps, error):
    with pytest.raises(error):
        evaluate_captions(refs, hyps)


# ---------------------------------------------------------------- agreement with the toolkit

_WORDS = ("a an the man woman dog cat red blue big small sits stands runs on in with near "
          "table grass ball street").split()


def random_corpus(seed: int, n_images: int) -> tuple[dict, dict]:
    """Captions as variations of a random 12-word "scene" per image: 1-5 references and one
    hypothesis, 0-12 words each, so n-grams of all orders match and some captions are empty."""
    rng = random.Random(seed)

    def variant(scene):
        length = rng.randint(0, 12)
        return " ".join(w if rng.random() < 0.7 else rng.choice(_WORDS) for w in scene[:length])

    references, hypotheses = {}, {}
    for image_id in range(n_images):
        scene = [rng.choice(_WORDS) for _ in range(12)]
        references[image_id] = [variant(scene) for _ in range(rng.randint(1, 5))]
        hypotheses[image_id] = variant(scene)
    return references, hypotheses


# Computed with pycocoevalcap 1.2 (Bleu(4) and Cider() on random_corpus(6, 40)), so that the
# agreement is checked where the toolkit is not installed.
TOOLKIT_BLEU_SEED6 = [0.6666666666639567, 0.47923383829640254, 0.3350990739030407,
                      0.22570330582628925]
TOOLKIT_CIDER_SEED6 = 1.153548713048771
TOOLKIT_ROUGE_SEED6 = 0.49694614386289115  # pycocoevalcap 1.2, Rouge(), on the same corpus


def test_reproduces_stored_toolkit_scores():
    references, hypotheses = random_corpus(6, 40)
    # Guards against a changed generator: these are the captions the toolkit scored.
    assert hypotheses[0] == "table" and references[0] == ["table the near blue"]
    assert sum(1 for h in hypotheses.values() if not h) == 3
    assert bleu(references, hypotheses) == pytest.approx(TOOLKIT_BLEU_SEED6, rel=1e-12, abs=0)
    assert cider_d(references, hypotheses) == pytest.approx(TOOLKIT_CIDER_SEED6, rel=1e-12, abs=0)
    assert rouge_l(references, hypotheses) == pytest.approx(TOOLKIT_ROUGE_SEED6, rel=1e-12, abs=0)


# A corpus where the brevity penalty and clipping are active (random_corpus(6, 40) has c = 246 > r = 234,
# so its brevity penalty is 1). Expected values by hand; pycocoevalcap 1.2 gives the same to the last bit.
BREVITY_REFS = {
    1: ["the cat sat on the mat", "a cat is on the mat"],  # lengths 6, 6
    2: ["dogs", "the dog runs fast", "a big brown dog runs far away now"],  # lengths 1, 4, 8
    3: ["a man rides a horse", "a person on a horse"],  # lengths 5, 5
}
BREVITY_HYPS = {1: "the the the cat", 2: "the dog runs", 3: "a man rides a horse"}
TOOLKIT_CIDER_BREVITY = 3.1903666697335247  # pycocoevalcap 1.2, Cider(), on this corpus


def test_reproduces_hand_worked_scores_with_brevity_penalty_and_clipping():
    # Image 1, "the the the cat" (4 words): "the" occurs 3 times but at most 2 times in one reference
    #   (2 in the first, 1 in the second; not 2 + 1 = 3): clipped 2 + "cat" 1 = 3 of 4 unigrams.
    #   Bigrams "the the" x2 (in no reference), "the cat" x1 (first reference): 1 of 3.
    #   Trigrams "the the the", "the the cat": 0 of 2. 4-gram "the the the cat": 0 of 1.
    #   Closest reference length: 6.
    # Image 2, "the dog runs" (3 words): unigrams 3 of 3, bigrams "the dog", "dog runs" 2 of 2,
    #   trigram "the dog runs" 1 of 1 (second reference); no 4-gram.
    #   Closest reference length: |1 - 3| = 2, |4 - 3| = 1, |8 - 3| = 5: r = 4 (not the shortest 1,
    #   not the longest 8, not the mean 13/3).
    # Image 3, "a man rides a horse" = its first reference: 5 of 5, 4 of 4, 3 of 3, 2 of 2; r = 5.
    # Corpus: c = 4 + 3 + 5 = 12, r = 6 + 4 + 5 = 15 > c, so BP = exp(1 - r/c) = exp(1 - 15/12) = exp(-1/4).
    #   p1 = (3 + 3 + 5) / (4 + 3 + 5) = 11/12    p2 = (1 + 2 + 4) / (3 + 2 + 4) = 7/9
    #   p3 = (0 + 1 + 3) / (2 + 1 + 3) = 4/6      p4 = (0 + 0 + 2) / (1 + 0 + 2) = 2/3
    #   BLEU-n = (p1 ... pn)^(1/n) * BP, each count with the toolkit's guards (+1e-15 matched,
    #   +1e-9 candidates; r/c as (r + 1e-9) / (c + 1e-15)).
    p = [(11 + TINY) / (12 + SMALL), (7 + TINY) / (9 + SMALL), (4 + TINY) / (6 + SMALL), (2 + TINY) / (3 + SMALL)]
    bp = math.exp(1 - (15 + SMALL) / (12 + TINY))
    expected = [math.prod(p[: n + 1]) ** (1 / (n + 1)) * bp for n in range(4)]
    assert expected[0] == pytest.approx(11 / 12 * math.exp(-1 / 4), rel=1e-9)  # 0.7139...
    assert bleu(BREVITY_REFS, BREVITY_HYPS) == pytest.approx(expected, rel=1e-12, abs=0)
    assert cider_d(BREVITY_REFS, BREVITY_HYPS) == pytest.approx(TOOLKIT_CIDER_BREVITY, rel=1e-12, abs=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rouge_l_equals_pycocoevalcap(seed):
    toolkit_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge",
                                        reason="pycocoevalcap is not installed (pip install pycocoevalcap)")
    references, hypotheses = random_corpus(seed, 300)  # 1-5 references, some captions empty
    expected, per_image = toolkit_rouge.Rouge().compute_score(references, {k: [h] for k, h in hypotheses.items()})
    assert rouge_l(references, hypotheses) == pytest.approx(float(expected), rel=1e-12, abs=0)
    for k in list(references)[:20]:  # image by image too, not only on average
        assert rouge_l({k: references[k]}, {k: hypotheses[k]}) == pytest.approx(per_image[list(references).index(k)],
                                                                              rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocoevalcap(seed):
    toolkit_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    toolkit_cider = pytest.importorskip("pycocoevalcap.cider.cider")
    references, hypotheses = random_corpus(seed, 300)
    as_lists = {k: [h] for k, h in hypotheses.items()}  # the toolkit's form: a one-item list
    expected_bleu, _ = toolkit_bleu.Bleu(4).compute_score(references, as_lists)
    expected_cider, _ = toolkit_cider.Cider().compute_score(references, as_lists)
    # measured agreement: BLEU bit-identical, CIDEr-D within 2.2e-16 (summation order)
    assert bleu(references, hypotheses) == pytest.approx(expected_bleu, rel=1e-12, abs=0)
    assert cider_d(references, hypotheses) == pytest.approx(float(expected_cider), rel=1e-12, abs=0)
    if seed == 0:  # the hand-worked corpus with brevity penalty and clipping
        as_lists = {k: [h] for k, h in BREVITY_HYPS.items()}
        assert toolkit_bleu.Bleu(4).compute_score(BREVITY_REFS, as_lists, verbose=0)[0] == \
            bleu(BREVITY_REFS, BREVITY_HYPS)
        assert float(toolkit_cider.Cider().compute_score(BREVITY_REFS, as_lists)[0]) == \
            pytest.approx(TOOLKIT_CIDER_BREVITY, rel=1e-12, abs=0)
