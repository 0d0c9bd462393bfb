"""Caption a split by batched beam search and pair the captions with their references.

:func:`caption_images` decodes each batch of an :func:`~captioner.data.loaders.image_captions_loader`
at once, with beam search over the KV cache (``transformer_components/generation.py``);
:func:`reference_captions` looks up the raw reference captions that the metrics compare against.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID
from captioner.training.devices import autocast
from transformer_components import EncoderDecoder


@torch.no_grad()
def caption_images(model: EncoderDecoder, loader, tokenizer, transform, device: torch.device,
                   precision: str, beam_size: int, alpha: float, max_len: int, limit: int | None = None,
                   progress: bool = True) -> dict[int, str]:
    """Caption the images of an ``"image_captions"`` loader: ``{image_id: caption}``.

    Each batch is decoded at once by batched beam search (greedy when ``beam_size`` is 1) over the
    KV cache, with GNMT length normalisation ``alpha``; ``max_len`` counts generated tokens,
    ``<eos>`` included. ``limit`` stops after that many images (None or 0: all), in loader order.
    """
    model.eval()
    captions: dict[int, str] = {}
    total = len(loader.dataset) if not limit else min(limit, len(loader.dataset))
    with tqdm(total=total, desc="captioning", leave=False, disable=not progress) as bar:
        for batch in loader:
            images, image_ids = batch["images"], batch["image_ids"]
            keep = total - len(captions)
            images, image_ids = images[:keep], image_ids[:keep]  # (n, 3, S, S), (n,)
            x = transform(images.to(device, non_blocking=True))  # (n, 3, H, W) float
            with autocast(device, precision):
                tokens, _ = model.generate(x, SOS_ID, EOS_ID, PAD_ID, max_len, beam_size=beam_size, alpha=alpha)
            for image_id, row in zip(image_ids.tolist(), tokens.tolist()):
                captions[image_id] = tokenizer.decode(row)
            bar.update(len(image_ids))
            if len(captions) >= total:
                break
    return captions


def reference_captions(dataset, image_ids) -> dict[int, list[str]]:
    """The raw reference captions of ``image_ids`` from an ``ImageWithCaptionsDataset``."""
    row_of = {int(i): row for row, i in enumerate(dataset.image_ids)}
    return {int(i): list(dataset.captions[row_of[int(i)]]) for i in image_ids}
