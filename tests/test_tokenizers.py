"""Tests of the text normalisation, the BPE and WordPiece tokenizers and their file format."""

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from captioner.text import bpe, wordpiece
from captioner.text.normalize import WORD_START, count_pretokens, count_words, normalize_text, pretokenize
from captioner.text.tokenizers import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    BPETokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    parse_tokenizer,
    train_tokenizer,
)

COCO_STYLE = Path(__file__).parent / "data" / "coco_style_captions.txt"

# The classic BPE example (Sennrich et al. 2016): word frequencies low 5, lower 2, newest 6, widest 3.
SENNRICH = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3

CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs play with a red frisbee in the park!",
    "A café with tables, chairs and an umbrella.",
    "The giraffe is standing next to a tall tree.",
    "A plate of food: rice, beans & salad.",
    "Several people are walking down the street at night.",
    "A cat sleeping on a laptop's keyboard.",
    "Three zebras grazing in a grassy field (near water).",
]


def tokenizer_kinds():
    return pytest.mark.parametrize("kind", ["bpe", "wordpiece"])


def random_corpus(seed: int, n_words: int = 60) -> list[str]:
    """Pre-tokens over a 3-letter alphabet, most starting a word (``▁``), some glued: many ties and
    repeated letters ("aaa"), the hard cases for merging."""
    rng = random.Random(seed)
    return [
        WORD_START * (rng.random() < 0.8) + "".join(rng.choice("abc") for _ in range(rng.randint(1, 6)))
        for _ in range(n_words)
    ]


# -- normalisation ---------------------------------------------------------------------------------


def test_normalize_text_lowercases_keeps_accents_and_splits_on_whitespace_only():
    assert normalize_text("A Café, by the  SEA!") == ["a", "café,", "by", "the", "sea!"]
    assert normalize_text("dog's\tbowl\n") == ["dog's", "bowl"]
    assert normalize_text("Cafe\u0301 Ñandú ﬁsh") == ["café", "ñandú", "ﬁsh"]  # composed (NFC), ligature kept
    assert normalize_text("a\u00a0b\u2581c") == ["a", "b", "c"]  # no-break space; the marker reads as a space
    assert normalize_text("") == [] and normalize_text(" \n ") == []


def test_pretokenize_keeps_inner_punctuation_and_marks_the_word_start():
    cases = {
        "man's": ["▁man's"], "t-shirt.": ["▁t-shirt", "."], "3.5": ["▁3.5"], "8:30": ["▁8:30"],
        "1,000,": ["▁1,000", ","], "p.m.!!": ["▁p.m", ".", "!", "!"], "(café)": ["▁(", "café", ")"],
        "dogs'": ["▁dogs", "'"], "$4.99": ["▁$", "4.99"], "--": ["▁-", "-"], "a_b": ["▁a", "_", "b"],
        "x🐶猫": ["▁x", "🐶", "猫"],
    }  # fmt: skip
    for word, expected in cases.items():
        assert pretokenize(word) == expected, word
    assert count_pretokens({"cube.": 2, "cube": 1, "(cube)": 1}) == Counter(
        {"▁cube": 3, ".": 2, "▁(": 1, "cube": 1, ")": 1}
    )


def test_pretokens_spell_the_word_back():
    rng = random.Random(3)
    alphabet = "ab1 '’-.,:/!()$é🐶\u0301_"
    for _ in range(2000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))).replace(" ", "") or "a"
        pieces = pretokenize(word)
        assert pieces[0].startswith(WORD_START) and not any(WORD_START in p for p in pieces[1:])
        assert "".join(pieces) == WORD_START + word, repr(word)


def test_ascii_fast_path_follows_the_unicode_rules():
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 30)))
        # A leading non-ASCII word forces the general path; it must agree with the ASCII path.
        assert normalize_text("é " + text) == ["é"] + normalize_text(text), repr(text)


def test_normalisation_is_idempotent_so_decoded_text_encodes_the_same():
    rng = random.Random(1)
    for cp in rng.sample(range(0x110000), 20_000):
        words = normalize_text(f"Ab{chr(cp)}cd {chr(cp)}")
        assert normalize_text(" ".join(words)) == words, hex(cp)


def test_chunks_normalise_like_the_whole_text():
    # encode and count_words rely on this to normalise each whitespace-separated chunk once.
    rng = random.Random(2)
    # Letters, punctuation, whitespace, no-break space, a diaeresis whose NFKD starts with a space, a lone
    # accent, capital sigma (lowercased by context), dotted I, a ligature, NUL, zero-width space, the
    # word-start marker, and random BMP.
    alphabet = "aZé ,.\t\n\u00a0\u00a8\u0301\u03a3\u0130\ufb01\x00\u200b'\u2581"
    alphabet += "".join(chr(rng.randrange(0x3000)) for _ in range(20))
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert normalize_text(text) == [w for chunk in text.split() for w in normalize_text(chunk)], repr(text)
    texts = ["".join(rng.choice(alphabet) for _ in range(30)) for _ in range(200)]
    assert count_words(texts) == Counter(w for text in texts for w in normalize_text(text))


# -- BPE -------------------------------------------------------------------------------------------


def test_bpe_learns_the_hand_computed_merges():
    # Pre-tokens ▁low 5, ▁lower 2, ▁newest 6, ▁widest 3. Pair counts at the start: (e,s) 9, (s,t) 9,
    # (w,e) 8, (▁,l) 7, (l,o) 7, (o,w) 7, (▁,n) 6, ...; ties go to the smallest pair, so e+s first; then
    # es+t (9); l+o, lo+w and ▁+low (7: "l" < "o" < "▁"); then (e,w), (n,e), (w,est) and (▁,n) tie at 6
    # -> e+w; then (ew,est) and (n,ew) -> ew+est; then n+ewest; and finally ▁+newest.
    tok = BPETokenizer().train([" ".join(SENNRICH)], vocab_size=4 + 11 + 9)
    assert tok.merges == [
        ("e", "s"),
        ("es", "t"),
        ("l", "o"),
        ("lo", "w"),
        ("▁", "low"),
        ("e", "w"),
        ("ew", "est"),
        ("n", "ewest"),
        ("▁", "newest"),
    ]
    vocab = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert vocab == SPECIAL_TOKENS + [*"deilnorstw▁"] + [
        "es", "est", "lo", "low", "▁low", "ew", "ewest", "newest", "▁newest",
    ]  # fmt: skip
    assert [tok.id_to_token(i) for i in tok.encode("lowest newer")] == [
        "▁low", "est", "▁", "n", "ew", "e", "r",
    ]  # fmt: skip


def test_bpe_incremental_training_matches_naive_recounting():
    for seed in range(5):
        word_counts = dict.fromkeys(random_corpus(seed), 0)
        for word in random_corpus(seed):
            word_counts[word] += 1
        alphabet, merges = bpe.train_bpe(word_counts, 40)
        # The reference recounts every pair of every word before each merge.
        words = {word: bpe.spell(word) for word in word_counts}
        expected = []
        for _ in range(40 - len(alphabet)):
            stats = {}
            for word, freq in word_counts.items():
                bpe.get_stats(words[word], stats, freq)
            if not stats:
                break
            best = min(stats, key=lambda p: (-stats[p], p))
            expected.append(best)
            words = {word: bpe.merge(symbols, best, best[0] + best[1]) for word, symbols in words.items()}
        assert alphabet == ["a", "b", "c", WORD_START]
        assert merges == expected


def test_bpe_stops_when_no_pair_is_left():
    tok = BPETokenizer().train(["ab ab"], vocab_size=100)
    assert tok.merges == [("a", "b"), ("▁", "ab")]
    assert tok.vocab_size == 4 + 3 + 2


def test_bpe_unseen_characters_become_unk_and_keep_word_boundaries():
    tok = BPETokenizer().train(CAPTIONS, vocab_size=80)
    ids = tok.encode("a quiz jeep")  # q and j never occur in CAPTIONS
    assert ids.count(UNK_ID) == 2
    assert tok.decode(ids) == "a uiz eep"


# -- WordPiece -------------------------------------------------------------------------------------


def test_wordpiece_learns_the_hand_computed_pieces():
    # Pre-tokens ▁ab x2, ▁ac x3, ▁bc x1. Symbol counts: a 5, ##b 2, ##c 4, b 1; N = 12 symbols.
    # Gains c(ab) log(c(ab) N / (c(a) c(b))): (a,##b) 2 log 2.4 = 1.75, (a,##c) 3 log 1.8 = 1.76,
    # (b,##c) log 3 = 1.10 -> "ac", the most frequent pair (the ratio alone would take the rarest, "bc").
    # Now N = 9, a 2, ##c 1: (a,##b) 2 log 4.5 = 3.01 beats (b,##c) log 9 = 2.20 -> "ab"; then "bc".
    tok = WordPieceTokenizer().train(["ab ab ac ac ac bc"], vocab_size=4 + 6 + 3)
    vocab = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert vocab == SPECIAL_TOKENS + ["a", "b", "c", "##a", "##b", "##c", "ac", "ab", "bc"]
    pieces = lambda text: [tok.id_to_token(i) for i in tok.encode(text)]  # noqa: E731
    assert pieces("abc cab") == ["ab", "##c", "c", "##a", "##b"]  # longest match first, left to right
    assert pieces("ab xa bc") == ["ab", "<unk>", "bc"]  # x was never seen: its whole pre-token is <unk>
    assert pieces("ab(x) bc") == ["ab", "<unk>", "<unk>", "<unk>", "bc"]  # "(" "x" ")": one <unk> each


def test_likelihood_gain_is_the_change_in_unigram_log_likelihood():
    # Merge (a, b) in the symbol sequence "a b a b a c" by hand and compare the exact change in
    # log-likelihood under a unigram model with the approximation.
    def log_likelihood(symbols):
        counts = Counter(symbols)
        return sum(c * math.log(c / len(symbols)) for c in counts.values())

    before = ["a", "b", "a", "b", "a", "c"] * 50
    after = ["ab", "ab", "a", "c"] * 50
    exact = log_likelihood(after) - log_likelihood(before)
    gain = wordpiece.likelihood_gain(100, 150, 100, 300)
    assert gain == pytest.approx(100 * math.log(2)) and gain > 0
    # The approximation holds N and the other counts fixed; it gets the sign and size roughly right.
    assert 0.3 * exact < gain < 3 * exact
    assert wordpiece.likelihood_gain(1, 1, 1, 300) < wordpiece.likelihood_gain(100, 150, 100, 300)


def test_wordpiece_incremental_training_matches_naive_rescoring():
    for seed in range(5):
        word_counts = dict.fromkeys(random_corpus(seed), 0)
        for word in random_corpus(seed):
            word_counts[word] += 1
        pieces = wordpiece.train_wordpiece(word_counts, 40)
        # The reference recounts every symbol and pair before each merge.
        words = {word: wordpiece.spell(word) for word in word_counts}
        expected = ["a", "b", "c", "##a", "##b", "##c"]
        while len(expected) < 40:
            symbols, pairs = {}, {}
            for word, freq in word_counts.items():
                bpe.get_stats(words[word], pairs, freq)
                for symbol in words[word]:
                    symbols[symbol] = symbols.get(symbol, 0) + freq
            if not pairs:
                break
            n = sum(symbols.values())
            best = min(pairs, key=lambda p: (-wordpiece.likelihood_gain(pairs[p], symbols[p[0]], symbols[p[1]], n), p))
            new = wordpiece.glue(best)
            if new not in expected:
                expected.append(new)
            words = {word: bpe.merge(s, best, new) for word, s in words.items()}
        assert pieces == expected


def test_wordpiece_builds_frequent_pieces_first():
    # With the pair frequency in the score, the first pieces learned are common ("the", "##ing", "with");
    # the ratio alone would first assemble rare numbers and names that occur once or twice.
    captions = COCO_STYLE.read_text(encoding="utf-8").splitlines()
    pretokens = count_pretokens(count_words(captions))
    pieces = wordpiece.train_wordpiece(pretokens, 300)
    first = [p for p in pieces if len(p.removeprefix("##")) > 1][:20]
    occurrences = {p: sum(n * t.count(p.removeprefix("##")) for t, n in pretokens.items()) for p in first}
    assert min(occurrences.values()) >= 20, occurrences


def test_wordpiece_greedy_encoding():
    vocab = {"un", "unf", "##old", "##o", "##ld", "##ing"}
    assert wordpiece.encode_word("▁unfolding", vocab, 3) == ["unf", "##old", "##ing"]
    assert wordpiece.encode_word("▁unfold", vocab, 3) == ["unf", "##old"]
    assert wordpiece.encode_word("olding", vocab, 3) == ["##old", "##ing"]  # glued: continuation pieces only
    assert wordpiece.encode_word("▁unx", vocab, 3) is None


# -- both kinds ------------------------------------------------------------------------------------


@tokenizer_kinds()
def test_round_trip_gives_the_normalised_text(kind):
    tok = train_tokenizer(kind, CAPTIONS, vocab_size=120)
    unseen_words = "A giraffe and three dogs riding a tree, near the café!"  # new words, seen characters
    for text in CAPTIONS + [unseen_words]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids) and UNK_ID not in ids
        assert tok.decode(ids) == " ".join(normalize_text(text))


@tokenizer_kinds()
def test_subwords_shorten_frequent_words(kind):
    small = train_tokenizer(kind, CAPTIONS, vocab_size=80)
    large = train_tokenizer(kind, CAPTIONS, vocab_size=200)
    text = " ".join(CAPTIONS)
    assert len(large.encode(text)) < len(small.encode(text)) < len("".join(normalize_text(text)))


@tokenizer_kinds()
def test_special_tokens_have_fixed_ids_and_are_skipped_by_decode(kind):
    tok = train_tokenizer(kind, CAPTIONS, vocab_size=100)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, SOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    ids = tok.encode("a red frisbee")
    assert tok.decode([SOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "a red frisbee"
    with pytest.raises(IndexError, match="outside the vocabulary"):
        tok.id_to_token(tok.vocab_size)
    with pytest.raises(IndexError):
        tok.decode([-1])
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_to_id("<mask>")


@tokenizer_kinds()
def test_unseen_characters_never_crash(kind):
    tok = train_tokenizer(kind, CAPTIONS, vocab_size=100)
    for text in ["日本 の 犬", "emoji 🐶🐱 dog", "\x00q\x01", "j" * 500, "quiz"]:
        ids = tok.encode(text)
        assert ids and UNK_ID in ids
        tok.decode(ids)


@tokenizer_kinds()
def test_training_is_deterministic_and_ignores_text_order(kind):
    shuffled = CAPTIONS[::-1]
    first = train_tokenizer(kind, CAPTIONS, vocab_size=150)
    second = train_tokenizer(kind, shuffled, vocab_size=150)
    vocab = lambda tok: [tok.id_to_token(i) for i in range(tok.vocab_size)]  # noqa: E731
    assert vocab(first) == vocab(second)
    assert len(vocab(first)) == 150


@tokenizer_kinds()
def test_progress_reports_every_new_token(kind):
    calls = []
    tok = train_tokenizer(kind, CAPTIONS, vocab_size=100, progress=lambda done, total: calls.append((done, total)))
    chars = set("".join(normalize_text(" ".join(CAPTIONS))))
    alphabet = len(chars) + 1 if kind == "bpe" else 2 * len(chars)  # BPE: the characters and ▁
    total = tok.vocab_size - len(SPECIAL_TOKENS) - alphabet
    assert calls == [(done, total) for done in range(1, total + 1)]


@tokenizer_kinds()
def test_retraining_clears_the_word_cache(kind):
    tok = train_tokenizer(kind, ["aaaa bbbb"], vocab_size=20)
    before = tok.encode("aaaa")
    tok.train(CAPTIONS, vocab_size=100)
    assert tok.encode("aaaa") == train_tokenizer(kind, CAPTIONS, vocab_size=100).encode("aaaa") != before


@tokenizer_kinds()
def test_vocab_size_too_small_for_the_alphabet_is_an_error(kind):
    with pytest.raises(ValueError, match="more than the"):
        train_tokenizer(kind, CAPTIONS, vocab_size=10)
    with pytest.raises(ValueError, match="no words"):
        train_tokenizer(kind, ["", "  \n"], vocab_size=100)


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer("sentencepiece", CAPTIONS, 100)


# -- saving and loading ----------------------------------------------------------------------------


@tokenizer_kinds()
def test_save_load_round_trip(kind, tmp_path):
    tok = train_tokenizer(kind, CAPTIONS, vocab_size=120)
    path = tmp_path / "tokenizer.txt"
    tok.save(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == f"captioner-tokenizer v2 {kind}"
    assert lines[1:6] == ["tokens 120", *SPECIAL_TOKENS]
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.txt"]  # no temporary file left behind

    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert [loaded.id_to_token(i) for i in range(120)] == [tok.id_to_token(i) for i in range(120)]
    for text in CAPTIONS + ["an unseen sentence: quick jolly xylophones!"]:
        assert loaded.encode(text) == tok.encode(text)
    assert type(tok).load(path).encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])
    assert parse_tokenizer(tok.to_text()).to_text() == path.read_text(encoding="utf-8")


def test_parse_errors_name_their_source():
    with pytest.raises(ValueError, match="^checkpoint.pt: not a tokenizer file"):
        parse_tokenizer("{}", source="checkpoint.pt")


def test_loading_the_wrong_kind_through_a_class_is_an_error(tmp_path):
    path = tmp_path / "wp.txt"
    train_tokenizer("wordpiece", CAPTIONS, vocab_size=100).save(path)
    with pytest.raises(ValueError, match="wordpiece tokenizer, not bpe"):
        BPETokenizer.load(path)


@tokenizer_kinds()
def test_every_truncation_is_detected(kind, tmp_path):
    good = tmp_path / "good.txt"
    train_tokenizer(kind, ["a ab abc"], vocab_size=20).save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.txt"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="bad.txt"):
            load_tokenizer(bad)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: ["captioner-tokenizer v1 bpe"] + lines[1:], "made by an older version.*rerun process_coco.py"),
        (lambda lines: ["captioner-tokenizer v3 bpe"] + lines[1:], "unsupported tokenizer file version 'v3'"),
        (lambda lines: ["captioner-tokenizer vx bpe"] + lines[1:], "unsupported tokenizer file version 'vx'"),
        (lambda lines: ["captioner-tokenizer v2 unigram"] + lines[1:], "unknown tokenizer kind 'unigram'"),
        (lambda lines: ["hello world"] + lines[1:], "not a tokenizer file"),
        (lambda lines: lines[:2] + ["<sos>", "<pad>"] + lines[4:], "must start with the special tokens"),
        (lambda lines: lines[:-2] + ["a zz", ""], "missing from the vocabulary"),
        (lambda lines: lines[:-2] + ["a b c", ""], "not two tokens"),
        (lambda lines: lines[:-1] + ["extra", ""], "unexpected content"),
        (lambda lines: [lines[0], lines[1].replace("tokens", "tokens x")] + lines[2:], "malformed"),
        (lambda lines: lines[:6] + [lines[5]] + lines[7:], "duplicate tokens"),
    ],
)
def test_corrupt_files_raise_value_error_naming_the_file(edit, message, tmp_path):
    good = tmp_path / "good.txt"
    BPETokenizer().train(["a ab abc"], vocab_size=20).save(good)
    bad = tmp_path / "corrupt.txt"
    bad.write_text("\n".join(edit(good.read_text(encoding="utf-8").split("\n"))), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_tokenizer(bad)
    assert "corrupt.txt" in str(info.value)


def test_binary_file_raises_value_error_naming_the_file(tmp_path):
    bad = tmp_path / "image.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    with pytest.raises(ValueError, match="image.jpg.*not UTF-8"):
        load_tokenizer(bad)
