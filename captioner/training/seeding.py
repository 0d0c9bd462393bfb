"""Random streams that a resumed run repeats: one generator per (seed, stream, epoch, rank).

A training script draws its crops, flips, masks or sampled negatives from a generator made by
:func:`seeded_generator` at the start of each epoch, so epoch ``e`` draws the same numbers whether or
not the run was interrupted before it. The stream numbers keep training and validation apart.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN_STREAM, VALIDATION_STREAM = 0, 1  # keep the training and validation random streams apart
AUGMENT_STREAM = 2  # the captioner's augmentation ramp: a generator per batch (captioner/data/augment_ramp.py)


def seeded_generator(device: torch.device, *entropy: int) -> torch.Generator:
    """A generator on ``device`` whose seed is a well-mixed function of the integers ``entropy``.

    ``seeded_generator(device, seed, TRAIN_STREAM, epoch)`` draws the same numbers whenever epoch
    ``epoch`` is run, whether or not the run was interrupted before it. Up to four integers, trailing
    zeros do not change the seed (numpy pads the entropy with zeros), so ``(seed, TRAIN_STREAM, epoch, 0)``
    for torchrun's rank 0 draws what a single process draws.
    """
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)
