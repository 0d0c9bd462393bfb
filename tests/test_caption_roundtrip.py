"""Tokenizers against the scorer: decoded captions must tokenize as their references do.

A model that writes the reference caption token for token must score BLEU-4 1.0. That holds only
if ``decode(encode(caption))`` keeps what the COCO scorer's PTB tokenization keeps: possessives
(``man 's``), contractions (``does n't``), hyphenated words (``t-shirt``), decimals and times
(``3.5``, ``8:30``), abbreviations (``p.m.``) and accents (``café``).
"""

from pathlib import Path

import pytest

from captioner.data.shapes_captions import captions_for
from captioner.evaluation.metrics import evaluate_captions
from captioner.evaluation.ptb_tokenizer import tokenize_caption
from captioner.text.normalize import normalize_text
from captioner.text.tokenizers import UNK_ID, train_tokenizer

# 245 captions written for these tests in the style of COCO's (none copied from it).
CAPTIONS = (Path(__file__).parent / "data" / "coco_style_captions.txt").read_text(encoding="utf-8").splitlines()

SHAPES = [caption for index in range(100) for caption in captions_for(0, "train", index, 64)]

VOCAB_SIZE = 600  # about a third of the captions' distinct words: most words are cut into pieces


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tokenizer(request):
    return train_tokenizer(request.param, CAPTIONS + SHAPES, VOCAB_SIZE)


def test_the_captions_hold_the_hard_cases():
    text = " ".join(CAPTIONS)
    for case in ["man's", "doesn't", "T-shirt", "3.5", "8:30", "p.m.", "St.", "café", "crème", "$4.99", "(near", '"No']:
        assert case in text, case
    assert len(CAPTIONS) >= 200 and len(set(CAPTIONS)) == len(CAPTIONS)


def test_decoding_gives_back_the_caption_as_the_scorer_sees_it(tokenizer):
    for caption in CAPTIONS + SHAPES:
        ids = tokenizer.encode(caption)
        assert UNK_ID not in ids, caption
        decoded = tokenizer.decode(ids)
        assert decoded == " ".join(normalize_text(caption))
        assert tokenize_caption(decoded) == tokenize_caption(caption), caption


def test_the_issue_example(tokenizer):
    ids = tokenizer.encode("A man's T-shirt is red.")
    assert tokenizer.decode(ids) == "a man's t-shirt is red."
    assert tokenize_caption(tokenizer.decode(ids)) == "a man 's t-shirt is red"


def test_a_model_that_writes_the_references_scores_bleu_4_of_one(tokenizer):
    references = {i: [caption] for i, caption in enumerate(CAPTIONS)}
    hypotheses = {i: tokenizer.decode(tokenizer.encode(caption)) for i, caption in enumerate(CAPTIONS)}
    scores = evaluate_captions(references, hypotheses)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-9)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-9) and scores["n_empty"] == 0


def test_the_old_split_punctuation_scores_far_lower():
    # What decoding used to give: every punctuation mark a word of its own, accents dropped.
    split = {i: caption.replace("'", " ' ").replace("-", " - ").replace("é", "e") for i, caption in enumerate(CAPTIONS)}
    references = {i: [caption] for i, caption in enumerate(CAPTIONS)}
    assert evaluate_captions(references, split)["BLEU-4"] < 0.95


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_shapes_captions_are_words_then_glued_commas_and_full_stops(kind):
    tokenizer = train_tokenizer(kind, SHAPES, 5000)  # process_coco.py's default vocabulary size
    for caption in SHAPES:
        tokens = [tokenizer.id_to_token(i) for i in tokenizer.encode(caption)]
        words = caption.lower().replace(",", " ,").replace(".", " .").split()
        # One token per word, and the punctuation glued to the word before it.
        if kind == "bpe":
            assert tokens == ["▁" + w if w not in ",." else w for w in words]
        else:
            assert tokens == [w if w not in ",." else "##" + w for w in words]
        assert tokenizer.decode(tokenizer.encode(caption)) == caption.lower()


def test_unknown_characters_become_unk_and_vanish_from_the_decoded_text(tokenizer):
    # BPE gives each unseen character an <unk> and keeps the word's ▁ (a space), WordPiece gives the
    # whole pre-token one <unk>; decoding skips <unk>, so the scorer sees the rest of the caption.
    for text, kept in [("a dog 🐶 on a bed", "a dog on a bed"), ("a cat 猫.", "a cat."), ("🐶🐱", "")]:
        ids = tokenizer.encode(text)
        assert UNK_ID in ids
        assert tokenize_caption(tokenizer.decode(ids)) == tokenize_caption(kept)
    assert train_tokenizer(tokenizer.kind, ["a cat"], 20).decode([UNK_ID] * 3) == ""
