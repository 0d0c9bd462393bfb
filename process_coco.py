"""Step 1: get the images and captions, train the tokenizer, tokenize, and pre-resize every image.

    python process_coco.py                                  # synthetic shapes dataset, offline, < 1 min
    python process_coco.py --tokenizer wordpiece            # the same with a WordPiece tokenizer
    python process_coco.py --tokenizer wordpiece --bert-vocab vocab.txt --vocab-size 15000   # BERT's pieces
    python process_coco.py --source coco                    # MS COCO 2017, downloaded into data/coco/raw
    python process_coco.py --source coco --coco-dir /datasets/coco2017   # a copy you already have
    python process_coco.py --source wit --wit-files shard1.json.gz shard2.json.gz   # WIT shards (retrieval)
    python process_coco.py --source urls --url-file cc3m.tsv.gz   # a URL-caption list, fetched once (docs/urls.md)
    python process_coco.py --karpathy-file dataset_flickr8k.json --image-dir Flicker8k_Dataset   # Karpathy's splits
    python process_coco.py --flickr8k-dir Flickr8k_text --image-dir Flicker8k_Dataset   # Flickr8k as distributed

The script runs in four numbered sections (see :func:`process`):

1. Get images and captions: generate the shapes dataset, download COCO, use ``--coco-dir``, or unpack
   WIT shards into the COCO layout (``captioner/data/wit.py``), or fetch the images of a URL-caption list into
   it (``captioner/data/urls.py``); then read and validate every annotation file.
   Or read Karpathy's split file of COCO, Flickr8k or Flickr30k, or Flickr8k's own text files
   (``captioner/data/karpathy.py``; docs/protocol.md), with the images in ``--image-dir``.
2. Train the tokenizer on the *training* captions only (or, with ``--bert-vocab``, keep the pieces of
   that BERT vocabulary most frequent in them: ``captioner/text/bert_vocab.py``).
3. For each split: pre-resize every image once into a uint8 cache at ``--image-size``, tokenize
   every caption and write the split's record.
4. Write ``meta.json`` and print a summary, with the skipped items counted by reason.

Output, under ``<data-dir>/processed/`` (format version ``captioner.data.processed.FORMAT_VERSION``):

- ``tokenizer.txt``: the tokenizer (``captioner.text.tokenizers.load_tokenizer`` reads it).
- ``{split}_images.npy`` for each split present (train, val, test, and unlabeled if there is one):
  a plain numpy ``.npy`` file holding a uint8 array ``(N, S, S, 3)``, RGB, each image's shorter
  side resized to S and centre-cropped. Read it with ``np.load(path, mmap_mode="r")``.
- ``{split}.json``: ``format_version``, ``split``, ``image_size``; ``image_ids`` (N ints, the
  order of the rows of the .npy), ``file_names`` (N), ``captions`` (N lists of raw captions, empty
  for COCO 2017's test split and for unlabeled), ``tokens`` (N lists: the token ids of each caption, *without*
  ``<sos>``/``<eos>``; the loaders add them).
- ``meta.json``: source, image size, tokenizer kind and vocabulary size, images and captions per
  split, the skipped items (split, reason, path or id) and their counts by reason, the options, and
  the format version. It is written last: a folder without it is incomplete.
- ``stamps/{output}.stamp``: one small JSON per finished output with a fingerprint of what it was made from.

Bad annotations and bad images are skipped, counted and reported with their path and reason
(``captioner/data/coco_annotations.py``, ``captioner/data/image_io.py``); every output is written under a
temporary name with a stamp of its inputs, so a rerun redoes only what is missing (``captioner/infra/stamps.py``).
"""

import argparse
import hashlib
import os
import time
from pathlib import Path

from tqdm import tqdm

from captioner.cli import run_script
from captioner.data.coco_annotations import SkipLog, available_splits, parse_split
from captioner.data.image_cache import build_image_cache
from captioner.data.karpathy import RESTVAL_CHOICES, read_flickr8k, read_karpathy
from captioner.data.processed import (
    FORMAT_VERSION,
    split_files,
    tokenize_captions,
    write_json,
    write_split_json,
)
from captioner.data.shapes import generate_shapes_dataset
from captioner.data.url_fetch import FetchSettings, UrlFetcher
from captioner.data.urls import FORMATS, read_url_list, urls_to_coco_layout
from captioner.data.wit import wit_to_coco_layout
from captioner.infra.download import COCO_FILES, DownloadError, fetch_coco
from captioner.infra.stamps import (
    file_stats,
    fingerprint,
    is_done,
    stamp_path,
    write_stamp,
)
from captioner.text.tokenizers import VERSION as TOKENIZER_VERSION
from captioner.text.tokenizers import load_tokenizer, train_tokenizer

DEFAULT_IMAGE_SIZE = {"shapes": 64, "coco": 256, "wit": 256, "urls": 256, "karpathy": 256, "flickr8k": 256}
# The options that name each source's data: giving one of them picks that source.
SOURCE_OPTIONS = {"coco": ("coco_dir", "base_url"), "wit": ("wit_files",), "urls": ("url_file",),
                  "karpathy": ("karpathy_file",),
                  "flickr8k": ("flickr8k_dir",)}
MAX_LISTED_PER_REASON = 10  # skipped items printed per reason; meta.json lists them all


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Step 1: get images and captions, train the tokenizer, tokenize every caption and "
                    "pre-resize every image into a uint8 cache under <data-dir>/processed/. A rerun "
                    "redoes only what is missing or was made with other options.")
    parser.add_argument("--source", choices=tuple(DEFAULT_IMAGE_SIZE), default=None,
                        help="shapes (the default): generate the synthetic dataset, offline; coco: MS COCO 2017 "
                             "(the default when --coco-dir or --base-url is given); wit: the WIT shards of "
                             "--wit-files (the default when it is given); urls: the URL-caption list --url-file, "
                             "fetched into <data-dir>/raw (the default when it is given); karpathy: Karpathy's "
                             "split file --karpathy-file; flickr8k: Flickr8k's text files in --flickr8k-dir")
    parser.add_argument("--data-dir", default=None,
                        help="where raw/ and processed/ go (default: data/shapes, data/coco, data/wit, data/urls, "
                             "data/flickr8k; karpathy: data/coco_karpathy, data/flickr8k or data/flickr30k after "
                             "the file's name)")
    parser.add_argument("--karpathy-file", default=None, metavar="JSON",
                        help="Karpathy's dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json "
                             "(images[] with filename, filepath, split, sentences[].raw, cocoid or imgid)")
    parser.add_argument("--flickr8k-dir", default=None, metavar="DIR",
                        help="the folder of Flickr8k.token.txt and Flickr_8k.{train,dev,test}Images.txt "
                             "(dev is the validation split)")
    parser.add_argument("--image-dir", default=None, metavar="DIR",
                        help="karpathy and flickr8k: the folder of the images (COCO: the one holding train2014/ "
                             "and val2014/)")
    parser.add_argument("--restval", choices=RESTVAL_CHOICES, default="train",
                        help="karpathy: where the restval images go: train (the default, as in every reference "
                             "codebase) or skip (left out)")
    parser.add_argument("--wit-files", nargs="+", default=None, metavar="SHARD",
                        help="WIT training shards (gzipped JSON lines with image_url, b64_bytes and wit_features); "
                             "unpacked into <data-dir>/raw in the COCO layout, every --wit-val-every-th image in val")
    parser.add_argument("--wit-val-every", type=int, default=10,
                        help="wit: every N-th good line goes to the validation split (default: %(default)s)")
    parser.add_argument("--url-file", default=None, metavar="LIST",
                        help="a URL-caption list: TSV, CSV or JSON lines, gzipped or not (docs/urls.md); its images "
                             "are fetched into <data-dir>/raw in the COCO layout, every --url-val-every-th in val. "
                             "A rerun fetches only the images not there yet")
    parser.add_argument("--url-format", choices=FORMATS, default="auto",
                        help="urls: the list's format (default: auto, from the file name or the first line)")
    parser.add_argument("--url-column", default="url",
                        help="urls: the URL's column or JSON key (a 0-based number: a file without a header row; "
                             "default: %(default)s)")
    parser.add_argument("--caption-column", default="caption",
                        help="urls: the caption's column or JSON key (default: %(default)s)")
    parser.add_argument("--url-val-every", type=int, default=10,
                        help="urls: every N-th image of the list goes to the validation split (default: %(default)s)")
    parser.add_argument("--fetch-concurrency", type=int, default=FetchSettings.concurrency,
                        help="urls: images fetched at once (default: %(default)s)")
    parser.add_argument("--fetch-timeout", type=float, default=FetchSettings.timeout,
                        help="urls: seconds for one attempt at an image, the whole body included "
                             "(default: %(default)s)")
    parser.add_argument("--fetch-retries", type=int, default=FetchSettings.retries,
                        help="urls: further attempts after a timeout, an HTTP 5xx or a cut connection "
                             "(default: %(default)s)")
    parser.add_argument("--max-image-bytes", type=int, default=FetchSettings.max_bytes,
                        help="urls: larger payloads are skipped (default: %(default)s)")
    parser.add_argument("--max-image-pixels", type=int, default=FetchSettings.max_pixels,
                        help="urls: images whose header claims more pixels are skipped undecoded "
                             "(default: %(default)s)")
    parser.add_argument("--coco-dir", default=None,
                        help="use an existing COCO 2017 copy (train2017/, val2017/, annotations/, ...) "
                             "instead of downloading it into <data-dir>/raw")
    parser.add_argument("--base-url", default=None,
                        help="download COCO from this mirror (same paths as images.cocodataset.org) instead of "
                             "the official site")
    parser.add_argument("--tokenizer", choices=("bpe", "wordpiece"), default="bpe", help="tokenizer kind (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=5000,
                        help="tokenizer vocabulary size, the 4 special tokens included (default: %(default)s)")
    parser.add_argument("--bert-vocab", default=None, metavar="VOCAB_TXT",
                        help="wordpiece: cut the pieces from this BERT vocab.txt (e.g. bert-base-uncased's) instead "
                             "of learning them: --vocab-size tokens, the 4 specials included, first the characters "
                             "that spell the training captions, then the pieces most frequent in them; text is then "
                             "cut as BERT cuts it (accents stripped, punctuation split off)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the cached square images (default: 64 for shapes, 256 for the others); "
                             "shapes are also drawn at this size")
    parser.add_argument("--n-train", type=int, default=4000, help="shapes: training images (default: %(default)s)")
    parser.add_argument("--n-val", type=int, default=500, help="shapes: validation images (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=500, help="shapes: test images (default: %(default)s)")
    parser.add_argument("--n-unlabeled", type=int, default=0,
                        help="shapes: unlabeled images, which only MAE reads (add unlabeled to the MAE config's "
                             "splits to use them; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="shapes: random seed of the generator (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes that decode and resize images (default: min(4, CPU count) = %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    named = {source: [f"--{name.replace('_', '-')}" for name in names if getattr(args, name)]
             for source, names in SOURCE_OPTIONS.items()}
    named = {source: flags for source, flags in named.items() if flags}
    if len(named) > 1:
        parser.error(f"{' and '.join(f for flags in named.values() for f in flags)} name the data of different "
                     "sources: give one")
    if named:
        source, flags = next(iter(named.items()))
        if args.source not in (None, source):
            doing = "generates the synthetic dataset" if args.source == "shapes" else f"reads {args.source} data"
            label = "COCO" if source == "coco" else source
            parser.error(f"{' and '.join(flags)} name{'s' if len(flags) == 1 else ''} {label} data, "
                         f"but --source {args.source} {doing}: drop one of them")
        args.source = source
    args.source = args.source or "shapes"
    if args.source in ("wit", "urls", "karpathy", "flickr8k") and args.source not in named:
        parser.error(f"--source {args.source} needs --{SOURCE_OPTIONS[args.source][0].replace('_', '-')}")
    if args.bert_vocab is not None:
        if args.tokenizer != "wordpiece":
            parser.error(f"--bert-vocab is for --tokenizer wordpiece, not {args.tokenizer}")
        if not Path(args.bert_vocab).is_file():
            parser.error(f"--bert-vocab {args.bert_vocab}: no such file")
    if (args.source in ("karpathy", "flickr8k")) != bool(args.image_dir):
        parser.error("--source karpathy and flickr8k need --image-dir (the folder of the images), and only they read it")
    return args


def main(argv=None) -> dict:
    """Parse the options and run all four sections; returns the contents of meta.json."""
    args = parse_args(argv)
    try:
        return process(args)
    except DownloadError as e:
        raise SystemExit(f"error: {e}\nrerun the same command to resume the download") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted: finished outputs are kept; rerun the same command to continue") from None


def process(args: argparse.Namespace) -> dict:
    """The four sections; returns the contents of meta.json."""
    data_dir = Path(args.data_dir or default_data_dir(args))
    processed = data_dir / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    image_size = args.image_size or DEFAULT_IMAGE_SIZE[args.source]
    # meta.json marks a complete folder; it comes back at the end of a run that finishes.
    (processed / "meta.json").unlink(missing_ok=True)

    def bar(total, desc, unit, **kwargs):
        return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=args.no_progress, **kwargs)

    # ---------------------------------------------------------------------------------------------
    # 1. Get images and captions
    # ---------------------------------------------------------------------------------------------
    skips = SkipLog()
    splits = None  # the split files of Karpathy and Flickr8k are read here; COCO-layout folders below
    if args.source in ("karpathy", "flickr8k"):
        coco_dir = Path(args.image_dir)
        if not coco_dir.is_dir():
            raise FileNotFoundError(f"--image-dir {coco_dir}: no such folder")
        if args.source == "karpathy":
            splits, info = read_karpathy(args.karpathy_file, coco_dir, skips, args.restval)
            restval = info["restval"]
            print(f"1. Karpathy's {info['dataset']} splits from {args.karpathy_file}, images in {coco_dir}; "
                  f"{restval['images']} restval images {'joined train' if restval['into'] == 'train' else 'left out'}")
        else:
            splits = read_flickr8k(args.flickr8k_dir, coco_dir, skips)
            print(f"1. Flickr8k's splits from {args.flickr8k_dir}, images in {coco_dir}")
    elif args.source == "shapes":
        coco_dir = data_dir / "raw"
        sizes = dict(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, n_unlabeled=args.n_unlabeled)
        start = time.perf_counter()
        with bar(sum(sizes.values()), "shapes dataset", "img") as b:
            generate_shapes_dataset(coco_dir, **sizes, image_size=image_size, seed=args.seed, progress=b.update)
        print(f"1. shapes dataset (seed {args.seed}, {image_size} px) in {coco_dir} "
              f"[{time.perf_counter() - start:.1f} s]")
    elif args.source == "wit":
        coco_dir = data_dir / "raw"
        start = time.perf_counter()
        counts = wit_to_coco_layout(args.wit_files, coco_dir, skips, args.wit_val_every)
        print(f"1. WIT: {counts['train']} training and {counts['val']} validation images from "
              f"{len(args.wit_files)} shards in {coco_dir}, {len(skips.items)} lines skipped "
              f"[{time.perf_counter() - start:.1f} s]")
    elif args.source == "urls":
        coco_dir = data_dir / "raw"
        start = time.perf_counter()
        items = read_url_list(args.url_file, skips, args.url_column, args.caption_column, args.url_format)
        fetcher = UrlFetcher(FetchSettings(timeout=args.fetch_timeout, retries=args.fetch_retries,
                                           max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels,
                                           concurrency=args.fetch_concurrency))
        with bar(len(items), "fetching images", "img") as b:
            counts = urls_to_coco_layout(items, coco_dir, fetcher, skips, args.url_val_every, b.update)
        print(f"1. URL list {args.url_file}: {len(items)} images, {counts['kept']} already in {coco_dir}, "
              f"{counts['fetched']} fetched, {counts['failed']} failed; {counts['train']} training and "
              f"{counts['val']} validation images [{time.perf_counter() - start:.1f} s]")
    elif args.coco_dir:
        coco_dir = Path(args.coco_dir)
        print(f"1. using the COCO copy in {coco_dir}")
    else:
        coco_dir = data_dir / "raw"
        start = time.perf_counter()
        with bar(None, "downloading COCO", "B", unit_scale=True) as b:
            fetch_coco(coco_dir, COCO_FILES, base_url=args.base_url, progress=b.update, log=tqdm.write)
        print(f"1. COCO 2017 in {coco_dir} [{time.perf_counter() - start:.1f} s]")

    if splits is None:
        specs = available_splits(coco_dir)
        if args.source == "shapes" and args.n_unlabeled == 0:
            # raw/ may still hold the unlabeled split of an earlier run made with --n-unlabeled.
            specs = [spec for spec in specs if spec.name != "unlabeled"]
        splits = [parse_split(coco_dir, spec, skips) for spec in specs]
    for split in splits:
        n_captions = sum(len(c) for c in split.captions)
        print(f"   {split.name}: {len(split.image_ids)} images, {n_captions} captions")
    _remove_stale_splits(processed, {split.name for split in splits})

    # ---------------------------------------------------------------------------------------------
    # 2. Train the tokenizer on the training captions only
    # ---------------------------------------------------------------------------------------------
    train = next(split for split in splits if split.name == "train")
    train_captions = [c for captions in train.captions for c in captions]
    tokenizer_path = processed / "tokenizer.txt"
    # The BERT vocabulary's hash joins the fingerprint only when given, so the other tokenizers' stay as they were.
    bert_vocab = [hashlib.sha256(Path(args.bert_vocab).read_bytes()).hexdigest()] if args.bert_vocab else []
    tokenizer_fp = fingerprint("tokenizer", TOKENIZER_VERSION, args.tokenizer, args.vocab_size, *bert_vocab,
                               train_captions)
    if is_done(processed, tokenizer_path.name, tokenizer_fp):
        tokenizer = load_tokenizer(tokenizer_path)
        print(f"2. tokenizer: up to date ({tokenizer.kind}, {tokenizer.vocab_size} tokens)")
    else:
        stamp_path(processed, tokenizer_path.name).unlink(missing_ok=True)
        start = time.perf_counter()
        with bar(None, f"training {args.tokenizer}", "caption" if args.bert_vocab else "merge") as b:
            def merged(done, total):
                b.total = total
                b.update(done - b.n)
            tokenizer = train_tokenizer(args.tokenizer, train_captions, args.vocab_size, progress=merged,
                                        bert_vocab_file=args.bert_vocab)
        tokenizer.save(tokenizer_path)
        write_stamp(processed, tokenizer_path.name, {"fingerprint": tokenizer_fp})
        how = f"cut from {args.bert_vocab} by" if args.bert_vocab else "trained on"
        print(f"2. tokenizer: {tokenizer.kind}, {tokenizer.vocab_size} tokens, {how} "
              f"{len(train_captions)} training captions [{time.perf_counter() - start:.1f} s]")

    # ---------------------------------------------------------------------------------------------
    # 3. Pre-resize every image and tokenize every caption, split by split
    # ---------------------------------------------------------------------------------------------
    print(f"3. pre-resizing images to {image_size}x{image_size} and tokenizing captions into {processed}")
    counts = {}
    for split in splits:
        images_path, json_path = split_files(processed, split.name)
        paths = [split.image_dir / name for name in split.file_names]
        start = time.perf_counter()
        cache_fp = fingerprint("images", FORMAT_VERSION, image_size, [str(p) for p in paths], file_stats(paths))
        stamp = is_done(processed, images_path.name, cache_fp)
        if stamp:
            failures, cache_note = stamp["failures"], "images up to date"
        else:
            # Drop stamps first: the split's old outputs must not pass for the new ones.
            for output in (images_path, json_path):
                stamp_path(processed, output.name).unlink(missing_ok=True)
            with bar(len(paths), f"{split.name} images", "img") as b:
                failures = build_image_cache(paths, images_path, image_size, args.workers, b.update)
            write_stamp(processed, images_path.name, {"fingerprint": cache_fp, "failures": failures})
            cache_note = f"{len(paths) - len(failures)} images resized"
        for _, reason, message in failures:
            skips.add(split.name, reason, message)
        bad_rows = {row for row, _, _ in failures}
        split = split.select([i for i in range(len(paths)) if i not in bad_rows])

        json_fp = fingerprint("split", tokenizer_fp, cache_fp, split.image_ids, split.file_names, split.captions)
        if is_done(processed, json_path.name, json_fp):
            token_note = "captions up to date"
        else:
            n_captions = sum(len(c) for c in split.captions)
            with bar(len(split.captions), f"{split.name} captions", "img") as b:
                tokens = tokenize_captions(tokenizer, split.captions, b.update)
            write_split_json(json_path, split, tokens, image_size)
            write_stamp(processed, json_path.name, {"fingerprint": json_fp})
            token_note = f"{n_captions} captions tokenized"
        counts[split.name] = {"images": len(split.image_ids), "captions": sum(len(c) for c in split.captions)}
        print(f"   {split.name}: {cache_note}, {token_note} [{time.perf_counter() - start:.1f} s]")

    # ---------------------------------------------------------------------------------------------
    # 4. meta.json and the summary
    # ---------------------------------------------------------------------------------------------
    meta = {
        "format_version": FORMAT_VERSION,
        "source": args.source,
        "coco_dir": str(coco_dir),
        "image_size": image_size,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "splits": counts,
        "skipped_counts": skips.counts(),
        "skipped": skips.items,
        "options": {k: v for k, v in vars(args).items() if k != "no_progress"},
    }
    write_json(processed / "meta.json", meta)
    _print_summary(skips)
    print(f"4. done: {processed / 'meta.json'}")
    return meta


def default_data_dir(args: argparse.Namespace) -> str:
    """data/<source>; for Karpathy's files the dataset they name: dataset_flickr8k.json -> data/flickr8k,
    dataset_coco.json -> data/coco_karpathy (data/coco is COCO 2017's)."""
    if args.source != "karpathy":
        return f"data/{args.source}"
    name = Path(args.karpathy_file).stem.removeprefix("dataset_")
    return f"data/{'coco_karpathy' if name == 'coco' else name}"


def _remove_stale_splits(processed: Path, present: set[str]) -> None:
    """Delete the outputs of splits that this run does not have (e.g. unlabeled from an older run)."""
    for images_path in processed.glob("*_images.npy"):
        split = images_path.name.removesuffix("_images.npy")
        if split not in present:
            for output in split_files(processed, split):
                output.unlink(missing_ok=True)
                stamp_path(processed, output.name).unlink(missing_ok=True)


def _print_summary(skips: SkipLog) -> None:
    counts = skips.counts()
    if not counts:
        print("   nothing skipped")
        return
    print(f"   skipped {len(skips.items)} items:")
    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"     {n:6d}  {reason}")
        items = [entry for entry in skips.items if entry["reason"] == reason]
        for entry in items[:MAX_LISTED_PER_REASON]:
            print(f"             {entry['split']}: {entry['item']}")
        if len(items) > MAX_LISTED_PER_REASON:
            print(f"             ... and {len(items) - MAX_LISTED_PER_REASON} more (all in meta.json)")


if __name__ == "__main__":
    run_script(main)
