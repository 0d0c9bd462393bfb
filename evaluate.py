"""Step 4: caption a split with batched beam search, score it, and draw what the captioner does.

    python evaluate.py -c runs/shapes_captioner/checkpoint_best.pt             # the val split
    python evaluate.py -c runs/shapes_captioner/checkpoint_best.pt --beam 6 --alpha 0.6
    python evaluate.py -c runs/shapes_captioner/checkpoint_best.pt --split test  # the test split: report this
    python evaluate.py -c runs/coco_captioner --split test                     # COCO 2017 test: captions, no scores
    python evaluate.py -c runs/flickr8k_captioner/checkpoint_best.pt --split test --official   # + the toolkit's table

Everything comes from the checkpoint: the model, the tokenizer, and the defaults of the beam size,
alpha, the caption length and the processed data folder (its ``eval`` and ``data`` settings).

Each batch of images is decoded at once by beam search over the KV cache with GNMT length
normalisation; the captions are scored with BLEU-1..4, ROUGE-L and CIDEr-D as the COCO caption toolkit
computes them (``captioner/evaluation/metrics.py``): the papers' table but METEOR and SPICE, beside the *blind baseline*: the single training caption
that is best for every image (``captioner/evaluation/blind_baseline.py``), which shows how much of the score
the image earns. On the shapes data the captions are also checked against the scenes the generator
drew (``captioner/evaluation/truth.py``): the share of their claims that are true, the share true in
full, and how well the whole-scene captions get the objects' count, colours and shapes. The checkpoint
is chosen on val (``checkpoint_best.pt``); the figures to report are those of ``--split test``
(docs/protocol.md). COCO 2017's test split has no public captions: then the captions are written and
no scores are computed. ``--official`` also scores the captions with the toolkit itself
(``pycocoevalcap`` and Java, ``captioner/evaluation/official.py``) and prints its whole table,
METEOR and SPICE included, beside the project's own.

Written to ``--out-dir`` (default: ``eval_<checkpoint name>_<split>`` beside the checkpoint):

- ``captions.json``: the COCO results format ``[{"image_id": int, "caption": str}]``, which the
  official toolkit reads too (``--out`` puts it elsewhere);
- ``captions.scores.json`` beside it: the scores, the truth score (null on COCO), the blind baseline,
  the toolkit's table with ``--official`` (else null) and the settings;
- ``samples.png``: sample images with the generated caption and one reference; on shapes each
  caption is marked true (green) or false (red), gray where the truth parser could not read it;
- ``attention.png``: for a few images, the decoder's cross-attention over the image patches while
  it generated each word (last layer, heads averaged; the attention LSTM has one "head"). Not written for
  the Show-and-Tell LSTM, which does not attend.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from captioner.cli import run_script
from captioner.config import CaptionerRunConfig, config_from_dict
from captioner.data.datasets import to_tensors
from captioner.data.loaders import image_captions_loader
from captioner.data.processed import read_split
from captioner.data.transforms import EvalTransform
from captioner.evaluation.attention_maps import word_attention
from captioner.evaluation.blind_baseline import blind_scores, choose_blind_caption
from captioner.evaluation.captioning import caption_images, reference_captions
from captioner.evaluation.metrics import evaluate_captions
from captioner.evaluation.official import check_toolkit, official_scores, official_table
from captioner.evaluation.pictures import attention_figure, captions_figure, picture_scale, save_png
from captioner.evaluation.truth import check_caption, shapes_scenes, truth_scores
from captioner.infra.fileio import atomic_write_bytes
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID
from captioner.training.checkpoints import latest_checkpoint, load_captioner
from captioner.training.devices import autocast, resolve_device, resolve_precision

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")
# The truth score's rows in the printed table: (label, where in truth_scores' dict).
TRUTH_ROWS = (("claims true", ("claims_true",)), ("captions true", ("captions_true",)), ("unparsed", ("unparsed",)),
              ("scene: count", ("whole_scene", "count")), ("scene: colours", ("whole_scene", "colours")),
              ("scene: shapes", ("whole_scene", "shapes")))
N_SAMPLES = 8  # images in samples.png
N_ATTENTION = 3  # images in attention.png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Caption a split with batched beam search, print BLEU-1..4, ROUGE-L, CIDEr-D and (on the shapes data) "
                    "the truth score beside a blind baseline, and write the captions (COCO results format), the "
                    "scores, a PNG of sample captions marked true/false and a PNG of the decoder's cross-attention "
                    "per word.",
        epilog="example: python evaluate.py -c runs/shapes_captioner/checkpoint_best.pt --beam 6",
    )
    parser.add_argument("-c", "--checkpoint", required=True,
                        help="captioner checkpoint (train_captioner.py's checkpoint*.pt), or its run folder "
                             "(then its latest checkpoint<N>.pt)")
    parser.add_argument("--split", default="val",
                        help="processed split to caption: val (default; where checkpoint_best.pt was chosen) or "
                             "test (the figures to report)")
    parser.add_argument("--official", action="store_true",
                        help="also score the captions with the COCO caption toolkit (pip install pycocoevalcap, and "
                             "a Java runtime) and print its whole table (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) "
                             "beside the project's; SPICE needs Stanford CoreNLP, which the toolkit downloads once")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size; 1 = greedy (default: the checkpoint's eval.beam_size)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="GNMT length-normalisation exponent (default: the checkpoint's eval.alpha)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="most generated tokens per caption, <eos> included (default: the checkpoint's "
                             "eval.max_len)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images decoded at once (default: the checkpoint's data.batch_size)")
    parser.add_argument("--processed-dir", default=None,
                        help="processed data folder (default: the checkpoint's data.processed_dir)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--precision", default="auto",
                        help="auto | bf16 | fp16 | fp32 (default: auto = bf16 or fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch (default: PyTorch's choice, about one per core); on a CPU "
                             "that other busy processes share, 1 can be several times faster")
    parser.add_argument("--out", default=None,
                        help="the captions file, COCO results format (default: <out-dir>/captions.json); the "
                             "scores go beside it as <name>.scores.json")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the PNGs and, without --out, the JSON files (default: "
                             "eval_<checkpoint name>_<split> in the checkpoint's folder)")
    parser.add_argument("--limit", type=int, default=None,
                        help="caption only the first N images of the split (a quick look; the scores and the "
                             "blind baseline then cover those N)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return parser


def output_paths(checkpoint: Path, split: str, out_dir: str | None, out: str | None) -> tuple[Path, Path, Path]:
    """``(folder for the PNGs, captions file, scores file)``."""
    folder = Path(out_dir) if out_dir else checkpoint.parent / f"eval_{checkpoint.stem}_{split}"
    results = Path(out) if out else folder / "captions.json"
    return folder, results, results.with_name(f"{results.stem}.scores.json")


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def first_images(dataset, n: int) -> tuple[torch.Tensor, list[int]]:
    """The first ``n`` images of an ``ImageWithCaptionsDataset``: uint8 (n, 3, S, S) and their ids."""
    batch = to_tensors(dataset.get_batch(range(n)))
    return batch["images"].contiguous(), batch["image_ids"].tolist()


def _at(scores: dict | None, path: tuple[str, ...]):
    """``scores[path[0]][path[1]]...``, or None when ``scores`` or a value on the way is None."""
    for key in path:
        scores = None if scores is None else scores[key]
    return scores


def _cell(value: float | None) -> str:
    return f"{value:10.4f}" if value is not None else f"{'-':>10}"


def score_table(model_scores: dict | None, blind: dict | None, truth: dict | None = None) -> str:
    """The model's and the blind baseline's scores side by side, one metric a line: BLEU and CIDEr-D
    (when there are references), then the truth score's rows (on shapes); "-" where there is no value."""
    rows = [(name, model_scores[name], blind[name]) for name in METRICS] if model_scores is not None else []
    if truth is not None:
        rows += [(label, _at(truth["model"], path), _at(truth["blind_baseline"], path)) for label, path in TRUTH_ROWS]
    lines = [f"{'':16}{'model':>10}{'blind':>10}"]
    lines += [f"{label:16}{_cell(model)}{_cell(blind)}" for label, model, blind in rows]
    return "\n".join(lines)


@torch.no_grad()
def draw_attention(model, tokenizer, images: torch.Tensor, transform, device, precision: str, beam: int,
                   alpha: float, max_len: int):
    """attention.png's figure for uint8 images (n, 3, S, S): decode them again (the same search as
    the split's, deterministic) to get the token ids, then read the cross-attention teacher-forced."""
    x = transform(images.to(device))  # (n, 3, H, W) float
    with autocast(device, precision):
        tokens, _ = model.generate(x, SOS_ID, EOS_ID, PAD_ID, max_len, beam_size=beam, alpha=alpha)  # (n, L)
        per_image = word_attention(model, x, tokens, tokenizer)
    return attention_figure(images, [words for words, _ in per_image], [maps for _, maps in per_image],
                            scale=picture_scale(images.shape[-1]))


def main(argv: list[str] | None = None) -> dict:
    """Evaluate and write the files; returns what the scores file holds."""
    args = build_parser().parse_args(argv)
    checkpoint = latest_checkpoint(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model, tokenizer, payload = load_captioner(checkpoint, device)
    cfg = config_from_dict(CaptionerRunConfig, payload["config"], source=f"{checkpoint} (stored config)")
    beam = cfg.eval.beam_size if args.beam is None else args.beam
    alpha = cfg.eval.alpha if args.alpha is None else args.alpha
    max_len = cfg.eval.max_len if args.max_len is None else args.max_len
    batch_size = cfg.data.batch_size if args.batch_size is None else args.batch_size
    processed_dir = args.processed_dir or cfg.data.processed_dir
    if beam < 1 or batch_size < 1 or any(n is not None and n < 1 for n in (args.limit, args.threads)):
        raise ValueError("--beam, --batch-size, --limit and --threads must be at least 1")
    if not 1 <= max_len <= model.decoder.max_len:
        raise ValueError(f"--max-len must be between 1 and {model.decoder.max_len}, the most positions "
                         f"the decoder of {checkpoint} was built for; got {max_len}")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official:
        check_toolkit()  # before captioning: say what to install now, not after minutes of beam search

    # ---- the scenes, on shapes: before captioning, so that a mismatched folder fails fast ------
    loader = image_captions_loader(processed_dir, args.split, batch_size)
    try:
        all_references = reference_captions(loader.dataset, loader.dataset.image_ids)
        scenes = shapes_scenes(processed_dir, list(all_references), all_references)  # None on COCO
    except FileNotFoundError as e:
        print(f"note: no truth score: {e}")
        scenes = None

    # ---- caption the split ------------------------------------------------------------------
    transform = EvalTransform.for_encoder(model.encoder.config)
    start = time.perf_counter()
    captions = caption_images(model, loader, tokenizer, transform, device, precision, beam, alpha, max_len,
                              limit=args.limit, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    out_dir, results_path, scores_path = output_paths(checkpoint, args.split, args.out_dir, args.out)
    write_json(results_path, [{"image_id": image_id, "caption": text} for image_id, text in captions.items()])
    print(f"captioned {len(captions)} {args.split} images in {seconds:.1f} s ({len(captions) / seconds:.1f} "
          f"images/s) on {device} ({precision}), beam {beam}, alpha {alpha:g}, max_len {max_len} -> {results_path}")

    # ---- scores and the truth score, beside the blind baseline ------------------------------
    references = reference_captions(loader.dataset, captions)
    scored = {image_id: refs for image_id, refs in references.items() if refs}
    model_scores = blind = truth = None
    if not scored:
        print(f"split {args.split!r} of {processed_dir} has no reference captions (COCO's test split never "
              "does): the captions are written, but no BLEU or CIDEr-D can be computed")
    else:
        if len(scored) < len(references):
            print(f"note: {len(references) - len(scored)} images have no reference captions and are not scored")
        model_scores = evaluate_captions(scored, {image_id: captions[image_id] for image_id in scored})
        chosen = choose_blind_caption(read_split(processed_dir, "train")[0]["captions"])
        blind = {"caption": chosen.caption, "heldout_cider_d": chosen.heldout_cider_d,
                 "n_candidates": chosen.n_candidates, "n_heldout": chosen.n_heldout,
                 "scores": blind_scores(chosen.caption, scored)}
    if scenes is not None:
        truth = {"model": truth_scores(captions, scenes),
                 "blind_baseline": truth_scores(dict.fromkeys(captions, blind["caption"]), scenes) if blind else None}
    if model_scores is not None or truth is not None:
        print(score_table(model_scores, blind["scores"] if blind else None, truth))
    if model_scores is not None:
        print(f"images {model_scores['n_images']}, empty captions {model_scores['n_empty']}; "
              f"beam {beam}, alpha {alpha:g}")
        print(f"blind baseline: {chosen.caption!r} for every image (of the {chosen.n_candidates} most frequent "
              f"training captions, the best CIDEr-D on {chosen.n_heldout} held-out training images)")
    official = None
    if args.official and model_scores is not None:
        official = official_scores(scored, {image_id: captions[image_id] for image_id in scored})
        print("the COCO caption toolkit (pycocoevalcap) on the same captions:")
        print(official_table(model_scores, official))
    elif args.official:
        print("--official: no reference captions on this split, nothing for the toolkit to score")
    if truth is not None:
        whole = truth["model"]["whole_scene"]["n_captions"]
        print(f"truth: {truth['model']['n_claims']} claims checked against the generator's scenes; unparsed captions "
              f"count as not true and their claims are not counted; scene: rows cover the {whole} captions that "
              "list the whole scene, object by object from the left")

    # ---- pictures ---------------------------------------------------------------------------
    n_samples = min(N_SAMPLES, len(captions))
    images, image_ids = first_images(loader.dataset, n_samples)  # (n, 3, S, S) uint8
    verdicts = [check_caption(captions[i], scenes[i]).true for i in image_ids] if scenes is not None else None
    samples = captions_figure(images, [captions[i] for i in image_ids],
                              [references[i][0] if references[i] else None for i in image_ids],
                              scale=picture_scale(images.shape[-1]), verdicts=verdicts)
    samples_path = save_png(samples, out_dir / "samples.png")
    attention_path = None
    if model.decoder.attends:
        attention = draw_attention(model, tokenizer, images[:N_ATTENTION], transform, device, precision, beam,
                                   alpha, max_len)
        attention_path = save_png(attention, out_dir / "attention.png")
    else:
        print("no attention.png: this decoder (Show and Tell) does not attend over the image")
    print(f"pictures: {samples_path}" + (f", {attention_path}" if attention_path else ""))

    summary = {
        "checkpoint": str(checkpoint), "split": args.split, "processed_dir": str(processed_dir),
        "n_images": len(captions), "beam_size": beam, "alpha": alpha, "max_len": max_len,
        "device": str(device), "precision": precision, "caption_seconds": round(seconds, 3),
        "model": model_scores, "blind_baseline": blind, "truth": truth, "official": official,
        "files": {"captions": str(results_path), "samples": str(samples_path), "attention": str(attention_path) if attention_path else None},
    }
    write_json(scores_path, summary)
    print(f"scores -> {scores_path}")
    return summary


if __name__ == "__main__":
    run_script(main)
