"""The rewards of self-critical training: the project's own metrics, called on one caption at a time.

Each caption gets a weighted mix of up to four scores (``scst.reward`` in the config):

- ``cider_d``: CIDEr-D against the image's references, with document frequencies counted once over
  the training references (:func:`~captioner.evaluation.metrics.document_frequency`), so a caption's
  score does not depend on the other captions of its batch;
- ``bleu4``: BLEU-4 of the caption alone (the corpus BLEU of a one-image corpus; with the toolkit's
  zero-count guards it is near 0 whenever some order has no match);
- ``truth``: 1 when the caption is true in full of its shapes scene, else 0 (unparsed: 0);
- ``claims``: the share of the caption's claims that hold (unparsed, or no claims: 0).

The last two need the shapes dataset, whose scenes are known (``captioner/evaluation/truth.py``).
CIDEr-D lies in [0, 10], the others in [0, 1]: the weights also set the scale.

>>> rewards = CaptionRewards({1: ["a red circle"], 2: ["a blue square"]}, {"cider_d": 2.0, "bleu4": 0.0})
>>> scores = rewards.scores([1, 1], ["a red circle", "a blue square"])  # two captions of image 1
>>> scores["cider_d"].round(3).tolist(), rewards.total(scores).round(3).tolist()  # orders 1-3 match, 4 has none
([7.5, 0.0], [15.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from captioner.data.shapes_scene import Scene
from captioner.evaluation.metrics import DocumentFrequency, bleu, cider_d_scores, document_frequency
from captioner.evaluation.ptb_tokenizer import tokenize_caption
from captioner.evaluation.truth import check_caption

REWARDS = ("cider_d", "bleu4", "truth", "claims")
TRUTH_REWARDS = ("truth", "claims")


class CaptionRewards:
    """Scores captions of the images of one split.

    ``references``: ``{image_id: raw reference captions}`` (tokenized here once; CIDEr-D's document
    frequencies are counted over them once); ``weights``: ``{reward name: weight}`` over ``REWARDS``
    (zero weights are not computed); ``scenes``: ``{image_id: Scene}``, needed for the truth rewards;
    ``frequencies``: CIDEr-D's document frequencies counted elsewhere (to score validation captions with
    the training split's), else they are counted over ``references``.
    """

    def __init__(self, references: Mapping[int, Sequence[str]], weights: Mapping[str, float],
                 scenes: Mapping[int, Scene] | None = None, frequencies: DocumentFrequency | None = None):
        unknown = sorted(set(weights) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown reward {unknown[0]!r}: expected some of {', '.join(REWARDS)}")
        self.weights = {name: float(w) for name, w in weights.items() if w != 0}
        if not self.weights:
            raise ValueError(f"every reward weight is 0: give one of {', '.join(REWARDS)} a weight")
        if scenes is None and any(name in TRUTH_REWARDS for name in self.weights):
            raise ValueError("the truth rewards (truth, claims) need the shapes dataset, whose scenes are known")
        self.references = {int(i): [tokenize_caption(r) for r in refs] for i, refs in references.items()}
        self.scenes = scenes
        if frequencies is None and "cider_d" in self.weights:
            frequencies = document_frequency(self.references)
        self.document_frequency = frequencies

    def scores(self, image_ids: Sequence[int], captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Every weighted reward of every caption: ``{name: (N,) float64}``; caption n describes ``image_ids[n]``."""
        if len(image_ids) != len(captions):
            raise ValueError(f"{len(image_ids)} image ids for {len(captions)} captions")
        ids = [int(i) for i in image_ids]
        out = {}
        if "cider_d" in self.weights or "bleu4" in self.weights:
            tokenized = [tokenize_caption(c) for c in captions]
        if "cider_d" in self.weights:
            # keyed by caption, not image: K captions of one image are K entries
            refs = {n: self.references[i] for n, i in enumerate(ids)}
            out["cider_d"] = cider_d_scores(refs, dict(enumerate(tokenized)),
                                            document_frequency=self.document_frequency)
        if "bleu4" in self.weights:
            out["bleu4"] = np.array([bleu({0: self.references[i]}, {0: c})[3] for i, c in zip(ids, tokenized)])
        if "truth" in self.weights or "claims" in self.weights:
            verdicts = [check_caption(c, self.scenes[i]) for i, c in zip(ids, captions)]
            if "truth" in self.weights:
                out["truth"] = np.array([float(v.true is True) for v in verdicts])
            if "claims" in self.weights:
                out["claims"] = np.array([sum(c.holds for c in v.claims) / len(v.claims) if v.claims else 0.0
                                          for v in verdicts])
        return out

    def total(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weighted sum of :meth:`scores`' rewards: (N,)."""
        return sum(self.weights[name] * scores[name] for name in self.weights)
