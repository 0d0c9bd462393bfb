"""bert-base-uncased's WordPiece vocabulary: read its ``vocab.txt``, encode as BERT does, cut it to the captions.

A ``vocab.txt`` in BERT's format holds one piece per line, the line number being its id: pieces that
start a word (``dog``), continuation pieces (``##s``), and bracketed special tokens: ``[PAD]``,
``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` and the free slots ``[unused0]``, ``[unused1]``, ...

Encoding, as Hugging Face's ``BertWordPieceTokenizer`` (lowercase) does it: `bert_words` cuts the text
into words (accents stripped, every punctuation mark a word of its own); a word of more than
`MAX_INPUT_CHARS_PER_WORD` characters is ``[UNK]``; any other is cut greedily into the longest pieces,
left to right (`captioner.text.wordpiece.encode_word`), and is one ``[UNK]`` if some part of it
matches no piece.

The cut (`cut_vocab`) keeps `n` pieces, as the ResNet-101 + transformer project kept 15,000:

1. Count: encode every training caption with the full vocabulary and count each piece every time it
   comes out. A word that is ``[UNK]`` counts nothing.
2. Keep first what every training word that encodes needs to stay encodable: the single characters
   that spell it (its first character as a piece, each later one as a ``##`` piece), since greedy
   matching can always fall back on one character; or, where the vocabulary lacks one of them, the
   very pieces it encoded to (greedy matching on a smaller vocabulary that holds them finds them again).
3. Fill the other places with the most frequent pieces; a tie (pieces never seen included) goes to
   the earlier line of vocab.txt, so an `n` as large as the vocabulary keeps it whole.

The kept pieces stay in their vocab.txt order. Worked example, vocabulary ``a c t ##a ##t ##s cat
##at`` and the captions ``"a cat"``, ``"cats at"``: ``a``, ``cat``, ``cat ##s``, ``a ##t``. Counts:
``cat`` 2, ``a`` 2, ``##s`` 1, ``##t`` 1. Single characters: ``a``, ``c``, ``##a``, ``##t``, ``##s``.
With n = 6 the one free place goes to ``cat``, the most frequent piece; ``t`` and ``##at`` go.

The bracketed tokens are not pieces: [PAD], [CLS], [SEP] and [UNK] play the parts of the project's
``<pad> <sos> <eos> <unk>`` (`to_vocab_text` writes them back under BERT's names); [MASK] and
[unused*] are dropped, as captions never hold them.
"""

import os
import re
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from pathlib import Path

from captioner.text.normalize import WORD_START, bert_words
from captioner.text.wordpiece import CONTINUATION, encode_word

# BERT's WordPiece gives a longer word one [UNK] without looking at it (Hugging Face's default too).
MAX_INPUT_CHARS_PER_WORD = 100

# The project's special tokens, in id order, and BERT's names for them.
BERT_NAMES = {"<pad>": "[PAD]", "<sos>": "[CLS]", "<eos>": "[SEP]", "<unk>": "[UNK]"}

_BRACKETED = re.compile(r"\[(PAD|UNK|CLS|SEP|MASK|unused\d+)\]")


def read_vocab(path: str | os.PathLike) -> list[str]:
    """The pieces of a BERT ``vocab.txt``, in file order, without its bracketed special tokens.

    Trailing whitespace is dropped from each line (so CRLF files read the same), as Hugging Face
    does. ValueError naming the file and line for an empty line, a piece with inner whitespace or a
    repeated piece; a file with no pieces is an error too.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a BERT vocab.txt (not UTF-8 text: {err})") from None
    if lines[-1] == "":
        lines.pop()
    pieces, seen = [], set()
    for number, line in enumerate(lines, 1):
        piece = line.rstrip()
        if not piece or any(ch.isspace() for ch in piece):
            raise ValueError(f"{path}: line {number} is empty or holds whitespace ({line!r}); a BERT vocab.txt "
                             "has one piece per line")
        if piece in seen:
            raise ValueError(f"{path}: line {number} repeats the piece {piece!r}")
        seen.add(piece)
        if not _BRACKETED.fullmatch(piece):
            pieces.append(piece)
    if not pieces:
        raise ValueError(f"{path}: no pieces (only special tokens, or empty)")
    return pieces


def max_piece_chars(pieces: Iterable[str]) -> int:
    """The length of the longest piece without its ``##``: how far `encode` needs to look ahead."""
    return max((len(p.removeprefix(CONTINUATION)) for p in pieces), default=0)


def encode(word: str, vocab: Container[str], max_chars: int) -> list[str] | None:
    """The pieces of one word from `bert_words`, or None where BERT gives ``[UNK]``.

    >>> encode("cats", {"cat", "##s"}, 3)
    ['cat', '##s']
    >>> encode("dogs", {"cat", "##s"}, 3) is None
    True
    """
    if len(word) > MAX_INPUT_CHARS_PER_WORD:
        return None
    return encode_word(WORD_START + word, vocab, max_chars)


def cut_vocab(
    pieces: Sequence[str], texts: Iterable[str], n: int, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """The `n` pieces of `pieces` that the module docstring's rule keeps for `texts`, in their order.

    ``progress(done, None)`` is called every 10,000 texts. ValueError if the pieces that step 2 keeps
    are more than `n`.
    """
    vocab = set(pieces)
    longest = max_piece_chars(pieces)
    word_counts: Counter = Counter()
    for done, text in enumerate(texts, 1):
        word_counts.update(bert_words(text))
        if progress is not None and done % 10_000 == 0:
            progress(done, None)
    counts: Counter = Counter()
    needed = set()
    for word, count in word_counts.items():
        word_pieces = encode(word, vocab, longest)
        if word_pieces is None:
            continue
        for piece in word_pieces:
            counts[piece] += count
        spelling = [word[0], *(CONTINUATION + ch for ch in word[1:])]
        needed.update(spelling if all(p in vocab for p in spelling) else word_pieces)
    if len(needed) > n:
        raise ValueError(f"the training captions need {len(needed)} pieces to stay encodable (their single "
                         f"characters), more than the {n} pieces allowed (special tokens excluded)")
    line = {piece: i for i, piece in enumerate(pieces)}
    others = sorted((p for p in pieces if p not in needed), key=lambda p: (-counts[p], line[p]))
    return sorted(needed.union(others[: n - len(needed)]), key=line.__getitem__)


def to_vocab_text(tokens: Sequence[str]) -> str:
    """A BERT ``vocab.txt`` of the project's vocabulary `tokens` (specials first), its ids unchanged.

    The specials take BERT's names, so Hugging Face's tokenizer reading this file gives the ids this
    project gives.
    """
    return "".join(BERT_NAMES.get(token, token) + "\n" for token in tokens)


# Decoding: BERT's words have lost their spacing ("man ' s"), so it is guessed back (see `join_words`).
_NO_SPACE_BEFORE = frozenset(".,!?:;)]}%")
_NO_SPACE_AFTER = frozenset("([{$")
_INSIDE_WORDS = frozenset("'’-/")  # between two letters or digits: "man's", "t-shirt", "and/or"
_INSIDE_NUMBERS = frozenset(".,:")  # between two digits: "3.5", "1,000", "8:30"


def join_words(words: Sequence[str]) -> str:
    """BERT's words joined into text, guessing where the original had no space.

    A space goes between every two words except: before ``. , ! ? : ; ) ] } %``; after
    ``( [ { $``; on both sides of ``' ’ - /`` between two letters or digits, and of ``. , :``
    between two digits.

    >>> join_words(["a", "man", "'", "s", "t", "-", "shirt", ",", "3", ".", "5", "m", "(", "cafe", ")", "!"])
    "a man's t-shirt, 3.5 m (cafe)!"
    """

    def inside(i: int) -> bool:
        if not 0 < i < len(words) - 1:
            return False
        before, word, after = words[i - 1][-1], words[i], words[i + 1][0]
        if word in _INSIDE_WORDS:
            return before.isalnum() and after.isalnum()
        return word in _INSIDE_NUMBERS and before.isdigit() and after.isdigit()

    text = []
    for i, word in enumerate(words):
        if i and not (word in _NO_SPACE_BEFORE or words[i - 1] in _NO_SPACE_AFTER or inside(i) or inside(i - 1)):
            text.append(" ")
        text.append(word)
    return "".join(text)
