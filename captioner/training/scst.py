"""Self-critical sequence training (SCST; Rennie et al., 2017): the baseline and the loss.

The model samples K captions per image; each gets a reward r (``rewards.py``). REINFORCE raises the
log-probability of a caption in proportion to its reward; subtracting a baseline b that does not depend
on the caption keeps the gradient's expectation and cuts its variance:

    loss = -1/N * sum_n (r_n - b_n) * log p(caption_n),   log p(caption) = sum_t log p(token_t | tokens < t)

summed over the caption's tokens up to and including its ``<eos>`` (the padding after it is masked),
averaged over the N = U * K sampled captions. Two baselines:

- ``greedy`` (Rennie et al.): the reward of the model's own greedy caption of the same image. A sample
  is pushed up only where it beats what the model would say at test time, and down where it does worse.
- ``mean`` (Luo, 2020): the mean reward of the image's K - 1 *other* samples, which needs no greedy
  decode and is an unbiased estimate of the expected reward.

>>> mean_of_others_baseline(torch.tensor([1.0, 2.0, 6.0]), samples=3).tolist()  # (2+6)/2, (1+6)/2, (1+2)/2
[4.0, 3.5, 1.5]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def greedy_baseline(greedy_rewards: Tensor, samples: int) -> Tensor:
    """The greedy caption's reward of each image (U,), repeated for its K samples: (U * K,)."""
    return greedy_rewards.repeat_interleave(samples)


def mean_of_others_baseline(rewards: Tensor, samples: int) -> Tensor:
    """For each of the U * K sampled captions (image-major), the mean reward of its image's other K - 1."""
    if samples < 2:
        raise ValueError(f"the mean-of-others baseline needs at least 2 samples per image, got {samples}")
    per_image = rewards.view(-1, samples)  # (U, K)
    return ((per_image.sum(dim=1, keepdim=True) - per_image) / (samples - 1)).reshape(-1)  # (U * K,)


def sequence_log_probs(logits: Tensor, tokens: Tensor, pad_id: int, forbidden: list[int]) -> Tensor:
    """log p of each sampled caption, summed over its tokens: (N,).

    logits (N, L, V): the teacher-forced logits of the sampled captions (the decoder fed ``<sos>`` and
    the tokens before each position); tokens (N, L) the sampled tokens, ``<eos>`` included, pad_id
    after it. ``forbidden`` tokens (``<sos>``, ``<pad>``) are never sampled, so the distribution that
    drew the caption is the softmax over the others: they are removed here as in the sampler.
    """
    if logits.element_size() < 4:  # a sum of log-probabilities: at least in float32
        logits = logits.float()
    logits = logits.index_fill(-1, torch.tensor(forbidden, dtype=torch.long, device=logits.device),
                               float("-inf"))
    logp = F.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]  # (N, L)
    return logp.masked_fill(tokens == pad_id, 0.0).sum(dim=1)  # (N,) nothing after <eos>


def scst_loss(logits: Tensor, tokens: Tensor, advantage: Tensor, pad_id: int, forbidden: list[int]) -> Tensor:
    """``-mean_n (r_n - b_n) * log p(caption_n)``; ``advantage`` (N,) is r - b, a constant (no gradient)."""
    return -(advantage.detach() * sequence_log_probs(logits, tokens, pad_id, forbidden)).mean()
