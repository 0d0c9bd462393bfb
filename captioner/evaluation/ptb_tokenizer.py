"""The COCO caption toolkit's PTB tokenization, reimplemented: what BLEU and CIDEr-D see of a caption.

The toolkit (``pycocoevalcap``) runs the Stanford PTB tokenizer over every caption before scoring:
lowercase, punctuation split off and mostly dropped, clitics (``'s``, ``n't``) split from their word.
:func:`tokenize_caption` does the same in pure Python, so scores agree with the toolkit's without Java.
"""

import re

# The toolkit scores captions after its PTB tokenizer has split punctuation into separate tokens
# and then drops these (ptbtokenizer.py, PUNCTUATIONS):
#   ''  '  ``  `  -LRB-  -RRB-  -LCB-  -RCB-  .  ?  !  ,  :  -  --  ...  ;
# Our tokenizer emits those symbols as one-character tokens, so the list becomes these characters
# (the double quote because PTB turns it into `` or ''). Brackets are not on it: PTB escapes them
# and lowercases afterwards, so -lrb- never matches the upper-case -LRB- above and stays a word.
_DROPPED_SYMBOLS = frozenset(".?!,:;-'`\"")


_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


# Typographic quotes, dashes and the ellipsis character, mapped to the ASCII forms PTB maps them to
# (all of which are then dropped).
_ASCII_PUNCTUATION = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "-", "\u2026": ".",
})


# PTB splits negation and these clitics off the word before them: "don't" -> "do n't",
# "can't" -> "ca n't", "man's" -> "man 's"; and it splits a few fused words.
_NEGATION = re.compile(r"(?<=\w)n't\b")


_CLITIC = re.compile(r"(?<=\w)'(s|re|ve|ll|m|d)\b")


_FUSED = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
          "lemme": "lem me", "gimme": "gim me"}


_FUSED_WORD = re.compile(r"\b(?:" + "|".join(_FUSED) + r")\b")


_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|m|d)\b"  # the split-off pieces stay tokens of their own
    r"|-[lr][rsc]b-"  # bracket escapes from an earlier pass stay whole
    r"|(?:mrs?|ms|dr|st|jr|sr|vs|etc|ave|inc|co|mt|rd)\.(?!\w)"  # abbreviations keep their dot,
    r"|(?:[a-z]\.)+(?!\w)"  # as do single letters and initialisms: "a.", "u.s.", "p.m."
    r"|\d+(?:[.,:/]\d+)+"  # numbers like 3.5, 1,000, 8:30, 3/4 stay whole
    r"|[^\W_]+(?:[-'./][^\W_]+)*"  # words with inner - ' . / stay whole: t-shirt, o'clock, and/or
    r"|[!?]+"  # a run like "!!" or "?!" is one token (and not on the dropped list)
    r"|\S"  # any other symbol is a token by itself
)


def tokenize_caption(text: str) -> str:
    """Normalise a caption as the COCO toolkit does before scoring; returns space-separated words.

    The toolkit runs Stanford CoreNLP 3.4.1's PTBTokenizer (Java) with ``-lowerCase`` and then
    removes the tokens on its list ``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``
    (the upper-case bracket escapes never match the lowercased output). This function
    approximates it in Python, in four steps:

    1. typographic quotes, dashes and "…" become their ASCII forms; the text is lowercased;
    2. "n't" and the clitics 's 're 've 'll 'm 'd are split off the word before them, and the
       fused words cannot, gonna, gotta, wanna, lemme, gimme are split ("can not", "gon na"...);
    3. the text is cut into tokens: words (letters and digits, keeping inner hyphens,
       apostrophes, dots and slashes, as in "t-shirt", "o'clock", "and/or"), numbers ("3.5",
       "1,000", "8:30", "3/4"), single letters and initialisms with their dots ("a.", "u.s.",
       "p.m.") and a few abbreviations ("mr.", "dr.", "st.", "etc." ...), the split-off
       clitics, runs of ! and ?, and every other symbol as a one-character token;
    4. the tokens on the toolkit's list are removed (``. ? ! , : ; - ' ` "``), brackets become
       PTB's lowercased escapes (``( -> -lrb-``, ``[ -> -lsb-``, ``{ -> -lcb-``...), which the
       toolkit keeps, and other symbols (``& $ % # / * !! ?!``...) stay; tokens are joined by
       single spaces.

    >>> tokenize_caption("A man's T-shirt, and a dog that isn't \\"happy\\"...")
    "a man 's t-shirt and a dog that is n't happy"
    >>> tokenize_caption("The U.S. flag (left) at 8:30 p.m.!!")
    'the u.s. flag -lrb- left -rrb- at 8:30 p.m. !!'

    Checked against the toolkit's own tokenizer (CoreNLP 3.4.1, run once by hand, not in the
    tests) on common caption forms. Cases we know it handles differently, all rare in captions:
    abbreviations outside our short list ("no." before a number), "'tis" and "rock'n'roll"
    (split by PTB), "@" names, e-mail addresses, emoticons (":)" becomes ":-rrb-") and
    fractions written with a space ("1 1/2" becomes one token).

    The result is idempotent: ``tokenize_caption(tokenize_caption(s)) == tokenize_caption(s)``.
    """
    text = text.translate(_ASCII_PUNCTUATION).lower()
    text = _NEGATION.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    text = _FUSED_WORD.sub(lambda match: _FUSED[match.group()], text)
    tokens = (_BRACKETS.get(t, t) for t in _TOKEN.findall(text))
    return " ".join(t for t in tokens if t not in _DROPPED_SYMBOLS)
