"""Subword tokenizers for captions: BPE and WordPiece with ids, a word cache, and their file format.

BPE and WordPiece see text through ``captioner/text/normalize.py`` (lowercase, accents kept, words
cut into pre-tokens that remember whether a space came before them, so that decoding re-attaches
punctuation: ``man's``, ``t-shirt``, ``3.5``, ``cube.``); WordPiece on a BERT vocabulary
(`BertWordPieceTokenizer`) sees it as BERT does. All share four special tokens with fixed ids::

    <pad> = 0   <sos> = 1   <eos> = 2   <unk> = 3

>>> tok = BPETokenizer().train(["a red cube.", "a blue cube!"], vocab_size=27)
>>> [tok.id_to_token(i) for i in tok.encode("A red cube!")]
['▁a', '▁red', '▁cube', '!']
>>> tok.decode(tok.encode("A red cube!"))
'a red cube!'

The algorithms themselves live in `captioner/text/bpe.py` and `captioner/text/wordpiece.py`; this
module adds ids, a per-word cache and saving/loading.

File format (UTF-8 text, one item per line)::

    captioner-tokenizer v2 bpe        header: magic, version, kind ("bpe", "wordpiece", "bert-wordpiece")
    tokens 21                         the vocabulary, in id order, specials first
    <pad>
    ...
    merges 6                          BPE only: the merges in the order learned,
    ▁ c                               the two symbols separated by a space
    ...

Tokens never contain whitespace (normalisation splits on it), so a line is
always exactly one token. Files of an older version cut text differently and are refused.
"""

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from operator import index
from pathlib import Path

from captioner.infra.fileio import atomic_write_bytes
from captioner.text import bert_vocab, bpe, wordpiece
from captioner.text.normalize import bert_words, count_pretokens, count_words, normalize_text, pretokenize

PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


SPECIAL_TOKENS = ["<pad>", "<sos>", "<eos>", "<unk>"]


_SPECIALS = frozenset(SPECIAL_TOKENS)


MAGIC = "captioner-tokenizer"


VERSION = "v2"


# Distinct chunks cached per tokenizer; captions use a few tens of thousands, so this only
# bounds memory on adversarial input.
_CACHE_LIMIT = 200_000


class _SubwordTokenizer:
    """What BPE and WordPiece share: the vocabulary, ids, the word cache, encode/decode, save/load.

    Subclasses provide `kind`, `_encode_word(word) -> list[int]`, `_join(tokens) -> str`
    and the training itself.
    """

    kind = ""

    def __init__(self, tokens: Sequence[str] = ()):
        """`tokens` is the vocabulary without the four specials, which always come first."""
        self._set_vocab(tokens)

    def _set_vocab(self, tokens: Sequence[str]) -> None:
        self._tokens = SPECIAL_TOKENS + list(tokens)
        self._ids = {token: i for i, token in enumerate(self._tokens)}
        if len(self._ids) != len(self._tokens):
            duplicates = sorted(t for t, n in Counter(self._tokens).items() if n > 1)
            raise ValueError(f"duplicate tokens in vocabulary: {duplicates[:5]}")
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids, the four specials included."""
        return len(self._tokens)

    def id_to_token(self, i: int) -> str:
        """The token string of id `i` (any integer type, e.g. a numpy or 0-d torch integer); IndexError if out of range."""
        i = index(i)
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"token id {i} is outside the vocabulary of {len(self._tokens)}")
        return self._tokens[i]

    def token_to_id(self, s: str) -> int:
        """The id of token string `s`, e.g. ``token_to_id("<eos>") == EOS_ID``; KeyError if unknown."""
        try:
            return self._ids[s]
        except KeyError:
            raise KeyError(f"token {s!r} is not in the vocabulary") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of the normalised `text`; no special tokens are added.

        Each distinct whitespace-separated chunk (``"Dog,"``) is normalised, cut into pre-tokens
        (``▁dog`` ``,``) and encoded once, then served from a cache: chunk by chunk gives the
        same words as the whole text.
        """
        ids: list[int] = []
        cache = self._cache
        for chunk in text.split():
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = [
                    i for word in normalize_text(chunk) for piece in pretokenize(word) for i in self._encode_word(piece)
                ]
                if len(cache) < _CACHE_LIMIT:
                    cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_word(self, word: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: special tokens are skipped (``<unk>`` too), words are joined by single spaces.

        For any text made of characters seen in training,
        ``decode(encode(text)) == " ".join(normalize_text(text))``: the lowercased text, its
        punctuation where it was (``"A man's T-shirt." -> "a man's t-shirt."``).
        """
        tokens = (self.id_to_token(i) for i in ids)
        return self._join([token for token in tokens if token not in _SPECIALS])

    def _join(self, tokens: list[str]) -> str:
        raise NotImplementedError

    def _file_sections(self) -> list[tuple[str, list[str]]]:
        return [("tokens", self._tokens)]

    def to_text(self) -> str:
        """The tokenizer as the readable text `save` writes (see the module docstring)."""
        lines = [f"{MAGIC} {VERSION} {self.kind}"]
        for name, items in self._file_sections():
            lines.append(f"{name} {len(items)}")
            lines.extend(items)
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_text()` to `path` atomically (temporary file, fsync, rename)."""
        atomic_write_bytes(path, self.to_text().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a tokenizer saved by `save`; ValueError if the file holds another kind."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{path}: holds a {tokenizer.kind} tokenizer, not {cls.kind}")
        return tokenizer


class BPETokenizer(_SubwordTokenizer):
    """Character-level BPE with a word-start marker ``▁`` (see `captioner.text.bpe`).

    A character never seen in training becomes ``<unk>`` on its own; the rest of its
    word is still encoded, and the ``▁`` markers keep word boundaries intact.
    """

    kind = "bpe"

    def __init__(self, tokens: Sequence[str] = (), merges: Sequence[bpe.Pair] = ()):
        """`tokens`: the vocabulary without specials; `merges`: the learned pairs, in order."""
        super().__init__(tokens)
        self._set_merges(merges)

    def _set_merges(self, merges: Sequence[bpe.Pair]) -> None:
        for pair in merges:
            if any(symbol not in self._ids for symbol in (*pair, pair[0] + pair[1])):
                raise ValueError(f"merge {pair[0]!r} + {pair[1]!r} uses or makes a token missing from the vocabulary")
        self._merges = [tuple(pair) for pair in merges]
        self._ranks = {pair: rank for rank, pair in enumerate(self._merges)}

    @property
    def merges(self) -> list[bpe.Pair]:
        """The learned merges in order, e.g. ``[("e", "s"), ("es", "t"), ...]``."""
        return list(self._merges)

    def train(
        self, texts: Iterable[str], vocab_size: int, progress: Callable[[int, int], None] | None = None
    ) -> "BPETokenizer":
        """Learn merges from `texts` until the vocabulary (specials included) has `vocab_size` tokens.

        ``progress(done, total)`` is called after each merge. Returns self.
        """
        pretokens = count_pretokens(count_words(texts))
        alphabet, merges = bpe.train_bpe(pretokens, vocab_size - len(SPECIAL_TOKENS), progress)
        # Two merges could in principle spell the same token; the vocabulary keeps it once.
        self._set_vocab(list(dict.fromkeys(alphabet + [a + b for a, b in merges])))
        self._set_merges(merges)
        return self

    def _encode_word(self, word: str) -> list[int]:
        ids = self._ids
        return [ids.get(token, UNK_ID) for token in bpe.encode_word(word, self._ranks)]

    def _join(self, tokens: list[str]) -> str:
        return bpe.join_tokens(tokens)

    def _file_sections(self) -> list[tuple[str, list[str]]]:
        return super()._file_sections() + [("merges", [f"{a} {b}" for a, b in self._merges])]


class WordPieceTokenizer(_SubwordTokenizer):
    """WordPiece with ``##`` continuation pieces (see `captioner.text.wordpiece`).

    A pre-token that cannot be cut into vocabulary pieces, e.g. one with a character
    never seen in training, becomes a single ``<unk>``: ``"dog🐶"`` gives ``dog <unk>``.
    """

    kind = "wordpiece"

    def _set_vocab(self, tokens: Sequence[str]) -> None:
        super()._set_vocab(tokens)
        self._max_piece_chars = max(
            (len(t.removeprefix(wordpiece.CONTINUATION)) for t in self._tokens[len(SPECIAL_TOKENS) :]), default=0
        )

    def train(
        self, texts: Iterable[str], vocab_size: int, progress: Callable[[int, int], None] | None = None
    ) -> "WordPieceTokenizer":
        """Learn pieces from `texts` until the vocabulary (specials included) has `vocab_size` tokens.

        ``progress(done, total)`` is called after each merge. Returns self.
        """
        pretokens = count_pretokens(count_words(texts))
        self._set_vocab(wordpiece.train_wordpiece(pretokens, vocab_size - len(SPECIAL_TOKENS), progress))
        return self

    def _encode_word(self, word: str) -> list[int]:
        pieces = wordpiece.encode_word(word, self._ids, self._max_piece_chars)
        return [UNK_ID] if pieces is None else [self._ids[piece] for piece in pieces]

    def _join(self, tokens: list[str]) -> str:
        return wordpiece.join_tokens(tokens)


class BertWordPieceTokenizer(WordPieceTokenizer):
    """WordPiece on bert-base-uncased's vocabulary, cut to the captions (see `captioner.text.bert_vocab`).

    Encoding gives the pieces Hugging Face's ``BertWordPieceTokenizer(lowercase=True)`` gives with the
    same vocabulary (`to_vocab_text` writes it; its specials are only matched as ids here, never as
    text: a caption holding ``[SEP]`` spells it out). Text is cut the BERT way
    (`captioner.text.normalize.bert_words`): accents stripped, every punctuation mark a word of its
    own. So, unlike the other kinds, decoding cannot tell ``man's`` from ``man ' s``: it guesses the
    spaces back (`bert_vocab.join_words`), and gives ``cafe``, not ``café``.

    >>> tok = BertWordPieceTokenizer(["a", "man", "##s", "'", "s", "t", "-", "shirt", "."])
    >>> [tok.id_to_token(i) for i in tok.encode("A man's T-shirt.")]
    ['a', 'man', "'", 's', 't', '-', 'shirt', '.']
    >>> tok.decode(tok.encode("A man's T-shirt."))
    "a man's t-shirt."
    """

    kind = "bert-wordpiece"

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> "BertWordPieceTokenizer":
        """The whole vocabulary of a BERT ``vocab.txt`` (`bert_vocab.read_vocab`); `train` cuts it."""
        return cls(bert_vocab.read_vocab(path))

    def train(
        self, texts: Iterable[str], vocab_size: int, progress: Callable[[int, int], None] | None = None
    ) -> "BertWordPieceTokenizer":
        """Keep the `vocab_size` tokens (specials included) that `bert_vocab.cut_vocab` picks for `texts`.

        Returns self.
        """
        pieces = self._tokens[len(SPECIAL_TOKENS) :]
        self._set_vocab(bert_vocab.cut_vocab(pieces, texts, vocab_size - len(SPECIAL_TOKENS), progress))
        return self

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, cut into words by `bert_words`; no special tokens are added."""
        ids: list[int] = []
        cache = self._cache
        for word in bert_words(text):
            word_ids = cache.get(word)
            if word_ids is None:
                pieces = bert_vocab.encode(word, self._ids, self._max_piece_chars)
                word_ids = [UNK_ID] if pieces is None else [self._ids[piece] for piece in pieces]
                if len(cache) < _CACHE_LIMIT:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _join(self, tokens: list[str]) -> str:
        text = wordpiece.join_tokens(tokens)
        return bert_vocab.join_words(text.split(" ")) if text else ""

    def to_vocab_text(self) -> str:
        """The vocabulary as a BERT ``vocab.txt``, ids unchanged: ``[PAD] [CLS] [SEP] [UNK]``, then the pieces."""
        return bert_vocab.to_vocab_text(self._tokens)


_KINDS: dict[str, type[_SubwordTokenizer]] = {
    "bpe": BPETokenizer, "wordpiece": WordPieceTokenizer, "bert-wordpiece": BertWordPieceTokenizer}


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    vocab_size: int,
    progress: Callable[[int, int], None] | None = None,
    bert_vocab_file: str | os.PathLike | None = None,
) -> BPETokenizer | WordPieceTokenizer:
    """Train a new tokenizer of `kind` ("bpe" or "wordpiece") on `texts`.

    With `bert_vocab_file` (kind "wordpiece" only) the vocabulary is not learned but cut from that
    BERT ``vocab.txt``: a `BertWordPieceTokenizer`.
    """
    if kind not in ("bpe", "wordpiece"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of ['bpe', 'wordpiece']")
    if bert_vocab_file is not None:
        if kind != "wordpiece":
            raise ValueError(f"a BERT vocabulary ({bert_vocab_file}) is for the wordpiece tokenizer, not {kind}")
        return BertWordPieceTokenizer.from_vocab_file(bert_vocab_file).train(texts, vocab_size, progress)
    return _KINDS[kind]().train(texts, vocab_size, progress)


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer | WordPieceTokenizer:
    """Read a tokenizer file written by ``save``, whichever its kind.

    Raises ValueError naming the file if it is not a tokenizer file, has another
    version or kind, or is truncated or inconsistent.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a tokenizer file (not UTF-8 text: {err})") from None
    return parse_tokenizer(text, source=path)


def parse_tokenizer(text: str, source: str | os.PathLike = "<text>") -> BPETokenizer | WordPieceTokenizer:
    """A tokenizer from the text `to_text` gives (e.g. as stored in a checkpoint).

    Errors are ValueErrors that start with `source`, the file or place the text came from.
    """
    try:
        return _parse(text)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _parse(text: str) -> BPETokenizer | WordPieceTokenizer:
    lines = text.split("\n")
    header = lines[0].split(" ")
    if len(header) != 3 or header[0] != MAGIC:
        raise ValueError(f"not a tokenizer file (the first line should start with {MAGIC!r})")
    _, version, kind = header
    if version != VERSION:
        if version == "v1":  # punctuation split off, accents dropped, WordPiece scored without frequency
            raise ValueError(
                f"made by an older version ({version}; this code reads {VERSION}); rerun process_coco.py "
                "(and retrain the models that use it)"
            )
        raise ValueError(f"unsupported tokenizer file version {version!r} (this code reads {VERSION!r})")
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_KINDS)}")
    if lines[-1] != "":
        raise ValueError("truncated (the last line is incomplete)")
    lines.pop()
    pos = 1
    tokens, pos = _read_section(lines, pos, "tokens")
    if tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
        raise ValueError(f"the vocabulary must start with the special tokens {SPECIAL_TOKENS}")
    if any(not token or any(ch.isspace() for ch in token) for token in tokens):
        raise ValueError("a token is empty or contains whitespace")
    if kind == "bpe":
        merge_lines, pos = _read_section(lines, pos, "merges")
        merges = [tuple(line.split(" ")) for line in merge_lines]
        if any(len(merge) != 2 or not all(merge) for merge in merges):
            raise ValueError("a merge line is not two tokens separated by one space")
        tokenizer = BPETokenizer(tokens[len(SPECIAL_TOKENS) :], merges)
    else:
        tokenizer = _KINDS[kind](tokens[len(SPECIAL_TOKENS) :])
    if pos != len(lines):
        raise ValueError(f"unexpected content at line {pos + 1}")
    return tokenizer


def _read_section(lines: list[str], pos: int, name: str) -> tuple[list[str], int]:
    """Read ``"<name> <count>"`` at line `pos` and the `count` lines after it."""
    head = lines[pos].split(" ") if pos < len(lines) else []
    if len(head) != 2 or head[0] != name or not head[1].isdecimal():
        raise ValueError(f"truncated or malformed: expected '{name} <count>' at line {pos + 1}")
    count = int(head[1])
    items = lines[pos + 1 : pos + 1 + count]
    if len(items) != count:
        raise ValueError(f"truncated: the {name} section announces {count} lines but has {len(items)}")
    return items, pos + 1 + count
