"""The blind baseline: one caption, the same for every image, chosen from the training captions alone.

It answers "how much of the score does the image earn?". A captioner that ignores its input can do
no better than predict the one caption that best matches the *typical* references; whatever a real
captioner scores above that comes from looking at the image.

The rule (deterministic, and it never sees a validation or test image):

1. Split the training images once, with a seeded permutation, into a *held-out* sample of
   ``n_heldout`` images and the rest.
2. Candidates: the ``n_candidates`` most frequent distinct captions of the rest, compared after
   :func:`~captioner.evaluation.ptb_tokenizer.tokenize_caption` (so "A red circle." and "a red circle" are one
   caption); ties go to the alphabetically first.
3. Predict each candidate for every held-out image and score it with CIDEr-D against their
   references; the best candidate wins (ties: the more frequent one).

CIDEr-D is the criterion because it is what the baseline will be judged by, and it weights n-grams
by how rare they are across the scored images: the winner says something specific and is right
often, not merely the most common phrase. (An n-gram found in the references of *every* image gets
weight 0, so a caption that fits every image perfectly scores 0.)

>>> train = [["A red circle.", f"picture {n}"] for n in range(6)] + [[f"a {c} square"] for c in ("blue", "green")]
>>> choose_blind_caption(train).caption  # in most images, but not in all of them
'a red circle'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from captioner.evaluation.metrics import cider_d, evaluate_captions
from captioner.evaluation.ptb_tokenizer import tokenize_caption


@dataclass(frozen=True)
class BlindCaption:
    """The chosen caption and how it was chosen.

    caption: the winner, tokenized (lowercase, no punctuation); heldout_cider_d: its CIDEr-D on
    the held-out training images; n_candidates / n_heldout: how many captions were tried on how
    many held-out images.
    """

    caption: str
    heldout_cider_d: float
    n_candidates: int
    n_heldout: int


def choose_blind_caption(train_captions: Sequence[Sequence[str]], n_candidates: int = 100,
                         n_heldout: int = 500, seed: int = 0) -> BlindCaption:
    """Pick the blind caption from the raw captions of the training images (one list per image).

    See the module docstring for the rule. ``n_heldout`` is capped at half the captioned images,
    so that candidates and held-out references always come from different images.
    """
    captioned = [caps for caps in train_captions if caps]  # uncaptioned images carry no information
    if len(captioned) < 2:
        raise ValueError(f"the blind baseline needs at least 2 captioned training images, got {len(captioned)}")
    order = np.random.default_rng(seed).permutation(len(captioned))  # (N,)
    n_heldout = max(1, min(n_heldout, len(captioned) // 2))
    heldout, rest = order[:n_heldout], order[n_heldout:]

    frequency = Counter(tokenize_caption(c) for i in rest for c in captioned[i])
    frequency.pop("", None)  # a caption of punctuation only says nothing
    if not frequency:
        raise ValueError("the training captions are all empty after tokenization")
    candidates = sorted(frequency, key=lambda c: (-frequency[c], c))[:n_candidates]

    references = {int(i): [tokenize_caption(c) for c in captioned[i]] for i in heldout}
    scores = [cider_d(references, dict.fromkeys(references, caption)) for caption in candidates]
    best = int(np.argmax(scores))  # the first maximum: the more frequent candidate wins a tie
    return BlindCaption(candidates[best], scores[best], len(candidates), n_heldout)


def blind_scores(caption: str, references: Mapping[int, Sequence[str]]) -> dict:
    """``evaluate_captions`` of ``caption`` predicted for every image of ``references``."""
    return evaluate_captions(references, dict.fromkeys(references, caption))
