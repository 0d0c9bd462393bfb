"""Step 2: pretrain the Vision Transformer as a masked autoencoder (MAE) on images alone.

    python train_encoder.py                                       # shapes preset, CPU, a few minutes
    python train_encoder.py --config configs/coco_encoder.yaml    # COCO, one GPU
    python train_encoder.py -c runs/shapes_encoder/checkpoint3.pt # continue exactly where it stopped
    torchrun --nproc_per_node=N train_encoder.py ...              # several GPUs (lines marked [distributed])

The sections of ``main``, top to bottom:

    1. config and device: the YAML or the checkpoint's config; seed; the run folder
    2. data: the image loader (or the whole cache on the device), the crop-and-flip transform
    3. model (captioner/models/mae.py), optimiser, gradient scaler, resume
    4. the training loop, per step: 4a the learning rate, 4b the forward pass and the loss under
       autocast (crop, flip and mask from the epoch's generator) and backward, for each micro-batch
       (train.accumulate_steps), 4c clipping, the optimiser step, 4d the log line
    5. validation: the same loss on the validation images, with fixed masks
    6. reconstruction{N}.png, log.jsonl, curves.png, checkpoint{N}.pt

Options: ``--help``. Exact resume: captioner/training/checkpoints.py.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.config import EncoderRunConfig, config_to_dict
from captioner.data.datasets import to_tensors
from captioner.data.loaders import image_loader
from captioner.data.transforms import EvalTransform, MAETrainTransform
from captioner.evaluation.curves import write_curves
from captioner.evaluation.pictures import mae_reconstruction_figure, save_png
from captioner.infra.compile import maybe_compile
from captioner.infra.device_loader import device_image_loader
from captioner.infra.weights import resolve_weights
from captioner.models.mae import MaskedAutoencoder
from captioner.models.pretrained import mae_from_official, read_state_dict
from captioner.training.accumulate import micro_batch_weights, steps_in_epoch, take_window
from captioner.training.checkpoints import checkpoint_path, resume_from, save_checkpoint, training_state
from captioner.training.devices import autocast, make_grad_scaler, setup_device
from captioner.training.distributed import (
    all_reduce_mean,
    barrier,
    cleanup,
    gradient_sync,
    init_distributed,
    rng_states_by_rank,
    weighted_mean,
    wrap_ddp,
)
from captioner.training.log import JsonlLogger, LossMeter
from captioner.training.optimizer import make_optimizer, param_groups
from captioner.training.schedule import lr_at_step
from captioner.training.seeding import TRAIN_STREAM, VALIDATION_STREAM, seeded_generator

KIND = "mae"  # the checkpoint kind; train_captioner.py -p expects it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain the ViT image encoder as a masked autoencoder (MAE). Writes checkpoint{N}.pt, "
                    "reconstruction{N}.png and log.jsonl to the config's run_dir after every epoch.",
        epilog="examples: python train_encoder.py --set train.epochs=2 | "
               "python train_encoder.py --config configs/coco_encoder.yaml --device cuda | "
               "python train_encoder.py -c runs/shapes_encoder/checkpoint2.pt --set train.epochs=8",
    )
    add_run_arguments(parser, default_config="configs/shapes_encoder.yaml")
    parser.add_argument("-p", "--pretrained", default=None,
                        help="continue MAE pretraining from an official MAE checkpoint that holds the decoder too "
                             "(mae_visualize_vit_*.pth, a file): the architecture (model and the mae decoder) comes "
                             "from it, replacing the config's; mae.mask_ratio and mae.norm_pix_loss stay the config's")
    return parser


def mae_loss(model, transform, images: torch.Tensor, generator: torch.Generator, num_patches: int) -> torch.Tensor:
    """The MAE loss of a uint8 batch: transform it (crop and flip in training), draw the masking noise, run MAE.

    The noise is drawn here, not inside the model, so that a compiled model sees plain tensors.
    """
    x = transform(images, generator)  # (B, 3, H, W) float
    noise = torch.rand(x.shape[0], num_patches, generator=generator, device=generator.device)  # (B, L)
    loss, _, _ = model(x, noise=noise.to(x.device))
    return loss


def main(argv: list[str] | None = None) -> list[dict]:
    """Train (or continue training) and return the per-epoch history."""
    args = build_parser().parse_args(argv)

    # ---- 1. config and device -------------------------------------------------------------------
    cfg, resume = resolve_run_config(args, EncoderRunConfig, kind=KIND)
    pretrained = None
    if args.pretrained:  # the official weights' architecture replaces the config's, so checkpoints store it
        if args.checkpoint:
            raise ValueError("use either -p (start from official MAE weights) or -c (resume a run), not both")
        path = resolve_weights(args.pretrained, show=not args.no_progress)
        pretrained = mae_from_official(read_state_dict(path), mask_ratio=cfg.mae.mask_ratio,
                                       norm_pix_loss=cfg.mae.norm_pix_loss, source=path)
        cfg.model, cfg.mae = pretrained.encoder.config, pretrained.mae_config
    if cfg.data.group_by_length:
        raise ValueError("data.group_by_length is a train_captioner.py setting (MAE's batches hold images, "
                         "not captions): set data.group_by_length=false")
    dist_info = init_distributed(args.device)  # [distributed] under torchrun: join the process group, take a GPU
    device, precision = setup_device(str(dist_info.device), cfg.train.precision)
    # the model's initialisation is reproducible; each torchrun process draws its own dropout masks, and
    # DDP copies rank 0's initial weights to the others
    torch.manual_seed(cfg.train.seed + dist_info.rank)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    show = not args.no_progress and dist_info.is_main  # [distributed] rank 0 alone shows progress

    # ---- 2. data --------------------------------------------------------------------------------
    shard = {"num_replicas": dist_info.world_size, "rank": dist_info.rank}  # [distributed] this process's share
    if cfg.data.on_device:  # the whole uint8 cache copied to the device once; batches gathered there
        train_loader = device_image_loader(cfg.data.processed_dir, cfg.splits, cfg.data.batch_size, shuffle=True,
                                           device=device, seed=cfg.train.seed, drop_last=True, show_progress=show,
                                           **shard)
        val_loader = device_image_loader(cfg.data.processed_dir, "val", cfg.data.batch_size, shuffle=False,
                                         device=device, show_progress=show, **shard)
    else:
        train_loader = image_loader(cfg.data.processed_dir, cfg.splits, cfg.data.batch_size, shuffle=True,
                                    seed=cfg.train.seed, num_workers=cfg.data.num_workers, drop_last=True, **shard)
        val_loader = image_loader(cfg.data.processed_dir, "val", cfg.data.batch_size, shuffle=False,
                                  num_workers=cfg.data.num_workers, **shard)
    steps_per_epoch = steps_in_epoch(len(train_loader), cfg.train.accumulate_steps)  # optimiser steps
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data.processed_dir}: fewer training images ({len(train_loader.dataset)}) "
                         f"than one step's {cfg.train.accumulate_steps} batch(es) of {cfg.data.batch_size} per "
                         f"process ({dist_info.world_size}); lower data.batch_size or train.accumulate_steps")
    size = cfg.model.image_size
    train_transform = MAETrainTransform(size, scale=(cfg.augment.crop_scale_min, 1.0), flip=cfg.augment.flip,
                                        mean=cfg.model.mean, std=cfg.model.std)
    eval_transform = EvalTransform.for_encoder(cfg.model)  # the normalisation the encoder's weights expect
    n_pictures = min(cfg.n_reconstructions, len(val_loader.dataset))
    picture_images = to_tensors(val_loader.dataset.get_batch(range(n_pictures)))["images"]  # (n, 3, S, S) uint8

    # ---- 3. model, optimiser, gradient scaler, resume --------------------------------------------
    raw_model = (pretrained or MaskedAutoencoder(cfg.model, cfg.mae)).to(device)  # what the checkpoint stores
    compiled = maybe_compile(raw_model, cfg.train.compile, mode=cfg.train.compile_mode)
    model = wrap_ddp(compiled, dist_info)  # [distributed] DDP averages the gradients
    optimizer = make_optimizer(param_groups(raw_model.named_parameters(), cfg.train.weight_decay),
                               cfg.train.lr, (cfg.train.beta1, cfg.train.beta2), device)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping sees
    scaler = make_grad_scaler(device, precision)  # fp16 only; a no-op in bf16 and fp32
    start_epoch, step, history = resume_from(resume, raw_model, optimizer, scaler, args.checkpoint, dist_info)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    average = all_reduce_mean if dist_info.distributed else None  # [distributed] losses of all processes
    logger = JsonlLogger(run_dir / "log.jsonl") if dist_info.is_main else None  # [distributed] rank 0 writes
    n_params = sum(p.numel() for p in raw_model.parameters())
    if dist_info.is_main:  # [distributed]
        print(f"MAE on {device} ({precision}): {n_params / 1e6:.2f} M parameters, {len(train_loader.dataset)} training "
              f"images, {steps_per_epoch} steps per epoch, {cfg.train.epochs} epochs, run dir {run_dir}"
              + (f", {dist_info.world_size} processes" if dist_info.distributed else "")
              + (f", the images in {device.type} memory" if cfg.data.on_device else ""))

    # ---- 4. training loop -----------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.train.epochs):
        start = time.perf_counter()
        model.train()
        train_loader.batch_sampler.set_epoch(epoch)  # the epoch's order is a function of (seed, epoch)
        # the crops, flips and masks of this epoch; [distributed] each process its own (the rank's)
        generator = seeded_generator(device, cfg.train.seed, TRAIN_STREAM, epoch, dist_info.rank)
        meter = LossMeter(device, average)
        batches = iter(train_loader)
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not show):
            # 4a. the learning rate of this step: warm-up, then cosine decay
            lr = lr_at_step(step, cfg.train.lr, cfg.train.min_lr, warmup_steps, total_steps, cfg.train.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # 4b. forward pass and loss under autocast, backward through the scaler, for each of the step's
            # train.accumulate_steps micro-batches (one by default): their gradients add up, each loss weighted
            # by its share of the step's images, as one batch that many times larger would average
            window = take_window(batches, cfg.train.accumulate_steps)
            weights = micro_batch_weights([b["images"].shape[0] for b in window])
            step_loss = 0.0
            for i, (batch, weight) in enumerate(zip(window, weights)):
                images = batch["images"].to(device, non_blocking=True)  # (B, 3, S, S) uint8
                with gradient_sync(model, last=i == len(window) - 1):  # [distributed] all-reduce in the last backward
                    with autocast(device, precision):
                        loss = mae_loss(model, train_transform, images, generator, raw_model.num_patches)
                    scaler.scale(loss * weight).backward()
                step_loss = step_loss + loss.detach() * weight

            # 4c. clip, optimiser step
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # 4d. the log line: the loss stays on the device until a line is due (no host sync per step)
            meter.add(step_loss, step, sum(b["images"].shape[0] for b in window))
            step += 1
            if meter.window_steps == cfg.train.log_every:
                window_loss, images_per_s = meter.window(step)
                if logger:
                    logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, items_per_s=images_per_s)
        train_loss = meter.epoch_mean(step)
        train_seconds = time.perf_counter() - start

        # ---- 5. validation: the same loss on the validation images, with fixed masks --------------
        val_generator = seeded_generator(device, cfg.train.seed, VALIDATION_STREAM, dist_info.rank)  # [distributed]
        val_loss = validation_loss(model, val_loader, eval_transform, val_generator, raw_model.num_patches,
                                   device, precision, dist_info, show)
        if not math.isfinite(val_loss):
            raise ValueError(f"the validation loss of epoch {epoch + 1} is {val_loss}; not saving this epoch")

        # ---- 6. checkpoint, log and pictures: rank 0 writes, the others wait at the barrier -------
        if dist_info.is_main:  # [distributed]
            picture = _reconstruction_picture(raw_model, eval_transform, picture_images, device, cfg.train.seed)
            save_png(picture, run_dir / f"reconstruction{epoch + 1}.png")
        images_per_s = (steps_per_epoch * cfg.train.accumulate_steps * cfg.data.batch_size * dist_info.world_size
                        / train_seconds)  # all processes
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "val_loss": val_loss,
                  "images_per_s": images_per_s, "seconds": time.perf_counter() - start}
        history.append(record)
        payload = training_state(raw_model, optimizer, scaler, step, epoch + 1, KIND, config_to_dict(cfg), history,
                                 **rng_states_by_rank(dist_info))  # [distributed] every process's RNG states
        if dist_info.is_main:  # [distributed]
            logger.log(**record)
            write_curves(run_dir / "log.jsonl", run_dir / "curves.png")
            path = save_checkpoint(checkpoint_path(run_dir, epoch + 1), payload)
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                  f"{images_per_s:.0f} images/s  {record['seconds']:.1f} s  -> {path}")
        barrier()  # [distributed]
    cleanup()  # [distributed]
    return history


@torch.no_grad()
def validation_loss(model, loader, transform, generator: torch.Generator, num_patches: int, device: torch.device,
                    precision: str, dist_info, show: bool) -> float:
    """The mean MAE loss over ``loader`` in eval mode; [distributed] over every process's share."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for batch in tqdm(loader, desc="validation", leave=False, disable=not show):
        images = batch["images"].to(device, non_blocking=True)  # (B, 3, S, S) uint8
        with autocast(device, precision):
            loss = mae_loss(model, transform, images, generator, num_patches)
        total += loss.detach().float() * images.shape[0]
        count += images.shape[0]
    return weighted_mean(total, count, dist_info)


def _reconstruction_picture(model: MaskedAutoencoder, transform, images: torch.Tensor, device: torch.device,
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
