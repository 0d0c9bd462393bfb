"""Step 2: pretrain the Vision Transformer as a masked autoencoder (MAE) on images alone.

    python train_encoder.py                                       # shapes preset, CPU, a few minutes
    python train_encoder.py --config configs/coco_encoder.yaml    # COCO, one GPU
    python train_encoder.py -c runs/shapes_encoder/checkpoint3.pt # continue exactly where it stopped

Each epoch: one pass over the training images (random resized crop + flip, 75 % of the patches
hidden), the reconstruction loss on the validation images (fixed masks, so epochs are comparable),
a picture ``reconstruction{N}.png`` (original | masked | reconstruction), a line in ``log.jsonl``,
and ``checkpoint{N}.pt`` (N = completed epochs), all in the run directory.

Exact resume: the data order, the augmentation and the masks of epoch ``e`` come from generators
seeded with ``(seed, e)``, the learning rate is a function of the step, and the checkpoint holds the
model, optimiser, scaler and RNG states, so ``-c checkpointK.pt`` repeats what an uninterrupted run
would have done.

Several GPUs: ``torchrun --nproc_per_node=N train_encoder.py ...`` trains with DistributedDataParallel
(``captioner/distributed.py``); the lines that differ from a single process are marked ``[distributed]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.coco_loader import get_coco_loader, to_tensors
from captioner.config import EncoderRunConfig, config_to_dict
from captioner.distributed import barrier, cleanup, init_distributed, rng_states_by_rank, wrap_ddp
from captioner.image_captioner import ImageAutoEncoder
from captioner.image_transforms import EvalTransform, MAETrainTransform
from captioner.run_setup import make_trainer, resume_from, setup_device
from captioner.training import (
    LossFn,
    checkpoint_path,
    make_optimizer,
    maybe_compile,
    param_groups,
    save_checkpoint,
    training_state,
)
from captioner.visualize import mae_reconstruction_figure, save_png

KIND = "mae"  # the checkpoint kind; train_captioner.py -p expects it
TRAIN_STREAM, VALIDATION_STREAM = 0, 1  # keep the training and validation random streams apart


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain the ViT image encoder as a masked autoencoder (MAE). Writes checkpoint{N}.pt, "
                    "reconstruction{N}.png and log.jsonl to the config's run_dir after every epoch.",
        epilog="examples: python train_encoder.py --set train.epochs=2 | "
               "python train_encoder.py --config configs/coco_encoder.yaml --device cuda | "
               "python train_encoder.py -c runs/shapes_encoder/checkpoint2.pt --set train.epochs=8",
    )
    add_run_arguments(parser, default_config="configs/shapes_encoder.yaml")
    return parser


def seeded_generator(device: torch.device, *entropy: int) -> torch.Generator:
    """A generator on ``device`` whose seed is a well-mixed function of the integers ``entropy``.

    ``seeded_generator(device, seed, TRAIN_STREAM, epoch)`` draws the same numbers whenever epoch
    ``epoch`` is run, whether or not the run was interrupted before it. Up to four integers, trailing
    zeros do not change the seed (numpy pads the entropy with zeros), so ``(seed, TRAIN_STREAM, epoch, 0)``
    for torchrun's rank 0 draws what a single process draws.
    """
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def make_loss_fn(transform, generator: torch.Generator, num_patches: int) -> LossFn:
    """The Trainer's loss function: transform the uint8 batch, draw the masking noise, run MAE.

    The noise is drawn here, not inside the model, so that a compiled model sees plain tensors.
    """

    def loss_fn(model, batch):
        images = transform(batch["images"], generator)  # (B, 3, H, W) float
        noise = torch.rand(images.shape[0], num_patches, generator=generator, device=generator.device)  # (B, L)
        loss, _, _ = model(images, noise=noise.to(images.device))
        return loss, images.shape[0]

    return loss_fn


def main(argv: list[str] | None = None) -> list[dict]:
    """Train (or continue training) and return the per-epoch history."""
    args = build_parser().parse_args(argv)

    # ---- config and device -------------------------------------------------------------------
    cfg, resume = resolve_run_config(args, EncoderRunConfig, kind=KIND)
    dist_info = init_distributed(args.device)  # [distributed] under torchrun: join the process group, take a GPU
    device, precision, run_dir = setup_device(str(dist_info.device), cfg.train, cfg.run_dir, rank=dist_info.rank)

    # ---- data ----------------------------------------------------------------------------------
    shard = {"num_replicas": dist_info.world_size, "rank": dist_info.rank}  # [distributed] this process's share
    # data.on_device: the whole uint8 cache is copied to the device once and batches are gathered there
    source = {"on_device": device, "show_progress": not args.no_progress and dist_info.is_main} \
        if cfg.data.on_device else {"num_workers": cfg.data.num_workers}  # [distributed] one progress bar
    train_loader = get_coco_loader(cfg.data.processed_dir, cfg.splits, "image", cfg.data.batch_size, shuffle=True,
                                   seed=cfg.train.seed, drop_last=True, **source, **shard)
    val_loader = get_coco_loader(cfg.data.processed_dir, "val", "image", cfg.data.batch_size, shuffle=False,
                                 **source, **shard)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data.processed_dir}: fewer training images ({len(train_loader.dataset)}) "
                         f"than one batch ({cfg.data.batch_size}) per process ({dist_info.world_size}); "
                         "lower data.batch_size")
    size = cfg.model.image_size
    train_transform = MAETrainTransform(size, scale=(cfg.augment.crop_scale_min, 1.0), flip=cfg.augment.flip)
    eval_transform = EvalTransform(size)
    n_pictures = min(cfg.n_reconstructions, len(val_loader.dataset))
    picture_images = to_tensors(val_loader.dataset.__getitems__(list(range(n_pictures))))["images"]

    # ---- model, optimiser, schedule, AMP scaler -------------------------------------------------
    raw_model = ImageAutoEncoder(cfg.model, cfg.mae).to(device)
    model = maybe_compile(raw_model, cfg.train.compile, mode=cfg.train.compile_mode)
    model = wrap_ddp(model, dist_info)  # [distributed] DDP averages gradients
    optimizer = make_optimizer(param_groups(raw_model.named_parameters(), cfg.train.weight_decay),
                               cfg.train.lr, (cfg.train.beta1, cfg.train.beta2), device)
    trainer = make_trainer(model, optimizer, cfg.train, steps_per_epoch, device, precision, run_dir,
                           show_progress=not args.no_progress, dist=dist_info)
    start_epoch, history = resume_from(resume, trainer, raw_model, args.checkpoint, dist_info)
    n_params = sum(p.numel() for p in raw_model.parameters())
    if dist_info.is_main:  # [distributed]
        print(f"MAE on {device} ({precision}): {n_params / 1e6:.2f} M parameters, {len(train_loader.dataset)} training "
              f"images, {steps_per_epoch} steps per epoch, {cfg.train.epochs} epochs, run dir {run_dir}"
              + (f", {dist_info.world_size} processes" if dist_info.distributed else "")
              + (f", the images in {device.type} memory" if cfg.data.on_device else ""))

    # ---- training loop -------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.train.epochs):
        start = time.perf_counter()
        train_loader.batch_sampler.set_epoch(epoch)
        # [distributed] each process its own crops and masks (the rank's); see seeded_generator
        train_fn = make_loss_fn(train_transform,
                                seeded_generator(device, cfg.train.seed, TRAIN_STREAM, epoch, dist_info.rank),
                                raw_model.num_patches)
        train_loss = trainer.train_epoch(train_loader, train_fn, epoch)
        train_seconds = time.perf_counter() - start
        val_generator = seeded_generator(device, cfg.train.seed, VALIDATION_STREAM, dist_info.rank)  # [distributed]
        val_fn = make_loss_fn(eval_transform, val_generator, raw_model.num_patches)
        val_loss = trainer.evaluate(val_loader, val_fn)
        if not math.isfinite(val_loss):
            raise ValueError(f"the validation loss of epoch {epoch + 1} is {val_loss}; not saving this epoch")

        # ---- checkpointing (and the picture): rank 0 writes, the others wait at the barrier ------
        if dist_info.is_main:  # [distributed]
            picture = _reconstruction_picture(raw_model, eval_transform, picture_images, device, cfg.train.seed)
            save_png(picture, run_dir / f"reconstruction{epoch + 1}.png")
        images_per_s = steps_per_epoch * cfg.data.batch_size * dist_info.world_size / train_seconds  # all processes
        record = {"epoch": epoch + 1, "step": trainer.step, "train_loss": train_loss, "val_loss": val_loss,
                  "images_per_s": images_per_s, "seconds": time.perf_counter() - start}
        history.append(record)
        payload = training_state(trainer, raw_model, epoch + 1, KIND, config_to_dict(cfg), history,
                                 **rng_states_by_rank(dist_info))  # [distributed] every process's RNG states
        if dist_info.is_main:  # [distributed]
            trainer.logger.log(**record)
            path = save_checkpoint(checkpoint_path(run_dir, epoch + 1), payload)
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                  f"{images_per_s:.0f} images/s  {record['seconds']:.1f} s  -> {path}")
        barrier()  # [distributed]
    cleanup()  # [distributed]
    return history


def _reconstruction_picture(model: ImageAutoEncoder, transform, images: torch.Tensor, device: torch.device,
                            seed: int):
    """The PNG's content for uint8 ``images`` (n, 3, S, S), with the same masks every epoch."""
    model.eval()
    x = transform(images.to(device))  # (n, 3, H, W)
    generator = seeded_generator(device, seed, VALIDATION_STREAM)
    reconstruction, pixel_mask = model.reconstruct(x, generator=generator)
    scale = max(1, 128 // x.shape[-1])  # small images are enlarged to stay readable
    return mae_reconstruction_figure(x, reconstruction, pixel_mask, scale=scale)


if __name__ == "__main__":
    run_script(main)
