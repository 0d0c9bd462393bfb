"""Benchmark of the evaluation step: metric speed on a COCO-sized split, and beam-search speed.

    python bench/bench_metrics.py [--device auto|cpu|cuda] [--checkpoint CKPT] [--threads N]

Prints one table. Each row is a figure of ours beside a reference measured in the same run, and
their ratio; each section of the table is one function returning rows.

Beam search: captions per second over the shapes val split with the shapes captioner preset's
architecture (configs/shapes_captioner.yaml + the ViT of configs/shapes_encoder.yaml), random
weights, or a trained checkpoint's model with ``--checkpoint``; beam 1, 3 and 6 with the KV cache
against beam 6 recomputing the whole prefix each step. A random model rarely emits <eos>, so its
captions run to max_len: the slowest case (the note gives the mean caption length).
"""

import argparse
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

from captioner.config import (
    CaptionerRunConfig,
    EncoderRunConfig,
    config_from_dict,
    load_config,
)
from captioner.data.loaders import image_captions_loader
from captioner.data.transforms import EvalTransform  # noqa: E402
from captioner.evaluation.metrics import bleu, cider_d
from captioner.models.captioner import build_captioner
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID, load_tokenizer
from captioner.training.checkpoints import load_captioner
from captioner.training.devices import autocast, resolve_device, resolve_precision

N_IMAGES, N_REFS, REPEATS = 5000, 5, 3
TARGET_SECONDS = {"BLEU-1..4": 1.0, "CIDEr-D": 2.0}  # issue 6
ROOT = Path(__file__).resolve().parents[1]
CAPTIONER_PRESET = ROOT / "configs" / "shapes_captioner.yaml"
BEAMS = (1, 3, 6)


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


def shapes_captioner(checkpoint: str | None,
                     device: torch.device) -> tuple[torch.nn.Module, CaptionerRunConfig, str]:
    """``(model in eval mode, its run config, where it came from)``: the checkpoint's model, or the
    shapes preset's architecture with random weights (seed 0)."""
    if checkpoint:
        model, _, payload = load_captioner(checkpoint, device)
        return model, config_from_dict(CaptionerRunConfig, payload["config"], source=checkpoint), checkpoint
    cfg = load_config(CaptionerRunConfig, CAPTIONER_PRESET)
    vit = load_config(EncoderRunConfig, ROOT / cfg.encoder_config).model
    vocab_size = load_tokenizer(ROOT / cfg.data.processed_dir / "tokenizer.txt").vocab_size
    torch.manual_seed(0)
    model = build_captioner(vit, cfg.decoder, vocab_size, max(cfg.data.max_caption_len, cfg.eval.max_len))
    return model.to(device).eval(), cfg, f"{CAPTIONER_PRESET.name} architecture, random weights"


def decode_split(model, loader, device: torch.device, precision: str, beam: int, alpha: float, max_len: int,
                 use_cache: bool, limit: int) -> tuple[int, int]:
    """Beam-search the first ``limit`` images of ``loader`` batch by batch, as evaluate.py does;
    returns (images, generated tokens, <eos> included)."""
    transform = EvalTransform(model.encoder.config.image_size)
    n_images = n_tokens = 0
    for batch in loader:
        x = transform(batch["images"][: limit - n_images].to(device))  # (B, 3, H, W) float
        with autocast(device, precision):
            tokens, _ = model.generate(x, SOS_ID, EOS_ID, PAD_ID, max_len, beam_size=beam, alpha=alpha,
                                       use_cache=use_cache)  # (B, L)
        n_images += len(x)
        n_tokens += int((tokens != PAD_ID).sum())
        if n_images >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()  # the clock stops when the GPU is done
    return n_images, n_tokens


def beam_rows(device_name: str = "auto", checkpoint: str | None = None, n_images: int | None = None,
              repeats: int = 2) -> list[tuple[str, ...]]:
    """Captions/s of batched beam search over the val split: beam 1, 3, 6 with the KV cache, and beam 6
    without it as the reference (one run; the cached ones best of ``repeats``)."""
    device = resolve_device(device_name)
    precision = resolve_precision("auto", device)
    model, cfg, source = shapes_captioner(checkpoint, device)
    processed = ROOT / cfg.data.processed_dir  # an absolute processed_dir stays as it is
    loader = image_captions_loader(processed, "val", cfg.data.batch_size)
    limit = min(n_images or len(loader.dataset), len(loader.dataset))
    alpha, max_len = cfg.eval.alpha, cfg.eval.max_len

    def run(beam: int, use_cache: bool, images: int = limit):
        return decode_split(model, loader, device, precision, beam, alpha, max_len, use_cache, images)

    run(6, True, images=cfg.data.batch_size)  # warm-up: allocator, kernels, caches
    ref_seconds, _, (_, ref_tokens) = best_time(lambda: run(6, False), repeats=1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    setting = f"{precision} on {where}, {cfg.data.batch_size} images a batch, max_len {max_len}"
    rows = []
    for beam in BEAMS:
        seconds, cpu_seconds, (n, tokens) = best_time(lambda: run(beam, True), repeats=repeats)
        rows.append((f"beam {beam}, KV cache, {n} val images", f"{n / seconds:.1f} captions/s ({seconds:.2f} s, "
                     f"CPU {cpu_seconds:.2f} s)", "beam 6, no cache", f"{ref_seconds:.2f} s",
                     f"{ref_seconds / seconds:.1f}x", f"{tokens / n:.1f} tokens a caption; {setting}"))
    rows.append((f"beam 6, no cache, {limit} val images", f"{limit / ref_seconds:.1f} captions/s", "(the reference)",
                 f"{ref_seconds:.2f} s", "1.0x", f"{ref_tokens / limit:.1f} tokens a caption; model: {source}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Speed of BLEU / CIDEr-D and of beam-search captioning.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda, for beam search (default: auto)")
    parser.add_argument("--checkpoint", default=None,
                        help="a captioner checkpoint to decode with (default: the shapes preset, random weights)")
    parser.add_argument("--images", type=int, default=None, help="val images to caption (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch (default: PyTorch's choice); 1 is steadier on a busy, shared CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start; Python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"times: metrics best of {REPEATS} wall-clock runs, cached beam search best of 2, uncached one run; "
          "ratio = reference time / our time")
    header = ("what", "ours", "reference", "reference time", "ratio", "note")
    rows = [header, *metric_rows(), *beam_rows(args.device, args.checkpoint, args.images)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
