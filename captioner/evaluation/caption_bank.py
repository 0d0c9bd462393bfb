"""Retrieval for one's own pictures: the training captions nearest to an image, with their similarities.

A retrieval checkpoint (``train_retrieval.py``'s) does not write captions; it ranks existing ones. The
captions it ranks here are *the bank*: every distinct caption of the training split of the processed
data the checkpoint was trained on (its config's ``data.processed_dir``), each embedded once by the
text tower. An image is embedded by the image tower, preprocessed exactly as in training (the cache's
resize and centre crop, then the ViT's size), and its ``k`` nearest captions are the bank's rows with
the largest cosine similarity (:func:`~captioner.evaluation.retrieval.top_k_search`).

Identical captions have identical embeddings, so the bank keeps each text once: the top ``k`` are ``k``
different captions. Embedding the bank is the slow part (COCO's 590k training captions), so it is
cached on disk beside the checkpoint as ``caption_bank_<checkpoint name>.pt`` (written atomically by
the checkpoint writer, loaded with ``weights_only=True``) and reused while the checkpoint and the
training split are unchanged (their sizes and modification times are stored with it); where the
folder cannot be written, the bank stays in memory for this run only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.config import RetrievalRunConfig, ViTConfig, config_from_dict
from captioner.data.datasets import ImageCaptionPairDataset
from captioner.data.processed import split_files
from captioner.data.transforms import EvalTransform
from captioner.evaluation.own_images import CaptionedImage, Hypothesis, OwnImageLoader, cache_size_of
from captioner.evaluation.retrieval import top_k_search
from captioner.infra.stamps import file_stats
from captioner.models.dual_encoder import KIND, DualEncoder
from captioner.training.checkpoints import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint
from captioner.training.devices import autocast, resolve_precision

BANK_KIND = "caption_bank"
BANK_SPLIT = "train"


def bank_path(checkpoint: str | Path) -> Path:
    """Where the bank of ``checkpoint`` is cached: ``caption_bank_checkpoint3.pt`` beside ``checkpoint3.pt``
    (a name that ``checkpoint*.pt`` does not match, so it is never taken for a checkpoint)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"caption_bank_{checkpoint.stem}.pt")


def file_stamp(path: Path) -> list[int]:
    """``[size, modification time in ns]`` (the build stamps' ``file_stats``): changes whenever the file is
    rewritten."""
    return list(file_stats([path])[0])


@torch.no_grad()
def embed_bank(model: DualEncoder, processed_dir: str, max_len: int, device: torch.device, precision: str,
               batch_size: int = 256, show: bool = True) -> tuple[list[str], torch.Tensor]:
    """The distinct captions of the training split, in order of first appearance, and their unit
    embeddings (M, E) float32 on the CPU, tokenized as train_retrieval.py's loader does (``max_len``)."""
    dataset = ImageCaptionPairDataset(processed_dir, BANK_SPLIT, max_len=max_len)
    record_captions = dataset_captions(processed_dir)
    first: dict[str, int] = {}
    for pair, text in enumerate(record_captions):
        first.setdefault(text, pair)
    captions, pairs = list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))
    model.eval()
    chunks = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="embedding the caption bank", unit="batch",
                      leave=False, disable=not show):
        tokens = torch.from_numpy(dataset.pad_pairs(pairs[start : start + batch_size])).to(device)  # (b, T)
        with autocast(device, precision):
            chunks.append(model.encode_texts(tokens).float().cpu())  # (b, E)
    return captions, torch.cat(chunks)


def dataset_captions(processed_dir: str) -> list[str]:
    """The raw captions of the training split, one per (image, caption) pair, in the pairs' order."""
    with open(split_files(processed_dir, BANK_SPLIT)[1], encoding="utf-8") as f:
        return [c for image_captions in json.load(f)["captions"] for c in image_captions]


class CaptionRetriever(OwnImageLoader):
    """A loaded retrieval checkpoint with its caption bank; the same face as :class:`ImageCaptioner`
    where caption.py and the server use both (``image_size``, ``load``, ``device``, ``precision``).

    ``beam_size`` is the number of captions shown by default (the page and the server treat it as a
    captioner's beam size: how many answers a request gets).
    """

    def __init__(self, model: DualEncoder, captions: list[str], bank: torch.Tensor, device: torch.device,
                 precision: str, image_size: int, top_k: int, bank_source: str):
        self.model, self.captions, self.bank = model.eval(), captions, bank.to(device)  # bank (M, E)
        self.device, self.precision, self.image_size = device, precision, image_size
        self.transform = EvalTransform(model.image_encoder.config.image_size)
        self.beam_size, self.bank_source = top_k, bank_source

    @property
    def bank_size(self) -> int:
        return len(self.captions)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: torch.device, precision: str = "auto",
                        top_k: int | None = None, image_size: int | None = None,
                        show: bool = True) -> CaptionRetriever:
        """Load a retrieval checkpoint and its bank (from the cache beside it when that is current)."""
        checkpoint = Path(checkpoint)
        payload = load_checkpoint(checkpoint, kind=KIND)
        try:
            cfg = config_from_dict(RetrievalRunConfig, payload["config"], source=f"{checkpoint} (stored config)")
            vit = config_from_dict(ViTConfig, payload["vit"], source=f"{checkpoint} (vit)")
            model = DualEncoder(vit, cfg.text, payload["vocab_size"], cfg.data.max_caption_len,
                                cfg.contrastive.embed_dim)
        except KeyError as e:
            raise CheckpointError(f"{checkpoint}: the retrieval checkpoint lacks its {e.args[0]!r} entry") from None
        load_state_dict_checked(model, payload["model"], checkpoint)
        model.to(device)
        precision = resolve_precision(precision, device)
        processed = cfg.data.processed_dir
        split_json = split_files(processed, BANK_SPLIT)[1]
        if not split_json.is_file():
            raise FileNotFoundError(f"{checkpoint}: its caption bank is the training captions of {processed} "
                                    f"(the checkpoint's data.processed_dir), but {split_json} is not there; run "
                                    "process_coco.py as for training, or run caption.py from the folder it was "
                                    "trained in")
        stamp = {"checkpoint": file_stamp(checkpoint), "split": [str(split_json.resolve()), *file_stamp(split_json)],
                 "max_len": cfg.data.max_caption_len}
        cached = bank_path(checkpoint)
        captions, bank, source = read_bank(cached, stamp), None, f"read from {cached}"
        if captions is not None:
            captions, bank = captions
        else:
            captions, bank = embed_bank(model, processed, cfg.data.max_caption_len, device, precision, show=show)
            try:
                save_checkpoint(cached, {"kind": BANK_KIND, "stamp": stamp, "captions": captions,
                                         "embeddings": bank})
                source = f"embedded and saved to {cached}"
            except OSError as e:
                source = f"embedded and kept in memory ({cached} could not be written: {e.strerror or e})"
        if image_size is None:
            image_size = cache_size_of(processed) or vit.image_size
        return cls(model, captions, bank, device, precision, image_size, top_k or cfg.eval.top_k, source)

    @torch.no_grad()
    def retrieve(self, images: Sequence[np.ndarray], k: int | None = None) -> list[CaptionedImage]:
        """The ``k`` bank captions nearest to each image, best first; a hypothesis's ``score`` is its
        cosine similarity with the image, in [-1, 1]."""
        k = self.beam_size if k is None else k
        if k < 1:
            raise ValueError(f"the number of captions to retrieve must be at least 1, got {k}")
        if not len(images):
            return []
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S) uint8
        with autocast(self.device, self.precision):
            queries = self.model.encode_images(self.transform(pixels.to(self.device))).float()  # (n, E)
        scores, rows = top_k_search(queries, self.bank, k)  # (n, k) each, best first
        return [CaptionedImage(pixels[i], [Hypothesis(self.captions[j], s) for j, s in zip(row, row_scores)])
                for i, (row, row_scores) in enumerate(zip(rows.tolist(), scores.tolist()))]


def read_bank(path: Path, stamp: dict) -> tuple[list[str], torch.Tensor] | None:
    """The cached bank at ``path`` if it was made from the same checkpoint and split, else None."""
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path, kind=BANK_KIND)
    except CheckpointError:
        return None  # unreadable or foreign: embed again and overwrite it
    if payload.get("stamp") != stamp or not isinstance(payload.get("captions"), list):
        return None
    bank = payload.get("embeddings")
    if not isinstance(bank, torch.Tensor) or bank.shape[0] != len(payload["captions"]) or \
            not math.isfinite(float(bank.abs().sum())):
        return None
    return payload["captions"], bank.float()
