"""How every tokenizer sees text: normalised words, cut into pre-tokens that remember their spacing.

Decoding must give back the caption the scorer saw, or a model that writes the reference word for
word still scores zero: ``a man ' s t - shirt`` never matches the reference's ``man 's t-shirt``
(`captioner.evaluation.ptb_tokenizer.tokenize_caption`). So normalisation loses nothing that the
scorer keeps, and every pre-token records whether a space came before it:

1. `normalize_text`: Unicode NFC (composed accents), lowercase, split on whitespace. Accents
   stay, because the scorer keeps them: "café" must not come back as "cafe".
2. `pretokenize` cuts one word into *pre-tokens*, the units a merge never crosses: a run of
   letters and digits, with single ``' ’ - . , : /`` *between* two of them kept inside
   (``man's``, ``t-shirt``, ``3.5``, ``8:30``, ``1,000``, ``and/or``); every other character
   is a pre-token of its own (the ``,`` and ``.`` after a word, brackets, ``$``, emoji).
3. The first pre-token of each word starts with ``▁`` (U+2581, the marker SentencePiece uses):
   a space came before it. A pre-token without it is *glued* to the one before.

Worked example::

    "A man's T-shirt, 3.5 m (café)!"
    normalize_text  ['a', "man's", 't-shirt,', '3.5', 'm', '(café)!']
    pretokenize     ['▁a'] ["▁man's"] ['▁t-shirt', ','] ['▁3.5'] ['▁m'] ['▁(', 'café', ')', '!']
    decoded         "a man's t-shirt, 3.5 m (café)!"

BPE keeps the ``▁`` as a symbol (``▁man`` ``'s``); WordPiece turns it into its own convention,
a glued pre-token starting with a ``##`` piece (``man ##'s``, ``t ##- ##shirt ##,``). Either way
decoding puts a space exactly where a ``▁`` was, so ``decode(encode(text)) ==
" ".join(normalize_text(text))`` for text made of characters seen in training, and the scorer
tokenizes the decoded caption exactly as it tokenizes the lowercased reference.

Why mark spaces rather than only keep inner punctuation inside words: the scorer also reads a
word's edges (``p.m.``, ``u.s.`` and ``mr.`` keep their final dot and ``!!`` is one token, while
``p.m .`` and ``! !`` lose them). And why not a separate "glue" token: it would lengthen every
caption, where ``▁`` costs nothing once it has merged with the first letters of words.
Shapes captions are plain words with ``,`` and ``.`` after them: ``"a red cube, a ball."`` gives
``▁a ▁red ▁cube , ▁a ▁ball .``.

Text that holds ``▁`` itself reads it as a space (the marker cannot be told apart from it).

`bert_words` is the other way in, for a tokenizer on bert-base-uncased's vocabulary
(`captioner.text.bert_vocab`): BERT's own normalisation and pre-tokenization, which drops
accents and splits every punctuation mark off (``man ' s``), because that vocabulary was
made that way and its pieces mean nothing otherwise.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping

WORD_START = "\u2581"


# A run of letters/digits with single inner ' ’ - . , : / joining runs, or any one other character.
_PRETOKEN = re.compile(r"[^\W_]+(?:['’\-.,:/][^\W_]+)*|.", re.DOTALL)


def normalize_text(text: str) -> list[str]:
    """Split text into normalised words: NFC, lowercase, ``▁`` read as a space, split on whitespace.

    >>> normalize_text("A  Café, by the SEA!")
    ['a', 'café,', 'by', 'the', 'sea!']
    """
    if text.isascii():
        return text.lower().split()  # NFC and the marker concern non-ASCII text only
    return unicodedata.normalize("NFC", text.lower()).replace(WORD_START, " ").split()


def pretokenize(word: str) -> list[str]:
    """Cut one normalised word into pre-tokens; the first carries ``▁``, the others are glued to it.

    >>> pretokenize("(t-shirt),")
    ['▁(', 't-shirt', ')', ',']
    """
    pieces = _PRETOKEN.findall(word)
    pieces[0] = WORD_START + pieces[0]
    return pieces


def count_words(texts: Iterable[str]) -> Counter:
    """Frequency of every normalised word in `texts`.

    Normalising whitespace-separated chunks one by one gives the same words as normalising
    the whole text, so this counts the raw chunks first (``str.split`` is fast) and then
    normalises each distinct chunk once, instead of every caption.
    """
    chunks: Counter = Counter()
    for text in texts:
        chunks.update(text.split())
    counts: Counter = Counter()
    for chunk, n in chunks.items():
        for word in normalize_text(chunk):
            counts[word] += n
    if not counts:
        raise ValueError("cannot train a tokenizer: the training texts contain no words")
    return counts


def count_pretokens(word_counts: Mapping[str, int]) -> Counter:
    """Frequency of every pre-token, from a table ``{word: frequency}``: what both trainers start from.

    >>> count_pretokens({"cube.": 2, "cube": 1})
    Counter({'▁cube': 3, '.': 2})
    """
    counts: Counter = Counter()
    for word, n in word_counts.items():
        for piece in pretokenize(word):
            counts[piece] += n
    return counts


# BERT's "Chinese characters": the CJK ideograph blocks (not kana or hangul), each a word of its own.
_BERT_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
             (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

# An ASCII word cut at BERT's punctuation: every ASCII character that is not a letter, digit or space.
_BERT_ASCII_WORD = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")


def _bert_clean(ch: str) -> str:
    """What BERT's normaliser makes of one character before accents and case (see `bert_words`)."""
    if ch in "\t\n\r":
        return " "
    if ch == "\ufffd" or unicodedata.category(ch)[0] == "C":
        return ""
    cp = ord(ch)
    if any(lo <= cp <= hi for lo, hi in _BERT_CJK):
        return f" {ch} "
    return ch


def _is_bert_punctuation(ch: str) -> bool:
    if ch.isascii():
        return not (ch.isalnum() or ch.isspace())
    return unicodedata.category(ch)[0] == "P"


def bert_words(text: str) -> list[str]:
    """Text cut into words as bert-base-uncased's tokenizer cuts it, before its WordPiece model.

    This follows Hugging Face `tokenizers`' ``BertNormalizer`` (its defaults with
    ``lowercase=True``) and ``BertPreTokenizer``, in their order:

    1. clean: control and format characters (Unicode categories C*: Cc, Cf, Co, Cn, Cs), NUL and
       U+FFFD are removed; tab, newline and carriage return become spaces (a vertical tab is Cc,
       so it is removed and joins its neighbours);
    2. each CJK ideograph gets a space on both sides;
    3. accents are stripped: NFD, then every nonspacing mark (Mn) removed;
    4. lowercase, character by character (a final ``Σ`` gives ``σ``, not ``ς``);
    5. split on whitespace, then every punctuation character is a word of its own: ASCII
       punctuation and symbols (``$ + < = > ^ ` | ~`` included) and Unicode categories P*.
       Other symbols (``°``, ``€``, ``©``) stay inside their word.

    >>> bert_words("A man's T-shirt, 3.5 m (Café)!")
    ['a', 'man', "'", 's', 't', '-', 'shirt', ',', '3', '.', '5', 'm', '(', 'cafe', ')', '!']
    """
    if text.isascii():  # no accents, ideographs or non-ASCII punctuation to look at
        if not text.isprintable():
            text = "".join(_bert_clean(ch) for ch in text)
        return [piece for chunk in text.lower().split() for piece in _BERT_ASCII_WORD.findall(chunk)]
    text = "".join(_bert_clean(ch) for ch in text)
    text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
    text = text.replace("\u03a3", "\u03c3").lower()  # Python would lowercase a word-final sigma to ς
    words = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if _is_bert_punctuation(ch):
                words.extend(w for w in (chunk[start:i], ch) if w)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words
