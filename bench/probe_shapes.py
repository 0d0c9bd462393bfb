"""Linear probe: does an encoder's output at an object's place tell which shape the object is?

    python bench/probe_shapes.py runs/shapes_encoder/checkpoint16.pt runs/shapes_captioner/checkpoint_best.pt random

For each encoder (an MAE checkpoint, a retrieval checkpoint's image tower, a captioner checkpoint,
or ``random``: a freshly initialised
ViT with the shapes preset's architecture), every object of the first ``--train`` training images and
of the validation images is described by the encoder's features at the patch holding the object's
centre ("centre patch"), and by the 3 x 3 block of patches around it, concatenated ("3 x 3 patches").
A logistic regression (L-BFGS, a little L2) fitted on the training objects then names the shape of
the validation objects. Printed: the validation accuracy of both probes (chance: about 0.2, five shapes).

What it shows: whether shape is *readable* from the features at all, and whether it is *local*
(in the token at the object) or spread over neighbouring tokens, which a caption decoder's
attention must then reassemble. It is a diagnostic, not a training objective: no label reaches
the encoders being measured. The scenes come from the dataset's seed (``evaluation/truth.py``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere, no install

from captioner.config import EncoderRunConfig, load_config  # noqa: E402
from captioner.data.datasets import ImageDataset, to_tensors  # noqa: E402
from captioner.data.shapes_scene import SHAPES, image_id_for  # noqa: E402
from captioner.data.transforms import EvalTransform  # noqa: E402
from captioner.evaluation.truth import shapes_scenes  # noqa: E402
from captioner.models.vit import ImageEncoder  # noqa: E402
from captioner.training.checkpoints import (  # noqa: E402
    ENCODER_CHECKPOINTS,
    encoder_from_checkpoint,
    load_captioner,
    load_checkpoint,
)


def load_encoder(source: str) -> ImageEncoder:
    if source == "random":
        torch.manual_seed(0)
        return ImageEncoder(load_config(EncoderRunConfig, ROOT / "configs" / "shapes_encoder.yaml").model)
    payload = load_checkpoint(source)
    if payload.get("kind") in ENCODER_CHECKPOINTS:  # MAE, or a retrieval model's image tower
        return encoder_from_checkpoint(payload, source)
    return load_captioner(source)[0].encoder


def object_features(encoder: ImageEncoder, processed_dir: Path, split: str, n: int) -> tuple[torch.Tensor, ...]:
    """(centre-patch features (N, C), 3 x 3-patch features (N, 9C), shape labels (N,)) of the objects."""
    dataset = ImageDataset(processed_dir, [split])
    n = min(n, len(dataset))
    transform = EvalTransform.for_encoder(encoder.config)
    with torch.no_grad():
        features = torch.cat([encoder(transform(to_tensors(dataset.get_batch(np.arange(i, min(i + 250, n))))["images"]))
                              for i in range(0, n, 250)])  # (n, L, C)
    grid = encoder.patch_embed.grid_size
    p = encoder.config.patch_size
    padded = torch.nn.functional.pad(features.reshape(n, grid, grid, -1), (0, 0, 1, 1, 1, 1))  # (n, g+2, g+2, C)
    scenes = shapes_scenes(processed_dir, [image_id_for(split, i) for i in range(n)])
    centre, block, labels = [], [], []
    for i in range(n):
        for obj in scenes[image_id_for(split, i)].objects:
            gx, gy = min(int(obj.cx // p), grid - 1), min(int(obj.cy // p), grid - 1)
            centre.append(features[i, gy * grid + gx])
            block.append(padded[i, gy : gy + 3, gx : gx + 3].flatten())  # padded index +1: rows gy-1 .. gy+1
            labels.append(SHAPES.index(obj.shape))
    return torch.stack(centre), torch.stack(block), torch.tensor(labels)


def probe_accuracy(x_train, y_train, x_val, y_val, l2: float = 1e-3) -> float:
    """Validation accuracy of a logistic regression fitted on standardised training features."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    torch.manual_seed(0)
    classifier = torch.nn.Linear(x_train.shape[1], len(SHAPES))
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(classifier(x_train), y_train) + l2 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (classifier(x_val).argmax(1) == y_val).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", help="MAE, retrieval or captioner checkpoints, or 'random'")
    parser.add_argument("--processed-dir", default="data/shapes/processed", type=Path)
    parser.add_argument("--train", type=int, default=4000, help="training images whose objects fit the probe")
    args = parser.parse_args()
    print("| encoder | centre patch | 3 x 3 patches |\n|---|---|---|")
    for source in args.encoders:
        encoder = load_encoder(source).eval()
        c_train, b_train, y_train = object_features(encoder, args.processed_dir, "train", args.train)
        c_val, b_val, y_val = object_features(encoder, args.processed_dir, "val", 10**9)
        print(f"| {source} | {probe_accuracy(c_train, y_train, c_val, y_val):.3f} "
              f"| {probe_accuracy(b_train, y_train, b_val, y_val):.3f} |", flush=True)


if __name__ == "__main__":
    main()
