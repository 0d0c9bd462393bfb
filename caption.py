"""Use it: caption your own pictures from the command line, or on a small web page.

    python caption.py -c runs/shapes_captioner/checkpoint_best.pt photo.png more_photos/
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --top 3 --json photo.png
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --attention attention/ photo.png
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --serve        # then open http://127.0.0.1:8000/
    python caption.py -c runs/shapes_retrieval --top 5 photo.png     # the 5 nearest training captions

A path is an image file or a folder (its image files, sorted by name; ``-r`` goes into subfolders).
Each image is read by the project's robust loader and resized exactly as training saw it
(``captioner/evaluation/own_images.py``); a file that is missing, broken, truncated, not an image or
a decompression bomb is reported with its reason, and the others are still captioned. The exit
status is non-zero only when no image could be captioned.

The search settings (beam size, alpha, caption length) default to the checkpoint's ``eval``
section, as in evaluate.py. ``--top K`` prints the K best of the beam's hypotheses with their
scores; ``--attention DIR`` draws, per image, the decoder's cross-attention for each word (as
evaluate.py's attention.png). ``--serve`` loads the model once and serves a page on which one
drops a picture and hovers over the words of its caption (``captioner/serve/``). A picture that is
not square loses the edges of its longer side to the centre crop, as in training; the command says
how much was kept, and the page shows the square the model saw.

With a retrieval checkpoint (``train_retrieval.py``'s), nothing is generated: the command and the
page show the K training captions nearest to each picture with their cosine similarities
(``captioner/evaluation/caption_bank.py``: the bank of training captions is embedded once and cached
beside the checkpoint). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.cli import run_script
from captioner.data.image_io import BadImageError
from captioner.evaluation.caption_bank import CaptionRetriever
from captioner.evaluation.own_images import ImageCaptioner, crop_note
from captioner.evaluation.pictures import attention_figure, picture_scale, save_png
from captioner.models.dual_encoder import KIND as RETRIEVAL_KIND
from captioner.serve.server import MAX_UPLOAD_BYTES, CaptionServer
from captioner.training.checkpoints import CheckpointError, latest_checkpoint, load_checkpoint
from captioner.training.devices import resolve_device

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
MAX_LEN_LIMIT = 200  # most tokens --max-len may ask for: a caption is a sentence, and beam search's time grows with it
GENERATION_FLAGS = ("beam", "alpha", "max_len", "attention")  # meaningless for a retrieval checkpoint


class NothingCaptioned(ValueError):
    """Not one of the given images could be captioned (the script then exits with status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Caption image files and folders with a trained captioner (the K best captions with their "
                    "scores, JSON output, per-word attention pictures), or serve a web page that captions "
                    "uploaded pictures and shows where the model looked for each word. With a retrieval "
                    "checkpoint: the K nearest training captions and their similarities. See docs/serving.md.",
        epilog="examples: python caption.py -c runs/shapes_captioner/checkpoint_best.pt photo.png folder/ --top 3; "
               "python caption.py -c runs/shapes_captioner/checkpoint_best.pt --serve",
    )
    parser.add_argument("-c", "--checkpoint", required=True,
                        help="captioner checkpoint (train_captioner.py's checkpoint*.pt), or its run folder "
                             "(then its latest checkpoint<N>.pt); or a retrieval checkpoint (train_retrieval.py's): "
                             "then the nearest training captions are shown with their similarities")
    parser.add_argument("paths", nargs="*", help="image files and folders of images")
    parser.add_argument("-r", "--recursive", action="store_true", help="also caption the images in subfolders")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size; 1 = greedy (default: the checkpoint's eval.beam_size, or K of --top K "
                             "if that is larger)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="GNMT length-normalisation exponent (default: the checkpoint's eval.alpha)")
    parser.add_argument("--max-len", type=int, default=None,
                        help=f"most generated tokens per caption, <eos> included, from 1 to {MAX_LEN_LIMIT} "
                             "(default: the checkpoint's eval.max_len)")
    parser.add_argument("--top", type=int, default=None, metavar="K",
                        help="print the K best hypotheses of the beam with their scores (K <= the beam size; "
                             "default 1); for a retrieval checkpoint the K nearest training captions (default: "
                             "the checkpoint's eval.top_k)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list instead of text: per path its caption, score and beams, or its error")
    parser.add_argument("--attention", metavar="DIR", default=None,
                        help="write, per image, DIR/<name>.png: the image and the decoder's cross-attention for "
                             "each word of its caption")
    parser.add_argument("--batch-size", type=int, default=16, help="images decoded at once (default: %(default)s)")
    parser.add_argument("--cache-size", type=int, default=None, metavar="PIXELS",
                        help="the size images are first resized and centre-cropped to, as in process_coco.py's "
                             "cache (default: read from the checkpoint's processed data folder, else the ViT's "
                             "input size)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--precision", default="auto",
                        help="auto | bf16 | fp16 | fp32 (default: auto = bf16 or fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of PyTorch (default: PyTorch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    web = parser.add_argument_group("web page")
    web.add_argument("--serve", action="store_true", help="serve the web page instead of captioning paths")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 opens it to "
                          "the network: connections, request time and decoding are bounded, docs/serving.md#memory)")
    web.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    web.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                     help="largest upload accepted, in MiB (default: %(default)g)")
    return parser


def image_files(paths: list[str], recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files to caption, in order, and ``(path, reason)`` for each folder without any and
    each symbolic link in a folder whose target is gone.

    A folder gives its files with an image suffix, sorted; a file is taken as it is (the loader
    then says whether it is an image).
    """
    files, problems = [], []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            files.append(path)
            continue
        found, dangling = [], []
        for p in sorted(path.rglob("*") if recursive else path.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if p.is_file():
                    found.append(p)
                elif p.is_symlink() and not p.exists():
                    dangling.append((str(p), f"a symbolic link to {os.readlink(p)}, which does not exist"))
        if not found and not dangling:
            problems.append((name, "no image files in this folder" + ("" if recursive else " (-r for subfolders)")))
        files.extend(found)
        problems.extend(dangling)
    return files, problems


def attention_path(folder: Path, image: Path, taken: set[Path]) -> Path:
    """``folder/<image name>.png``, numbered ``_2``, ``_3``... when two images share a name."""
    path, n = folder / f"{image.stem}.png", 1
    while path in taken:
        n += 1
        path = folder / f"{image.stem}_{n}.png"
    taken.add(path)
    return path


def print_text(path: Path, record: dict, top: int) -> None:
    if top == 1:
        print(f"{path}: {record['caption']}", flush=True)
        return
    print(path)
    key = "similarity" if "similarity" in record else "score"
    for rank, beam in enumerate(record.get("captions") or record["beams"], 1):
        print(f"  {rank}  {beam[key]:8.4f}  {beam['caption']}", flush=True)


def result_record(path: Path, result, retrieval: bool, kept: float) -> dict:
    """The record of one captioned image (see :func:`caption_files`)."""
    if retrieval:  # a hypothesis's score is its cosine similarity
        return {"path": str(path), "caption": result.caption, "similarity": round(result.beams[0].score, 4),
                "captions": [{"caption": b.caption, "similarity": round(b.score, 4)} for b in result.beams],
                "kept": round(kept, 4)}
    return {"path": str(path), "caption": result.caption, "score": round(result.beams[0].score, 4),
            "beams": [{"caption": b.caption, "score": round(b.score, 4)} for b in result.beams], "kept": round(kept, 4)}


def caption_files(captioner: ImageCaptioner | CaptionRetriever, files: list[Path], args) -> list[dict]:
    """Caption ``files`` in batches; per file a record ``{"path", "caption", "score", "beams", "kept"}``
    (plus ``"attention"``: its picture; for a retrieval checkpoint ``"similarity"`` and ``"captions"``
    instead of ``"score"`` and ``"beams"``) or ``{"path", "error"}``, in the order of ``files``.
    ``kept``: the share of the picture's longer side that the centre crop kept."""
    records, taken = [], set()
    folder = Path(args.attention) if args.attention else None
    retrieval = isinstance(captioner, CaptionRetriever)
    with tqdm(total=len(files), desc="captioning", unit="img", leave=False, disable=args.no_progress) as bar:
        for start in range(0, len(files), args.batch_size):
            batch, good, images, crops = files[start : start + args.batch_size], [], [], []
            for path in batch:
                try:
                    image, kept = captioner.load_with_crop(path)  # (S, S, 3) uint8
                except BadImageError as e:
                    records.append({"path": str(path), "error": e.reason})
                    tqdm.write(f"skipped {path}: {e.reason}", file=sys.stderr)
                    continue
                images.append(image)
                good.append(path)
                crops.append(kept)
                if crop_note(kept):
                    tqdm.write(f"note: {path}: {crop_note(kept)}; the model sees only that square", file=sys.stderr)
            if retrieval:
                results = captioner.retrieve(images, args.top)
            else:
                results = captioner.caption(images, top=args.top, attention=folder is not None)
            for path, result, kept in zip(good, results, crops):
                record = result_record(path, result, retrieval, kept)
                if folder is not None:
                    best = result.beams[0]
                    figure = attention_figure(result.image[None], [best.words], [best.maps],
                                              scale=picture_scale(result.image.shape[-1]))
                    record["attention"] = str(save_png(figure, attention_path(folder, path, taken)))
                records.append(record)
                if not args.json:
                    print_text(path, record, args.top)
            bar.update(len(batch))
    order = {str(path): i for i, path in reversed(list(enumerate(files)))}
    return sorted(records, key=lambda r: order[r["path"]])  # stable: repeated paths keep their order


def serve(captioner: ImageCaptioner | CaptionRetriever, args) -> None:
    """Serve the page until Ctrl-C."""
    try:
        server = CaptionServer(captioner, args.host, args.port, int(args.max_upload_mb * 2**20))
    except OSError as e:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    try:
        if not ipaddress.ip_address(server.server_address[0]).is_loopback:
            print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page",
                  file=sys.stderr)
    except ValueError:
        pass
    if isinstance(captioner, CaptionRetriever):
        what = f"retrieval from {captioner.bank_size} training captions ({captioner.beam_size} shown by default)"
    else:
        what = f"the captioner (beam {captioner.beam_size}, alpha {captioner.alpha:g})"
    print(f"serving {what} on {server.url} ({captioner.device}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.wait_for_replies()  # a reply already on its way still gets its log line
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Refuse bad arguments before any work (loading the model, captioning), naming the flag."""
    if args.serve == bool(args.paths):
        parser.error("give image files or folders to caption, or --serve for the web page (not both)")
    for flag, value in (("--top", args.top), ("--batch-size", args.batch_size), ("--threads", args.threads),
                        ("--beam", args.beam), ("--cache-size", args.cache_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.max_len is not None and not 1 <= args.max_len <= MAX_LEN_LIMIT:
        raise ValueError(f"--max-len must be between 1 and {MAX_LEN_LIMIT} tokens, got {args.max_len}")
    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.attention and Path(args.attention).exists() and not Path(args.attention).is_dir():
        raise ValueError(f"--attention {args.attention}: that is a file; give a folder (made if missing) for the "
                         "attention pictures")


def checkpoint_kind(path: Path) -> str | None:
    """The ``kind`` a checkpoint file declares, or None where it cannot be read (the loader then says what
    is wrong with it)."""
    try:
        return load_checkpoint(path).get("kind")
    except CheckpointError:
        return None


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Caption the paths (returns the records printed) or, with ``--serve``, serve the page."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    checkpoint = latest_checkpoint(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint)
    retrieval = checkpoint_kind(checkpoint) == RETRIEVAL_KIND
    if retrieval:
        given = [f"--{name.replace('_', '-')}" for name in GENERATION_FLAGS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{' '.join(given)}: {checkpoint} is a retrieval checkpoint, which ranks the training "
                             "captions instead of generating one: there is no beam, length or attention (--top K "
                             "sets how many captions are shown)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if retrieval:
        captioner = CaptionRetriever.from_checkpoint(checkpoint, device, args.precision, args.top, args.cache_size,
                                                     show=not args.no_progress)
        print(f"caption bank: {captioner.bank_size} distinct training captions, {captioner.bank_source}",
              file=sys.stderr)
        args.top = captioner.beam_size
    else:
        captioner = ImageCaptioner.from_checkpoint(checkpoint, device, args.precision, args.beam, args.alpha,
                                                   args.max_len, args.cache_size)
        if args.attention and not captioner.model.decoder.attends:
            raise ValueError(f"--attention: the decoder of {checkpoint} (Show and Tell) does not attend over the "
                             "image; there are no attention maps to draw")
        args.top = args.top or 1
        if args.beam is None and args.top > captioner.beam_size:
            captioner.beam_size = args.top  # --top K alone: search with K beams to have K hypotheses
    if args.serve:
        serve(captioner, args)
        # Stop without the interpreter's teardown: after Ctrl-C it sometimes met a C++ thread still alive
        # and aborted ("terminate called without an active exception"); the server is closed, nothing is left.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    files, problems = image_files(args.paths, args.recursive)
    for name, reason in problems:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    start = time.perf_counter()
    records = caption_files(captioner, files, args)
    records += [{"path": name, "error": reason} for name, reason in problems]
    if args.json:
        print(json.dumps(records, indent=1))
    n_good = sum("caption" in r for r in records)
    if retrieval:
        how = f"the {captioner.bank_size} training captions, top {args.top}"
    else:
        how = f"beam {captioner.beam_size}, alpha {captioner.alpha:g}, max_len {captioner.max_len}"
    print(f"captioned {n_good} of {len(records)} images in {time.perf_counter() - start:.1f} s on "
          f"{captioner.device} ({captioner.precision}), {how}"
          + (f"; attention pictures in {args.attention}" if args.attention else ""), file=sys.stderr)
    if not n_good:
        raise NothingCaptioned(f"no image could be captioned ({len(records)} skipped; reasons above)")
    return records


if __name__ == "__main__":
    run_script(main, interrupted="interrupted")
