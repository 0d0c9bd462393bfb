"""Step 3: put a caption decoder on an image encoder and train it on image + caption pairs.

    python train_captioner.py -p runs/shapes_encoder                   # from the MAE encoder (shapes, CPU)
    python train_captioner.py -p runs/shapes_retrieval                 # from the retrieval model's image tower
    python train_captioner.py                                          # the same model from scratch
    python train_captioner.py -c runs/shapes_captioner/checkpoint4.pt  # continue exactly where it stopped
    python train_captioner.py --config configs/coco_captioner.yaml -p runs/coco_encoder
    torchrun --nproc_per_node=N train_captioner.py ...                 # several GPUs (lines marked [distributed])

The sections of ``main``, top to bottom:

    1. config, device, tokenizer: the YAML or the checkpoint's config; seed; the run folder
    2. model: the encoder from -p (this project's MAE checkpoint, the image tower of its retrieval
       checkpoint, or published weights: captioner/models/pretrained.py), from -c, or random
    3. data: caption batches grouped by image (from the processed data, or streamed from a URL list:
       captioner/data/url_stream.py), the validation loaders
    4. optimiser (every unfreeze group, captioner/training/unfreeze.py), gradient scaler, resume
    5. the training loop: the epoch's freeze state and augmentation strength (augment.enabled), then per step
       5a the learning rate times each group's multiplier, 5b the forward pass and the loss under
       autocast (teacher forcing, captioner/models/captioner.py) and backward, for each micro-batch
       (train.accumulate_steps; first augmented when augment.enabled: captioner/data/augment_ramp.py),
       5c clipping, the optimiser step, 5d the log line
    6. validation: the loss, and the scores of beam-search captions on the first eval.select_images
       validation images (docs/protocol.md#selection)
    7. checkpoint{N}.pt, checkpoint_best.pt (the best epoch by eval.select_by), log.jsonl, curves.png;
       early stopping (eval.patience)

Options: ``--help``. What each config key does: ``captioner/config.py``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.config import CaptionerRunConfig, ConfigError, EncoderRunConfig, config_to_dict, load_config
from captioner.data.augment_ramp import augment_batch, check_augment_config, ramp_strength
from captioner.data.loaders import caption_loader, image_captions_loader
from captioner.data.transforms import EvalTransform
from captioner.data.url_stream import describe_skips, url_caption_loader
from captioner.evaluation.captioning import caption_images, reference_captions
from captioner.evaluation.curves import write_curves
from captioner.evaluation.metrics import evaluate_captions
from captioner.evaluation.truth import shapes_scenes, truth_scores
from captioner.infra.compile import maybe_compile
from captioner.infra.weights import resolve_weights
from captioner.models.captioner import KIND, caption_loss, captioner_for_config, eos_suppression_loss
from captioner.models.pretrained import encoder_from_pretrained, load_torchvision_resnet, read_state_dict
from captioner.models.lstm_decoders import doubly_stochastic_penalty
from captioner.text.tokenizers import PAD_ID, load_tokenizer
from captioner.training.accumulate import micro_batch_weights, steps_in_epoch, take_window
from captioner.training.checkpoints import (
    CheckpointError,
    captioner_from_payload,
    checkpoint_extras,
    checkpoint_path,
    resume_from,
    save_checkpoint,
    training_state,
)
from captioner.training.devices import autocast, make_grad_scaler, setup_device
from captioner.training.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    gradient_sync,
    init_distributed,
    rng_states_by_rank,
    weighted_mean,
    wrap_ddp,
)
from captioner.training.log import JsonlLogger, LossMeter
from captioner.training.optimizer import make_optimizer
from captioner.training.schedule import lr_at_step
from captioner.training.seeding import AUGMENT_STREAM, seeded_generator
from captioner.training.unfreeze import (
    describe_unfreeze,
    set_trainable,
    train_everything,
    unfreeze_param_groups,
    unfreeze_schedule,
)

N_SAMPLES = 3  # sample captions printed after each epoch
SCORE_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "captions_true")  # printed per epoch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the image captioner: the config's encoder_kind (vit, resnet) + decoder_kind (transformer, "
                    "lstm, attention-lstm). Writes "
                    "checkpoint{N}.pt, checkpoint_best.pt (the best epoch by the config's eval.select_by on the "
                    "first eval.select_images validation images) and log.jsonl to the config's run_dir.",
        epilog="examples: python train_captioner.py -p runs/shapes_encoder | "
               "python train_captioner.py --set train.epochs=2 | "
               "python train_captioner.py -c runs/shapes_captioner/checkpoint3.pt --set train.epochs=12",
    )
    add_run_arguments(parser, default_config="configs/shapes_captioner.yaml")
    parser.add_argument("-p", "--pretrained", default=None,
                        help="start from this MAE checkpoint (train_encoder.py's checkpoint*.pt, or its run folder for "
                             "the latest one), from the image tower of a retrieval checkpoint (train_retrieval.py's; "
                             "its projection head is dropped), from named published weights (mae_vit_base, "
                             "mae_vit_large, mae_vit_huge: downloaded once and checked), or from an official MAE / "
                             "timm ViT file: the encoder's architecture and weights come from it, and it is unfrozen "
                             "layer by layer. "
                             "Without -p (and without -c) the encoder starts random, with the architecture "
                             "of the config's encoder_config YAML, and trains from the first step. "
                             "ViT encoders only (encoder_kind: vit; a ResNet starts from torchvision's ImageNet "
                             "weights with --set resnet.weights=resnet101, or a file)")
    return parser


def epochs_since_best(history: list[dict]) -> int:
    """Epochs after the one with the best selection score (the first of equals): 0 when the last epoch is the best."""
    scores = [h["selection"] for h in history]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


def main(argv: list[str] | None = None) -> list[dict]:
    """Train (or continue training) and return the per-epoch history."""
    args = build_parser().parse_args(argv)
    if args.pretrained and args.checkpoint:
        raise ValueError("use either -p (start from a pretrained encoder) or -c (resume a captioner run), not both")

    # ---- 1. config, device, tokenizer -----------------------------------------------------------
    cfg, resume = resolve_run_config(args, CaptionerRunConfig, kind=KIND)
    if resume is not None and "scst_config" in resume:
        raise CheckpointError(f"{args.checkpoint}: a train_scst.py checkpoint; continue it with train_scst.py -c")
    check_augment_config(cfg.augment)  # augment.*: the training batches' ramp (step 5b), each amount in range
    if cfg.data.on_device:
        raise ValueError("data.on_device is a train_encoder.py setting (image batches); the captioner's caption "
                         "batches are read from the host: set data.on_device=false")
    if args.pretrained and cfg.encoder_kind != "vit":
        raise ConfigError(f"encoder_kind: -p starts from a pretrained ViT encoder (MAE, retrieval or published), but "
                          f"the config asks for {cfg.encoder_kind!r}; drop -p or set encoder_kind=vit")
    dist_info = init_distributed(args.device)  # [distributed] under torchrun: join the process group, take a GPU
    device, precision = setup_device(str(dist_info.device), cfg.train.precision)
    # the model's initialisation is reproducible; each torchrun process draws its own dropout masks, and
    # DDP copies rank 0's initial weights to the others
    torch.manual_seed(cfg.train.seed + dist_info.rank)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    show = not args.no_progress and dist_info.is_main  # [distributed] rank 0 alone shows progress
    tokenizer_path = Path(cfg.data.processed_dir) / "tokenizer.txt"
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer_text = tokenizer_path.read_text(encoding="utf-8")
    if resume is not None and resume.get("tokenizer") != tokenizer_text:
        raise CheckpointError(f"{args.checkpoint}: the run was trained with another tokenizer than {tokenizer_path}; "
                              "resume it with the processed data it was started with")

    # ---- 2. model: the encoder from -p, from -c, or random (the encoder YAML's ViT, or the resnet section) ----
    max_len = max(cfg.data.max_caption_len, cfg.eval.max_len)  # positions fed in training and in decoding
    if resume is not None:
        raw_model = captioner_from_payload(resume, args.checkpoint, cfg, max_len)
        pretrained = resume.get("pretrained")
    elif args.pretrained:  # this project's MAE or retrieval checkpoint, or published ViT weights (a name or a file)
        encoder = encoder_from_pretrained(resolve_weights(args.pretrained, show),
                                          cfg.vit_image_size or None)
        raw_model = captioner_for_config(cfg, encoder.config, tokenizer.vocab_size, max_len)
        raw_model.encoder.load_state_dict(encoder.state_dict())
        pretrained = str(args.pretrained)
    else:
        encoder_config = cfg.resnet if cfg.encoder_kind == "resnet" else load_config(EncoderRunConfig,
                                                                                      cfg.encoder_config).model
        raw_model = captioner_for_config(cfg, encoder_config, tokenizer.vocab_size, max_len)
        pretrained = None
        if cfg.encoder_kind == "resnet" and cfg.resnet.weights:  # torchvision's ImageNet weights
            path = resolve_weights(cfg.resnet.weights, show)
            load_torchvision_resnet(raw_model.encoder, read_state_dict(path), path)
            pretrained = cfg.resnet.weights
    encoder_config = raw_model.encoder.config
    extras = checkpoint_extras(encoder_config, tokenizer.vocab_size, raw_model.decoder.max_len, tokenizer_text,
                               pretrained)
    raw_model.to(device)  # raw_model is what the checkpoint stores; model (below) is what runs
    depth = len(raw_model.encoder.layer_groups())  # unfreezing groups above the stem: ViT layers or ResNet stages
    # One graph per freeze state: all frozen, then one more of the depth + 1 encoder groups each epoch.
    compiled = maybe_compile(raw_model, cfg.train.compile, graph_variants=depth + 2,
                             mode=cfg.train.compile_mode)
    # Show, Attend and Tell's doubly stochastic regulariser needs the attention weights of every step
    attention_reg = cfg.lstm.attention_reg if cfg.decoder_kind == "attention-lstm" else 0.0

    # ---- 3. data --------------------------------------------------------------------------------
    # Captions grouped by image: a batch holds all the captions of batch_size / 5 images, so the
    # encoder (the expensive half once it is unfrozen) runs once per image instead of once per caption.
    # data.group_by_length: images whose longest captions are about as long share a batch (less padding).
    shard = {"num_replicas": dist_info.world_size, "rank": dist_info.rank}  # [distributed] this process's share
    streaming = cfg.data.source == "urls"
    if streaming:  # the training images fetched from their URLs while training runs (docs/urls.md)
        train_loader = url_caption_loader(cfg.data, tokenizer, cfg.train.seed, group_by_image=True, **shard)
        if resume is not None:
            train_loader.check_resume(resume, args.checkpoint)  # the same list, from the next epoch's start
    else:
        train_loader = caption_loader(cfg.data.processed_dir, "train", cfg.data.batch_size, shuffle=True,
                                      seed=cfg.train.seed, num_workers=cfg.data.num_workers, drop_last=True,
                                      max_len=cfg.data.max_caption_len, group_by_image=True,
                                      group_by_length=cfg.data.group_by_length, **shard)
    val_loader = caption_loader(cfg.data.processed_dir, "val", cfg.data.batch_size, shuffle=False,
                                num_workers=cfg.data.num_workers, max_len=cfg.data.max_caption_len,
                                group_by_image=True, **shard)
    # The fixed validation subset that picks checkpoint_best.pt: the first eval.select_images images
    select_loader = image_captions_loader(cfg.data.processed_dir, "val", cfg.data.batch_size,
                                          num_workers=cfg.data.num_workers)
    scenes = selection_scenes(cfg, select_loader.dataset)  # None unless the data is shapes
    steps_per_epoch = steps_in_epoch(len(train_loader), cfg.train.accumulate_steps)  # optimiser steps
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data.processed_dir}: fewer training captions than one step's "
                         f"{cfg.train.accumulate_steps} batch(es) of {cfg.data.batch_size} per process "
                         f"({dist_info.world_size}); lower data.batch_size or train.accumulate_steps")
    transform = EvalTransform.for_encoder(encoder_config)  # no crop, no flip: the caption describes the whole, unmirrored scene

    # ---- 4. optimiser, gradient scaler, resume ----------------------------------------------------
    # Every unfreeze group is in the optimiser from the start, named, so its learning-rate multiplier
    # can be applied below; a frozen group's multiplier is 0.
    optimizer = make_optimizer(unfreeze_param_groups(raw_model, cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping sees
    scaler = make_grad_scaler(device, precision)  # fp16 only; a no-op in bf16 and fp32
    start_epoch, step, history = resume_from(resume, raw_model, optimizer, scaler, args.checkpoint, dist_info)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    average = all_reduce_mean if dist_info.distributed else None  # [distributed] losses of all processes
    logger = JsonlLogger(run_dir / "log.jsonl") if dist_info.is_main else None  # [distributed] rank 0 writes
    model = None  # compiled, and [distributed] wrapped in DDP for this epoch's freeze state
    n_params = sum(p.numel() for p in raw_model.parameters())
    encoder_start = f"pretrained encoder {pretrained}" if pretrained else "a random encoder (from scratch)"
    if dist_info.is_main:  # [distributed]
        print(f"captioner on {device} ({precision}) from {encoder_start}: {n_params / 1e6:.2f} M parameters, "
              f"{len(train_loader.dataset)} training images, {steps_per_epoch} steps per epoch, "
              f"{cfg.train.epochs} epochs, run dir {run_dir}"
              + (f", {dist_info.world_size} processes" if dist_info.distributed else ""))

    # ---- 5. training loop -----------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.train.epochs):
        if cfg.eval.patience and epochs_since_best(history) >= cfg.eval.patience:
            if dist_info.is_main:  # [distributed]
                print(f"stopping early: no better {cfg.eval.select_by} for {cfg.eval.patience} epochs")
            break
        start = time.perf_counter()
        # Layer-wise unfreezing: which encoder groups train this epoch, and at what fraction of the
        # learning rate (a pure function of the epoch). From scratch, everything trains at full rate.
        if pretrained:
            states = unfreeze_schedule(depth, epoch, cfg.unfreeze.start_epoch, cfg.unfreeze.decay,
                                       cfg.unfreeze.groups_per_epoch)
        else:
            states = train_everything(depth)
        set_trainable(raw_model, states)
        # [distributed] DDP averages the gradients of the parameters trainable when it was built: a new
        # wrapper when this epoch unfroze more (see wrap_ddp); the same model in a single process
        model = wrap_ddp(compiled, dist_info, previous=model)
        model.train()
        train_loader.batch_sampler.set_epoch(epoch)  # the epoch's order is a function of (seed, epoch)
        # augment.enabled: this epoch's augmentation strength, exp(-5 (1 - epoch / ramp_epochs)^2) up to 1
        strength = ramp_strength(epoch, cfg.augment.ramp_epochs) if cfg.augment.enabled else 0.0
        meter = LossMeter(device, average)
        batches = iter(train_loader)
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not show):
            # 5a. the learning rate of this step: warm-up, cosine decay, times each group's unfreeze multiplier
            lr = lr_at_step(step, cfg.train.lr, cfg.train.min_lr, warmup_steps, total_steps, cfg.train.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr * states[group["name"]].lr_scale

            # 5b. forward pass and loss under autocast, backward through the scaler, for each of the step's
            # train.accumulate_steps micro-batches (one by default): their gradients add up, each loss weighted
            # by its share of the step's caption tokens, as one batch that many times larger would average
            window = take_window(batches, cfg.train.accumulate_steps)
            if not window:  # a URL stream ends early by the blocks whose every image failed
                break
            weights = micro_batch_weights([int((b["tokens"][:, 1:] != PAD_ID).sum()) for b in window])
            step_loss = 0.0
            for i, (batch, weight) in enumerate(zip(window, weights)):
                images = batch["images"].to(device, non_blocking=True)  # (U, 3, S, S) uint8, each image once
                tokens = batch["tokens"].to(device, non_blocking=True)  # (B, T) <sos> ... <eos> <pad>...
                image_index = batch["image_index"].to(device, non_blocking=True)  # (B,) the image of each caption
                if cfg.augment.enabled:  # crop, colour, grey, blur: drawn from (seed, epoch, step, micro-batch, rank)
                    generator = seeded_generator(device, cfg.train.seed, AUGMENT_STREAM, epoch, step, i, dist_info.rank)
                    images = augment_batch(images, strength, cfg.augment, generator)  # (U, 3, S, S) uint8
                # [distributed] the gradients are all-reduced once, in the step's last backward
                with gradient_sync(model, last=i == len(window) - 1):
                    # teacher forcing: the decoder reads the caption shifted right and predicts it shifted left
                    with autocast(device, precision):
                        x = transform(images)  # (U, 3, H, W) float, normalised
                        out = model(x, tokens[:, :-1], src_index=image_index, return_cross_attention=attention_reg > 0)
                        logits, maps = out if attention_reg > 0 else (out, None)  # (B, T-1, V), [(B, 1, T-1, S)]
                        loss = caption_loss(logits, tokens[:, 1:], cfg.label_smoothing)
                        if cfg.eos_suppression > 0:  # penalise probability on <eos> before the caption's true end
                            loss = loss + cfg.eos_suppression * eos_suppression_loss(logits, tokens[:, 1:])
                        if attention_reg > 0:  # every grid cell should get about one unit of attention per caption
                            loss = loss + attention_reg * doubly_stochastic_penalty(maps[-1][:, 0],
                                                                                    tokens[:, 1:] != PAD_ID)
                    scaler.scale(loss * weight).backward()
                step_loss = step_loss + loss.detach() * weight

            # 5c. clip, optimiser step
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # 5d. the log line: the loss stays on the device until a line is due (no host sync per step)
            meter.add(step_loss, step, sum(b["tokens"].shape[0] for b in window))
            step += 1
            if meter.window_steps == cfg.train.log_every:
                window_loss, captions_per_s = meter.window(step)
                if logger:
                    logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, items_per_s=captions_per_s)
        train_loss = meter.epoch_mean(step)
        train_seconds = time.perf_counter() - start

        # ---- 6. validation: the loss on the validation captions, and the scores of beam-search captions
        # of the fixed subset, one of which (eval.select_by) picks checkpoint_best.pt
        val_loss = validation_loss(model, val_loader, transform, cfg.label_smoothing, device, precision,
                                   dist_info, show)
        if not math.isfinite(val_loss):
            raise ValueError(f"the validation loss of epoch {epoch + 1} is {val_loss}; not saving this epoch")
        val_scores = None
        if dist_info.is_main:  # [distributed] rank 0 captions alone; the others wait for its scores
            hypotheses = caption_images(raw_model, select_loader, tokenizer, transform, device, precision,
                                        cfg.eval.beam_size, cfg.eval.alpha, cfg.eval.max_len,
                                        limit=cfg.eval.select_images, progress=show)
            references = reference_captions(select_loader.dataset, hypotheses)
            val_scores = validation_scores(references, hypotheses, scenes)
        val_scores = broadcast_object(val_scores, dist_info)  # [distributed] early stopping needs them everywhere

        # ---- 7. checkpoint and log: rank 0 writes, the others wait at the barrier ----------------------
        # [distributed] captions_per_s counts the captions of all processes
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "val_loss": val_loss,
                  "val_scores": val_scores, "select_by": cfg.eval.select_by,
                  "selection": val_scores[cfg.eval.select_by],
                  "captions_per_s": steps_per_epoch * cfg.train.accumulate_steps * cfg.data.batch_size
                  * dist_info.world_size / train_seconds,
                  "trainable_groups": [name for name, s in states.items() if s.trainable],
                  **({"augment_strength": strength} if cfg.augment.enabled else {}),
                  "seconds": time.perf_counter() - start}
        if streaming:  # the epoch's failed URLs by reason; the stream's position for -c
            record["url_skips"] = dict(train_loader.skip_counts)
            extras["url_stream"] = train_loader.state(epoch + 1)
        history.append(record)
        payload = training_state(raw_model, optimizer, scaler, step, epoch + 1, KIND, config_to_dict(cfg), history,
                                 **extras, **rng_states_by_rank(dist_info))  # [distributed] every process's RNG
        if dist_info.is_main:  # [distributed]
            logger.log(**record)
            write_curves(run_dir / "log.jsonl", run_dir / "curves.png")
            path = save_checkpoint(checkpoint_path(run_dir, epoch + 1), payload)
            best = epochs_since_best(history) == 0
            if best:
                save_checkpoint(run_dir / "checkpoint_best.pt", payload)
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                  f"{cfg.eval.select_by} {record['selection']:.4f}{' (best)' if best else ''}  "
                  f"{describe_unfreeze(states)}  " + (f"augment {strength:.3f}  " if cfg.augment.enabled else "")
                  + f"{record['captions_per_s']:.0f} captions/s  {record['seconds']:.1f} s  -> {path}")
            print("    val " + "  ".join(f"{name} {val_scores[name]:.4f}" for name in SCORE_NAMES if name in val_scores)
                  + f"  on {val_scores['n_images']} images")
            if streaming:
                print(f"    URLs skipped: {describe_skips(record['url_skips'])}")
            for image_id in list(hypotheses)[:N_SAMPLES]:
                print(f"    {image_id}: {hypotheses[image_id]!r}  (reference: {references[image_id][0]!r})")
        barrier()  # [distributed]
    cleanup()  # [distributed]
    return history


def selection_scenes(cfg: CaptionerRunConfig, dataset) -> dict | None:
    """The generator's scenes of the validation subset on the shapes data (for the truth score), else None;
    a ConfigError when ``eval.select_by`` is captions_true and there are none."""
    n = cfg.eval.select_images or len(dataset)
    image_ids = dataset.image_ids[:n]
    try:
        scenes = shapes_scenes(cfg.data.processed_dir, image_ids, reference_captions(dataset, image_ids))
    except FileNotFoundError as e:
        scenes, reason = None, str(e)
    else:
        reason = f"{cfg.data.processed_dir} is not the shapes data"
    if scenes is None and cfg.eval.select_by == "captions_true":
        raise ConfigError(f"eval.select_by: captions_true needs the shapes data's scenes ({reason}); choose "
                          "CIDEr-D, BLEU-4 or ROUGE-L")
    return scenes


def validation_scores(references: dict, hypotheses: dict, scenes: dict | None) -> dict:
    """BLEU-1..4, ROUGE-L and CIDEr-D of the captions, plus ``captions_true`` (the share true in full)
    when the scenes are known; the numbers of images and empty captions too."""
    scores = evaluate_captions(references, hypotheses)
    if scenes is not None:
        scores["captions_true"] = truth_scores(hypotheses, scenes)["captions_true"]
    return scores


@torch.no_grad()
def validation_loss(model, loader, transform, label_smoothing: float, device: torch.device, precision: str,
                    dist_info, show: bool) -> float:
    """The mean teacher-forcing loss per caption over ``loader`` in eval mode; [distributed] over every
    process's share."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for batch in tqdm(loader, desc="validation", leave=False, disable=not show):
        images = batch["images"].to(device, non_blocking=True)  # (U, 3, S, S) uint8
        tokens = batch["tokens"].to(device, non_blocking=True)  # (B, T)
        image_index = batch["image_index"].to(device, non_blocking=True)  # (B,)
        with autocast(device, precision):
            logits = model(transform(images), tokens[:, :-1], src_index=image_index)  # (B, T-1, V)
            loss = caption_loss(logits, tokens[:, 1:], label_smoothing)
        total += loss.detach().float() * tokens.shape[0]
        count += tokens.shape[0]
    return weighted_mean(total, count, dist_info)


if __name__ == "__main__":
    run_script(main)
