"""Corpus BLEU-1..4, ROUGE-L and CIDEr-D, written to agree with the COCO caption evaluation toolkit.

The published captioning tables come from the COCO caption toolkit (``pycocoevalcap``): its PTB
tokenizer normalises every caption, ``Bleu`` scores with the *closest* reference length, ``Rouge``
is an F-measure of longest common subsequences, ``Cider`` computes what the literature calls
CIDEr-D. This module and ``ptb_tokenizer.py`` reimplement those steps in Python (numpy for the
counting) so the numbers are comparable with the tables without Java or the toolkit installed
(METEOR and SPICE need the toolkit's Java programs: ``evaluate.py --official``):

>>> refs = {1: ["a cat sits on a mat"], 2: ["a dog runs"]}
>>> hyps = {1: "A cat sits on the mat.", 2: ""}
>>> scores = evaluate_captions(refs, hyps)
>>> scores["n_images"], scores["n_empty"]
(2, 1)

``bleu``, ``rouge_l`` and ``cider_d`` take captions that are already tokenized (words separated by spaces), as
the toolkit's scorers do; ``evaluate_captions`` applies ``tokenize_caption`` to both sides first.

Self-critical training scores single captions: :func:`cider_d_scores` is ``cider_d`` per image, and
with a :func:`document_frequency` counted once over the training references every caption's score is
independent of the others scored with it (the toolkit's ``CiderD(df="corpus")`` option).
"""

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from captioner.evaluation.ptb_tokenizer import tokenize_caption

# BLEU's zero-count guards, the toolkit's own constants (bleu_scorer.py): "tiny" is added to the
# matched count and "small" to the candidate count, so an order without matches gives a tiny
# precision instead of log(0), and one without candidate n-grams gives tiny / small = 1e-6.
_TINY = 1e-15


_SMALL = 1e-9


def _check_inputs(references: Mapping, hypotheses: Mapping) -> list:
    """Validate the two dicts and return the image ids in the order of ``references``."""
    missing_hyp = [k for k in references if k not in hypotheses]
    missing_ref = [k for k in hypotheses if k not in references]
    if missing_hyp or missing_ref:
        problems = []
        if missing_hyp:
            problems.append(f"{len(missing_hyp)} image id(s) have references but no hypothesis "
                            f"(first: {missing_hyp[:5]})")
        if missing_ref:
            problems.append(f"{len(missing_ref)} image id(s) have a hypothesis but no references "
                            f"(first: {missing_ref[:5]})")
        raise ValueError("references and hypotheses must have the same image ids: "
                         + "; ".join(problems))
    if not references:
        raise ValueError("no images to score: references and hypotheses are empty")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{image_id!r}] must be a list of strings, got {refs!r}")
        if not refs:
            raise ValueError(f"references[{image_id!r}] is an empty list; every image needs at "
                             "least one reference")
        if not isinstance(hypotheses[image_id], str):
            raise TypeError(f"hypotheses[{image_id!r}] must be a string, "
                            f"got {type(hypotheses[image_id]).__name__}")
    return list(references)


class _Ngrams(NamedTuple):
    """The distinct n-grams of one order in many captions: aligned int64 arrays of shape (rows,).

    ``owner[j]`` is the caption (or image) of row j, ``gram[j]`` the n-gram's id and ``count[j]``
    how often it occurs there; rows are sorted by (owner, gram). Ids run over 0..n_distinct-1 and
    are shared by all captions counted together, so equal ids mean equal n-grams. ``words`` is
    (n_distinct, n): the word ids of each n-gram, in the order of the ``vocab`` counted with them.
    """

    owner: np.ndarray
    gram: np.ndarray
    count: np.ndarray
    n_distinct: int
    words: np.ndarray


def _count_ngrams(captions: list[list[str]], max_n: int, vocab: dict | None = None) -> list[_Ngrams]:
    """Count the n-grams of many tokenized captions at once, one table per order n = 1..max_n.

    Python dicts of n-gram tuples are the obvious tool, but at COCO size (a million n-grams) the
    per-n-gram Python work dominates; here words become integers, every n-gram an integer id,
    and numpy sorts do the counting. ``vocab`` (word -> id), when given, is filled with the words' ids.

    >>> unigrams, bigrams = _count_ngrams([["a", "b", "a"], ["b", "a"]], max_n=2)
    >>> unigrams.owner.tolist(), unigrams.gram.tolist(), unigrams.count.tolist()  # a = 0, b = 1
    ([0, 0, 1, 1], [0, 1, 0, 1], [2, 1, 1, 1])
    >>> bigrams.owner.tolist(), bigrams.gram.tolist(), bigrams.count.tolist()  # "a b" 0, "b a" 1
    ([0, 0, 1], [0, 1, 1], [1, 1, 1])
    """
    vocab = {} if vocab is None else vocab
    word = np.array([vocab.setdefault(w, len(vocab)) for words in captions for w in words],
                    dtype=np.int64)  # (W,) every word of every caption, as an id
    lengths = np.array([len(words) for words in captions], dtype=np.int64)  # (C,)
    caption = np.repeat(np.arange(len(captions)), lengths)  # (W,) caption of each word
    words_left = np.cumsum(lengths)[caption] - np.arange(len(word))  # (W,) this word to caption end

    tables = []
    start = np.arange(len(word))  # (P,) positions where an n-gram of the current order starts
    gram = word  # (P,) the id of that n-gram
    n_distinct = len(vocab)
    words = np.arange(n_distinct, dtype=np.int64)[:, None]  # (n_distinct, n) the words of each n-gram
    for n in range(1, max_n + 1):
        if n > 1:
            keep = words_left[start] >= n  # the (n-1)-gram can grow by a word of the same caption
            start, gram = start[keep], gram[keep]
            # An n-gram is an (n-1)-gram plus the next word: number the distinct pairs 0, 1, 2, ...
            distinct, gram = np.unique(gram * len(vocab) + word[start + n - 1], return_inverse=True)
            n_distinct = len(distinct)
            words = np.concatenate([words[distinct // len(vocab)], (distinct % len(vocab))[:, None]], axis=1)
        base = max(n_distinct, 1)  # (caption, gram) packed in one int64; base 1 if none exist
        rows, count = np.unique(caption[start] * base + gram, return_counts=True)
        tables.append(_Ngrams(rows // base, rows % base, count, n_distinct, words))
    return tables


class _Corpus(NamedTuple):
    """A corpus ready for scoring: I images, R references in all, n-gram tables per order."""

    hyp_len: np.ndarray  # (I,) words per hypothesis
    ref_len: np.ndarray  # (R,) words per reference
    ref_image: np.ndarray  # (R,) image index of each reference
    hyp: list[_Ngrams]  # per order; owner = image index
    ref: list[_Ngrams]  # per order; owner = reference index
    vocab: list[str]  # the words, by id


def _prepare(references: Mapping, hypotheses: Mapping, max_n: int) -> _Corpus:
    """Check the inputs, split captions into words and count their n-grams."""
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    ids = _check_inputs(references, hypotheses)
    hyp_words = [hypotheses[i].split() for i in ids]
    ref_words = [r.split() for i in ids for r in references[i]]
    ref_image = np.repeat(np.arange(len(ids)), [len(references[i]) for i in ids])  # (R,)
    hyp, ref = [], []
    vocab = {}
    for table in _count_ngrams(hyp_words + ref_words, max_n, vocab):
        # Rows are sorted by caption and the hypotheses are captions 0..I-1: a prefix.
        cut = np.searchsorted(table.owner, len(ids))
        hyp.append(_Ngrams(table.owner[:cut], table.gram[:cut], table.count[:cut],
                           table.n_distinct, table.words))
        ref.append(_Ngrams(table.owner[cut:] - len(ids), table.gram[cut:], table.count[cut:],
                           table.n_distinct, table.words))
    return _Corpus(np.array([len(w) for w in hyp_words], dtype=np.int64),
                   np.array([len(w) for w in ref_words], dtype=np.int64), ref_image, hyp, ref, list(vocab))


def _gram_names(table: _Ngrams, vocab: list[str]) -> list[str]:
    """Every n-gram id of ``table`` as its words joined by spaces: ids are local to one count,
    names can be looked up in another."""
    return [" ".join(vocab[w] for w in row) for row in table.words.tolist()]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-D array, like ``np.unique(values)``.

    Sorting is done by hand because numpy 2's ``np.unique`` without extra outputs switches to a
    hash table, which is several times slower on these int64 keys.
    """
    values = np.sort(values)
    first = np.ones(len(values), dtype=bool)  # (V,) True where a new value starts
    first[1:] = values[1:] != values[:-1]
    return values[first]


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query, values[j] where keys[j] == query, else 0.

    ``keys`` (K,) sorted and distinct, ``values`` (K,), ``queries`` (Q,); returns (Q,).
    """
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=values.dtype)
    j = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)  # (Q,)
    return np.where(keys[j] == queries, values[j], 0)


def bleu(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str],
         max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..BLEU-max_n as the COCO toolkit computes it (``Bleu``, option "closest").

    Inputs are already tokenized (space-separated words; see ``tokenize_caption``).
    Counts are pooled over the whole corpus before dividing, so this is *not* the mean of
    per-image BLEU scores:

    - matched n-grams of order k: each hypothesis n-gram counts at most as often as it occurs in
      the single reference of that image where it occurs most ("clipping");
    - reference length: per image, the reference length closest to the hypothesis length, the
      shorter one on a tie; summed over images into r, while c sums the hypothesis lengths;
    - BLEU-k = (prod_{j<=k} (matched_j + 1e-15) / (candidates_j + 1e-9)) ** (1/k) * BP,
      with brevity penalty BP = exp(1 - r/c) when c < r, else 1.

    An empty hypothesis is scored, not skipped: it adds no n-grams, but its closest reference
    length still adds to r.

    >>> b = bleu({1: ["a b c d"]}, {1: "a b c d"})
    >>> [round(x, 6) for x in b]
    [1.0, 1.0, 1.0, 1.0]
    """
    corpus = _prepare(references, hypotheses, max_n)
    n_images = len(corpus.hyp_len)
    matched, candidates = [], []
    for k, (hyp, ref) in enumerate(zip(corpus.hyp, corpus.ref)):
        # For every (image, n-gram) of the references: the most times one reference has it.
        ref_keys = corpus.ref_image[ref.owner] * ref.n_distinct + ref.gram  # (rows,)
        keys, where = np.unique(ref_keys, return_inverse=True)
        max_count = np.zeros(len(keys), dtype=np.int64)
        np.maximum.at(max_count, where, ref.count)
        clip = _lookup(keys, max_count, hyp.owner * hyp.n_distinct + hyp.gram)
        matched.append(int(np.minimum(hyp.count, clip).sum()))
        candidates.append(int(np.maximum(corpus.hyp_len - k, 0).sum()))

    # Closest reference length per image, the shorter one on a tie: order the references by
    # (image, distance, length) and take each image's first.
    distance = np.abs(corpus.ref_len - corpus.hyp_len[corpus.ref_image])  # (R,)
    order = np.lexsort((corpus.ref_len, distance, corpus.ref_image))  # last key sorts first
    first = np.searchsorted(corpus.ref_image[order], np.arange(n_images))  # (I,)
    ref_len_total = int(corpus.ref_len[order[first]].sum())
    hyp_len_total = int(corpus.hyp_len.sum())

    scores = []
    precision_product = 1.0
    for k in range(max_n):
        precision_product *= (matched[k] + _TINY) / (candidates[k] + _SMALL)
        scores.append(precision_product ** (1.0 / (k + 1)))
    ratio = (hyp_len_total + _TINY) / (ref_len_total + _SMALL)  # guards an all-empty corpus
    if ratio < 1:
        brevity_penalty = math.exp(1 - 1 / ratio)
        scores = [s * brevity_penalty for s in scores]
    return scores


def longest_common_subsequence(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two word lists (not necessarily contiguous).

    The textbook dynamic programme: ``row[j]`` is the LCS of the words of ``a`` seen so far and
    ``b[:j]``; a match extends the diagonal, otherwise the longer of the two neighbours is kept.

    >>> longest_common_subsequence("a cat on a mat".split(), "a cat sat on the mat".split())  # a cat on mat
    4
    """
    row = [0] * (len(b) + 1)
    for word in a:
        diagonal = 0  # the previous row's value at j - 1
        for j, other in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if word == other else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str],
            beta: float = 1.2) -> float:
    """ROUGE-L as the COCO toolkit computes it (``Rouge``): the mean over images of an LCS F-measure.

    Inputs are already tokenized (space-separated words; see ``tokenize_caption``). Per image, with
    the hypothesis h and each reference r: precision LCS(h, r) / |h| and recall LCS(h, r) / |r|;
    the best precision and the best recall over the references are taken *separately* (they may
    come from different references), and the image scores
    F = (1 + beta^2) P R / (R + beta^2 P), 0 when either is 0. beta = 1.2 weighs recall a little
    more than precision. Captions are split on single spaces as the toolkit splits them, so an empty
    caption is one empty word: an empty hypothesis scores 0, but 1 beside an empty reference.

    >>> round(rouge_l({1: ["a b c d"]}, {1: "a b x"}), 6)  # 2.44 * 2/3 * 2/4 / (2/4 + 1.44 * 2/3)
    0.557078
    """
    ids = _check_inputs(references, hypotheses)
    scores = []
    for image_id in ids:
        # The toolkit splits on single spaces, so an empty caption is one empty word, never zero words.
        hyp = hypotheses[image_id].split(" ")
        refs = [r.split(" ") for r in references[image_id]]
        lcs = [longest_common_subsequence(ref, hyp) for ref in refs]
        precision = max(n / len(hyp) for n in lcs)
        recall = max(n / len(ref) for n, ref in zip(lcs, refs))
        if precision > 0 and recall > 0:
            scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision))
        else:
            scores.append(0.0)
    return float(np.mean(scores))


class DocumentFrequency(NamedTuple):
    """CIDEr-D's document frequencies counted once over a reference corpus (:func:`document_frequency`)."""

    n_images: int  # N of idf = log(N) - log(df)
    counts: tuple[dict[str, int], ...]  # per order n = 1..max_n: "w1 .. wn" -> images whose references have it


def _images_with(ref_keys: np.ndarray, n_distinct: int) -> np.ndarray:
    """Document frequency: for each n-gram id, the number of images whose references contain it.

    ``ref_keys`` (rows,) packs (image, gram) as ``image * n_distinct + gram``; returns (n_distinct,).
    """
    return np.bincount(_distinct(ref_keys) % n_distinct, minlength=n_distinct)


def document_frequency(references: Mapping[Hashable, Sequence[str]], max_n: int = 4) -> DocumentFrequency:
    """Count CIDEr-D's document frequencies over ``references`` (tokenized), for :func:`cider_d_scores`.

    The counts are the ones ``cider_d`` makes from the corpus it scores, kept by n-gram:

    >>> df = document_frequency({1: ["a cat", "a cat sat"], 2: ["a dog"]}, max_n=2)
    >>> df.n_images, df.counts[0]["a"], df.counts[0]["cat"], df.counts[1]["a cat"]
    (2, 2, 1, 1)
    """
    corpus = _prepare(references, {i: "" for i in references}, max_n)
    counts = []
    for ref in corpus.ref:
        images_with = _images_with(corpus.ref_image[ref.owner] * ref.n_distinct + ref.gram, ref.n_distinct)
        names = _gram_names(ref, corpus.vocab)
        counts.append({names[g]: int(images_with[g]) for g in np.flatnonzero(images_with)})
    return DocumentFrequency(len(corpus.hyp_len), tuple(counts))


def cider_d(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str],
            sigma: float = 6.0, max_n: int = 4, document_frequency: DocumentFrequency | None = None) -> float:
    """Corpus CIDEr-D as the COCO toolkit computes it (its ``Cider`` class is CIDEr-D): the mean of
    :func:`cider_d_scores`, which describes the computation.

    >>> refs = {1: ["a cat"], 2: ["a dog"]}
    >>> round(cider_d(refs, {1: "a cat", 2: "a bird"}), 6)  # (10 * (1 + 1 + 0 + 0) / 4 + 0) / 2
    2.5
    """
    return float(cider_d_scores(references, hypotheses, sigma, max_n, document_frequency).mean())


def cider_d_scores(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str],
                   sigma: float = 6.0, max_n: int = 4,
                   document_frequency: DocumentFrequency | None = None) -> np.ndarray:
    """CIDEr-D of every image, as the COCO toolkit computes it: (I,) in the order of ``references``.

    Inputs are already tokenized (space-separated words; see ``tokenize_caption``). With N images:

    - document frequency df(g): the number of images whose references contain n-gram g at least
      once; idf(g) = log(N) - log(max(1, df(g))), so an n-gram found in no reference gets the
      largest weight log(N) and one found for every image gets 0. Without ``document_frequency``
      the corpus being scored is the idf corpus (one image's score depends on the other images'
      references); with it, df and N come from the corpus it was counted on (each image's score
      then depends on its own captions alone);
    - every caption becomes, for each n, a vector of count(g) * idf(g) over its n-grams;
    - for a hypothesis h and one reference r, order n contributes
      sum_g min(h_g, r_g) * r_g / (|h_n| |r_n|)  (the hypothesis weight is clipped at the
      reference weight; 0 when either norm is 0), times the length penalty
      exp(-(len(h) - len(r))**2 / (2 sigma**2));
    - the image score is 10 * the mean over references and over n = 1..max_n; the corpus score
      is the mean over images (:func:`cider_d`).

    >>> refs = {1: ["a cat"], 2: ["a dog"]}
    >>> cider_d_scores(refs, {1: "a cat", 2: "a bird"}).round(6).tolist()  # 10 * (1 + 1 + 0 + 0) / 4, 0
    [5.0, 0.0]
    """
    corpus = _prepare(references, hypotheses, max_n)
    n_images, n_refs = len(corpus.hyp_len), len(corpus.ref_len)
    if document_frequency is not None and len(document_frequency.counts) < max_n:
        raise ValueError(f"the document frequencies go up to {len(document_frequency.counts)}-grams; "
                         f"max_n={max_n} needs them up to {max_n}-grams")
    log_n = math.log(n_images if document_frequency is None else document_frequency.n_images)
    cosine_sum = np.zeros(n_refs)  # (R,) sum over n of the cosine of hypothesis and reference
    for n, (hyp, ref) in enumerate(zip(corpus.hyp, corpus.ref)):
        ref_keys = corpus.ref_image[ref.owner] * ref.n_distinct + ref.gram  # (rows,) (image, gram)
        if document_frequency is None:
            images_with = _images_with(ref_keys, ref.n_distinct)  # (G,) document frequency
        else:  # the same counts, made once over another corpus: looked up by n-gram
            counts = document_frequency.counts[n]
            images_with = np.array([counts.get(name, 0) for name in _gram_names(ref, corpus.vocab)],
                                   dtype=np.int64)  # (G,)
        idf = log_n - np.log(np.maximum(images_with, 1))  # (G,)
        hyp_weight = hyp.count * idf[hyp.gram]  # (hyp rows,)
        ref_weight = ref.count * idf[ref.gram]  # (ref rows,)
        hyp_norm = np.sqrt(np.bincount(hyp.owner, hyp_weight ** 2, minlength=n_images))  # (I,)
        ref_norm = np.sqrt(np.bincount(ref.owner, ref_weight ** 2, minlength=n_refs))  # (R,)
        # The hypothesis weight of each reference n-gram (0 where the hypothesis lacks it);
        # n-grams only the hypothesis has add nothing to the dot product, only to its norm.
        hyp_at_ref = _lookup(hyp.owner * hyp.n_distinct + hyp.gram, hyp_weight, ref_keys)
        dot = np.bincount(ref.owner, np.minimum(hyp_at_ref, ref_weight) * ref_weight,
                          minlength=n_refs)  # (R,)
        norms = hyp_norm[corpus.ref_image] * ref_norm  # (R,)
        # A zero norm means a zero vector, whose cosine the toolkit leaves at 0.
        cosine_sum += np.divide(dot, norms, out=np.zeros(n_refs), where=norms > 0)
    # The toolkit measures length in bigrams (words - 1); the difference is the same whenever
    # both captions have a word, and an empty caption scores 0 either way.
    delta = corpus.hyp_len[corpus.ref_image] - corpus.ref_len  # (R,)
    per_ref = cosine_sum * np.exp(-(delta ** 2) / (2 * sigma ** 2))  # (R,)
    refs_per_image = np.bincount(corpus.ref_image, minlength=n_images)  # (I,)
    return 10.0 * np.bincount(corpus.ref_image, per_ref, minlength=n_images) / (
        max_n * refs_per_image)  # (I,)


def evaluate_captions(references: Mapping[Hashable, Sequence[str]],
                      hypotheses: Mapping[Hashable, str]) -> dict:
    """Tokenize raw captions and score them: BLEU-1..4, ROUGE-L, CIDEr-D, and how many were empty.

    ``references`` maps an image id to its raw reference captions, ``hypotheses`` the same ids
    to one raw generated caption. Both sides go through ``tokenize_caption``. A hypothesis that
    is empty after tokenization is scored as empty (no n-grams; its reference length still
    counts in BLEU's brevity penalty) and counted in ``n_empty``, never dropped.

    Returns ``{"BLEU-1": .., "BLEU-2": .., "BLEU-3": .., "BLEU-4": .., "ROUGE-L": .., "CIDEr-D": ..,
    "n_images": int, "n_empty": int}``; scores are fractions (BLEU and ROUGE-L in [0, 1], CIDEr-D in
    [0, 10]).
    """
    ids = _check_inputs(references, hypotheses)
    refs = {i: [tokenize_caption(r) for r in references[i]] for i in ids}
    hyps = {i: tokenize_caption(hypotheses[i]) for i in ids}
    result = {f"BLEU-{k + 1}": score for k, score in enumerate(bleu(refs, hyps))}
    result["ROUGE-L"] = rouge_l(refs, hyps)
    result["CIDEr-D"] = cider_d(refs, hyps)
    result["n_images"] = len(ids)
    result["n_empty"] = sum(1 for h in hyps.values() if not h)
    return result
