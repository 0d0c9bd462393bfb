"""WordPiece on a BERT vocabulary (captioner/text/bert_vocab.py, BertWordPieceTokenizer, bert_words).

The reference is Hugging Face `tokenizers`' ``BertWordPieceTokenizer(lowercase=True)`` on the same
vocab.txt; those tests skip where `tokenizers` is not installed (CI installs it). The real
bert-base-uncased vocabulary is not here (no network), so `bert_style_vocab` builds one in its
format: the bracketed specials and [unused*] slots, every character alone and with ``##``, whole
words, and word starts and ends as pieces, so that words split in many ways.
"""

import json
import random
import re
from pathlib import Path

import pytest

from captioner.text import bert_vocab
from captioner.text.normalize import bert_words, normalize_text
from captioner.text.tokenizers import (
    UNK_ID,
    BertWordPieceTokenizer,
    load_tokenizer,
    train_tokenizer,
)

COCO_STYLE = Path(__file__).parent / "data" / "coco_style_captions.txt"

# Edge cases: accents, punctuation, unknown words, long words, digits, CJK, control and format
# characters, other scripts, symbols.
EDGE_CAPTIONS = [
    "A café with crème brûlée on a naïve façade.",
    "A man's T-shirt, (3.5 m) and a dog's ball!",
    "¿Qué? «Quoted» — and “curly” quotes… ok.",
    "Xylophone zzzq qwxv with the unknownest words",
    "a" * 100 + " " + "b" * 101 + " " + "supercalifragilisticexpialidocious" * 3,
    "1,000 people at 8:30 p.m. on 2024-05-01, 3.14 and 42%",
    "日本語 text and 中文字 with kana ひらがな and hangul 한국어",
    "tab\there, new\nline, vertical\x0btab, soft\u00adhyphen, zero\u200dwidth, nul\x00, bad\ufffdchar",
    "ΟΔΟΣ and İstanbul, Straße and ﬁne, Ångström",
    "a dog 🐶 on a bed, 5°C, €5, $5, a+b=c, x^2, a_b, a|b, ~tilde `tick`",
    "   leading and trailing spaces   ",
    "",
    "#hashtag @user [bracket] {brace} <angle> and back\\slash",
]


def corpus() -> list[str]:
    return COCO_STYLE.read_text(encoding="utf-8").splitlines() + EDGE_CAPTIONS


def bert_style_vocab(seed: int = 0) -> list[str]:
    """A vocab.txt's lines in bert-base-uncased's format, from the test captions' words.

    Built from a plain regex over the lowercased captions, not from the code under test. Some
    letters (``q``, ``x``, ``z``) have no ``##`` piece, so words holding them inside become [UNK].
    """
    rng = random.Random(seed)
    text = COCO_STYLE.read_text(encoding="utf-8").lower()
    words = sorted(set(re.findall(r"[a-z]+", text)))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789") | set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
                   | set("°€¿«»—“”…ßσοδ日本語中文字ひらがな"))
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(20)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    lines += chars + ["##" + c for c in chars if c not in "qxz"]
    pieces = []
    for word in words:
        if rng.random() < 0.6:
            pieces.append(word)
        if len(word) >= 5:
            cut = rng.randint(2, len(word) - 2)
            pieces += [word[:cut], "##" + word[cut:], "##" + word[-3:]]
    lines += [p for p in dict.fromkeys(pieces) if p not in lines]
    return lines


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(bert_style_vocab()) + "\n", encoding="utf-8")
    return path


def tokens_of(tokenizer: BertWordPieceTokenizer, text: str) -> list[str]:
    """Our tokens, with <unk> under BERT's name."""
    return [bert_vocab.BERT_NAMES.get(t, t) for t in map(tokenizer.id_to_token, tokenizer.encode(text))]


def hf_tokenizer(vocab_path: Path):
    tokenizers = pytest.importorskip(
        "tokenizers", reason="Hugging Face tokenizers is not installed (pip install tokenizers; CI installs it)")
    return tokenizers.BertWordPieceTokenizer(str(vocab_path), lowercase=True)


# -- BERT's normalisation and pre-tokenization -------------------------------------------------------


def test_bert_words_on_hand_worked_cases():
    assert bert_words("A man's T-shirt, 3.5 m (Café)!") == [
        "a", "man", "'", "s", "t", "-", "shirt", ",", "3", ".", "5", "m", "(", "cafe", ")", "!"]
    # control and format characters go (a vertical tab too, joining its neighbours); tab and newline split
    assert bert_words("a\x0bb c\u00add\u200de\tf\ng\x00h") == ["ab", "cde", "f", "gh"]
    # ideographs stand alone, kana do not (and lose their voicing marks, which NFD makes Mn);
    # symbols outside ASCII stay inside the word
    assert bert_words("日本abc ひらがな 5°c") == ["日", "本", "abc", "ひらかな", "5°c"]
    # ASCII symbols are punctuation to BERT; non-ASCII punctuation (category P) too
    assert bert_words("$5+x ¿qué?") == ["$", "5", "+", "x", "¿", "que", "?"]
    # a final capital sigma lowercases to σ, as Hugging Face's character-wise lowercase gives
    assert bert_words("ΟΔΟΣ") == ["οδοσ"]


def test_the_project_normalisation_is_unchanged():
    """The other tokenizers keep their own rules: accents and inner punctuation stay."""
    assert normalize_text("A Café, man's") == ["a", "café,", "man's"]


def test_bert_words_match_hugging_face_pre_tokenization():
    tokenizers = pytest.importorskip(
        "tokenizers", reason="Hugging Face tokenizers is not installed (pip install tokenizers; CI installs it)")
    normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()

    def reference(text):
        return [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]

    for text in corpus():
        assert bert_words(text) == reference(text), text
    # random strings over a palette of awkward characters (assigned in every Unicode version in use)
    palette = "aZé É\u0301ü ñ  \t\n\r\x0b\x0c\x1c\x7f\x85\xa0\u2003\u3000\u200b\u200d\u00ad\ufeff\ufffd\x00" \
              ".,'-!?()$+^`|~_\"#¿«—…°€©日本ひ한İΣßﬁ🐶\ue000"
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(palette) for _ in range(rng.randint(0, 12)))
        assert bert_words(text) == reference(text), repr(text)


# -- encoding equals Hugging Face's ------------------------------------------------------------------


def test_full_vocabulary_encodes_as_hugging_face(vocab_file):
    hf = hf_tokenizer(vocab_file)
    ours = BertWordPieceTokenizer.from_vocab_file(vocab_file)
    assert ours.vocab_size == len(bert_style_vocab()) - 25 + 4  # [unused*] and [MASK] dropped
    n_unk = 0
    for text in corpus():
        expected = hf.encode(text, add_special_tokens=False).tokens
        assert tokens_of(ours, text) == expected, text
        n_unk += expected.count("[UNK]")
    assert n_unk >= 5  # the unknown and long words were exercised


@pytest.mark.parametrize("vocab_size", [300, 1000])
def test_cut_vocabulary_encodes_as_hugging_face_with_equal_ids(vocab_file, tmp_path, vocab_size):
    texts = corpus()
    ours = train_tokenizer("wordpiece", texts[:200], vocab_size, bert_vocab_file=vocab_file)
    assert ours.vocab_size == vocab_size
    cut_file = tmp_path / "cut_vocab.txt"
    cut_file.write_text(ours.to_vocab_text(), encoding="utf-8")
    hf = hf_tokenizer(cut_file)
    for text in texts:  # the held-out captions too
        encoding = hf.encode(text, add_special_tokens=False)
        assert ours.encode(text) == encoding.ids, text
        assert tokens_of(ours, text) == encoding.tokens
    # <sos> and <eos> are BERT's [CLS] and [SEP]: the same ids frame a sentence
    with_specials = hf.encode("a dog.").ids
    assert with_specials == [ours.token_to_id("<sos>"), *ours.encode("a dog."), ours.token_to_id("<eos>")]


def test_every_training_word_that_encodes_still_encodes_after_the_cut(vocab_file):
    texts = corpus()[:200]
    full = BertWordPieceTokenizer.from_vocab_file(vocab_file)
    cut = BertWordPieceTokenizer.from_vocab_file(vocab_file).train(texts, 200)
    words = {w for text in texts for w in bert_words(text)}
    assert len(words) > 200  # far more words than the cut keeps pieces
    for word in words:
        assert (UNK_ID in cut.encode(word)) == (UNK_ID in full.encode(word)), word


def test_long_words_are_unknown_from_101_characters(vocab_file):
    tok = BertWordPieceTokenizer.from_vocab_file(vocab_file)
    assert tok.encode("a" * 100) == [tok.token_to_id("a")] + [tok.token_to_id("##a")] * 99
    assert tok.encode("a" * 101) == [UNK_ID]


# -- the cut, worked by hand -------------------------------------------------------------------------


def write_vocab(path: Path, pieces: list[str]) -> Path:
    path.write_text("\n".join(["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]) + "\n")
    return path


def test_cut_keeps_the_single_characters_then_the_most_frequent_pieces(tmp_path):
    """The module docstring's example. Vocabulary a c t ##a ##t ##s cat ##at; "a cat", "cats at" encode
    as a | cat | cat ##s | a ##t: cat 2, a 2, ##s 1, ##t 1. Single characters spelling the words:
    a, c, ##a, ##t, ##s (t is never a first letter, so it is not needed). n = 6 leaves one place: cat
    (2) beats t and ##at (0). n = 7: t and ##at tie at 0, t is the earlier line."""
    vocab = write_vocab(tmp_path / "vocab.txt", ["a", "c", "t", "##a", "##t", "##s", "cat", "##at"])
    texts = ["a cat", "cats at"]

    def kept(n):
        return BertWordPieceTokenizer.from_vocab_file(vocab).train(texts, n + 4)._tokens[4:]

    assert kept(5) == ["a", "c", "##a", "##t", "##s"]
    assert kept(6) == ["a", "c", "##a", "##t", "##s", "cat"]
    assert kept(7) == ["a", "c", "t", "##a", "##t", "##s", "cat"]
    assert kept(8) == ["a", "c", "t", "##a", "##t", "##s", "cat", "##at"]
    with pytest.raises(ValueError, match="need 5 pieces .* more than the 4 pieces allowed"):
        kept(4)
    tok = BertWordPieceTokenizer.from_vocab_file(vocab).train(texts, 6 + 4)
    assert [tok.id_to_token(i) for i in tok.encode("cats at tat")] == ["cat", "##s", "a", "##t", "<unk>"]


def test_cut_counts_every_piece_each_time_it_is_encoded(tmp_path):
    """"tat" x 3 encodes as t ##at three times: ##at 3 beats cat 2 ("a cat", "cats"). Counting each
    distinct word once would give ##at 1 and keep cat. After the cut, "cat" is c ##at."""
    vocab = write_vocab(tmp_path / "vocab.txt", ["a", "c", "t", "##a", "##t", "##s", "cat", "##at"])
    tok = BertWordPieceTokenizer.from_vocab_file(vocab).train(["a cat", "cats at", "tat tat tat"], 7 + 4)
    assert tok._tokens[4:] == ["a", "c", "t", "##a", "##t", "##s", "##at"]
    assert [tok.id_to_token(i) for i in tok.encode("cats")] == ["c", "##at", "##s"]


def test_cut_keeps_a_word_s_own_pieces_where_a_character_piece_is_missing(tmp_path):
    """"cats" encodes as cat ##s, but its spelling c ##a ##t has no ##t in this vocabulary: cat and ##s
    are kept instead, so that "cats" still encodes. "a" needs a. Nothing else fits in n = 3."""
    vocab = write_vocab(tmp_path / "vocab.txt", ["a", "c", "##a", "##s", "cat", "cab"])
    tok = BertWordPieceTokenizer.from_vocab_file(vocab).train(["a cats"], 3 + 4)
    assert tok._tokens[4:] == ["a", "##s", "cat"]
    assert [tok.id_to_token(i) for i in tok.encode("cats")] == ["cat", "##s"]
    with pytest.raises(ValueError, match="need 3 pieces"):
        BertWordPieceTokenizer.from_vocab_file(vocab).train(["a cats"], 2 + 4)


# -- decoding, the file, the script ------------------------------------------------------------------


@pytest.mark.parametrize("text, decoded", [
    ("A man's T-shirt, 3.5 m (Café)!", "a man's t-shirt, 3.5 m (cafe)!"),
    ("It doesn't fit: 1,000 at 8:30 p.m.", "it doesn't fit: 1,000 at 8:30 p. m."),
    ("A red cube, a ball.", "a red cube, a ball."),
    ("costs $5 (or 50%) and/or more", "costs $5 (or 50%) and/or more"),
])
def test_decoding_guesses_the_spaces_back(text, decoded):
    pieces = sorted({w for w in bert_words(text)} | {"##" + c for w in bert_words(text) for c in w})
    tok = BertWordPieceTokenizer(pieces)
    assert tok.decode(tok.encode(text)) == decoded


def test_saved_tokenizer_reloads_identically(vocab_file, tmp_path):
    tok = BertWordPieceTokenizer.from_vocab_file(vocab_file).train(corpus()[:100], 400)
    tok.save(tmp_path / "tokenizer.txt")
    assert (tmp_path / "tokenizer.txt").read_text().startswith("captioner-tokenizer v2 bert-wordpiece\n")
    again = load_tokenizer(tmp_path / "tokenizer.txt")
    assert type(again) is BertWordPieceTokenizer and again.to_text() == tok.to_text()
    for text in corpus():
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("lines, message", [
    (["[PAD]", "dog", "", "cat"], "line 3 is empty"),
    (["dog", "big dog"], "line 2 is empty or holds whitespace"),
    (["dog", "##s", "dog"], "line 3 repeats the piece 'dog'"),
    (["[PAD]", "[UNK]", "[unused3]"], "no pieces"),
])
def test_bad_vocab_files_are_errors_naming_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{message}"):
        bert_vocab.read_vocab(path)


def test_crlf_vocab_reads_like_lf(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"[PAD]\r\ndog\r\n##s\r\n")
    assert bert_vocab.read_vocab(tmp_path / "crlf.txt") == ["dog", "##s"]


def test_bert_vocab_needs_the_wordpiece_kind(vocab_file):
    with pytest.raises(ValueError, match="is for the wordpiece tokenizer, not bpe"):
        train_tokenizer("bpe", ["a dog"], 100, bert_vocab_file=vocab_file)


def test_process_coco_cuts_the_bert_vocabulary_and_reruns_up_to_date(vocab_file, tmp_path, capsys):
    import process_coco

    def run(*argv):
        return process_coco.main([str(a) for a in (*argv, "--data-dir", tmp_path / "data", "--n-train", 8,
                                                   "--n-val", 3, "--n-test", 2, "--workers", 1, "--no-progress")])

    args = ["--tokenizer", "wordpiece", "--bert-vocab", vocab_file, "--vocab-size", 150]
    meta = run(*args)
    assert meta["tokenizer"] == "bert-wordpiece" and meta["vocab_size"] == 150
    processed = tmp_path / "data" / "processed"
    tokenizer = load_tokenizer(processed / "tokenizer.txt")
    record = json.loads((processed / "train.json").read_text())
    n_known = 0
    for captions, tokens in zip(record["captions"], record["tokens"]):
        for caption, ids in zip(captions, tokens):
            assert ids == tokenizer.encode(caption)
            # shapes captions are ASCII words with "," and "." after them: decoding gives them back, where
            # no word is [UNK] (this vocabulary has no ##q, so "square" is unknown)
            if UNK_ID not in ids:
                assert tokenizer.decode(ids) == " ".join(normalize_text(caption))
                n_known += 1
    assert n_known >= 10
    assert "cut from" in capsys.readouterr().out

    run(*args)
    assert "tokenizer: up to date (bert-wordpiece, 150 tokens)" in capsys.readouterr().out
    vocab_file.write_text(vocab_file.read_text() + "zebra\n")  # another vocabulary: cut again
    run(*args)
    out = capsys.readouterr().out
    assert "tokenizer: bert-wordpiece, 150 tokens, cut from" in out and "captions tokenized" in out

    with pytest.raises(SystemExit):
        process_coco.parse_args(["--bert-vocab", str(vocab_file)])  # the default tokenizer is bpe
    assert "--bert-vocab is for --tokenizer wordpiece, not bpe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        process_coco.parse_args(["--tokenizer", "wordpiece", "--bert-vocab", str(tmp_path / "missing.txt")])
    assert "missing.txt: no such file" in capsys.readouterr().err
