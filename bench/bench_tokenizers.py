"""Benchmark of our BPE and WordPiece trainers against Hugging Face ``tokenizers``; prints one table.

    python bench/bench_tokenizers.py [--vocab-sizes 1000,3000] [--hf-threads 1]

Corpus: ordinary English prose, without downloads: the sentences of the docstrings of about a
hundred standard-library modules (this Python's own: 5,090 sentences, 72,190 words with 3.11.7),
plus the 245 captions of ``tests/data/coco_style_captions.txt``. Every tenth sentence (after a
seeded shuffle) is held out; both sides train on the rest and are measured on the held-out part.

Both sides see the same pre-tokens (``captioner.text.normalize``: lowercase words, inner
punctuation kept, ``▁`` where a space was), so the table compares the merge algorithms and nothing
else. Hugging Face's BPE gets the pre-tokens with ``▁``; its WordPiece gets them without (it has no
way to mark a pre-token glued to the one before, which ours writes as a ``##`` piece, so ours
spends vocabulary on ``##,`` and ``##.`` beside ``,`` and ``.``). Hugging Face's "WordPiece"
trainer merges by frequency like BPE (only its encoding is WordPiece's); ours merges by likelihood
gain. A last row per vocabulary shows what our WordPiece gave with the score it had before, the
ratio ``c(ab) / (c(a) c(b))`` without the pair's frequency.

Columns: tokens per held-out sentence (ours, reference, ratio; the target is at most 1.10) and
training CPU seconds, the least of three runs (ours includes normalising the text; Hugging Face's
gets the pre-tokens ready).
Nothing here is a runtime dependency: without ``tokenizers`` installed, only our rows are printed.
"""

import argparse
import contextlib
import importlib
import inspect
import os
import platform
import random
import re
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere, no install

from captioner.text import wordpiece  # noqa: E402
from captioner.text.normalize import WORD_START, normalize_text, pretokenize  # noqa: E402
from captioner.text.tokenizers import SPECIAL_TOKENS, train_tokenizer  # noqa: E402

MODULES = """abc argparse ast asyncio base64 bisect calendar cmd codecs collections concurrent.futures
configparser contextlib copy csv dataclasses datetime decimal difflib email enum fractions ftplib
functools getopt gettext glob gzip hashlib heapq hmac html http.client http.server imaplib inspect io
ipaddress itertools json logging lzma mailbox mimetypes multiprocessing numbers operator optparse os
pathlib pdb pickle pkgutil platform plistlib poplib pprint profile queue random re sched secrets
selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string struct
subprocess tarfile tempfile textwrap threading timeit tkinter tokenize trace traceback turtle typing
unittest urllib.parse urllib.request uuid warnings weakref xml.dom.minidom xml.etree.ElementTree
zipfile zipimport""".split()
CAPTIONS = ROOT / "tests" / "data" / "coco_style_captions.txt"
TARGET = 1.10
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstrings(name: str):
    """The docstrings of module `name`, its public classes and functions and their public methods."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # a module this Python lacks (e.g. tkinter) just contributes nothing
        return
    yield inspect.getdoc(module)
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and inspect.isroutine(method):
                    yield inspect.getdoc(method)


def english_sentences() -> list[str]:
    """Distinct prose sentences of 6-60 words from the docstrings: mostly letters, ending in . ! or ?."""
    sentences, seen = [], set()
    for name in MODULES:
        for doc in docstrings(name):
            for paragraph in re.split(r"\n\s*\n", doc or ""):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    letters = sum(ch.isalpha() or ch == " " for ch in sentence)
                    if (6 <= len(sentence.split()) <= 60 and letters >= 0.85 * len(sentence)
                            and sentence[-1] in ".!?" and sentence not in seen):
                        seen.add(sentence)
                        sentences.append(sentence)
    return sentences


def pretokens(text: str, marker: bool) -> str:
    """Our pre-tokens of `text` separated by spaces, with or without ``▁``: what the reference trains on."""
    pieces = [p for word in normalize_text(text) for p in pretokenize(word)]
    return " ".join(pieces if marker else [p.removeprefix(WORD_START) for p in pieces])


REPEATS = 3


def timed(fn, *args):
    """(fn(*args), the least CPU seconds of this process, all threads, over REPEATS calls).

    CPU time and the minimum are steadier than wall time on a shared machine."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        result = fn(*args)
        best = min(best, time.process_time() - start)
    return result, best


def hf_train(kind: str, train: list[str], vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if kind == "bpe":
        hf = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        hf = Tokenizer(models.WordPiece(unk_token="<unk>"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    texts = [pretokens(s, marker=kind == "bpe") for s in train]
    _, seconds = timed(hf.train_from_iterator, texts, trainer)  # retraining starts afresh
    return hf, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", default="1000,3000", help="comma-separated (default: %(default)s)")
    parser.add_argument("--hf-threads", type=int, default=1,
                        help="threads for Hugging Face's trainer; ours uses one (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = str(args.hf_threads)  # read when tokenizers starts its thread pool
    try:
        import tokenizers
        hf_version = tokenizers.__version__
    except ImportError:
        hf_version = None

    sentences = english_sentences() + CAPTIONS.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(sentences)
    held_out, train = sentences[::10], [s for i, s in enumerate(sentences) if i % 10]
    n_words = sum(len(s.split()) for s in sentences)
    threads = f"{args.hf_threads} thread{'s' * (args.hf_threads > 1)}"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python "
          f"{platform.python_version()}; " + (f"tokenizers {hf_version} ({threads})" if hf_version
                                               else "tokenizers not installed: our rows only"))
    print(f"corpus: {len(sentences)} sentences, {n_words} words; train on {len(train)}, "
          f"measure on {len(held_out)}\n")
    print(f"{'tokenizer':<26} {'vocab':>6} {'tokens/sentence':>16} {'reference':>10} {'ratio':>6} "
          f"{'train CPU s':>12} {'reference':>10} {'ratio':>6}")

    def row(name, vocab, ours, seconds, reference=None, reference_seconds=None):
        line = f"{name:<26} {vocab:>6} {ours:>16.2f} "
        if reference is not None:
            verdict = "" if ours / reference <= TARGET else f"  over the {TARGET} target"
            line += (f"{reference:>10.2f} {ours / reference:>6.3f} {seconds:>12.2f} {reference_seconds:>10.2f} "
                     f"{seconds / reference_seconds:>6.1f}{verdict}")
        else:
            line += f"{'':>10} {'':>6} {seconds:>12.2f}"
        print(line)

    def tokens_per_sentence(encode) -> float:
        return sum(len(encode(s)) for s in held_out) / len(held_out)

    ratio_score = lambda n_ab, n_a, n_b, n_symbols: n_ab / (n_a * n_b)  # noqa: E731
    for vocab_size in map(int, args.vocab_sizes.split(",")):
        reference = {}
        for kind in ("bpe", "wordpiece"):
            ours, seconds = timed(train_tokenizer, kind, train, vocab_size)
            if hf_version is not None:
                hf, hf_seconds = hf_train(kind, train, vocab_size)
                hf_encode = lambda s, hf=hf, marker=kind == "bpe": hf.encode(pretokens(s, marker)).ids  # noqa: E731
                reference[kind] = (tokens_per_sentence(hf_encode), hf_seconds)
            row(f"{kind} vs HF {kind}" if hf_version else kind, vocab_size, tokens_per_sentence(ours.encode), seconds, *reference.get(kind, ()))
        with mock.patch.object(wordpiece, "likelihood_gain", ratio_score):
            old, seconds = timed(train_tokenizer, "wordpiece", train, vocab_size)
        row("wordpiece, ratio score", vocab_size, tokens_per_sentence(old.encode), seconds,
            *reference.get("wordpiece", ()))


if __name__ == "__main__":
    main()
