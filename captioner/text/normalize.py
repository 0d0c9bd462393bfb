"""How every tokenizer sees text: lowercase, accents stripped, punctuation split off, words counted.

>>> normalize_text("A Café, two cats!")
['a', 'cafe', ',', 'two', 'cats', '!']
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

# The ASCII-only path of normalize_text: runs of letters/digits, or any other single visible character.
_ASCII_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9\s\x00-\x1f\x7f]")


def normalize_text(text: str) -> list[str]:
    """Split text into normalised words, the units every tokenizer works on.

    1. Unicode NFKD, then lowercase, then combining marks dropped: accents go,
       ``"Café" -> "cafe"``, ligatures and full-width forms become plain letters.
    2. Whitespace separates words; so do control, format and other category-C
       characters, which are dropped.
    3. Each punctuation or symbol character (Unicode category P* or S*) is a word
       of its own, so ``"dog's"`` gives ``["dog", "'", "s"]``.

    >>> normalize_text("A Café, by the  SEA!")
    ['a', 'cafe', ',', 'by', 'the', 'sea', '!']
    """
    if text.isascii():
        # Same rules as below; plain ASCII needs no Unicode tables, and most captions are ASCII.
        return _ASCII_WORD.findall(text.lower())
    words: list[str] = []
    current: list[str] = []
    for ch in unicodedata.normalize("NFKD", text).lower():
        if unicodedata.combining(ch):
            continue
        category = unicodedata.category(ch)
        if ch.isspace() or category[0] in "CPS":
            if current:
                words.append("".join(current))
                current = []
            if category[0] in "PS":
                words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def count_words(texts: Iterable[str]) -> Counter:
    """Frequency of every normalised word in `texts`: the table both trainers start from.

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
