"""Retrieval instead of generation: train a dual encoder (image tower + text tower) contrastively.

    python train_retrieval.py                                          # shapes, ViT from scratch (CPU, minutes)
    python train_retrieval.py -p runs/shapes_encoder                   # the image tower from the MAE encoder
    python train_retrieval.py --set contrastive.loss=cosine            # the original project's +-1 cosine loss instead of InfoNCE
    python train_retrieval.py --set contrastive.optimizer=lamb         # LAMB instead of AdamW
    python train_retrieval.py -c runs/shapes_retrieval/checkpoint3.pt  # continue exactly where it stopped

The model (``captioner/models/dual_encoder.py``) maps an image and a caption to unit vectors of one
space; a caption is retrieved for an image by the largest dot product. The image tower is the ViT,
random with the architecture of the config's ``encoder_config`` YAML, or with ``-p`` the MAE
checkpoint's architecture and weights (all of it trains from the first step: no layer-wise unfreezing
here). The losses are in ``captioner/training/contrastive.py``, LAMB in ``captioner/training/lamb.py``.

Training batches are random (image, caption) pairs, so the captions of a batch mostly belong to
different images: the other captions of the batch are the negatives. Each image of a batch is encoded
once and its embedding gathered for each of its captions.

Each epoch: Recall@1/5/10 image -> text and text -> image on the validation split, a line in
``log.jsonl``, ``curves.png`` and ``checkpoint{N}.pt``. After the last epoch: Recall@K on every split
of ``eval.splits`` beside the random baseline (also in ``results.json``), and ``retrieval.png``: the
first validation images with their top retrieved captions from the validation captions, the hits
marked (a caption with the text of one of the image's own captions, Recall@K's rule).

The sections of ``main``: 1 config, device, tokenizer, seed and run folder; 2 the model; 3 data;
4 optimiser, gradient scaler, resume; 5 the training loop (5a the learning rate, 5b the forward pass and
the loss under autocast, 5c backward, clipping, the optimiser step and the cap on the learned inverse
temperature, 5d the log line); 6 validation;
7 the checkpoint; 8 the final evaluation. Under ``torchrun`` each process's negatives are the captions
of its own share of the batch (no all-gather); the lines that differ are marked ``[distributed]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.cli import add_run_arguments, resolve_run_config, run_script
from captioner.config import EncoderRunConfig, RetrievalRunConfig, ViTConfig, config_from_dict, config_to_dict, load_config
from captioner.data.datasets import ImageWithCaptionsDataset, to_tensors
from captioner.data.loaders import caption_loader
from captioner.data.url_stream import describe_skips, url_caption_loader
from captioner.data.transforms import EvalTransform
from captioner.evaluation.curves import write_curves
from captioner.evaluation.pictures import picture_scale, retrieval_figure, save_png
from captioner.evaluation.retrieval import (
    RECALL_KS,
    embed_split,
    random_recall,
    recall_at_k,
    relevant_counts,
    top_k_search,
)
from captioner.infra.fileio import write_json
from captioner.models.dual_encoder import KIND, DualEncoder
from captioner.text.tokenizers import load_tokenizer
from captioner.training.checkpoints import (
    CheckpointError,
    checkpoint_path,
    encoder_from_mae_checkpoint,
    load_checkpoint,
    resume_from,
    save_checkpoint,
    training_state,
)
from captioner.training.contrastive import info_nce_loss, pairwise_cosine_loss
from captioner.training.devices import autocast, make_grad_scaler, setup_device
from captioner.training.distributed import (
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    rng_states_by_rank,
    wrap_ddp,
)
from captioner.training.log import JsonlLogger, LossMeter
from captioner.training.optimizer import make_optimizer, param_groups
from captioner.training.schedule import lr_at_step
from captioner.training.seeding import TRAIN_STREAM, seeded_generator  # the negatives' stream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a dual encoder (ViT image tower + transformer text tower) for image-caption retrieval. "
                    "Writes checkpoint{N}.pt, log.jsonl, curves.png, and after the last epoch results.json "
                    "(Recall@1/5/10 both ways beside the random baseline) and retrieval.png to the config's run_dir.",
        epilog="examples: python train_retrieval.py | python train_retrieval.py -p runs/shapes_encoder | "
               "python train_retrieval.py --set contrastive.loss=cosine --set contrastive.optimizer=lamb",
    )
    add_run_arguments(parser, default_config="configs/shapes_retrieval.yaml")
    parser.add_argument("-p", "--pretrained", default=None,
                        help="start the image tower from this MAE checkpoint (train_encoder.py's checkpoint*.pt, or "
                             "its run folder for the latest one): architecture and weights. Without -p (and -c) "
                             "the ViT starts random with the architecture of the config's encoder_config YAML")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    """Train (or continue training) and return the per-epoch history."""
    args = build_parser().parse_args(argv)
    if args.pretrained and args.checkpoint:
        raise ValueError("use either -p (start from an MAE encoder) or -c (resume a retrieval run), not both")

    # ---- 1. config, device, tokenizer -----------------------------------------------------------
    cfg, resume = resolve_run_config(args, RetrievalRunConfig, kind=KIND)
    if cfg.data.group_by_length:
        raise ValueError("data.group_by_length is a train_captioner.py setting (a contrastive batch's other "
                         "captions are its negatives: batches of alike captions would change the loss): "
                         "set data.group_by_length=false")
    if cfg.train.accumulate_steps != 1:
        # accumulated micro-batches would each see only their own negatives: not the step of a larger batch
        raise ValueError("train.accumulate_steps must be 1 here: a contrastive batch's other pairs are its "
                         "negatives, so micro-batches with summed gradients are not one larger batch; raise "
                         "data.batch_size instead")
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

    # ---- 2. model: the image tower from -p, from -c, or random with the encoder YAML's architecture --
    if resume is not None:
        if not isinstance(resume.get("vit"), dict):
            raise CheckpointError(f"{args.checkpoint}: the retrieval checkpoint lacks its 'vit' architecture")
        vit, pretrained = config_from_dict(ViTConfig, resume["vit"], f"{args.checkpoint} (vit)"), resume.get("pretrained")
    elif args.pretrained:
        mae_encoder = encoder_from_mae_checkpoint(load_checkpoint(args.pretrained), args.pretrained)
        vit, pretrained = mae_encoder.config, str(args.pretrained)
    else:
        vit, pretrained = load_config(EncoderRunConfig, cfg.encoder_config).model, None
    raw_model = DualEncoder(vit, cfg.text, tokenizer.vocab_size, cfg.data.max_caption_len, cfg.contrastive.embed_dim,
                            cfg.contrastive.init_temperature)
    if resume is None and args.pretrained:
        raw_model.image_encoder.load_state_dict(mae_encoder.state_dict())
    # the temperature belongs to InfoNCE; with the cosine loss it is left out of the gradients (and of DDP's)
    raw_model.logit_scale.requires_grad_(cfg.contrastive.loss == "info_nce")
    raw_model.to(device)  # raw_model is what the checkpoint stores; model is what runs
    model = wrap_ddp(raw_model, dist_info)  # [distributed] DDP averages the gradients
    extras = {"vit": config_to_dict(vit), "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer_text,
              "pretrained": pretrained}

    # ---- 3. data --------------------------------------------------------------------------------
    shard = {"num_replicas": dist_info.world_size, "rank": dist_info.rank}  # [distributed] this process's share
    streaming = cfg.data.source == "urls"
    if streaming:  # the training images fetched from their URLs while training runs (docs/urls.md); one caption
        # of each image per batch, since its other captions would be false negatives
        train_loader = url_caption_loader(cfg.data, tokenizer, cfg.train.seed, group_by_image=False, **shard)
        if resume is not None:
            train_loader.check_resume(resume, args.checkpoint)  # the same list, from the next epoch's start
    else:
        train_loader = caption_loader(cfg.data.processed_dir, "train", cfg.data.batch_size, shuffle=True,
                                      seed=cfg.train.seed, num_workers=cfg.data.num_workers, drop_last=True,
                                      max_len=cfg.data.max_caption_len, **shard)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data.processed_dir}: fewer training captions than one batch "
                         f"({cfg.data.batch_size}) per process ({dist_info.world_size}); lower data.batch_size")
    transform = EvalTransform.for_encoder(vit)  # no crop, no flip: the caption describes the whole, unmirrored scene

    # ---- 4. optimiser (AdamW or LAMB), gradient scaler, resume --------------------------------------
    optimizer = make_optimizer(param_groups(raw_model.named_parameters(), cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device, kind=cfg.contrastive.optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping sees
    scaler = make_grad_scaler(device, precision)  # fp16 only; a no-op in bf16 and fp32
    start_epoch, step, history = resume_from(resume, raw_model, optimizer, scaler, args.checkpoint, dist_info)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    average = all_reduce_mean if dist_info.distributed else None  # [distributed] losses of all processes
    logger = JsonlLogger(run_dir / "log.jsonl") if dist_info.is_main else None  # [distributed] rank 0 writes
    if dist_info.is_main:  # [distributed]
        n_params = sum(p.numel() for p in raw_model.parameters())
        print(f"dual encoder on {device} ({precision}), image tower "
              f"{'from MAE ' + pretrained if pretrained else 'from scratch'}: {n_params / 1e6:.2f} M parameters, "
              f"{cfg.contrastive.loss} loss, {cfg.contrastive.optimizer}, {steps_per_epoch} steps per epoch, "
              f"{cfg.train.epochs} epochs, run dir {run_dir}")

    # ---- 5. training loop -----------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.train.epochs):
        start = time.perf_counter()
        model.train()
        train_loader.batch_sampler.set_epoch(epoch)  # the epoch's order is a function of (seed, epoch)
        generator = seeded_generator(device, cfg.train.seed, TRAIN_STREAM, epoch, dist_info.rank)  # negatives
        meter = LossMeter(device, average)
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not show):
            images = batch["images"].to(device, non_blocking=True)  # (U, 3, S, S) uint8, each image once
            tokens = batch["tokens"].to(device, non_blocking=True)  # (B, T) <sos> ... <eos> <pad>...
            image_index = batch["image_index"].to(device, non_blocking=True)  # (B,) the image of each caption

            # 5a. the learning rate of this step: warm-up, then cosine decay
            lr = lr_at_step(step, cfg.train.lr, cfg.train.min_lr, warmup_steps, total_steps, cfg.train.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # 5b. forward pass and loss, under autocast: B matching pairs, row b of both embeddings
            with autocast(device, precision):
                image_emb, text_emb = model(transform(images), tokens)  # (U, E), (B, E) unit vectors
                image_emb = image_emb[image_index]  # (B, E): the image of each caption
                if cfg.contrastive.loss == "info_nce":  # every other caption of the batch is a negative
                    loss = info_nce_loss(image_emb, text_emb, raw_model.scale())
                else:  # one sampled negative caption per image, +-1 labels
                    loss = pairwise_cosine_loss(image_emb, text_emb, cfg.contrastive.margin, generator)

            # 5c. backward through the scaler, clip, optimiser step, then cap the temperature's inverse
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            raw_model.cap_logit_scale()  # at most 100, on the parameter: a clamp in the loss would stop its gradient

            # 5d. the log line: the loss stays on the device until a line is due (no host sync per step)
            meter.add(loss, step, tokens.shape[0])
            step += 1
            if meter.window_steps == cfg.train.log_every:
                window_loss, pairs_per_s = meter.window(step)
                if logger:
                    logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, items_per_s=pairs_per_s,
                               temperature=1.0 / raw_model.scale().item())
        train_loss = meter.epoch_mean(step)
        train_seconds = time.perf_counter() - start

        # ---- 6. validation: Recall@K both ways on the validation split (rank 0) ---------------------
        recall = None
        if dist_info.is_main:  # [distributed]
            embeddings = embed_split(raw_model, cfg.data.processed_dir, "val", transform, device, precision,
                                     cfg.data.batch_size, cfg.data.max_caption_len, show)
            recall = recall_at_k(*embeddings)

        # ---- 7. checkpoint and log: rank 0 writes, the others wait at the barrier ------------------------
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, **(recall or {}),
                  "pairs_per_s": steps_per_epoch * cfg.data.batch_size * dist_info.world_size / train_seconds,
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
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {train_loss:.4f}  val {describe(recall)}  "
                  f"{record['pairs_per_s']:.0f} pairs/s  {record['seconds']:.1f} s  -> {path}")
            if streaming:
                print(f"    URLs skipped: {describe_skips(record['url_skips'])}")
        barrier()  # [distributed]

    # ---- 8. final evaluation: Recall@K on eval.splits beside the random baseline, and the picture --------
    if dist_info.is_main and history:  # [distributed]
        results = evaluate_splits(raw_model, cfg, transform, device, precision, show)
        write_json(run_dir / "results.json", results)
        picture = retrieval_picture(raw_model, cfg, transform, device, precision)
        save_png(picture, run_dir / "retrieval.png")
        print(f"-> {run_dir / 'results.json'}, {run_dir / 'retrieval.png'}")
    cleanup()  # [distributed]
    return history


def describe(recall: dict[str, float]) -> str:
    """``i2t R@1/5/10 0.12/0.40/0.61  t2i ...`` for the epoch line."""
    return "  ".join(f"{way} R@{'/'.join(map(str, RECALL_KS))} "
                     + "/".join(f"{recall[f'{way}_R@{k}']:.3f}" for k in RECALL_KS) for way in ("i2t", "t2i"))


def evaluate_splits(model, cfg: RetrievalRunConfig, transform, device, precision: str, show: bool) -> dict:
    """``{split: {"model": Recall@K, "random": the random baseline, "images": N, "captions": M}}``."""
    results = {}
    for split in cfg.eval.splits:
        image_emb, text_emb, owner, text = embed_split(model, cfg.data.processed_dir, split, transform, device,
                                                       precision, cfg.data.batch_size, cfg.data.max_caption_len, show)
        n_images, n_captions = image_emb.shape[0], text_emb.shape[0]
        results[split] = {"model": recall_at_k(image_emb, text_emb, owner, text),
                          "random": random_recall(*relevant_counts(owner, text, n_images)),
                          "images": n_images, "captions": n_captions}
        print(f"{split}: {n_images} images, {n_captions} captions\n  model   {describe(results[split]['model'])}"
              f"\n  random  {describe(results[split]['random'])}")
    return results


def retrieval_picture(model, cfg: RetrievalRunConfig, transform, device, precision: str):
    """The first ``eval.picture_images`` validation images, each with its ``eval.top_k`` best validation captions."""
    image_emb, text_emb, owner, text = embed_split(model, cfg.data.processed_dir, "val", transform, device,
                                                   precision, cfg.data.batch_size, cfg.data.max_caption_len)
    n = min(cfg.eval.picture_images, image_emb.shape[0])
    _, top = top_k_search(image_emb[:n], text_emb, cfg.eval.top_k)  # (n, k) caption rows of the split
    dataset = ImageWithCaptionsDataset(cfg.data.processed_dir, "val")
    captions = [c for image_captions in dataset.captions for c in image_captions]  # embed_split's caption order
    ranked = [[captions[j] for j in row.tolist()] for row in top]
    text = text.tolist()
    hits = set(zip(owner.tolist(), text))  # Recall@K's rule: the text of an own caption
    true = [[(i, text[j]) in hits for j in row.tolist()] for i, row in enumerate(top)]
    images = to_tensors(dataset.get_batch(range(n)))["images"]  # (n, 3, S, S) uint8
    return retrieval_figure(images, ranked, true, scale=picture_scale(images.shape[-1]))


if __name__ == "__main__":
    run_script(main)
