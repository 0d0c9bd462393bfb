"""Step 3b (optional): self-critical sequence training, a second stage that optimises the caption's score.

    python train_scst.py -p runs/shapes_captioner/checkpoint_best.pt             # CIDEr-D reward (shapes, CPU)
    python train_scst.py -p runs/shapes_captioner/checkpoint_best.pt --set scst.reward.cider_d=0 \\
        --set scst.reward.truth=1                                                 # the truth reward (shapes only)
    python train_scst.py -c runs/shapes_scst/checkpoint1.pt --set train.epochs=4  # continue exactly

Cross-entropy teaches the decoder to copy reference words one at a time and never scores a whole caption
the model wrote. SCST (Rennie et al., 2017) does: each step samples K captions per image from the model
(``multinomial``, over the KV cache), scores each with the reward (``scst.reward``: CIDEr-D, BLEU-4 and on
shapes the caption's truth, ``captioner/training/rewards.py``), and raises the log-probability of the
captions that beat a baseline, lowering the others (``captioner/training/scst.py``)::

    loss = -mean_n (r_n - b_n) * log p(caption_n)      log p summed over the tokens up to <eos>

The baseline ``b`` is the reward of the model's own greedy caption of the image (``scst.baseline:
greedy``, Rennie) or the mean reward of the image's other samples (``mean``, Luo 2020). The decoder
trains at a small learning rate; the encoder stays frozen unless ``scst.train_encoder``. Dropout is off
throughout (the model stays in eval mode), so the policy that sampled a caption is exactly the one whose
log-probability the loss differentiates.

It starts from a captioner checkpoint (``-p``, train_captioner.py's) and writes captioner checkpoints:
evaluate.py and caption.py read ``checkpoint{N}.pt`` and ``checkpoint_best.pt`` (the best epoch by the
validation reward) as they read train_captioner.py's. Before the first epoch and after each, the first
``eval.select_images`` validation images are captioned by beam search and scored: the reward, BLEU-4,
CIDEr-D and, on shapes, the share of captions true in full; one line each in ``log.jsonl`` (epoch 0 is the
starting model), and ``curves.png`` shows the reward and its baseline per step.

The step is written out in ``main``, in numbered sections: 5a the learning rate, 5b sampling and greedy
decoding without gradients, 5c the rewards and the baseline, 5d the loss under autocast, backward,
clipping and the optimiser step, 5e the log line; then 6 validation and 7 the checkpoint.

Exact resume: the data order of epoch ``e`` is a function of ``(seed, e)``, the samples of step ``s`` are
drawn from a generator seeded with ``(seed, s, rank)``, the learning rate is a function of the step, and
the checkpoint holds the model, optimiser and scaler states.

Several GPUs: ``torchrun --nproc_per_node=N train_scst.py ...``; the lines that differ from a single
process are marked ``[distributed]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.cli import add_run_arguments, run_script
from captioner.config import (
    SCSTRunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from captioner.data.loaders import image_captions_loader
from captioner.data.transforms import EvalTransform
from captioner.evaluation.captioning import caption_images, reference_captions
from captioner.evaluation.curves import write_curves
from captioner.evaluation.metrics import evaluate_captions
from captioner.evaluation.truth import shapes_scenes, truth_scores
from captioner.infra.compile import maybe_compile
from captioner.models.captioner import KIND
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID
from captioner.training.checkpoints import (
    CheckpointError,
    captioner_from_payload,
    checkpoint_extras,
    checkpoint_path,
    load_checkpoint,
    resume_from,
    save_checkpoint,
    tokenizer_from_text,
    training_state,
)
from captioner.training.devices import autocast, make_grad_scaler, setup_device
from captioner.training.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    rng_states_by_rank,
    wrap_ddp,
)
from captioner.training.log import JsonlLogger, LossMeter
from captioner.training.optimizer import make_optimizer, param_groups
from captioner.training.rewards import TRUTH_REWARDS, CaptionRewards
from captioner.training.schedule import lr_at_step
from captioner.training.scst import greedy_baseline, mean_of_others_baseline, scst_loss
from captioner.training.seeding import TRAIN_STREAM, seeded_generator
from transformer_components import greedy_search, sample
from transformer_components.generation import forbidden_tokens

N_SAMPLES = 3  # validation captions printed after each epoch
FORBIDDEN = forbidden_tokens(SOS_ID, EOS_ID, PAD_ID)  # never sampled


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Self-critical sequence training of a captioner: sample captions, reward them (CIDEr-D, "
                    "BLEU-4, shapes truth), raise those above the baseline. Writes captioner checkpoints "
                    "checkpoint{N}.pt, checkpoint_best.pt (best validation reward), log.jsonl and curves.png "
                    "to the config's run_dir.",
        epilog="examples: python train_scst.py -p runs/shapes_captioner/checkpoint_best.pt | "
               "python train_scst.py -p runs/shapes_captioner/checkpoint_best.pt --set scst.reward.cider_d=0 "
               "--set scst.reward.truth=1 | python train_scst.py -c runs/shapes_scst/checkpoint1.pt "
               "--set train.epochs=4",
    )
    add_run_arguments(parser, default_config="configs/shapes_scst.yaml")
    parser.add_argument("-p", "--pretrained", default=None,
                        help="start from this captioner checkpoint (train_captioner.py's checkpoint*.pt, e.g. "
                             "checkpoint_best.pt, or its run folder for the latest checkpoint{N}.pt): "
                             "architecture, weights and tokenizer come from it. Required unless -c")
    return parser


def resolve_scst_config(args: argparse.Namespace) -> tuple[SCSTRunConfig, dict, str]:
    """The run's config, the captioner checkpoint payload the model comes from, and where it came from.

    With ``-c`` the SCST config stored in the checkpoint (``scst_config``; ``--set`` on top), else the
    ``--config`` YAML with ``--set``; the payload is the ``-c`` or the ``-p`` checkpoint.
    """
    if args.checkpoint:
        payload = load_checkpoint(args.checkpoint, kind=KIND)
        if not isinstance(payload.get("scst_config"), dict):
            raise CheckpointError(f"{args.checkpoint}: a train_captioner.py checkpoint, not an SCST run's; "
                                  "start self-critical training from it with -p")
        data = apply_overrides(payload["scst_config"], args.set)
        return config_from_dict(SCSTRunConfig, data, f"{args.checkpoint} (stored SCST config)"), payload, \
            args.checkpoint
    if not args.pretrained:
        raise ValueError("give the captioner checkpoint to start from with -p (or resume an SCST run with -c)")
    return load_config(SCSTRunConfig, args.config, args.set), load_checkpoint(args.pretrained, kind=KIND), \
        args.pretrained


def main(argv: list[str] | None = None) -> list[dict]:
    """Run (or continue) self-critical training and return the per-epoch history (epoch 0: before it)."""
    args = build_parser().parse_args(argv)
    if args.pretrained and args.checkpoint:
        raise ValueError("use either -p (start from a captioner) or -c (resume an SCST run), not both")

    # ---- 1. config, device, the captioner checkpoint and its tokenizer --------------------------
    cfg, start, source = resolve_scst_config(args)
    resume = start if args.checkpoint else None
    K = cfg.scst.samples
    if K < 1 or (cfg.scst.baseline == "mean" and K < 2):
        raise ValueError(f"scst.samples: {K} samples per image; the {cfg.scst.baseline!r} baseline needs "
                         f"{'2' if cfg.scst.baseline == 'mean' else '1'} or more")
    dist_info = init_distributed(args.device)  # [distributed] under torchrun: join the process group, take a GPU
    device, precision = setup_device(str(dist_info.device), cfg.train.precision)
    torch.manual_seed(cfg.train.seed + dist_info.rank)  # the sampling generators are seeded per step below
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    show = not args.no_progress and dist_info.is_main  # [distributed] rank 0 alone shows progress
    tokenizer_text = start.get("tokenizer", "")
    tokenizer = tokenizer_from_text(tokenizer_text, source)
    tokenizer_path = Path(cfg.data.processed_dir) / "tokenizer.txt"
    if tokenizer_path.read_text(encoding="utf-8") != tokenizer_text:
        raise CheckpointError(f"{source}: the captioner was trained with another tokenizer than {tokenizer_path}; "
                              "point data.processed_dir at the processed data it was trained on")

    # ---- 2. model: the captioner, in eval mode throughout (no dropout); the encoder frozen or not --
    raw_model = captioner_from_payload(start, source, max_len=cfg.scst.max_len).to(device)
    raw_model.eval()
    raw_model.encoder.requires_grad_(cfg.scst.train_encoder)
    encoder_config = raw_model.encoder.config
    extras = checkpoint_extras(encoder_config, start["vocab_size"], raw_model.decoder.max_len, tokenizer_text,
                               start.get("pretrained"))
    compiled = maybe_compile(raw_model, cfg.train.compile, graph_variants=1, mode=cfg.train.compile_mode)
    model = wrap_ddp(compiled, dist_info)  # [distributed] the freeze state never changes: wrapped once
    transform = EvalTransform.for_encoder(encoder_config)

    # ---- 3. data and rewards ----------------------------------------------------------------------
    # A batch is batch_size images with all their references; each image gets K sampled captions.
    train_loader = image_captions_loader(cfg.data.processed_dir, "train", cfg.data.batch_size,
                                         num_workers=cfg.data.num_workers, shuffle=True, seed=cfg.train.seed,
                                         drop_last=True, num_replicas=dist_info.world_size, rank=dist_info.rank)
    val_loader = image_captions_loader(cfg.data.processed_dir, "val", cfg.data.batch_size,
                                       num_workers=cfg.data.num_workers)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{cfg.data.processed_dir}: fewer training images than one batch ({cfg.data.batch_size}) "
                         f"per process ({dist_info.world_size}); lower data.batch_size")
    weights = config_to_dict(cfg.scst.reward)
    train_refs = reference_captions(train_loader.dataset, train_loader.dataset.image_ids)
    val_refs = reference_captions(val_loader.dataset, val_loader.dataset.image_ids)
    truth_reward = any(weights[name] for name in TRUTH_REWARDS)
    train_scenes = shapes_scenes(cfg.data.processed_dir, list(train_refs), train_refs) if truth_reward else None
    val_scenes = shapes_scenes(cfg.data.processed_dir, list(val_refs), val_refs)  # None unless shapes
    if truth_reward and train_scenes is None:
        raise ValueError(f"scst.reward: the truth rewards need the shapes dataset; {cfg.data.processed_dir} is not")
    rewards = CaptionRewards(train_refs, weights, train_scenes)  # CIDEr-D's idf: the training references, once
    val_rewards = CaptionRewards(val_refs, weights, val_scenes, frequencies=rewards.document_frequency)

    # ---- 4. optimiser, gradient scaler, resume -----------------------------------------------------
    trainable = [(name, p) for name, p in raw_model.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(param_groups(trainable, cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    parameters = [p for _, p in trainable]  # what clipping sees
    scaler = make_grad_scaler(device, precision)  # fp16 only; a no-op in bf16 and fp32
    start_epoch, step, history = resume_from(resume, raw_model, optimizer, scaler, source, dist_info)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    average = all_reduce_mean if dist_info.distributed else None  # [distributed] means over all processes
    logger = JsonlLogger(run_dir / "log.jsonl") if dist_info.is_main else None  # [distributed] rank 0 writes
    scst_from = resume.get("scst_from") if resume else str(args.pretrained)
    if dist_info.is_main:  # [distributed]
        print(f"SCST on {device} ({precision}) from {scst_from}: {sum(p.numel() for p in parameters) / 1e6:.2f} M "
              f"trainable parameters (encoder {'trains' if cfg.scst.train_encoder else 'frozen'}), "
              f"{len(train_loader.dataset)} training images, {K} samples each, {cfg.scst.baseline} baseline, "
              f"reward {rewards.weights}, {steps_per_epoch} steps per epoch, {cfg.train.epochs} epochs, "
              f"run dir {run_dir}")
    if not history and dist_info.is_main:  # epoch 0: the starting model, scored like every epoch after
        before = {"epoch": 0, "step": 0, **validate(raw_model, val_loader, tokenizer, transform, device, precision,
                                                     cfg, val_rewards, val_scenes, show)}
        history.append(before)
        logger.log(**before)
        print(describe(before))
    history = broadcast_object(history, dist_info)  # [distributed]

    # ---- 5. training loop -----------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.train.epochs):
        if cfg.eval.patience and epochs_since_best(history) >= cfg.eval.patience:
            if dist_info.is_main:  # [distributed]
                print(f"stopping early: no better validation reward for {cfg.eval.patience} epochs")
            break
        start_time = time.perf_counter()
        train_loader.batch_sampler.set_epoch(epoch)  # the epoch's order is a function of (seed, epoch)
        meter = LossMeter(device, average)
        window = np.zeros(3)  # sums since the last log line: mean reward, mean baseline, mean words per sample
        epoch_sums = np.zeros(3)
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not show):
            images = batch["images"].to(device, non_blocking=True)  # (U, 3, S, S) uint8
            image_ids = batch["image_ids"].numpy()  # (U,)
            U = len(image_ids)

            # 5a. the learning rate of this step: warm-up, then cosine decay (or inverse square root)
            lr = lr_at_step(step, cfg.train.lr, cfg.train.min_lr, warmup_steps, total_steps, cfg.train.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # 5b. K sampled captions per image and (for the greedy baseline) the greedy caption, through the
            # KV cache and without gradients; the step's draws come from a generator seeded by the step
            generator = seeded_generator(device, cfg.train.seed, TRAIN_STREAM, step, dist_info.rank)
            with torch.no_grad(), autocast(device, precision):
                x = transform(images)  # (U, 3, H, W) float, normalised
                memory = raw_model.encode(x)  # (U, S, C)
                sampled, _ = sample(raw_model.decoder, memory.repeat_interleave(K, dim=0), SOS_ID, EOS_ID, PAD_ID,
                                    cfg.scst.max_len, generator)  # (U*K, L) image-major: K rows per image
                if cfg.scst.baseline == "greedy":
                    greedy, _ = greedy_search(raw_model.decoder, memory, SOS_ID, EOS_ID, PAD_ID,
                                              cfg.scst.max_len)  # (U, L')

            # 5c. rewards of the sampled captions (on the host: the metrics read text) and the baseline
            captions = [tokenizer.decode(row) for row in sampled.tolist()]
            reward = torch.from_numpy(rewards.total(rewards.scores(np.repeat(image_ids, K), captions)))  # (U*K,)
            if cfg.scst.baseline == "greedy":
                greedy_captions = [tokenizer.decode(row) for row in greedy.tolist()]
                greedy_reward = torch.from_numpy(rewards.total(rewards.scores(image_ids, greedy_captions)))  # (U,)
                baseline = greedy_baseline(greedy_reward, K)  # (U*K,)
            else:
                baseline = mean_of_others_baseline(reward, K)  # (U*K,)
            advantage = (reward - baseline).float().to(device)  # (U*K,)

            # 5d. the loss under autocast: teacher-forced log-probabilities of the sampled tokens (the
            # decoder reads <sos> and the tokens before each), weighted by the advantage; backward, clip, step
            with autocast(device, precision):
                inputs = torch.cat([torch.full((U * K, 1), SOS_ID, device=device), sampled[:, :-1]], dim=1)
                image_index = torch.arange(U, device=device).repeat_interleave(K)  # (U*K,) the image of each
                logits = model(x, inputs, src_index=image_index)  # (U*K, L, V)
                loss = scst_loss(logits, sampled, advantage, PAD_ID, FORBIDDEN)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # 5e. the log line: mean reward, baseline and sampled caption length (the rewards already
            # needed the captions on the host, so these sums cost no extra sync)
            stats = np.array([reward.mean().item(), baseline.mean().item(),
                              np.mean([len(c.split()) for c in captions])])
            window += stats
            epoch_sums += stats
            meter.add(loss, step, U * K)
            step += 1
            if meter.window_steps == cfg.train.log_every:
                n = meter.window_steps
                window_loss, captions_per_s = meter.window(step)
                means = over_processes(window / n, average, device)
                window[:] = 0
                if logger:
                    logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, reward=means[0], baseline=means[1],
                               sample_words=means[2], items_per_s=captions_per_s)
        train_loss = meter.epoch_mean(step)
        train_means = over_processes(epoch_sums / steps_per_epoch, average, device)
        train_seconds = time.perf_counter() - start_time

        # ---- 6. validation: beam-search captions of the validation images, their reward and scores --------
        scores = None
        if dist_info.is_main:  # [distributed] rank 0 captions alone
            scores = validate(raw_model, val_loader, tokenizer, transform, device, precision, cfg, val_rewards,
                              val_scenes, show)
        scores = broadcast_object(scores, dist_info)  # [distributed] early stopping needs them on every process

        # ---- 7. checkpoint and log: rank 0 writes, the others wait at the barrier ----------------------
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_reward": train_means[0],
                  "train_baseline": train_means[1], "sample_words": train_means[2], **scores,
                  "captions_per_s": steps_per_epoch * cfg.data.batch_size * K * dist_info.world_size / train_seconds,
                  "train_seconds": train_seconds, "seconds": time.perf_counter() - start_time}
        history.append(record)
        # a captioner checkpoint (evaluate.py and caption.py read it) with the SCST config to resume from
        payload = training_state(raw_model, optimizer, scaler, step, epoch + 1, KIND, start["config"], history,
                                 **extras, scst_config=config_to_dict(cfg), scst_from=scst_from,
                                 **rng_states_by_rank(dist_info))
        if dist_info.is_main:  # [distributed]
            logger.log(**record)
            write_curves(run_dir / "log.jsonl", run_dir / "curves.png")
            path = save_checkpoint(checkpoint_path(run_dir, epoch + 1), payload)
            best = epochs_since_best(history) == 0
            if best:
                save_checkpoint(run_dir / "checkpoint_best.pt", payload)
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {train_loss:.4f}  reward {train_means[0]:.4f}  "
                  f"baseline {train_means[1]:.4f}  {describe(record)}{' (best)' if best else ''}  "
                  f"{record['seconds']:.1f} s  -> {path}")
            for image_id, caption in list(scores["examples"].items())[:N_SAMPLES]:
                print(f"    {image_id}: {caption!r}")
        barrier()  # [distributed]
    cleanup()  # [distributed]
    return history


def over_processes(values: np.ndarray, average, device: torch.device) -> list[float]:
    """``values`` as floats; [distributed] their means over every process."""
    if average is None:
        return [float(v) for v in values]
    return average(torch.tensor(values, dtype=torch.float32, device=device)).tolist()


def epochs_since_best(history: list[dict]) -> int:
    """SCST epochs after the one with the best validation reward (the first of equals): 0 when the last is
    the best. Epoch 0, the starting model, is not an SCST epoch."""
    scores = [h["val_reward"] for h in history if h["epoch"] > 0]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


@torch.no_grad()
def validate(model, loader, tokenizer, transform, device: torch.device, precision: str, cfg: SCSTRunConfig,
             val_rewards: CaptionRewards, scenes, show: bool) -> dict:
    """Caption the first ``eval.select_images`` validation images by beam search and score them: the mean
    reward (and each weighted reward), BLEU-4, CIDEr-D (corpus), and on shapes the truth scores;
    ``examples``: a few captions."""
    hypotheses = caption_images(model, loader, tokenizer, transform, device, precision, cfg.eval.beam_size,
                                cfg.eval.alpha, cfg.eval.max_len, limit=cfg.eval.select_images, progress=show)
    ids = list(hypotheses)
    metrics = evaluate_captions(reference_captions(loader.dataset, ids), hypotheses)
    per_reward = val_rewards.scores(ids, [hypotheses[i] for i in ids])
    scores = {"val_reward": float(val_rewards.total(per_reward).mean()),
              **{f"val_{name}": float(v.mean()) for name, v in per_reward.items()},
              "bleu4": metrics["BLEU-4"], "cider_d": metrics["CIDEr-D"]}
    if scenes is not None:
        truth = truth_scores(hypotheses, scenes)
        scores.update(captions_true=truth["captions_true"], claims_true=truth["claims_true"])
    scores["examples"] = {i: hypotheses[i] for i in ids[:N_SAMPLES]}
    return scores


def describe(record: dict) -> str:
    """The validation scores of a history record, in one line."""
    line = (f"epoch {record['epoch']} val: reward {record['val_reward']:.4f}  BLEU-4 {record['bleu4']:.4f}  "
            f"CIDEr-D {record['cider_d']:.4f}")
    if "captions_true" in record:
        share = lambda x: "-" if x is None else f"{x:.1%}"  # None: no caption was parsed, no claim to count
        line += f"  true in full {share(record['captions_true'])}  claims true {share(record['claims_true'])}"
    return line


if __name__ == "__main__":
    run_script(main)
