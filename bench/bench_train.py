"""Training throughput benchmark; prints one table.

Sections (one function each, all returning `Row`s):
- mae: images/s of train_encoder.py's training step (forward, backward, AdamW, as the script's loop
  runs it: see `train_steps`) on batches already on the device, of the data pipeline alone
  (image_loader + copy to the device + MAETrainTransform), and of the whole step with the data pipeline included (the real
  loop), each with the images read from the host by the DataLoader and with the whole uint8 cache
  in device memory (``data.on_device``, DeviceImageLoader). Ratios are against the training step
  alone. On CUDA, also the model-FLOPs utilisation (matmul FLOPs of flops_per_image, x3 for forward
  + backward) against the GPU's dense bf16 peak.
- captioner: captions/s of train_captioner.py's training step (teacher forcing, each image encoded
  once for its 5 captions, backward, AdamW, as the script's loop runs it) with the encoder frozen
  (the first epochs from an MAE encoder) and unfrozen (every layer training, as at the end of
  layer-wise unfreezing or from scratch), and (without --compile) the unfrozen step as it was before
  the decoder shared each image's cross-attention keys/values among its captions. Ratios are
  against the frozen step. On CUDA, also the MFU,
  from the FLOPs of one training step as counted by torch.utils.flop_counter (forward + backward of
  what actually runs: a frozen encoder costs its forward pass only).
- precision: the MAE step alone and the unfrozen captioner step in fp32 and in bf16 autocast, on the
  same model and batches; ratios against fp32 (what ``train.precision: auto`` gains where it takes bf16).

On CUDA each section also prints its peak GPU memory (``torch.cuda.max_memory_allocated``), and the
MAE section that of the training step alone (what a run needs beside its data).

Inputs are synthetic uint8 images of the preset's model resolution in a temporary processed folder
(shapes: 64 px, coco: 224 px) and, for the captioner, random captions of a typical length and
vocabulary size (CAPTION_SHAPES), so no dataset is needed. Warm-up steps (and torch.compile) are
excluded from the timings; every timed region ends with a device synchronisation.

Usage: python bench/bench_train.py [--preset shapes|coco] [--device auto|cpu|cuda] [--compile]
                                   [--compile-mode default|reduce-overhead|max-autotune|...]
                                   [--steps 20] [--warmup 5] [--batch-size N] [--workers N]
                                   [--peak-tflops X] [--profile] [--sections mae,captioner,precision]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Run as a script from anywhere: make the repository root importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_data import make_processed  # noqa: E402
from bench.flops import flops_per_image  # noqa: E402
from captioner.config import (  # noqa: E402
    COMPILE_MODES,
    CaptionerRunConfig,
    EncoderRunConfig,
    TrainConfig,
    load_config,
)
from captioner.data.loaders import image_loader  # noqa: E402
from captioner.data.transforms import EvalTransform, MAETrainTransform  # noqa: E402
from captioner.infra.compile import maybe_compile  # noqa: E402
from captioner.infra.device_loader import device_image_loader  # noqa: E402
from captioner.models.captioner import (  # noqa: E402
    build_captioner,
    caption_loss,
    teacher_forcing_loss,
)
from captioner.models.mae import MaskedAutoencoder  # noqa: E402
from captioner.text.tokenizers import EOS_ID, SOS_ID  # noqa: E402
from captioner.training.devices import (  # noqa: E402
    autocast,
    cpu_has_bf16_matrix_units,
    make_grad_scaler,
    resolve_device,
    resolve_precision,
)
from captioner.training.log import LossMeter  # noqa: E402
from captioner.training.optimizer import make_optimizer, param_groups  # noqa: E402
from captioner.training.unfreeze import (  # noqa: E402
    GroupState,
    set_trainable,
    train_everything,
    unfreeze_param_groups,
    unfreeze_schedule,
)
from captioner.training.seeding import TRAIN_STREAM, seeded_generator  # noqa: E402
from train_encoder import mae_loss  # noqa: E402

PRESETS = {"shapes": ROOT / "configs" / "shapes_encoder.yaml", "coco": ROOT / "configs" / "coco_encoder.yaml"}
CAPTIONER_PRESETS = {"shapes": ROOT / "configs" / "shapes_captioner.yaml",
                     "coco": ROOT / "configs" / "coco_captioner.yaml"}
# Synthetic captions per preset: (tokens per caption incl. <sos>/<eos>, vocabulary size). Shapes: its
# captions average 9 BPE tokens and its tokenizer stops at ~200 tokens; COCO: ~12 words per caption
# and process_coco.py's default --vocab-size 5000.
CAPTION_SHAPES = {"shapes": (11, 200), "coco": (16, 5000)}
CAPTIONS_PER_IMAGE = 5  # the captioner's batches hold every caption of each image (group_by_image)
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name().
# More specific names first: an "H100 PCIe" is not an SXM part.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Row:
    """One measurement: `items` images in `seconds`, compared with its section's reference time per image."""

    section: str
    name: str
    seconds: float
    items: int
    reference_images_per_s: float
    mfu: float | None = None
    unit: str = "images"  # what `items` counts

    @property
    def images_per_s(self) -> float:
        return self.items / self.seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def train_steps(model, optimizer, scaler: torch.amp.GradScaler, train: TrainConfig, device: torch.device,
                precision: str, batches, loss_fn, states: dict[str, GroupState] | None = None) -> float:
    """One training step per batch, as train_encoder.py and train_captioner.py run it; the mean loss.

    Per step: each optimiser group's lr (``train.lr``, constant here, times its unfreeze group's
    multiplier in ``states``; 1 without), the forward pass and ``loss_fn(model, batch) -> (loss,
    items)`` under autocast, backward through the gradient scaler, clipping of the unscaled
    gradients, the optimiser step, ``zero_grad``, and the loss added to a LossMeter on the device.
    No log lines: the one host read is the mean at the end (which also stops on a non-finite loss).
    ``model`` is what runs (compiled per ``train``, see :func:`make_model_step`).
    """
    model.train()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping sees
    meter = LossMeter(device)
    step = 0
    for batch in batches:
        for group in optimizer.param_groups:
            group["lr"] = train.lr * (states[group["name"]].lr_scale if states else 1.0)
        with autocast(device, precision):
            loss, n_items = loss_fn(model, batch)
        scaler.scale(loss).backward()
        if train.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters, train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        meter.add(loss, step, n_items)
        step += 1
    return meter.epoch_mean(step)


def make_model_step(model, optimizer, train: TrainConfig, device: torch.device, precision: str):
    """``run(batches, loss_fn, states=None)``: :func:`train_steps` on the (compiled, per ``train``)
    model with the scripts' gradient scaler (fp16 only)."""
    compiled = maybe_compile(model, train.compile, mode=train.compile_mode)
    scaler = make_grad_scaler(device, precision)

    def run(batches, loss_fn, states: dict[str, GroupState] | None = None) -> float:
        return train_steps(compiled, optimizer, scaler, train, device, precision, batches, loss_fn, states)

    return run


def synthetic_caption_batches(U: int, T: int, V: int, size: int, device: torch.device, n: int = 4) -> list[dict]:
    """``n`` captioner batches as the grouped loader gives them: U uint8 images of ``size`` px and their
    CAPTIONS_PER_IMAGE random captions of T tokens (<sos> ... <eos>, no other special ids inside)."""
    batches = []
    for _ in range(n):
        tokens = torch.randint(EOS_ID + 2, V, (U * CAPTIONS_PER_IMAGE, T), device=device)  # (B, T)
        tokens[:, 0], tokens[:, -1] = SOS_ID, EOS_ID
        batches.append({"images": torch.randint(0, 256, (U, 3, size, size), dtype=torch.uint8, device=device),
                        "tokens": tokens,
                        "image_index": torch.arange(U, device=device).repeat_interleave(CAPTIONS_PER_IMAGE)})  # (B,)
    return batches


def compile_text(train: TrainConfig) -> str:
    return f"compile {train.compile}" + (f" ({train.compile_mode})" if train.compile else "")


def mae_section(args, device: torch.device) -> list[Row]:
    overrides = [f"train.compile={str(args.compile).lower()}", f"train.compile_mode={args.compile_mode}"]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = load_config(EncoderRunConfig, PRESETS[args.preset], overrides)
    precision = resolve_precision(cfg.train.precision, device, training=True)
    B, size = cfg.data.batch_size, cfg.model.image_size
    workers = cfg.data.num_workers if args.workers is None else args.workers
    print(f"MAE preset {args.preset}: {size} px, batch {B}, {precision}, {compile_text(cfg.train)}, "
          f"{workers} loader workers, {args.warmup} warm-up + {args.steps} timed steps")

    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg.model, cfg.mae).to(device)
    optimizer = make_optimizer(param_groups(model.named_parameters(), cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    run = make_model_step(model, optimizer, cfg.train, device, precision)
    transform = MAETrainTransform(size, scale=(cfg.augment.crop_scale_min, 1.0), flip=cfg.augment.flip)
    generator = seeded_generator(device, 0, TRAIN_STREAM, 0)
    L = model.num_patches

    # The training step alone: a few distinct batches already on the device, transformed once.
    pixels = torch.randint(0, 256, (4, B, 3, size, size), dtype=torch.uint8, device=device)
    ready = [{"images": transform(p, generator), "noise": torch.rand(B, L, generator=generator, device=device)}
             for p in pixels]

    def step_only(model_, batch):
        return model_(batch["images"], noise=batch["noise"])[0], B

    run([ready[i % 4] for i in range(args.warmup)], step_only)
    step_s = timed(lambda: run([ready[i % 4] for i in range(args.steps)], step_only), device)
    step_ips = args.steps * B / step_s
    # about what a run of the preset needs at this batch size (plus the 4 prepared batches), before the data
    # rows copy images to the device
    print_peak_memory("MAE training step", device)
    if args.profile:
        print_profile(lambda: run([ready[i % 4] for i in range(3)], step_only), device)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        processed = make_processed(Path(tmp), B * args.steps, size)
        loader = image_loader(processed, ["train"], B, shuffle=True, num_workers=workers, drop_last=True)

        def loss_fn(model_, batch):  # the script's step: copy the uint8 batch, transform, mask, MAE
            images = batch["images"].to(device, non_blocking=True)  # (B, 3, S, S) uint8
            return mae_loss(model_, transform, images, generator, L), images.shape[0]

        # the same batches from a copy of the whole cache in device memory (data.on_device)
        device_loader = device_image_loader(processed, ["train"], B, shuffle=True, drop_last=True, device=device)
        seconds = {}
        for name, source in (("host", loader), ("device", device_loader)):

            def data_only(source=source):
                for batch in source:
                    transform(batch["images"].to(device, non_blocking=True), generator)

            data_only()  # warm-up: worker start, page cache
            seconds["data", name] = timed(data_only, device)
            run(source, loss_fn)  # warm-up of the whole loop
            seconds["whole", name] = timed(lambda source=source: run(source, loss_fn), device)
        del device_loader

    peak = peak_tflops(device, args.peak_tflops)
    train_flops = 3 * flops_per_image(cfg.model, cfg.mae)["total"]

    def mfu(seconds: float) -> float | None:
        return None if peak is None else train_flops * args.steps * B / seconds / (peak * 1e12)

    n = args.steps * B
    rows.append(Row("mae", "training step (fwd + bwd + AdamW)", step_s, n, step_ips, mfu(step_s)))
    rows.append(Row("mae", f"data pipeline ({workers} workers + transform)", seconds["data", "host"], n, step_ips))
    rows.append(Row("mae", "whole step, data from the host", seconds["whole", "host"], n, step_ips,
                    mfu(seconds["whole", "host"])))
    rows.append(Row("mae", "data pipeline, images in device memory", seconds["data", "device"], n, step_ips))
    rows.append(Row("mae", "whole step, images in device memory", seconds["whole", "device"], n, step_ips,
                    mfu(seconds["whole", "device"])))
    return rows


def captioner_section(args, device: torch.device) -> list[Row]:
    overrides = [f"train.compile={str(args.compile).lower()}", f"train.compile_mode={args.compile_mode}"]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = load_config(CaptionerRunConfig, CAPTIONER_PRESETS[args.preset], overrides)
    vit = load_config(EncoderRunConfig, ROOT / cfg.encoder_config).model
    precision = resolve_precision(cfg.train.precision, device, training=True)
    T, V = CAPTION_SHAPES[args.preset]
    U = max(1, cfg.data.batch_size // CAPTIONS_PER_IMAGE)  # images per step
    B = U * CAPTIONS_PER_IMAGE  # captions per step
    print(f"captioner preset {args.preset}: {vit.image_size} px, {B} captions of {T} tokens from {U} images per step, "
          f"vocabulary {V}, {precision}, {compile_text(cfg.train)}, {args.warmup} warm-up + {args.steps} timed steps")

    torch.manual_seed(0)
    model = build_captioner(vit, cfg.decoder, V, max(T, cfg.data.max_caption_len)).to(device)
    optimizer = make_optimizer(unfreeze_param_groups(model, cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    run = make_model_step(model, optimizer, cfg.train, device, precision)
    transform = EvalTransform(vit.image_size)

    def loss_fn(model_, batch):  # the script's step: normalise the unique images, then teacher forcing
        loss = teacher_forcing_loss(model_, transform(batch["images"]), batch["tokens"], batch["image_index"],
                                    cfg.label_smoothing)
        return loss, batch["tokens"].shape[0]

    batches = synthetic_caption_batches(U, T, V, vit.image_size, device)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    # epoch 0 of a schedule starting at epoch 1: the whole encoder frozen; then everything trains
    frozen = unfreeze_schedule(vit.depth, 0, start_epoch=1, decay=cfg.unfreeze.decay)
    unfrozen = train_everything(vit.depth)
    for name, states in (("encoder frozen", frozen), ("encoder unfrozen", unfrozen)):
        set_trainable(model, states)
        with FlopCounterMode(display=False) as counter:  # one forward + backward of the uncompiled model
            loss_fn(model, batches[0])[0].backward()
        optimizer.zero_grad(set_to_none=True)
        step_flops = counter.get_total_flops()
        run([batches[i % 4] for i in range(args.warmup)], loss_fn, states)
        seconds = timed(lambda states=states: run([batches[i % 4] for i in range(args.steps)], loss_fn, states),
                        device)
        mfu = None if peak is None else step_flops * args.steps / seconds / (peak * 1e12)
        reference = rows[0].images_per_s if rows else args.steps * B / seconds
        rows.append(Row("captioner", f"training step, {name}", seconds, args.steps * B, reference, mfu, "captions"))
    if not cfg.train.compile:
        # Reference for the shared cross-attention keys/values: the same unfrozen step with each
        # image's memory copied to its captions first, so the decoder projects K/V once per caption.

        def per_caption_loss(m, batch):
            memory = m.encode(transform(batch["images"])).index_select(0, batch["image_index"])  # (B, S, C)
            tokens = batch["tokens"]
            return caption_loss(m.decoder(tokens[:, :-1], memory), tokens[:, 1:], cfg.label_smoothing), B

        with FlopCounterMode(display=False) as counter:  # the same forward + backward, K/V per caption
            per_caption_loss(model, batches[0])[0].backward()
        optimizer.zero_grad(set_to_none=True)
        print(f"FLOPs of one unfrozen step (forward + backward): {step_flops / 1e9:.2f} G with the keys/values "
              f"shared per image, {counter.get_total_flops() / 1e9:.2f} G projected per caption "
              f"({1 - step_flops / counter.get_total_flops():.0%} fewer)")
        run([batches[i % 4] for i in range(args.warmup)], per_caption_loss, unfrozen)
        seconds = timed(lambda: run([batches[i % 4] for i in range(args.steps)], per_caption_loss, unfrozen),
                        device)
        rows.append(Row("captioner", "unfrozen, K/V per caption (old)", seconds, args.steps * B,
                        rows[0].images_per_s, None, "captions"))
    return rows


def precision_section(args, device: torch.device) -> list[Row]:
    """The MAE training step alone and the unfrozen captioner step in fp32 and in bf16 autocast (what
    ``train.precision: auto`` takes on a GPU and, for training, on a CPU with AMX), on the same model
    and batches, the two precisions alternated twice and the faster of each pair kept. Ratios are
    against fp32. On a CPU without AMX the bf16 rows show why auto stays fp32 there."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("precision section skipped: this GPU has no bf16")
        return []
    print(f"precision: {'AMX' if cpu_has_bf16_matrix_units() else 'no AMX'} on this CPU; auto trains in "
          f"{resolve_precision('auto', device, training=True)}; {args.warmup} warm-up + {args.steps} timed steps")
    rows = []
    mae_cfg = load_config(EncoderRunConfig, PRESETS[args.preset])
    cap_cfg = load_config(CaptionerRunConfig, CAPTIONER_PRESETS[args.preset])
    vit = load_config(EncoderRunConfig, ROOT / cap_cfg.encoder_config).model
    torch.manual_seed(0)
    B, size = mae_cfg.data.batch_size, mae_cfg.model.image_size
    mae = MaskedAutoencoder(mae_cfg.model, mae_cfg.mae).to(device)
    mae_opt = make_optimizer(param_groups(mae.named_parameters(), mae_cfg.train.weight_decay), mae_cfg.train.lr,
                             (mae_cfg.train.beta1, mae_cfg.train.beta2), device)
    transform = MAETrainTransform(size, scale=(mae_cfg.augment.crop_scale_min, 1.0), flip=mae_cfg.augment.flip)
    generator = seeded_generator(device, 0, TRAIN_STREAM, 0)
    pixels = torch.randint(0, 256, (4, B, 3, size, size), dtype=torch.uint8, device=device)
    mae_batches = [{"images": transform(p, generator),
                    "noise": torch.rand(B, mae.num_patches, generator=generator, device=device)} for p in pixels]

    def mae_step(model_, batch):
        return model_(batch["images"], noise=batch["noise"])[0], B

    T, V = CAPTION_SHAPES[args.preset]
    U = max(1, cap_cfg.data.batch_size // CAPTIONS_PER_IMAGE)
    captioner = build_captioner(vit, cap_cfg.decoder, V, max(T, cap_cfg.data.max_caption_len)).to(device)
    cap_opt = make_optimizer(unfreeze_param_groups(captioner, cap_cfg.train.weight_decay), cap_cfg.train.lr,
                             (cap_cfg.train.beta1, cap_cfg.train.beta2), device)
    unfrozen = train_everything(vit.depth)
    set_trainable(captioner, unfrozen)
    eval_transform = EvalTransform(vit.image_size)
    cap_batches = synthetic_caption_batches(U, T, V, vit.image_size, device)

    def cap_step(model_, batch):
        loss = teacher_forcing_loss(model_, eval_transform(batch["images"]), batch["tokens"], batch["image_index"],
                                    cap_cfg.label_smoothing)
        return loss, batch["tokens"].shape[0]

    for section, model, optimizer, train, batches, loss_fn, states, per_step, unit in (
            ("mae", mae, mae_opt, mae_cfg.train, mae_batches, mae_step, None, B, "images"),
            ("captioner", captioner, cap_opt, cap_cfg.train, cap_batches, cap_step, unfrozen,
             U * CAPTIONS_PER_IMAGE, "captions")):
        best = {}
        for _ in range(2):
            for precision in ("fp32", "bf16"):
                run = make_model_step(model, optimizer, train, device, precision)
                run([batches[i % 4] for i in range(args.warmup)], loss_fn, states)
                seconds = timed(lambda: run([batches[i % 4] for i in range(args.steps)], loss_fn, states), device)
                best[precision] = min(best.get(precision, seconds), seconds)
        reference = args.steps * per_step / best["fp32"]
        for precision in ("fp32", "bf16"):
            name = f"{section} step, {precision}" + (", encoder unfrozen" if section == "captioner" else "")
            rows.append(Row("precision", name, best[precision], args.steps * per_step, reference, None, unit))
    return rows


SECTIONS = {"mae": mae_section, "captioner": captioner_section, "precision": precision_section}


def print_profile(fn, device: torch.device) -> None:
    """The operators that take the most time over ``fn()`` (device time on CUDA, CPU time otherwise).

    When the device total is far below the wall time, the step is bound by the host (kernel
    launches, Python), not by the GPU.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = timed(fn, device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    print(f"profiled wall time: {wall * 1000:.1f} ms")


def print_peak_memory(what: str, device: torch.device) -> None:
    """[CUDA] The peak of the tensors allocated by PyTorch since the last reset, in GiB."""
    if device.type == "cuda":
        print(f"{what}: peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


def print_table(rows: list[Row], device: torch.device, peak: float | None) -> None:
    print()
    print(f"{'section':9} {'measurement':42} {'per s':>10} {'unit':8} {'x ref':>7} {'MFU':>6}")
    for r in rows:
        mfu = f"{100 * r.mfu:5.1f}%" if r.mfu is not None else "   n/a"
        print(f"{r.section:9} {r.name:42} {r.images_per_s:10.1f} {r.unit:8} "
              f"{r.images_per_s / r.reference_images_per_s:7.2f} {mfu:>6}")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    peak_text = f", MFU against {peak:.0f} TFLOP/s dense bf16" if peak else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}{peak_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shapes",
                        help="shapes: configs/shapes_{encoder,captioner}.yaml; coco: configs/coco_{encoder,captioner}.yaml "
                             "(default shapes)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile's mode (train.compile_mode; implies --compile unless it is 'default')")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the preset's batch size (images for MAE, captions for the captioner)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the preset's)")
    parser.add_argument("--profile", action="store_true",
                        help="also print the operators that take the most time in 3 training steps (torch.profiler)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for MFU when its name is not in the built-in table")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    args = parser.parse_args()
    args.compile = args.compile or args.compile_mode != "default"
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    device = resolve_device(args.device)
    rows = []
    for name, section in SECTIONS.items():
        if name not in args.sections.split(","):
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows += section(args, device)
        print_peak_memory(f"{name} (the whole section)", device)
    print_table(rows, device, peak_tflops(device, args.peak_tflops))


if __name__ == "__main__":
    main()
