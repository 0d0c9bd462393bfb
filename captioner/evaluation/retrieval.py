"""Retrieval: the nearest captions of an image (and images of a caption), Recall@K, and its random baseline.

**Top-k search over a bank.** Every embedding is a unit vector, so the best matches of a query are the
rows of the bank with the largest dot product. COCO has about 600k training captions; a full
(queries x captions) score matrix would not fit in memory for many queries, so :func:`top_k_search`
walks the bank in chunks and keeps a running top-k::

    best = []                                  (Q, 0) scores and indices so far
    for each chunk of the bank (c rows):
        scores = queries @ chunk.T             (Q, c)
        best = top-k of (best | scores)        (Q, k)   memory: Q x (k + c), never Q x N

**Recall@K.** Image -> text: the fraction of images with at least one of their own captions among
the K best-scoring captions of the split. Text -> image: the fraction of captions whose image is
among the K best-scoring images. A model that ranks at random finds one of m relevant items among N
in its top K with probability ``1 - C(N - m, K) / C(N, K)`` (:func:`random_recall`), which is K / N
when there is one relevant item (text -> image) and about m K / N for an image's m captions.
"""

from __future__ import annotations

from math import comb

import torch
from torch import Tensor
from tqdm import tqdm

from captioner.data.loaders import caption_loader
from captioner.training.devices import autocast

RECALL_KS = (1, 5, 10)


@torch.no_grad()
def top_k_search(queries: Tensor, bank: Tensor, k: int, chunk_size: int = 65536) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``bank`` (N, E) with the largest dot product with each query (Q, E), best first.

    Returns (scores (Q, k), indices (Q, k) long). The bank is read ``chunk_size`` rows at a time, so
    memory stays at Q x (k + chunk_size) scores however large N is (see the module docstring).
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
        best_scores, position = scores.topk(min(k, scores.shape[1]), dim=1)  # (Q, k)
        best_index = index.gather(1, position)  # (Q, k)
    return best_scores, best_index


def recall_at_k(image_emb: Tensor, text_emb: Tensor, caption_image: Tensor, ks=RECALL_KS,
                chunk_size: int = 65536) -> dict[str, float]:
    """Recall@K both ways: ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}`` in [0, 1].

    image_emb (N, E), text_emb (M, E) unit vectors; caption_image (M,) long, the image row of each caption.
    """
    K = max(ks)
    caption_image = caption_image.to(image_emb.device)
    _, top_captions = top_k_search(image_emb, text_emb, K, chunk_size)  # (N, K) caption rows
    own = caption_image[top_captions] == torch.arange(image_emb.shape[0], device=image_emb.device)[:, None]  # (N, K)
    _, top_images = top_k_search(text_emb, image_emb, K, chunk_size)  # (M, K) image rows
    found = top_images == caption_image[:, None]  # (M, K)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = own[:, :k].any(1).float().mean().item()
        out[f"t2i_R@{k}"] = found[:, :k].any(1).float().mean().item()
    return out


def random_recall(captions_per_image: list[int], ks=RECALL_KS) -> dict[str, float]:
    """The expected Recall@K of random rankings, same keys as :func:`recall_at_k`.

    Example: 2 images with 1 caption each: text -> image R@1 = 1/2, image -> text R@1 = 1/2.
    """
    n_images, n_captions = len(captions_per_image), sum(captions_per_image)
    out = {}
    for k in ks:
        hit = [1 - comb(n_captions - m, k) / comb(n_captions, k) for m in captions_per_image]
        out[f"i2t_R@{k}"] = sum(hit) / n_images
        out[f"t2i_R@{k}"] = min(k, n_images) / n_images
    return out


@torch.no_grad()
def embed_split(model, processed_dir: str, split: str, transform, device: torch.device, precision: str,
                batch_size: int, max_len: int, show: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Every image and caption of a split, embedded: (image_emb (N, E), text_emb (M, E), caption_image (M,)).

    Images are read once each (captions grouped by image), rows in the split's order; the result is float32.
    Raises ValueError for a split without captions (COCO's and shapes' test split).
    """
    loader = caption_loader(processed_dir, split, batch_size, shuffle=False, max_len=max_len, group_by_image=True)
    model.eval()
    images, texts, owners, offset = [], [], [], 0
    for batch in tqdm(loader, desc=f"embedding {split}", leave=False, disable=not show):
        with autocast(device, precision):
            x = transform(batch["images"].to(device))  # (U, 3, H, W)
            image_emb, text_emb = model(x, batch["tokens"].to(device))  # (U, E), (B, E)
        images.append(image_emb.float())
        texts.append(text_emb.float())
        owners.append(batch["image_index"].to(device) + offset)  # (B,) rows in the whole split
        offset += image_emb.shape[0]
    return torch.cat(images), torch.cat(texts), torch.cat(owners)
