"""Use it: caption your own pictures from the command line, or on a small web page.

    python caption.py -c runs/shapes_captioner/checkpoint_best.pt photo.png more_photos/
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --top 3 --json photo.png
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --attention attention/ photo.png
    python caption.py -c runs/shapes_captioner/checkpoint_best.pt --serve        # then open http://127.0.0.1:8000/

A path is an image file or a folder (its image files, sorted by name; ``-r`` goes into subfolders).
Each image is read by the project's robust loader and resized exactly as training saw it
(``captioner/evaluation/own_images.py``); a file that is missing, broken, truncated, not an image or
a decompression bomb is reported with its reason, and the others are still captioned. The exit
status is non-zero only when no image could be captioned.

The search settings (beam size, alpha, caption length) default to the checkpoint's ``eval``
section, as in evaluate.py. ``--top K`` prints the K best of the beam's hypotheses with their
scores; ``--attention DIR`` draws, per image, the decoder's cross-attention for each word (as
evaluate.py's attention.png). ``--serve`` loads the model once and serves a page on which one
drops a picture and hovers over the words of its caption (``captioner/serve/``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.cli import run_script
from captioner.data.image_io import BadImageError
from captioner.evaluation.own_images import ImageCaptioner
from captioner.evaluation.pictures import attention_figure, picture_scale, save_png
from captioner.serve.server import MAX_UPLOAD_BYTES, CaptionServer
from captioner.training.checkpoints import latest_checkpoint
from captioner.training.devices import resolve_device

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


class NothingCaptioned(ValueError):
    """Not one of the given images could be captioned (the script then exits with status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Caption image files and folders with a trained captioner (the K best captions with their "
                    "scores, JSON output, per-word attention pictures), or serve a web page that captions "
                    "uploaded pictures and shows where the model looked for each word.",
        epilog="examples: python caption.py -c runs/shapes_captioner/checkpoint_best.pt photo.png folder/ --top 3; "
               "python caption.py -c runs/shapes_captioner/checkpoint_best.pt --serve",
    )
    parser.add_argument("-c", "--checkpoint", required=True,
                        help="captioner checkpoint (train_captioner.py's checkpoint*.pt), or its run folder "
                             "(then its latest checkpoint<N>.pt)")
    parser.add_argument("paths", nargs="*", help="image files and folders of images")
    parser.add_argument("-r", "--recursive", action="store_true", help="also caption the images in subfolders")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size; 1 = greedy (default: the checkpoint's eval.beam_size, or K of --top K "
                             "if that is larger)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="GNMT length-normalisation exponent (default: the checkpoint's eval.alpha)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="most generated tokens per caption, <eos> included (default: the checkpoint's "
                             "eval.max_len)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="print the K best hypotheses of the beam with their scores (K <= the beam size)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list instead of text: per path its caption, score and beams, or its error")
    parser.add_argument("--attention", metavar="DIR", default=None,
                        help="write, per image, DIR/<name>.png: the image and the decoder's cross-attention for "
                             "each word of its caption")
    parser.add_argument("--batch-size", type=int, default=16, help="images decoded at once (default: %(default)s)")
    parser.add_argument("--cache-size", type=int, default=None,
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
                          "the network)")
    web.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    web.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                     help="largest upload accepted, in MiB (default: %(default)g)")
    return parser


def image_files(paths: list[str], recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files to caption, in order, and ``(path, reason)`` for each folder without any.

    A folder gives its files with an image suffix, sorted; a file is taken as it is (the loader
    then says whether it is an image).
    """
    files, problems = [], []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            problems.append((name, "no image files in this folder" + ("" if recursive else " (-r for subfolders)")))
        files.extend(found)
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
    for rank, beam in enumerate(record["beams"], 1):
        print(f"  {rank}  {beam['score']:8.4f}  {beam['caption']}", flush=True)


def caption_files(captioner: ImageCaptioner, files: list[Path], args) -> list[dict]:
    """Caption ``files`` in batches; per file a record ``{"path", "caption", "score", "beams"}`` (plus
    ``"attention"``: its picture) or ``{"path", "error"}``, in the order of ``files``."""
    records, taken = [], set()
    folder = Path(args.attention) if args.attention else None
    with tqdm(total=len(files), desc="captioning", unit="img", leave=False, disable=args.no_progress) as bar:
        for start in range(0, len(files), args.batch_size):
            batch, good, images = files[start : start + args.batch_size], [], []
            for path in batch:
                try:
                    images.append(captioner.load(path))  # (S, S, 3) uint8
                    good.append(path)
                except BadImageError as e:
                    records.append({"path": str(path), "error": e.reason})
                    tqdm.write(f"skipped {path}: {e.reason}", file=sys.stderr)
            results = captioner.caption(images, top=args.top, attention=folder is not None)
            for path, result in zip(good, results):
                record = {"path": str(path), "caption": result.caption, "score": round(result.beams[0].score, 4),
                          "beams": [{"caption": b.caption, "score": round(b.score, 4)} for b in result.beams]}
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


def serve(captioner: ImageCaptioner, args) -> None:
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
    print(f"serving the captioner on {server.url} (beam {captioner.beam_size}, alpha {captioner.alpha:g}, "
          f"{captioner.device}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.wait_for_replies()  # a reply already on its way still gets its log line
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Caption the paths (returns the records printed) or, with ``--serve``, serve the page."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve == bool(args.paths):
        parser.error("give image files or folders to caption, or --serve for the web page (not both)")
    if args.top < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--top, --batch-size and --threads must be at least 1")
    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = latest_checkpoint(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint)
    captioner = ImageCaptioner.from_checkpoint(checkpoint, resolve_device(args.device), args.precision, args.beam,
                                               args.alpha, args.max_len, args.cache_size)
    if args.attention and not captioner.model.decoder.attends:
        raise ValueError(f"--attention: the decoder of {checkpoint} (Show and Tell) does not attend over the image; "
                         "there are no attention maps to draw")
    if args.beam is None and args.top > captioner.beam_size:
        captioner.beam_size = args.top  # --top K alone: search with K beams to have K hypotheses
    if args.serve:
        serve(captioner, args)
        return None

    files, problems = image_files(args.paths, args.recursive)
    for name, reason in problems:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    start = time.perf_counter()
    records = caption_files(captioner, files, args)
    records += [{"path": name, "error": reason} for name, reason in problems]
    if args.json:
        print(json.dumps(records, indent=1))
    n_good = sum("caption" in r for r in records)
    print(f"captioned {n_good} of {len(records)} images in {time.perf_counter() - start:.1f} s on "
          f"{captioner.device} ({captioner.precision}), beam {captioner.beam_size}, alpha {captioner.alpha:g}, "
          f"max_len {captioner.max_len}" + (f"; attention pictures in {args.attention}" if args.attention else ""),
          file=sys.stderr)
    if not n_good:
        raise NothingCaptioned(f"no image could be captioned ({len(records)} skipped; reasons above)")
    return records


if __name__ == "__main__":
    run_script(main)
