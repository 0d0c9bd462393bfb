"""Caption one's own pictures: image files in, the K best captions and where the decoder looked out.

The model must see what it saw in training. A training image took two steps:

1. ``process_coco.py`` wrote it into the uint8 cache: :func:`~captioner.data.image_io.load_image_rgb`
   (the robust loader: EXIF rotation, odd modes, truncated files and decompression bombs refused),
   then the shorter side resized to the cache size and the centred square cut out
   (:func:`~captioner.data.image_cache.load_and_resize`);
2. every training and evaluation step normalised it and resized it to the ViT's input size
   (:class:`~captioner.data.transforms.EvalTransform`).

An image file here takes exactly that path. The cache size is read from the processed folder the
checkpoint was trained on (its ``meta.json``); where that folder is not at hand, the ViT's own size
is used, which is the same for the shapes presets (64 px cache and 64 px ViT) and nearly the same
for COCO's (256 px cache, 224 px ViT).

:meth:`ImageCaptioner.caption` decodes a batch at once with the batched beam search and keeps the
``top`` best of its K = beam-size hypotheses, each with its score (GNMT-normalised log-probability,
the number the search ranks by) and, on request, one cross-attention map per word
(:func:`~captioner.evaluation.attention_maps.word_attention`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captioner.config import CaptionerRunConfig, config_from_dict
from captioner.data.image_cache import load_resize_and_kept
from captioner.data.image_io import BadImageError
from captioner.data.transforms import EvalTransform
from captioner.evaluation.attention_maps import word_attention
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID
from captioner.training.checkpoints import load_captioner
from captioner.training.devices import autocast, resolve_precision
from transformer_components import beam_search


@dataclass
class Hypothesis:
    """One caption of an image; ``words`` and ``maps`` (n_words, gh, gw) only when attention was asked."""

    caption: str
    score: float  # log p(caption) / ((5 + n) / 6) ** alpha, n = tokens including <eos>
    words: list[str] | None = None
    maps: Tensor | None = None


@dataclass
class CaptionedImage:
    """An image as the model saw it, (3, S, S) uint8 at the cache size, and its hypotheses, best first."""

    image: Tensor
    beams: list[Hypothesis]

    @property
    def caption(self) -> str:
        return self.beams[0].caption


def cache_size_of(processed_dir: str | Path) -> int | None:
    """The image size of the training cache that ``process_coco.py`` wrote in ``processed_dir``, or
    None when its ``meta.json`` is missing or unreadable."""
    try:
        size = json.loads((Path(processed_dir) / "meta.json").read_text(encoding="utf-8"))["image_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def load_image_bytes(data: bytes, size: int, name: str = "upload") -> tuple[np.ndarray, float]:
    """An uploaded image, decoded by the same loader as files: (size, size, 3) uint8, and the share of
    its longer side that the centre crop kept (:func:`~captioner.data.image_cache.load_resize_and_kept`).

    The loader reads files, so the bytes go to a private temporary file (its name is ours, never
    the uploader's) that is removed at once. Raises BadImageError naming ``name``, not that file.
    """
    handle, temporary = tempfile.mkstemp(prefix="caption_upload_")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        return load_resize_and_kept(temporary, size)
    except BadImageError as e:  # Pillow's own messages may quote the file: name the upload instead
        raise BadImageError(name, e.reason.replace(temporary, name)) from None
    finally:
        os.unlink(temporary)


def crop_note(kept: float) -> str | None:
    """What the centre crop cut away, for a picture that is not square (None when nothing was cut).

    >>> crop_note(0.75)
    'the centre crop kept the middle 75 % of the longer side'
    """
    if kept > 0.995:  # less than half a percent: a pixel or two
        return None
    return f"the centre crop kept the middle {100 * kept:.0f} % of the longer side"


class OwnImageLoader:
    """Reading an image file as the model's training cache held it, at ``self.image_size``."""

    image_size: int

    def load(self, path: str | Path) -> np.ndarray:
        """An image file as the cache would hold it: (S, S, 3) uint8. Raises BadImageError."""
        return self.load_with_crop(path)[0]

    def load_with_crop(self, path: str | Path) -> tuple[np.ndarray, float]:
        """:meth:`load`, and the share of the longer side the centre crop kept (see :func:`crop_note`)."""
        return load_resize_and_kept(path, self.image_size)


class ImageCaptioner(OwnImageLoader):
    """A loaded captioner with its tokenizer, preprocessing and default search settings.

    ``image_size`` is the cache size images are first resized and cropped to (see the module
    docstring); the ViT's own size comes from the model. Not thread-safe: a server runs
    :meth:`caption` under a lock.
    """

    def __init__(self, model, tokenizer, device: torch.device, precision: str, image_size: int,
                 beam_size: int, alpha: float, max_len: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.precision = device, precision
        self.image_size = image_size
        self.transform = EvalTransform.for_encoder(model.encoder.config)
        self.beam_size, self.alpha, self.max_len = beam_size, alpha, max_len
        check_settings(beam_size, 1, max_len, self.model.decoder.max_len)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: torch.device, precision: str = "auto",
                        beam_size: int | None = None, alpha: float | None = None, max_len: int | None = None,
                        image_size: int | None = None) -> ImageCaptioner:
        """Load a captioner checkpoint; settings left None come from its ``eval`` section and, for
        ``image_size``, from its training cache (else the ViT's size)."""
        model, tokenizer, payload = load_captioner(checkpoint, device, max_len=max_len or 0)
        cfg = config_from_dict(CaptionerRunConfig, payload["config"], source=f"{checkpoint} (stored config)")
        if image_size is None:
            image_size = cache_size_of(cfg.data.processed_dir) or model.encoder.config.image_size
        return cls(model, tokenizer, device, resolve_precision(precision, device), image_size,
                   cfg.eval.beam_size if beam_size is None else beam_size,
                   cfg.eval.alpha if alpha is None else alpha,
                   cfg.eval.max_len if max_len is None else max_len)

    @torch.no_grad()
    def caption(self, images: Sequence[np.ndarray], beam_size: int | None = None, alpha: float | None = None,
                top: int = 1, attention: bool = False) -> list[CaptionedImage]:
        """Caption a batch of images from :meth:`load`, all decoded at once.

        ``top``: how many of the beam's hypotheses to keep per image (at most the beam size);
        hypotheses the search could not fill (score -inf, a tiny vocabulary) are left out.
        ``attention``: also compute every kept hypothesis's per-word cross-attention maps (none for a
        decoder that does not attend, the Show-and-Tell LSTM: ``words`` and ``maps`` stay None).
        """
        beam_size = self.beam_size if beam_size is None else beam_size
        alpha = self.alpha if alpha is None else alpha
        check_settings(beam_size, top, self.max_len, self.model.decoder.max_len)
        if not len(images):
            return []
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S) uint8
        x = self.transform(pixels.to(self.device))  # (n, 3, H, W) float, what training fed the ViT
        n = x.shape[0]
        with autocast(self.device, self.precision):
            memory = self.model.encode(x)  # (n, P, C)
            tokens, scores = beam_search(self.model.decoder, memory, SOS_ID, EOS_ID, PAD_ID, self.max_len,
                                         beam_size, alpha)  # (n, K, L), (n, K) best first
            tokens, scores = tokens[:, :top], scores[:, :top]  # (n, top, L), (n, top)
            per_beam = None
            if attention and self.model.decoder.attends:  # teacher-forced again, each hypothesis beside its own image
                flat = tokens.reshape(n * tokens.shape[1], -1)  # (n * top, L)
                per_beam = word_attention(self.model, x.repeat_interleave(tokens.shape[1], 0), flat, self.tokenizer)
        results = []
        for i, (rows, row_scores) in enumerate(zip(tokens.tolist(), scores.float().tolist())):
            beams = []
            for k, (row, score) in enumerate(zip(rows, row_scores)):
                if math.isinf(score) and k > 0:
                    continue
                words, maps = per_beam[i * len(rows) + k] if per_beam is not None else (None, None)
                beams.append(Hypothesis(self.tokenizer.decode(row), score, words, maps))
            results.append(CaptionedImage(pixels[i], beams))
        return results


def check_settings(beam_size: int, top: int, max_len: int, positions: int) -> None:
    """Raise ValueError for a search the model cannot run, naming the setting."""
    if beam_size < 1:
        raise ValueError(f"the beam size must be at least 1, got {beam_size}")
    if not 1 <= top <= beam_size:
        raise ValueError(f"top must be between 1 and the beam size ({beam_size}): beam search keeps "
                         f"{beam_size} hypotheses per image; got {top}")
    if not 1 <= max_len <= positions:
        raise ValueError(f"max_len must be between 1 and {positions}, the positions the decoder was built for; "
                         f"got {max_len}")
