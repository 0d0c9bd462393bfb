"""Retrieval: the nearest captions of an image (and images of a caption), Recall@K, and its random baseline.

**Top-k search over a bank.** Every embedding is a unit vector, so the best matches of a query are the
rows of the bank with the largest dot product. COCO has about 600k training captions; a full
(queries x captions) score matrix would not fit in memory for many queries, so :func:`top_k_search`
walks the bank in chunks and keeps a running top-k::

    best = []                                  (Q, 0) scores and indices so far
    for each chunk of the bank (c rows):
        scores = queries @ chunk.T             (Q, c)
        best = top-k of (best | scores)        (Q, k)   memory: Q x (k + c), never Q x N

Equal scores are ranked by row, the earlier row first, so the result does not depend on the chunk size.

**Recall@K.** Image -> text: the fraction of images with a hit among the K best-scoring captions of
the split. Text -> image: the fraction of captions with a hit among the K best-scoring images.
**A hit is a caption with the same text as one of the image's own captions** (the same token ids,
what the text tower reads): on shapes many captions are word-for-word copies of another image's
caption, with the same embedding, and which of the tied copies ranks first would otherwise decide
the score (so it would move with the chunk size and the caption order). Text -> image likewise: an
image is a hit for a caption when one of its own captions has that text. A model that ranks at random
finds one of m relevant items among N in its top K with probability ``1 - C(N - m, K) / C(N, K)``
(:func:`random_recall`), which is K / N when there is one relevant item and about m K / N for m.
See docs/retrieval.md#ties-in-recallk.
"""

from __future__ import annotations

from collections import Counter
from math import comb

import torch
from torch import Tensor
from tqdm import tqdm

from captioner.data.loaders import caption_loader
from captioner.text.tokenizers import PAD_ID
from captioner.training.devices import autocast

RECALL_KS = (1, 5, 10)


@torch.no_grad()
def top_k_search(queries: Tensor, bank: Tensor, k: int, chunk_size: int = 65536) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``bank`` (N, E) with the largest dot product with each query (Q, E), best first.

    Returns (scores (Q, k), indices (Q, k) long); equal scores in row order. The bank is read ``chunk_size``
    rows at a time, so memory stays at Q x (k + chunk_size) scores however large N is (see the module docstring).
    Example: queries [[1, 0]], bank [[0, 1], [1, 0], [0.6, 0.8]], k = 2 -> scores [[1.0, 0.6]], indices [[1, 2]].
    """
    k = min(k, bank.shape[0])
    best_scores = queries.new_empty(queries.shape[0], 0)  # (Q, 0)
    best_index = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)  # (Q, 0)
    for start in range(0, bank.shape[0], chunk_size):
        chunk = bank[start : start + chunk_size].to(queries.device, queries.dtype)  # (c, E)
        scores = queries @ chunk.T  # (Q, c)
        index = torch.arange(start, start + chunk.shape[0], device=queries.device).expand_as(scores)  # (Q, c)
        scores, index = torch.cat([best_scores, scores], 1), torch.cat([best_index, index], 1)  # (Q, k + c)
        # a stable sort keeps equal scores in row order (the earlier best, then the chunk): ties are
        # ranked by row whatever the chunking (topk's order of equal values is unspecified)
        scores, position = scores.sort(dim=1, descending=True, stable=True)  # (Q, k + c)
        best_scores, best_index = scores[:, :k], index.gather(1, position[:, :k])  # (Q, k)
    return best_scores, best_index


def recall_at_k(image_emb: Tensor, text_emb: Tensor, caption_image: Tensor, caption_text: Tensor | None = None,
                ks=RECALL_KS, chunk_size: int = 65536) -> dict[str, float]:
    """Recall@K both ways: ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}`` in [0, 1].

    image_emb (N, E), text_emb (M, E) unit vectors; caption_image (M,) long, the image row of each caption;
    caption_text (M,) long, equal for captions of the same text (:func:`embed_split`'s; None: all different).
    A caption is a hit for an image when its text is that of one of the image's own captions.
    """
    K = max(ks)
    device = image_emb.device
    caption_image = caption_image.to(device)
    caption_text = torch.arange(len(caption_image), device=device) if caption_text is None else caption_text.to(device)
    n_texts = int(caption_text.max()) + 1 if len(caption_text) else 1
    owned = caption_image * n_texts + caption_text  # (M,) the (image, text) pairs that are hits

    def is_hit(image, text):  # image, text: long tensors of one shape
        return torch.isin(image * n_texts + text, owned)

    _, top_captions = top_k_search(image_emb, text_emb, K, chunk_size)  # (N, K) caption rows
    images = torch.arange(image_emb.shape[0], device=device)[:, None].expand_as(top_captions)  # (N, K)
    own = is_hit(images, caption_text[top_captions])  # (N, K)
    _, top_images = top_k_search(text_emb, image_emb, K, chunk_size)  # (M, K) image rows
    found = is_hit(top_images, caption_text[:, None].expand_as(top_images))  # (M, K)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = own[:, :k].any(1).float().mean().item()
        out[f"t2i_R@{k}"] = found[:, :k].any(1).float().mean().item()
    return out


def relevant_counts(caption_image: Tensor, caption_text: Tensor, n_images: int) -> tuple[list[int], list[int]]:
    """How many hits each image has among the captions (N,), and each caption among the images (M,),
    under :func:`recall_at_k`'s rule: the arguments of :func:`random_recall`.

    Example: caption_image [0, 0, 1], caption_text [5, 6, 5] -> ([3, 2], [2, 1, 2]): caption 2 has the
    text of caption 0, so it is a hit for image 0 too, and image 1 is a hit for caption 0.
    """
    image, text = caption_image.tolist(), caption_text.tolist()
    captions_of_text = Counter(text)  # text -> how many captions have it
    pairs = set(zip(image, text))  # the (image, text) hits
    images_of_text = Counter(t for _, t in pairs)  # text -> how many images own it
    per_image = [0] * n_images
    for i, t in pairs:
        per_image[i] += captions_of_text[t]
    return per_image, [images_of_text[t] for t in text]


def random_recall(hits_per_image: list[int], hits_per_caption: list[int], ks=RECALL_KS) -> dict[str, float]:
    """The expected Recall@K of random rankings, same keys as :func:`recall_at_k`; the arguments are
    :func:`relevant_counts` (N images with m hits each among the M captions, M captions with r hits
    each among the N images). K at or above the number ranked finds every hit.

    Example: 2 images with 1 caption each, no shared text: text -> image R@1 = 1/2, image -> text R@1 = 1/2.
    """
    def expected(hits: list[int], n: int, k: int) -> float:
        k = min(k, n)  # the whole list: every relevant item is in it
        return sum(1 - comb(n - m, k) / comb(n, k) for m in hits) / len(hits)

    return {f"{way}_R@{k}": expected(hits, n, k) for k in ks
            for way, hits, n in (("i2t", hits_per_image, len(hits_per_caption)),
                                 ("t2i", hits_per_caption, len(hits_per_image)))}


@torch.no_grad()
def embed_split(model, processed_dir: str, split: str, transform, device: torch.device, precision: str,
                batch_size: int, max_len: int, show: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every image and caption of a split, embedded: (image_emb (N, E), text_emb (M, E), caption_image (M,),
    caption_text (M,)), :func:`recall_at_k`'s arguments; caption_text numbers the distinct token sequences
    that the text tower read.

    Images are read once each (captions grouped by image), rows in the split's order; the result is float32.
    Raises ValueError for a split without captions (COCO's and shapes' test split).
    """
    loader = caption_loader(processed_dir, split, batch_size, shuffle=False, max_len=max_len, group_by_image=True)
    model.eval()
    images, texts, owners, offset = [], [], [], 0
    text_ids, caption_text = {}, []  # token ids without padding -> its number; each caption's number
    for batch in tqdm(loader, desc=f"embedding {split}", leave=False, disable=not show):
        with autocast(device, precision):
            x = transform(batch["images"].to(device))  # (U, 3, H, W)
            image_emb, text_emb = model(x, batch["tokens"].to(device))  # (U, E), (B, E)
        images.append(image_emb.float())
        texts.append(text_emb.float())
        owners.append(batch["image_index"].to(device) + offset)  # (B,) rows in the whole split
        offset += image_emb.shape[0]
        for row in batch["tokens"].tolist():
            caption_text.append(text_ids.setdefault(tuple(t for t in row if t != PAD_ID), len(text_ids)))
    return torch.cat(images), torch.cat(texts), torch.cat(owners), torch.tensor(caption_text, device=device)
