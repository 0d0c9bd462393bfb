"""tokenize_caption against the COCO toolkit's own tokenizer (Java), whose outputs are stored.

``tests/data/ptb_expected.json`` holds captions and what pycocoevalcap's PTBTokenizer (CoreNLP 3.4.1
plus its punctuation filter) made of them; ``tests/data/make_ptb_expected.py`` regenerates it, by
hand, where Java and pycocoevalcap are installed. No Java is needed here.
"""

import doctest
import json
from pathlib import Path

import pytest

from captioner.evaluation import ptb_tokenizer
from captioner.evaluation.ptb_tokenizer import tokenize_caption

CASES = json.loads((Path(__file__).parent / "data" / "ptb_expected.json").read_text(encoding="utf-8"))

# The differences that tokenize_caption's docstring lists, one example each: the caption and what we
# give instead of the stored Java output. Asserting our output means that any change is noticed.
KNOWN_DIFFERENCES = {
    # Unicode: PTB keeps Hindi vowel signs in the word, deletes newer letters and CJK-block symbols
    "a sign that says \u0928\u092e\u0938\u094d\u0924\u0947": "a sign that says \u0928\u092e\u0938 \u0924",
    "a two-em dash \u2e3a here": "a two-em dash \u2e3a here",
    "a sign in \u0528 letters": "a sign in \u0529 letters",
    "an \u00adx-ray of a hand": "an x-ray of a hand",  # a soft hyphen starting a word
    "ads at 3pmwww.x.com": "ads at 3pmwww x.com",  # letters glued to a web address
    "a face >_< on a sign": "a face > _ < on a sign",  # rules left out
    "caf&eacute; sign": "caf & eacute sign",
}


def test_the_stored_cases_cover_the_documented_differences():
    texts = {case["text"]: case["expected"] for case in CASES}
    assert len(texts) == len(CASES) >= 150
    for text, ours in KNOWN_DIFFERENCES.items():
        assert text in texts and texts[text] != ours


@pytest.mark.parametrize("case", CASES, ids=[repr(case["text"])[1:41] for case in CASES])
def test_tokenize_caption_matches_the_java_tokenizer(case):
    expected = KNOWN_DIFFERENCES.get(case["text"], case["expected"])
    assert tokenize_caption(case["text"]) == expected


def test_docstring_examples():
    failed, attempted = doctest.testmod(ptb_tokenizer)
    assert attempted >= 2 and failed == 0
