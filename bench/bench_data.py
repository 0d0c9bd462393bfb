"""Benchmark of step 1's data path; prints one table.

Sections (one function each, all returning `Row`s):
- tokenizers: BPE and WordPiece training time and encode throughput on synthetic
  COCO-like captions, against a plain `Counter` of whitespace-split words over the
  same captions (a lower bound for any trainer, which must at least count words).
  Training = counting normalised words + merging; the second row shows the first part.
  Encode times include filling the word cache (each distinct word is split once).
- pre-resize: images/s of `build_image_cache` (what process_coco.py runs: decode, resize,
  centre-crop, write into the uint8 cache) on generated 640 x 480 JPEGs, against decoding
  them alone with PIL.
- loader: images/s and captions/s of `caption_loader` and `image_loader` from a 256 px and a 64 px uint8 cache,
  against copying the same cache batch by batch in order from its memmap.

Usage: python bench/bench_data.py [--captions 600000] [--vocab-size 5000] [--jpegs 2000]
                                  [--cache-images 2000] [--sections tokenizers,pre-resize,loader]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from captioner.data.coco_annotations import SplitData
from captioner.data.image_cache import build_image_cache
from captioner.data.loaders import caption_loader, image_loader
from captioner.data.processed import FORMAT_VERSION, write_split_json
from captioner.infra.fileio import write_json
from captioner.text.normalize import count_words
from captioner.text.tokenizers import train_tokenizer


@dataclass
class Row:
    """One measurement: `items` processed in `seconds` (wall clock; `cpu_seconds` of this process),
    compared with the wall time of its section's reference."""

    section: str
    name: str
    seconds: float
    cpu_seconds: float
    items: int
    unit: str
    reference_seconds: float


def synthetic_captions(n: int, n_words: int = 10_000, seed: int = 0) -> list[str]:
    """`n` COCO-like captions: 8-15 made-up words drawn from a Zipf law, capitalised, mostly ending in '.'."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    vocab = sorted({"".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(3 * n_words)})
    vocab = list(rng.permutation(vocab)[:n_words])
    probs = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    lengths = rng.integers(8, 16, size=n)
    draws = rng.choice(len(vocab), size=int(lengths.sum()), p=probs / probs.sum()).tolist()
    ends = np.cumsum(lengths)
    captions = []
    for start, end, stop in zip((ends - lengths).tolist(), ends.tolist(), (rng.random(n) < 0.8).tolist()):
        text = " ".join(vocab[i] for i in draws[start:end])
        captions.append(text.capitalize() + ("." if stop else ""))
    return captions


def _timed(fn):
    """(fn(), wall seconds, CPU seconds): CPU time shows how much of the wall time other processes took."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def tokenizer_section(captions: list[str], vocab_size: int) -> list[Row]:
    """Training time and encode throughput of both tokenizers, against a plain Counter word count."""

    def count():
        counts = Counter()
        for caption in captions:
            counts.update(caption.split())
        return counts

    n = len(captions)
    _, reference, cpu = _timed(count)
    rows = [Row("tokenizers", "Counter of str.split words (reference)", reference, cpu, n, "captions", reference)]
    _, seconds, cpu = _timed(lambda: count_words(captions))
    rows.append(Row("tokenizers", "Counter of normalised words", seconds, cpu, n, "captions", reference))
    for kind in ("bpe", "wordpiece"):
        tokenizer, seconds, cpu = _timed(lambda: train_tokenizer(kind, captions, vocab_size))
        name = f"{kind} train, vocab {tokenizer.vocab_size}"
        rows.append(Row("tokenizers", name, seconds, cpu, n, "captions", reference))
        _, seconds, cpu = _timed(lambda: [tokenizer.encode(caption) for caption in captions])
        rows.append(Row("tokenizers", f"{kind} encode", seconds, cpu, n, "captions", reference))
    return rows


def make_jpegs(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """`n` photo-like JPEGs (smooth colour gradients plus grain, quality 90), like COCO's 640 x 480 images."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(0.3, 1, h, dtype=np.float32)[:, None, None]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        colour = rng.uniform(40, 215, size=3).astype(np.float32)
        pixels = ramp * colour + rng.normal(0, 12, size=(h, w, 3)).astype(np.float32) + 20  # (h, w, 3)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def preresize_section(folder: Path, n_images: int, workers: int) -> list[Row]:
    """Images/s of `build_image_cache` (what process_coco.py runs) against decoding alone with PIL."""

    paths = make_jpegs(folder / "jpegs", n_images)

    def decode_only():
        for path in paths:
            with Image.open(path) as image:
                image.load()

    _, reference, cpu = _timed(decode_only)
    rows = [Row("pre-resize", "PIL decode only, 1 process (reference)", reference, cpu, n_images, "images", reference)]
    # cpu s counts this process only: with 2+ processes the decoding happens in the workers.
    for size, n_workers in ((256, 1), (256, workers), (64, 1), (64, workers)):
        _, seconds, cpu = _timed(lambda: build_image_cache(paths, folder / "cache.npy", size, n_workers))
        name = f"pre-resize to {size}px, {n_workers} process{'es' if n_workers > 1 else ''}"
        rows.append(Row("pre-resize", name, seconds, cpu, n_images, "images", reference))
    return rows


def make_processed(folder: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """A processed folder with one split, "train": random uint8 images, 5 captions of 8-15 tokens each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(folder / "train_images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n_images, size, size, 3))
    for start in range(0, n_images, 512):
        stop = min(start + 512, n_images)
        images[start:stop] = rng.integers(0, 256, size=(stop - start, size, size, 3), dtype=np.uint8)
    images.flush()
    ids = list(range(n_images))
    captions = [[f"caption {k}" for k in range(5)] for _ in ids]
    tokens = [[rng.integers(4, 5000, size=rng.integers(8, 16)).tolist() for _ in range(5)] for _ in ids]
    split = SplitData("train", folder, ids, [f"{i}.jpg" for i in ids], captions)
    write_split_json(folder / "train.json", split, tokens, size)
    write_json(folder / "meta.json", {"format_version": FORMAT_VERSION})
    return folder


def loader_section(folder: Path, n_images: int, size: int, batch_size: int, epochs: int = 3) -> list[Row]:
    """Throughput of the loaders (shuffled, batches of `batch_size` images or captions, in the
    main process) from the uint8 cache, against copying the memmap in order, batch by batch.

    Each measurement runs `epochs` shuffled epochs over a cache already in the page cache (just
    written), so it measures the loader, not the disk.
    """
    processed = make_processed(folder / f"processed{size}", n_images, size)
    cache = np.load(processed / "train_images.npy", mmap_mode="r")

    def copy_slices():
        for _ in range(epochs):
            for start in range(0, n_images, batch_size):
                np.array(cache[start : start + batch_size])

    _, reference, cpu = _timed(copy_slices)
    rows = [Row("loader", f"memmap slice copy {size}px (reference)", reference, cpu, epochs * n_images,
                "images", reference)]
    for kind, group, unit in (("image", False, "images"), ("caption", False, "captions"), ("caption", True, "captions")):
        if kind == "image":
            loader = image_loader(processed, "train", batch_size, shuffle=True)
        else:
            loader = caption_loader(processed, "train", batch_size, shuffle=True, max_len=32, group_by_image=group)

        def run_epochs():
            count = 0
            for epoch in range(epochs):
                loader.batch_sampler.set_epoch(epoch)
                for batch in loader:
                    count += len(batch["tokens"] if kind == "caption" else batch["images"])
            return count

        count, seconds, cpu = _timed(run_epochs)
        name = f"loader {kind!r}{' grouped' if group else ''} {size}px"
        rows.append(Row("loader", name, seconds, cpu, count, unit, reference))
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'section':<12} {'measurement':<40} {'wall s':>8} {'cpu s':>8} {'items/s':>10} {'unit':<9} {'x reference':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.section:<12} {row.name:<40} {row.seconds:>8.2f} {row.cpu_seconds:>8.2f} "
            f"{row.items / row.seconds:>10,.0f} {row.unit:<9} {row.seconds / row.reference_seconds:>10.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=600_000, help="number of synthetic captions (default 600000)")
    parser.add_argument("--vocab-size", type=int, default=5000, help="tokenizer vocabulary size (default 5000)")
    parser.add_argument("--jpegs", type=int, default=2000, help="640 x 480 JPEGs to pre-resize (default 2000)")
    parser.add_argument("--cache-images", type=int, default=2000,
                        help="images in the 256 px loader cache; the 64 px cache has 4x as many (default 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="loader batch size (default 256)")
    parser.add_argument("--sections", default="tokenizers,pre-resize,loader",
                        help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    sections = args.sections.split(",")

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}, torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} (other processes slow the wall times; see cpu s)"
    )
    rows = []
    if "tokenizers" in sections:
        captions = synthetic_captions(args.captions)
        print(f"{len(captions):,} synthetic captions, e.g. {captions[0]!r}")
        rows += tokenizer_section(captions, args.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        if "pre-resize" in sections:
            print(f"pre-resize: {args.jpegs} generated 640 x 480 JPEGs")
            rows += preresize_section(Path(tmp), args.jpegs, min(4, os.cpu_count() or 1))
        if "loader" in sections:
            print(f"loader: batches of {args.batch_size}, 3 shuffled epochs, 5 captions per image")
            rows += loader_section(Path(tmp), args.cache_images, 256, args.batch_size)
            rows += loader_section(Path(tmp), 4 * args.cache_images, 64, args.batch_size)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
