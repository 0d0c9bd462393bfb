"""Contrastive losses for the dual encoder: CLIP's symmetric InfoNCE, and a cosine embedding loss.

Both take a batch of B matching pairs: row i of ``images`` (B, E) and row i of ``texts`` (B, E) are
unit vectors of an image and one of its captions.

**Symmetric InfoNCE** (CLIP). Every other caption of the batch is a negative for image i, and every
other image a negative for caption i. With the cosine matrix S = images @ texts.T (B, B) and the
learned inverse temperature s::

    loss = ( CE(s * S, diag) + CE(s * S.T, diag) ) / 2

where CE(logits, diag) is the mean over rows of -log softmax(row)[i], the log-probability that
row i picks its own partner. The first term ranks captions for each image, the second images for
each caption; the loss is symmetric in the two towers.

**Cosine embedding loss** (the original project's). Pairs are labelled +1 (matching) or -1 (not matching) and
scored independently, with no softmax across the batch::

    +1:  1 - cos(u, v)              pull the pair together
    -1:  max(0, cos(u, v) - margin) push apart, until the cosine is below the margin

The negatives are *sampled*: each image is paired with one caption of another row of the batch,
drawn at random, so a batch gives B positive and B negative pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce_loss(images: Tensor, texts: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE of B matching unit-vector pairs, images (B, E) and texts (B, E).

    ``logit_scale`` is the inverse temperature s itself (not its log). See the module docstring.

    Example: B = 2, images = texts = the identity (2, 2), s = 1: each row's logits are [1, 0] with
    the target first, so the loss is -log(e / (e + 1)) = 0.3133 in both directions.
    """
    logits = logit_scale * images.float() @ texts.float().T  # (B, B): image i against caption j
    targets = torch.arange(logits.shape[0], device=logits.device)  # (B,) the diagonal
    image_to_text = F.cross_entropy(logits, targets)  # each image picks its caption among B
    text_to_image = F.cross_entropy(logits.T, targets)  # each caption picks its image among B
    return (image_to_text + text_to_image) / 2


def cosine_embedding_loss(u: Tensor, v: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Mean over pairs of ``1 - cos`` (label +1) and ``max(0, cos - margin)`` (label -1).

    u (N, E), v (N, E): vectors of any length (cosines are computed here); labels (N,) of +1 / -1.
    Example: u = [[1, 0]], v = [[0.6, 0.8]], cos = 0.6: label +1 gives 0.4; label -1 with margin 0.5
    gives 0.1, with margin 0.7 gives 0.
    """
    cos = F.cosine_similarity(u.float(), v.float(), dim=-1)  # (N,)
    per_pair = torch.where(labels > 0, 1.0 - cos, (cos - margin).clamp(min=0.0))  # (N,)
    return per_pair.mean()


def sampled_negatives(batch_size: int, generator: torch.Generator) -> Tensor:
    """For each row i, another row j != i of the batch, uniformly: (B,) long.

    Drawn as ``j = (i + shift) mod B`` with ``shift`` uniform in 1 .. B-1, so j never equals i.
    Example: B = 3, shifts [1, 2, 1] -> [1, 0, 0].
    """
    if batch_size < 2:
        raise ValueError("sampled negatives need at least two pairs in a batch")
    shift = torch.randint(1, batch_size, (batch_size,), generator=generator, device=generator.device)  # (B,)
    return (torch.arange(batch_size, device=shift.device) + shift) % batch_size


def pairwise_cosine_loss(images: Tensor, texts: Tensor, margin: float, generator: torch.Generator) -> Tensor:
    """The original project's loss on a batch of B matching pairs: B positives (+1) and B sampled negatives (-1)."""
    B = images.shape[0]
    negative = sampled_negatives(B, generator).to(texts.device)  # (B,) a caption of another row
    u = torch.cat([images, images])  # (2B, E)
    v = torch.cat([texts, texts[negative]])  # (2B, E)
    labels = torch.cat([torch.ones(B, device=texts.device), -torch.ones(B, device=texts.device)])  # (2B,)
    return cosine_embedding_loss(u, v, labels, margin)
