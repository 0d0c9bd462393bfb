"""Deliberate breaks ("mutants"): does some test fail when the algorithm is wrong?

Each entry of ``MUTANTS`` is one plausible mistake: a file, the exact text to find there (it must
occur exactly once) and what to put instead, and the tests that should notice. The script copies the
repository's files (``git ls-files``: tracked, and untracked but not ignored) to a temporary folder,
runs every listed test there once unbroken (a test that already fails proves nothing), then applies
each break in turn, runs its tests with a timeout, puts the file back, and reports:

    KILLED    a listed test failed: the break is noticed
    SURVIVED  every listed test passed with the break in place: a test is missing or too weak
    TIMEOUT   the tests did not finish in time (counted as noticed, but look at it)
    STALE     the text to break is not in the file (any more): update the entry
    ERROR     pytest could not run (collection error, no tests selected)

The working tree is never modified. Usage (from the repository root)::

    python tests/mutants.py               # every break
    python tests/mutants.py -k bleu       # the breaks whose name contains "bleu"
    python tests/mutants.py --list        # names, files and tests only

The exit status is 1 when a break survived or was stale. The file is named without ``test_`` so
that pytest never collects or imports it. See docs/testing.md#testsmutantspy-every-recorded-break-automatically.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (text that must occur exactly once, its replacement), in order
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    why: str = ""


def mutant(name, file, original, replacement, tests, why="", more=()) -> Mutant:
    return Mutant(name, file, ((original, replacement), *more), tuple(tests), why)


TRAIN_CAPTIONER_TESTS = ("tests/test_train_captioner.py",)
MUTANTS = [
    # ---- 1. the MAE decoder
    mutant("mae-decoder-no-unshuffle", "captioner/models/mae.py",
           "x = x.gather(1, ids_restore[..., None].expand(-1, -1, width))", "x = x",
           ["tests/test_mae.py"], "the decoder's tokens stay in shuffled order"),
    mutant("mae-decoder-no-position", "captioner/models/mae.py",
           "x = self.transformer(torch.cat([prefix, x], dim=1) + self.pos_embed)",
           "x = self.transformer(torch.cat([prefix, x], dim=1))",
           ["tests/test_mae.py"], "mask tokens cannot tell where they are"),
    # ---- 2. MAE crops and masks must change every epoch
    mutant("encoder-seed-without-epoch", "train_encoder.py",
           "seeded_generator(device, cfg.train.seed, TRAIN_STREAM, epoch, dist_info.rank)",
           "seeded_generator(device, cfg.train.seed, TRAIN_STREAM, dist_info.rank)",
           ["tests/test_train_encoder.py", "tests/test_distributed.py"], "every epoch repeats epoch 0's masks"),
    mutant("encoder-no-clipping", "train_encoder.py",
           "torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)", "pass",
           ["tests/test_train_encoder.py"]),
    # ---- 3. DDP re-wrapped after an unfreeze
    mutant("captioner-ddp-wrapped-once", "train_captioner.py",
           "model = wrap_ddp(compiled, dist_info, previous=model)",
           "model = model if model is not None else wrap_ddp(compiled, dist_info)",
           ["tests/test_distributed.py"], "a layer unfrozen later trains on its own process's gradients"),
    mutant("captioner-ddp-hoisted", "train_captioner.py",
           "        model = wrap_ddp(compiled, dist_info, previous=model)\n", "",
           ["tests/test_distributed.py"], "DDP built once, before the loop",
           more=[("    model = None  # compiled,", "    model = wrap_ddp(compiled, dist_info)  # compiled,")]),
    # ---- 4. train_captioner.py's wiring
    mutant("label-smoothing-not-in-training-loss", "train_captioner.py",
           "loss = caption_loss(logits, tokens[:, 1:], cfg.label_smoothing)",
           "loss = caption_loss(logits, tokens[:, 1:], 0.1)", TRAIN_CAPTIONER_TESTS),
    mutant("label-smoothing-not-in-validation-loss", "train_captioner.py",
           "val_loss = validation_loss(model, val_loader, transform, cfg.label_smoothing,",
           "val_loss = validation_loss(model, val_loader, transform, 0.0,", TRAIN_CAPTIONER_TESTS),
    mutant("patience-ignored", "train_captioner.py",
           "if cfg.eval.patience and epochs_since_best(history) >= cfg.eval.patience:", "if False:",
           TRAIN_CAPTIONER_TESTS),
    mutant("patience-off-by-one", "train_captioner.py",
           "epochs_since_best(history) >= cfg.eval.patience", "epochs_since_best(history) > cfg.eval.patience",
           TRAIN_CAPTIONER_TESTS),
    mutant("captioner-no-clipping", "train_captioner.py",
           "torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)", "pass", TRAIN_CAPTIONER_TESTS),
    mutant("captioner-clipping-ignores-config", "train_captioner.py",
           "torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)",
           "torch.nn.utils.clip_grad_norm_(parameters, 1.0)", TRAIN_CAPTIONER_TESTS),
    mutant("decoder-embedding-not-scaled", "captioner/models/caption_decoder.py",
           "x = self.token_embedding(tokens) * math.sqrt(self.d_model)", "x = self.token_embedding(tokens)",
           TRAIN_CAPTIONER_TESTS),
    # ---- 5. BPE pair counting (the plain trainer and get_stats' own doctest notice the first)
    mutant("bpe-pairs-counted-once-per-word", "captioner/text/bpe.py",
           "    for pair in zip(symbols, symbols[1:]):\n        counts[pair]",
           "    for pair in set(zip(symbols, symbols[1:])):\n        counts[pair]",
           ["tests/test_bpe_reference.py"]),
    mutant("bpe-word-frequency-ignored", "captioner/text/bpe.py",
           "get_stats(symbols, pair_counts, freq)", "get_stats(symbols, pair_counts, 1)",
           ["tests/test_bpe_reference.py"]),
    mutant("bpe-incremental-count-misses-new-pairs", "captioner/text/bpe.py",
           "get_stats(new, delta, freqs[i])", "pass",
           ["tests/test_bpe_reference.py"], "the fast trainer forgets the pairs a merge creates"),
    mutant("bpe-plain-tie-takes-largest-pair", "captioner/text/bpe.py",
           "pair = min(p for p, c in pair_counts.items() if c == best)",
           "pair = max(p for p, c in pair_counts.items() if c == best)",
           ["tests/test_bpe_reference.py"]),
    # ---- 6. a stale docstring example (the one tests/test_doctests.py found)
    mutant("doctest-stale-example", "captioner/data/shapes_scene.py",
           "    >>> from captioner.data.shapes_captions import captions_for\n", "",
           ["tests/test_doctests.py"]),
    # ---- 7. BLEU's brevity penalty and clipping: the stored, hand-worked corpora alone
    mutant("bleu-brevity-c-over-r", "captioner/evaluation/metrics.py",
           "brevity_penalty = math.exp(1 - 1 / ratio)", "brevity_penalty = math.exp(1 - ratio)",
           ["tests/test_metrics.py", "-k", "reproduces"]),
    mutant("bleu-no-brevity-penalty", "captioner/evaluation/metrics.py",
           "if ratio < 1:", "if ratio < 0:", ["tests/test_metrics.py", "-k", "reproduces"]),
    mutant("bleu-shortest-reference", "captioner/evaluation/metrics.py",
           "order = np.lexsort((corpus.ref_len, distance, corpus.ref_image))",
           "order = np.lexsort((distance, corpus.ref_len, corpus.ref_image))",
           ["tests/test_metrics.py", "-k", "reproduces"]),
    mutant("bleu-clip-by-summed-references", "captioner/evaluation/metrics.py",
           "np.maximum.at(max_count, where, ref.count)", "np.add.at(max_count, where, ref.count)",
           ["tests/test_metrics.py", "-k", "reproduces"]),
    # ---- ROUGE-L: the toolkit's separate maxima, its beta, and its LCS
    mutant("rouge-best-f-per-reference", "captioner/evaluation/metrics.py",
           "precision = max(n / len(hyp) for n in lcs)",
           "precision = [n / len(hyp) for n in lcs][recall_at := max(range(len(lcs)), key=lambda i: lcs[i] / len(refs[i]))]",
           ["tests/test_metrics.py", "-k", "rouge"], "P taken from the reference of the best recall"),
    mutant("rouge-beta-squared-swapped", "captioner/evaluation/metrics.py",
           "(recall + beta ** 2 * precision)", "(precision + beta ** 2 * recall)",
           ["tests/test_metrics.py", "-k", "rouge"]),
    mutant("rouge-lcs-contiguous", "captioner/evaluation/metrics.py",
           "diagonal + 1 if word == other else max(row[j], row[j - 1])", "diagonal + 1 if word == other else 0",
           ["tests/test_metrics.py", "-k", "rouge or longest"], "longest common substring, not subsequence"),
    mutant("selection-ignores-select-by", "train_captioner.py",
           '"selection": val_scores[cfg.eval.select_by]', '"selection": val_scores["CIDEr-D"]',
           [*TRAIN_CAPTIONER_TESTS, "-k", "criterion"], "checkpoint_best.pt always by CIDEr-D"),
    # ---- Karpathy's splits and Flickr8k's files
    mutant("karpathy-restval-left-out", "captioner/data/karpathy.py",
           'restval: str = "train") -> tuple', 'restval: str = "skip") -> tuple',
           ["tests/test_karpathy.py", "-k", "karpathy_coco_splits"], "restval must join train by default"),
    mutant("flickr8k-duplicate-captions-kept", "captioner/data/karpathy.py",
           "elif (name, k) in seen:", "elif False:",
           ["tests/test_karpathy.py", "-k", "flickr8k_text_files"]),
    # ---- a retrieval checkpoint's image tower as the captioner's encoder (train_captioner.py -p)
    mutant("retrieval-tower-prefix-dropped", "captioner/training/checkpoints.py",
           'RETRIEVAL_KIND: (("vit",), "image_encoder.")', 'RETRIEVAL_KIND: (("vit",), "")',
           ["tests/test_contrastive_init.py", "-k", "image_tower"]),
    # ---- 7. resuming a two-process checkpoint in one process
    mutant("resume-takes-the-last-ranks-rng", "captioner/training/checkpoints.py",
           'set_rng_state(payload["rng"])', 'set_rng_state(payload.get("rng_by_rank", [payload["rng"]])[-1])',
           ["tests/test_distributed.py", "-k", "resumes_in_one"]),
    # ---- 7. the shapes dataset's folders
    mutant("shapes-unlabeled-images-not-written", "captioner/data/shapes.py",
           "if not (image_dir / file_name).exists():",
           'if split != "unlabeled" and not (image_dir / file_name).exists():',
           ["tests/test_shapes.py", "-k", "coco_schema"]),
    # ---- beam search's length penalty (tests by another contributor, and the notebook's printed values)
    mutant("length-penalty-2alpha", "transformer_components/generation.py",
           "return ((5.0 + length) / 6.0) ** alpha", "return ((5.0 + length) / 6.0) ** (2 * alpha)",
           ["tests/test_generation.py", "tests/test_notebook.py"]),
    mutant("length-penalty-1-2", "transformer_components/generation.py",
           "return ((5.0 + length) / 6.0) ** alpha", "return ((1.0 + length) / 2.0) ** alpha",
           ["tests/test_generation.py", "tests/test_notebook.py"]),
    mutant("length-penalty-n-alpha", "transformer_components/generation.py",
           "return ((5.0 + length) / 6.0) ** alpha", "return length ** alpha",
           ["tests/test_generation.py", "tests/test_notebook.py"]),
    # ---- a config's base: sections merge key by key
    mutant("config-base-section-replaced", "captioner/config.py",
           "value = merge_configs(merged[key], value)", "pass",
           ["tests/test_config.py"], "a preset's section would drop every base key it does not repeat"),
    # ---- the plain beam search: a finished hypothesis normalised at the wrong length
    mutant("plain-beam-pool-normalised-at-max-len", "transformer_components/generation.py",
           "pool += [(seq, score / length_penalty(t, alpha))",
           "pool += [(seq, score / length_penalty(max_len, alpha))",
           ["tests/test_generation.py", "-k", "plain or crowd"]),
    # ---- the truth score's whole-scene lists: stacked objects either way, side by side in order
    mutant("truth-list-by-centre-only", "captioner/evaluation/truth.py",
           "order = max(left_to_right_orders(scene.objects), key=lambda order: _matches(items, order))",
           "order = left_to_right_orders(scene.objects)[0]",
           ["tests/test_truth.py"], "a list naming two stacked objects the other way round is called false"),
    mutant("truth-list-any-order", "captioner/evaluation/truth.py",
           "if not any(is_left_of(later, earlier)", "if True or not any(is_left_of(later, earlier)",
           ["tests/test_truth.py"], "a list naming two objects side by side the wrong way round is called true"),
    # ---- bf16 on a CPU: the slow-to-backpropagate kernels must be avoided
    mutant("cpu-bf16-fused-attention", "transformer_components/attention.py",
           "if self.fused and not need_weights and not cpu_bf16:", "if self.fused and not need_weights:",
           ["tests/test_attention.py"], "bf16 on a CPU calls the fused attention kernel (many times slower backward)"),
    mutant("cpu-bf16-patch-conv", "captioner/models/vit.py",
           'if images.device.type == "cpu" and _cpu_autocast_enabled():', "if False:",
           ["tests/test_mae.py"], "the patch-embedding convolution runs in bf16 on a CPU (several times slower backward)"),
    # ---- batches grouped by length (data.group_by_length)
    mutant("length-groups-unsorted", "captioner/data/loaders.py",
           'order[start : start + window] = part[np.argsort(lengths[part], kind="stable")]',
           "order[start : start + window] = part",
           ["tests/test_loaders.py"], "the windows are not sorted: batches as random as without the option"),
    mutant("length-groups-blocks-in-order", "captioner/data/loaders.py",
           "blocks = order[: full * block].reshape(full, block)[rng.permutation(full)]",
           "blocks = order[: full * block].reshape(full, block)",
           ["tests/test_loaders.py"], "the batches of a window come shortest first, every epoch"),
    mutant("length-groups-one-window", "captioner/data/loaders.py",
           "    window = block * window_blocks", "    window = len(order)",
           ["tests/test_loaders.py"], "the whole epoch sorted at once: the same batches of alike items every epoch"),
    mutant("length-of-image-shortest-caption", "captioner/data/datasets.py",
           "np.maximum.reduceat", "np.minimum.reduceat",
           ["tests/test_loaders.py"], "an image is sorted by its shortest caption, not the one that sets the padding"),
    mutant("length-groups-not-passed", "train_captioner.py",
           "group_by_length=cfg.data.group_by_length, ", "",
           TRAIN_CAPTIONER_TESTS, "the config's data.group_by_length never reaches the training loader"),
    # ---- 9. retrieval: losses, LAMB, Recall@K, the top-k search, resume, WIT
    mutant("info-nce-one-direction", "captioner/training/contrastive.py",
           "return (image_to_text + text_to_image) / 2", "return image_to_text",
           ["tests/test_retrieval.py"], "only image -> text: the loss is no longer symmetric"),
    mutant("cosine-loss-no-hinge", "captioner/training/contrastive.py",
           "(cos - margin).clamp(min=0.0)", "(cos - margin)", ["tests/test_retrieval.py"]),
    mutant("text-mean-over-padding", "captioner/models/dual_encoder.py",
           "return masked_mean(x, ~pad)  # (B, Ct)", "return x.mean(1)", ["tests/test_retrieval.py"]),
    mutant("text-attends-to-padding", "captioner/models/dual_encoder.py",
           "x = self.transformer(x, key_padding_mask=pad)  # (B, T, Ct)", "x = self.transformer(x)",
           ["tests/test_retrieval.py"]),
    mutant("lamb-no-bias-correction", "captioner/training/lamb.py",
           "m_hat = m / (1 - beta1**t)", "m_hat = m", ["tests/test_retrieval.py"]),
    mutant("lamb-no-weight-decay", "captioner/training/lamb.py",
           'update.add_(w, alpha=group["weight_decay"])', "pass", ["tests/test_retrieval.py"]),
    mutant("lamb-weight-norm-not-clipped", "captioner/training/lamb.py",
           '.clamp(group["min_weight_norm"], group["max_weight_norm"])', "", ["tests/test_retrieval.py"]),
    mutant("top-k-forgets-earlier-chunks", "captioner/evaluation/retrieval.py",
           "scores, index = torch.cat([best_scores, scores], 1), torch.cat([best_index, index], 1)", "pass",
           ["tests/test_retrieval.py"]),
    mutant("recall-at-1-for-every-k", "captioner/evaluation/retrieval.py",
           "own[:, :k].any(1)", "own[:, :1].any(1)", ["tests/test_retrieval.py"]),
    mutant("random-recall-m-k-over-n", "captioner/evaluation/retrieval.py",
           "return sum(1 - comb(n - m, k) / comb(n, k) for m in hits) / len(hits)",
           "return sum(m * k / n for m in hits) / len(hits)", ["tests/test_retrieval.py"]),
    mutant("retrieval-schedule-restarts-on-resume", "train_retrieval.py",
           "total_steps = cfg.train.epochs * steps_per_epoch",
           "total_steps = (cfg.train.epochs - start_epoch) * steps_per_epoch", ["tests/test_retrieval.py"]),
    mutant("wit-empty-caption-kept", "captioner/data/wit.py", "                if not captions:",
           "                if False:", ["tests/test_wit.py"]),
    mutant("wit-base64-not-validated", "captioner/data/wit.py",
           'base64.b64decode("".join(text.split()), validate=True)',
           'base64.b64decode("".join(text.split()))', ["tests/test_wit.py"]),
    # caption.py with a retrieval checkpoint: the bank of training captions, and the server's bounds
    mutant("caption-bank-keeps-repeats", "captioner/evaluation/caption_bank.py",
           "captions, pairs = list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))",
           "captions, pairs = record_captions, np.arange(len(record_captions))",
           ["tests/test_caption_serving.py"], "a caption said twice fills two of the K places"),
    mutant("caption-bank-image-not-preprocessed", "captioner/evaluation/caption_bank.py",
           "self.model.encode_images(self.transform(pixels.to(self.device)))",
           "self.model.encode_images(pixels.to(self.device).float())", ["tests/test_caption_serving.py"]),
    mutant("caption-bank-stale-cache-used", "captioner/evaluation/caption_bank.py",
           'if payload.get("stamp") != stamp or', "if", ["tests/test_caption_serving.py"]),
    mutant("server-decodes-unbounded", "captioner/serve/server.py", "        with self.decode_slots:",
           "        if True:", ["tests/test_caption_serving.py"]),
    # The overlapping patch embedding, the LSTMs (checked by hand on 2026-12-01, then recorded here)
    mutant("mae-overlap-sees-hidden-pixels", "captioner/models/mae.py",
           "        if self.encoder.patch_embed.overlap:", "        if False:", ["tests/test_mae.py"]),
    mutant("lstm-gates-swapped", "captioner/models/lstm.py",
           "        i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each",
           "        f, i, g, o = gates.chunk(4, dim=1)  # (B, H) each", ["tests/test_lstm.py"]),
    mutant("lstm-cache-not-reordered", "captioner/models/lstm_decoders.py",
           "        self.h, self.c = self.h.index_select(0, index), self.c.index_select(0, index)",
           "        self.h, self.c = self.h, self.c", ["tests/test_lstm.py"]),
    # ---- published weights: key mapping, class token, position tables (the reference tests need .venv-ref or
    # $CAPTIONER_REFERENCE_PYTHON; the tests without the reference catch some of these too)
    mutant("vit-qkv-order", "captioner/models/pretrained.py",
           'zip(("q_proj", "k_proj", "v_proj"), state[key].chunk(3, dim=0))',
           'zip(("k_proj", "q_proj", "v_proj"), state[key].chunk(3, dim=0))', ["tests/test_pretrained.py"]),
    mutant("vit-class-token-without-position", "captioner/models/vit.py",
           "cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, C)",
           "cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)", ["tests/test_pretrained.py"]),
    mutant("resnet-bn-as-conv", "captioner/models/pretrained.py",
           "return f\"stem.{0 if m[1] == 'conv' else 1}.{m[2]}\"", "return f\"stem.0.{m[2]}\"",
           ["tests/test_pretrained.py"]),
    mutant("position-table-resampled-with-class-row", "captioner/models/pretrained.py",
           "prefix, rows = table[:, :n_prefix], table[:, n_prefix:]  # (1, n_prefix, C), (1, g*g, C)",
           "prefix, rows = table[:, :0], table[:, n_prefix:]  # (1, n_prefix, C), (1, g*g, C)",
           ["tests/test_pretrained.py"]),
    mutant("weights-digest-unchecked", "captioner/infra/weights.py",
           "if not digest.startswith(entry.digest):", "if False:", ["tests/test_pretrained_training.py"]),
    # ---- gradient accumulation
    mutant("accumulation-equal-weights", "train_captioner.py",
           'weights = micro_batch_weights([int((b["tokens"][:, 1:] != PAD_ID).sum()) for b in window])',
           "weights = micro_batch_weights([1 for b in window])", ["tests/test_accumulate.py"],
           "micro-batches with fewer caption tokens count as much as longer ones"),
    mutant("accumulation-never-synchronised", "captioner/training/distributed.py",
           "if isinstance(model, DistributedDataParallel) and not last else",
           "if isinstance(model, DistributedDataParallel) else",
           ["tests/test_distributed.py", "-k", "resnet_attention_lstm"], "each process steps on its own gradients"),
    mutant("accumulation-unweighted-loss", "train_encoder.py",
           "scaler.scale(loss * weight).backward()", "scaler.scale(loss).backward()", ["tests/test_accumulate.py"],
           "K micro-batches make a K times larger step"),
    mutant("attention-mask-ignored", "captioner/models/lstm_decoders.py",
           '            e = e.masked_fill(mask, float("-inf"))  # padding cells get no attention',
           "            e = e  # padding cells get no attention", ["tests/test_lstm.py"]),
    mutant("doubly-stochastic-counts-padding", "captioner/models/lstm_decoders.py",
           "    total = (alphas * real[:, :, None]).sum(dim=1)  # (B, S) attention each cell got over the caption",
           "    total = alphas.sum(dim=1)  # (B, S) attention each cell got over the caption", ["tests/test_lstm.py"]),
    # ---- retrieval's last mile: K beyond the list, ties, several batches, the temperature's cap, clipping
    mutant("random-recall-k-beyond-the-list", "captioner/evaluation/retrieval.py",
           "        k = min(k, n)  # the whole list: every relevant item is in it\n", "",
           ["tests/test_retrieval.py", "-k", "random_recall or fewer_captions"],
           "a split with fewer captions than K divides by C(M, K) = 0"),
    mutant("recall-copies-not-hits", "captioner/evaluation/retrieval.py",
           "caption_text = torch.arange(len(caption_image), device=device) if caption_text is None "
           "else caption_text.to(device)",
           "caption_text = torch.arange(len(caption_image), device=device)",
           ["tests/test_retrieval.py", "-k", "recall"], "which of two tied copies ranks first decides the hit"),
    mutant("top-k-ties-in-any-order", "captioner/evaluation/retrieval.py",
           "scores, position = scores.sort(dim=1, descending=True, stable=True)",
           "scores, position = scores.topk(min(k, scores.shape[1]), dim=1)",
           ["tests/test_retrieval.py", "-k", "top_k or recall"], "equal scores ranked as topk happens to return them"),
    mutant("embed-split-rows-per-batch", "captioner/evaluation/retrieval.py",
           'owners.append(batch["image_index"].to(device) + offset)',
           'owners.append(batch["image_index"].to(device))',
           ["tests/test_retrieval.py", "-k", "embed_split"], "captions of a later batch point at the first images"),
    mutant("logit-scale-clamped-in-forward", "captioner/models/dual_encoder.py",
           "        return self.logit_scale.exp()\n",
           "        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)\n",
           ["tests/test_retrieval.py", "-k", "logit_scale"], "above the cap the temperature's gradient is 0"),
    mutant("logit-scale-not-capped", "train_retrieval.py", "raw_model.cap_logit_scale()", "None",
           ["tests/test_retrieval.py", "-k", "logit_scale"]),
    mutant("retrieval-no-clipping", "train_retrieval.py",
           "torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)", "pass",
           ["tests/test_retrieval.py", "-k", "clipped"]),
    mutant("retrieval-clipping-ignores-config", "train_retrieval.py",
           "torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip)",
           "torch.nn.utils.clip_grad_norm_(parameters, 1.0)", ["tests/test_retrieval.py", "-k", "clipped"]),
    mutant("wit-base64-lines-refused", "captioner/data/wit.py", '"".join(text.split())', "text",
           ["tests/test_wit.py"], "base64 wrapped over lines (MIME) is refused"),
    mutant("wit-truncation-not-counted", "captioner/data/wit.py",
           'skips.add(split, BROKEN_JSON, f"{path}:{line_no + 1} (the gzip stream ends early)")', "pass",
           ["tests/test_wit.py"]),
    mutant("wit-not-gzip-unchecked", "captioner/data/wit.py", "if f.read(2) != GZIP_MAGIC:", "if False:",
           ["tests/test_wit.py"], "a plain file is reported as a gzip stream that ends early"),
    # ---- URL-caption lists: the reader, the fetcher, the pre-download and the stream
    mutant("urls-gzip-by-name", "captioner/data/urls.py", "gzipped = f.read(2) == GZIP_MAGIC",
           'gzipped = path.name.endswith(".gz")', ["tests/test_urls.py"], "a gzipped list without .gz is misread"),
    mutant("urls-404-retried", "captioner/data/url_fetch.py", 'raise _Skip(HTTP_404, "HTTP 404") from None',
           'raise _Skip(HTTP_404, "HTTP 404", transient=True) from None', ["tests/test_urls.py"]),
    mutant("urls-short-body-passes", "captioner/data/url_fetch.py", "if length is not None and size < length:",
           "if False:", ["tests/test_urls.py"], "a truncated body is counted as a bad image, not as cut short"),
    mutant("urls-redirects-unbounded", "captioner/data/url_fetch.py",
           "if len(seen) > self.settings.max_redirects:", "if False:", ["tests/test_urls.py"]),
    mutant("urls-pixels-unchecked", "captioner/data/image_io.py", "if width * height > max_pixels:", "if False:",
           ["tests/test_urls.py"], "a decompression bomb is decoded (and counted as a bad image)"),
    mutant("urls-cache-unread", "captioner/data/url_fetch.py", "cached = self._read_cache(url)", "cached = None",
           ["tests/test_urls.py"]),
    mutant("urls-rerun-refetches", "captioner/data/urls.py",
           "missing = [i for i, path in enumerate(paths) if not path.is_file()]",
           "missing = list(range(len(paths)))", ["tests/test_urls.py"]),
    mutant("url-stream-skips-uncounted", "captioner/data/url_stream.py",
           'self.skip_counts.update(batch.pop("skipped"))', 'batch.pop("skipped")', ["tests/test_url_stream.py"]),
    mutant("url-stream-workers-repeat-blocks", "captioner/data/url_stream.py", "if b % count == index]",
           "if True]", ["tests/test_url_stream.py"], "every loader worker streams every block"),
    # ---- the ladder's models and configs
    mutant("attention-softmax-in-float32", "captioner/models/lstm_decoders.py",
           "torch.softmax(e, dim=-1, dtype=torch.promote_types(e.dtype, torch.float32))",
           "torch.softmax(e.float(), dim=-1)", ["tests/test_lstm.py"], "a float64 model attends in float32"),
    mutant("attention-gate-not-applied", "captioner/models/lstm_decoders.py",
           "        return beta * context, alpha", "        return context, alpha", ["tests/test_lstm.py"]),
    mutant("lstm-forget-bias-in-the-input-gate", "captioner/models/lstm.py",
           "self.bias_ih[hidden_size : 2 * hidden_size] = 1.0", "self.bias_ih[:hidden_size] = 1.0",
           ["tests/test_lstm.py"]),
    mutant("bottleneck-stride-on-the-1x1", "captioner/models/resnet.py",
           "        self.conv1 = conv_bn(c_in, width, 1)\n        self.conv2 = conv_bn(width, width, 3, stride)",
           "        self.conv1 = conv_bn(c_in, width, 1, stride)\n        self.conv2 = conv_bn(width, width, 3)",
           ["tests/test_resnet.py"], "ResNet v1 instead of the documented v1.5"),
    mutant("bottleneck-zero-init-first-norm", "captioner/models/resnet.py",
           "nn.init.zeros_(self.conv3[1].weight)", "nn.init.zeros_(self.conv1[1].weight)", ["tests/test_resnet.py"],
           "still the identity, in eval and in train mode"),
    mutant("basic-zero-init-first-norm", "captioner/models/resnet.py",
           "nn.init.zeros_(self.conv2[1].weight)", "nn.init.zeros_(self.conv1[1].weight)", ["tests/test_resnet.py"]),
    mutant("config-unread-keys-accepted", "captioner/config.py", "                if value not in values:",
           "                if False:", ["tests/test_config_checks.py"], "min_lr beside inverse-sqrt goes unnoticed"),
    mutant("config-unread-key-in-the-file-only-warns", "captioner/config.py", "    if in_file:\n", "    if False:\n",
           ["tests/test_config_checks.py"]),
    # ---- train_captioner.py's own step, observed in a run of main()
    mutant("captioner-targets-not-shifted", "train_captioner.py",
           "loss = caption_loss(logits, tokens[:, 1:], cfg.label_smoothing)",
           "loss = caption_loss(logits, tokens[:, :-1], cfg.label_smoothing)",
           ["tests/test_train_captioner.py", "-k", "shifted_right"], "the decoder learns to copy its input"),
    mutant("captioner-input-not-shifted", "train_captioner.py",
           "out = model(x, tokens[:, :-1], src_index=image_index", "out = model(x, tokens[:, 1:], src_index=image_index",
           ["tests/test_train_captioner.py", "-k", "shifted_right"]),
    mutant("captioner-validation-targets-not-shifted", "train_captioner.py",
           "loss = caption_loss(logits, tokens[:, 1:], label_smoothing)",
           "loss = caption_loss(logits, tokens[:, :-1], label_smoothing)",
           ["tests/test_train_captioner.py", "-k", "shifted_right"]),
    mutant("captioner-validation-input-not-shifted", "train_captioner.py",
           "logits = model(transform(images), tokens[:, :-1], src_index=image_index)",
           "logits = model(transform(images), tokens[:, 1:], src_index=image_index)",
           ["tests/test_train_captioner.py", "-k", "shifted_right"]),
    mutant("unfreeze-multiplier-ignored", "train_captioner.py",
           'group["lr"] = lr * states[group["name"]].lr_scale', 'group["lr"] = lr',
           ["tests/test_train_captioner.py", "-k", "multiplier"], "an unfrozen layer trains at the full rate"),
    mutant("eos-suppression-weight-ignored", "train_captioner.py",
           "loss = loss + cfg.eos_suppression * eos_suppression_loss(logits, tokens[:, 1:])",
           "loss = loss + eos_suppression_loss(logits, tokens[:, 1:])",
           ["tests/test_train_captioner.py", "-k", "weighted_eos"]),
    mutant("doubly-stochastic-mask-dropped", "train_captioner.py",
           "doubly_stochastic_penalty(maps[-1][:, 0],\n" + " " * 84 + "tokens[:, 1:] != PAD_ID)",
           "doubly_stochastic_penalty(maps[-1][:, 0],\n" + " " * 84
           + "torch.ones_like(tokens[:, 1:], dtype=torch.bool))",
           ["tests/test_train_captioner.py", "-k", "doubly_stochastic_term"], "padding steps count as attention"),
    # ---- checkpoints, the inverse-sqrt schedule, greedy scores, length groups over two ranks
    mutant("latest-checkpoint-by-name", "captioner/training/checkpoints.py",
           "return max(numbered)[1]", "return max(p for _, p in numbered)",
           ["tests/test_inverse_sqrt_and_latest_checkpoint.py"], "checkpoint9.pt after checkpoint10.pt"),
    mutant("inverse-sqrt-zero-warmup", "captioner/training/schedule.py",
           "math.sqrt(max(1, warmup_steps) / (step + 1))", "math.sqrt(warmup_steps / (step + 1))",
           ["tests/test_inverse_sqrt_and_latest_checkpoint.py"], "no warm-up: a learning rate of 0 forever"),
    mutant("inverse-sqrt-step-not-plus-one", "captioner/training/schedule.py",
           "math.sqrt(max(1, warmup_steps) / (step + 1))", "math.sqrt(max(1, warmup_steps) / max(1, step))",
           ["tests/test_inverse_sqrt_and_latest_checkpoint.py"]),
    mutant("warmup-from-zero", "captioner/training/schedule.py",
           "return base_lr * (step + 1) / warmup_steps", "return base_lr * step / warmup_steps",
           ["tests/test_inverse_sqrt_and_latest_checkpoint.py"], "step 0 does not train"),
    mutant("greedy-no-length-penalty", "transformer_components/generation.py",
           "return generated, logp_total / length_penalty(lengths, alpha)", "return generated, logp_total",
           ["tests/test_generation.py", "-k", "greedy_score"]),
    mutant("greedy-length-without-eos", "transformer_components/generation.py",
           "return torch.where(is_eos.any(dim=-1), first + 1, tokens.size(-1))",
           "return torch.where(is_eos.any(dim=-1), first, tokens.size(-1))",
           ["tests/test_generation.py", "-k", "greedy_score"]),
    mutant("length-groups-block-per-rank", "captioner/data/loaders.py",
           "group_by_length(order, self.lengths, self.batch_size * self.num_replicas, rng)",
           "group_by_length(order, self.lengths, self.batch_size, rng)",
           ["tests/test_loaders.py", "-k", "length_grouped_sampler"], "a rank's batch joins two length groups"),
    # ---- self-critical training: the loss, the baselines, sampling, the per-caption CIDEr-D, the frozen encoder
    mutant("scst-no-mask-after-eos", "captioner/training/scst.py",
           "return logp.masked_fill(tokens == pad_id, 0.0).sum(dim=1)", "return logp.sum(dim=1)",
           ["tests/test_scst.py"], "the padding after <eos> adds to the caption's log-probability"),
    mutant("scst-forbidden-not-removed", "captioner/training/scst.py",
           "    logits = logits.index_fill(-1,", "    logits = logits if True else logits.index_fill(-1,",
           ["tests/test_scst.py"], "log p over the full softmax, not the distribution the sampler drew from"),
    mutant("scst-advantage-sign", "captioner/training/scst.py",
           "return -(advantage.detach() *", "return (advantage.detach() *",
           ["tests/test_scst.py"], "captions above the baseline are made less likely"),
    mutant("scst-mean-baseline-includes-itself", "captioner/training/scst.py",
           "((per_image.sum(dim=1, keepdim=True) - per_image) / (samples - 1))",
           "(per_image.mean(dim=1, keepdim=True).expand_as(per_image))",
           ["tests/test_scst.py"], "each sample's own reward enters its baseline (biased)"),
    mutant("sample-finished-rows-not-padded", "transformer_components/generation.py",
           "chosen = chosen.masked_fill(finished, pad_id)", "chosen = chosen",
           ["tests/test_scst.py", "tests/test_generation.py"], "tokens after <eos> are kept"),
    mutant("cider-precomputed-idf-ignores-its-n", "captioner/evaluation/metrics.py",
           "log_n = math.log(n_images if document_frequency is None else document_frequency.n_images)",
           "log_n = math.log(n_images)",
           ["tests/test_scst.py"], "a caption's CIDEr-D reward depends on how many images its batch holds"),
    mutant("scst-encoder-always-trains", "train_scst.py",
           "raw_model.encoder.requires_grad_(cfg.scst.train_encoder)", "raw_model.encoder.requires_grad_(True)",
           ["tests/test_scst.py"], "scst.train_encoder: false still trains the encoder"),
    # ---- WordPiece on a BERT vocabulary, against Hugging Face tokenizers
    mutant("bert-accents-kept", "captioner/text/normalize.py",
           'if unicodedata.category(ch) != "Mn")', 'if True)',
           ["tests/test_bert_vocab.py"], "café stays café; BERT's uncased vocabulary has cafe"),
    mutant("bert-final-sigma", "captioner/text/normalize.py",
           'text = text.replace("\\u03a3", "\\u03c3").lower()', "text = text.lower()",
           ["tests/test_bert_vocab.py"], "a word-final capital sigma lowercases to ς, Hugging Face gives σ"),
    mutant("bert-format-chars-kept", "captioner/text/normalize.py",
           'if ch == "\\ufffd" or unicodedata.category(ch)[0] == "C":', 'if ch == "\\ufffd" or ch == "\\x00":',
           ["tests/test_bert_vocab.py"], "control and format characters (soft hyphen, zero-width joiner) kept"),
    mutant("bert-long-words-encoded", "captioner/text/bert_vocab.py",
           "MAX_INPUT_CHARS_PER_WORD = 100", "MAX_INPUT_CHARS_PER_WORD = 1000",
           ["tests/test_bert_vocab.py"], "a word of over 100 characters is encoded, BERT gives [UNK]"),
    mutant("bert-cut-by-line-only", "captioner/text/bert_vocab.py",
           "key=lambda p: (-counts[p], line[p])", "key=lambda p: line[p]",
           ["tests/test_bert_vocab.py"], "the cut keeps the first lines of vocab.txt, not the frequent pieces"),
    mutant("bert-cut-counts-words-once", "captioner/text/bert_vocab.py",
           "counts[piece] += count", "counts[piece] += 1",
           ["tests/test_bert_vocab.py"], "a piece counts once per distinct word, not per occurrence"),
    mutant("bert-cut-no-single-characters", "captioner/text/bert_vocab.py",
           "needed.update(spelling if all(p in vocab for p in spelling) else word_pieces)", "pass",
           ["tests/test_bert_vocab.py"], "training words become [UNK] after the cut"),
    # ---- the captioner's augmentation ramp
    mutant("augment-ramp-linear", "captioner/data/augment_ramp.py",
           "return math.exp(-5.0 * (1.0 - t) ** 2)", "return t",
           ["tests/test_augment_ramp.py"], "a linear ramp instead of the exponential one"),
    mutant("augment-ramp-restarts-on-resume", "train_captioner.py",
           "ramp_strength(epoch, cfg.augment.ramp_epochs)", "ramp_strength(epoch - start_epoch, cfg.augment.ramp_epochs)",
           ["tests/test_train_captioner.py::test_augmentation_ramp_reaches_training_batches_only_and_resumes_exactly"],
           "a resumed run starts the ramp again"),
    mutant("augment-strength-ignored", "captioner/data/augment_ramp.py",
           "device, s = images.device, float(strength)", "device, s = images.device, 1.0",
           ["tests/test_augment_ramp.py"], "full strength from the first epoch"),
    mutant("augment-grayscale-plain-mean", "captioner/data/augment_ramp.py",
           "LUMA_601 = (0.299, 0.587, 0.114)", "LUMA_601 = (1 / 3, 1 / 3, 1 / 3)",
           ["tests/test_augment_ramp.py"], "grey is the channels' mean, not the ITU-R 601 luma"),
    mutant("augment-contrast-per-pixel-grey", "captioner/data/augment_ramp.py",
           "mean = grayscale(x)[:, :1].mean(dim=(1, 2, 3), keepdim=True)", "mean = grayscale(x)[:, :1]",
           ["tests/test_augment_ramp.py"], "contrast blends with each pixel's grey instead of the image's mean"),
    mutant("augment-hue-wrong-sector", "captioner/data/augment_ramp.py",
           "(b - r) / safe_c + 2", "(b - r) / safe_c + 4",
           ["tests/test_augment_ramp.py"], "hues measured from green land in the blue sector"),
    mutant("augment-blur-rows-only", "captioner/data/augment_ramp.py",
           "k[:, None, :, None], groups=B * C)  # columns", "k[:, None, None, :], groups=B * C)  # columns",
           ["tests/test_augment_ramp.py"], "the second pass blurs the rows again instead of the columns"),
    mutant("augment-blur-kernels-mixed-up", "captioner/data/augment_ramp.py",
           ".repeat_interleave(C, 0)", ".repeat(C, 1)",
           ["tests/test_augment_ramp.py"], "samples get each other's blur kernels"),
]


def repository_files(repo: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore (what a contributor's change consists of)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    return sorted({name for name in out.decode().split("\0") if name and (repo / name).is_file()})


def scratch_copy(repo: Path, into: Path) -> None:
    for name in repository_files(repo):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)


def run_pytest(root: Path, args: list[str], timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, output) of ``pytest -x args`` in ``root``; outcome is passed, failed, timeout or error."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no .pyc that could outlive a break
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the test's own worker processes too
        output, _ = process.communicate()
        return "timeout", time.monotonic() - start, output
    seconds = time.monotonic() - start
    outcome = {0: "passed", 1: "failed"}.get(process.returncode, "error")
    return outcome, seconds, output


def failed_tests(output: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)


def apply(root: Path, m: Mutant) -> str | None:
    """Apply ``m`` in ``root``; returns the original text, or None if an edit's text is not there exactly once."""
    path = root / m.file
    original = path.read_text(encoding="utf-8")
    text = original
    for old, new in m.edits:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply deliberate breaks to a scratch copy and report survivors.")
    parser.add_argument("-k", default="", help="only the breaks whose name contains this")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per break (default %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args(argv)
    selected = [m for m in MUTANTS if args.k in m.name]
    if args.list:
        for m in selected:
            print(f"{m.name:40s} {m.file:40s} {' '.join(m.tests)}")
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        scratch_copy(REPO, scratch)
        print(f"scratch copy: {scratch} ({len(repository_files(REPO))} files); {len(selected)} breaks")
        baseline_args = sorted({t for m in selected for t in m.tests if t.startswith("tests/")})
        outcome, seconds, output = run_pytest(scratch, baseline_args, args.timeout * 2)
        print(f"unbroken: {outcome} in {seconds:.0f} s ({' '.join(baseline_args)})")
        if outcome != "passed":
            print(output[-3000:])
            print("the tests fail without any break: fix that first")
            return 2
        results = []
        for m in selected:
            original = apply(scratch, m)
            if original is None:
                results.append((m, "STALE", 0.0, []))
            else:
                try:
                    outcome, seconds, output = run_pytest(scratch, list(m.tests), args.timeout)
                finally:
                    (scratch / m.file).write_text(original, encoding="utf-8")
                verdict = {"failed": "KILLED", "passed": "SURVIVED", "timeout": "TIMEOUT"}.get(outcome, "ERROR")
                if outcome == "error" and failed_tests(output):
                    verdict = "KILLED"  # pytest was interrupted by an error the break caused (e.g. on import)
                results.append((m, verdict, seconds, failed_tests(output)[:2] or output.strip().splitlines()[-1:]))
            _, verdict, seconds, detail = results[-1]
            print(f"{verdict:9s} {m.name:40s} {seconds:5.1f} s  {', '.join(detail)}", flush=True)
        counts = {v: sum(1 for r in results if r[1] == v) for v in ("KILLED", "SURVIVED", "TIMEOUT", "STALE", "ERROR")}
        print("summary: " + ", ".join(f"{n} {v.lower()}" for v, n in counts.items() if n) + f" of {len(results)}")
        survivors = [m.name for m, v, _, _ in results if v in ("SURVIVED", "STALE", "ERROR")]
        print("survivors: " + (", ".join(survivors) if survivors else "none"))
        return 1 if survivors else 0
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
