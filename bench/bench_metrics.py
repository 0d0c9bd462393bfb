"""Benchmark of the evaluation step: metric speed on a COCO-sized split.

    python bench/bench_metrics.py

Prints one table. Each row is a figure of ours beside a reference measured in the same run, and
their ratio; each section of the table is one function returning rows.
"""

import itertools
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from captioner.metrics import bleu, cider_d  # noqa: E402  (needs the path above)

N_IMAGES, N_REFS, REPEATS = 5000, 5, 3
TARGET_SECONDS = {"BLEU-1..4": 1.0, "CIDEr-D": 2.0}  # issue 6


def synthetic_corpus(n_images: int, n_refs: int, seed: int = 0) -> tuple[dict, dict]:
    """Tokenized captions of 8-14 words over a 3,000-word vocabulary with Zipf-like frequencies.

    Each image gets a random "scene" of 14 words; its references and its hypothesis keep each
    scene word with probability 0.7 and replace it otherwise, so n-grams of every order recur
    within an image about as they do in COCO.
    """
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocab))))

    def variant(scene):
        words = scene[:rng.randint(8, 14)]
        replacements = rng.choices(vocab, cum_weights=cum_weights, k=len(words))
        return " ".join(w if rng.random() < 0.7 else r for w, r in zip(words, replacements))

    references, hypotheses = {}, {}
    for image_id in range(n_images):
        scene = rng.choices(vocab, cum_weights=cum_weights, k=14)
        references[image_id] = [variant(scene) for _ in range(n_refs)]
        hypotheses[image_id] = variant(scene)
    return references, hypotheses


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(fn, repeats: int = REPEATS) -> tuple[float, float, object]:
    """Run ``fn()`` ``repeats`` times: the fastest wall-clock seconds, the CPU seconds this process
    used in that run (less than wall-clock when other processes share the cores), the result."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if seconds < best:
            best, best_cpu = seconds, cpu
    return best, best_cpu, result


def counter_ngram_count(references: dict, hypotheses: dict) -> Counter:
    """Count every 1..4-gram of every caption with a Counter: the least work a pure-Python
    (dict-based) n-gram metric does, so a lower bound for one."""
    counts = Counter()
    for image_id, refs in references.items():
        for caption in [hypotheses[image_id], *refs]:
            words = caption.split()
            for n in range(1, 5):
                counts.update(zip(*(words[i:] for i in range(n))))
    return counts


def metric_rows() -> list[tuple[str, ...]]:
    """BLEU-1..4 and CIDEr-D on N_IMAGES x N_REFS against pycocoevalcap, else a Counter count."""
    references, hypotheses = synthetic_corpus(N_IMAGES, N_REFS)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        floor, _, _ = best_time(lambda: counter_ngram_count(references, hypotheses))
        references_for = {"BLEU-1..4": ("Counter n-gram count only", floor, None),
                          "CIDEr-D": ("Counter n-gram count only", floor, None)}
    else:
        as_lists = {k: [h] for k, h in hypotheses.items()}
        bleu_s, _, (bleu_ref, _) = best_time(lambda: Bleu(4).compute_score(references, as_lists,
                                                                         verbose=0))
        cider_s, _, (cider_ref, _) = best_time(lambda: Cider().compute_score(references, as_lists))
        references_for = {"BLEU-1..4": ("pycocoevalcap Bleu(4)", bleu_s, bleu_ref[3]),
                          "CIDEr-D": ("pycocoevalcap Cider", cider_s, float(cider_ref))}

    rows = []
    for name, fn, pick in [("BLEU-1..4", bleu, lambda s: s[3]), ("CIDEr-D", cider_d, float)]:
        seconds, cpu_seconds, scores = best_time(lambda: fn(references, hypotheses))
        ref_name, ref_seconds, ref_score = references_for[name]
        target = TARGET_SECONDS[name]
        note = f"target <= {target:g} s: {'met' if seconds <= target else 'MISSED'}"
        if ref_score is not None:
            note += f"; score {pick(scores):.6f} vs {ref_score:.6f}"
        rows.append((f"{name}, {N_IMAGES} images x {N_REFS} refs",
                     f"{seconds:.3f} s (CPU {cpu_seconds:.3f} s)", ref_name,
                     f"{ref_seconds:.3f} s", f"{ref_seconds / seconds:.1f}x", note))
    return rows


def main() -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start; Python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"times: best of {REPEATS} wall-clock runs; ratio = reference time / our time")
    header = ("what", "ours", "reference", "reference time", "ratio", "note")
    rows = [header, *metric_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
