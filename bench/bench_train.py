"""Training throughput of the two training scripts' steps; prints one table with ratios.

Sections (one function each, all returning `Row`s):
- mae: images/s of train_encoder.py's step (`train_steps`) on batches already on the device; of the
  data pipeline alone; and of the whole loop with the data, with images read from the host and with
  the whole uint8 cache in device memory (``data.on_device``). Ratios against the step alone.
- captioner: captions/s of train_captioner.py's step with the encoder frozen and unfrozen. Ratios
  against the frozen step.
- precision: the MAE step and the unfrozen captioner step in fp32 and in bf16 autocast, alternated,
  the faster of two kept. Ratios against fp32 (what ``train.precision: auto`` gains where it takes bf16).
On CUDA the sections also print the model-FLOPs utilisation against the GPU's dense bf16 peak and
the peak GPU memory. Inputs are synthetic (images of the preset's size, captions of CAPTION_SHAPES),
so no dataset is needed; warm-up steps and compiling are not timed. Figures: docs/benchmarks.md#training-steps.

Usage: python bench/bench_train.py [--preset shapes|coco] [--sections mae,captioner,precision] (--help: all options)
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
from captioner.config import COMPILE_MODES, CaptionerRunConfig, EncoderRunConfig, TrainConfig, load_config  # noqa: E402
from captioner.data.loaders import image_loader  # noqa: E402
from captioner.data.transforms import EvalTransform, MAETrainTransform  # noqa: E402
from captioner.infra.compile import maybe_compile  # noqa: E402
from captioner.infra.device_loader import device_image_loader  # noqa: E402
from captioner.models.captioner import build_captioner, teacher_forcing_loss  # noqa: E402
from captioner.models.mae import MaskedAutoencoder  # noqa: E402
from captioner.text.tokenizers import EOS_ID, SOS_ID  # noqa: E402
from captioner.training.devices import (autocast, cpu_has_bf16_matrix_units, make_grad_scaler,  # noqa: E402
                                        resolve_device, resolve_precision)
from captioner.training.log import LossMeter  # noqa: E402
from captioner.training.optimizer import make_optimizer, param_groups  # noqa: E402
from captioner.training.unfreeze import (GroupState, set_trainable, train_everything,  # noqa: E402
                                         unfreeze_param_groups, unfreeze_schedule)
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


def timed(fn, device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, with the device's queued work finished before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
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
    """One training step per batch, as the training scripts run it (lr per unfreeze group in ``states``, held
    constant; ``loss_fn(model, batch) -> (loss, items)`` under autocast; scaler, clipping, optimiser step);
    the mean loss. No log lines: the one host read is the mean at the end."""
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


def command_line_overrides(args) -> list[str]:
    """The ``--set`` overrides that --compile, --compile-mode and --batch-size stand for."""
    batch = [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    return [f"train.compile={str(args.compile).lower()}", f"train.compile_mode={args.compile_mode}", *batch]


def mae_setup(args, device: torch.device):
    """(cfg, precision, model, optimizer): the preset's MAE config with the command line's overrides, its
    training precision on ``device``, and the MaskedAutoencoder (seeded) and AdamW that train_encoder.py builds."""
    cfg = load_config(EncoderRunConfig, PRESETS[args.preset], command_line_overrides(args))
    torch.manual_seed(0)
    model = MaskedAutoencoder(cfg.model, cfg.mae).to(device)
    optimizer = make_optimizer(param_groups(model.named_parameters(), cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    return cfg, resolve_precision(cfg.train.precision, device, training=True), model, optimizer


def mae_section(args, device: torch.device) -> list[Row]:
    cfg, precision, model, optimizer = mae_setup(args, device)
    B, size = cfg.data.batch_size, cfg.model.image_size
    workers = cfg.data.num_workers if args.workers is None else args.workers
    print(f"MAE preset {args.preset}: {size} px, batch {B}, {precision}, {compile_text(cfg.train)}, "
          f"{workers} loader workers, {args.warmup} warm-up + {args.steps} timed steps")
    run = make_model_step(model, optimizer, cfg.train, device, precision)
    L = model.num_patches
    # The training step alone: a few distinct batches already on the device, transformed once.
    ready, step_only = mae_batches_and_loss(cfg, L, device)
    # the real loop's transform and generator, for the data rows below
    transform = MAETrainTransform(size, scale=(cfg.augment.crop_scale_min, 1.0), flip=cfg.augment.flip)
    generator = seeded_generator(device, 0, TRAIN_STREAM, 1)

    run([ready[i % 4] for i in range(args.warmup)], step_only)
    step_s = timed(lambda: run([ready[i % 4] for i in range(args.steps)], step_only), device)
    step_ips = args.steps * B / step_s
    # what a run of the preset needs (plus the 4 prepared batches), before the data rows copy images there
    print_peak_memory("MAE training step", device)
    if args.profile:
        print_profile(lambda: run([ready[i % 4] for i in range(3)], step_only), device)

    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        processed = make_processed(Path(tmp), B * args.steps, size)
        loader = image_loader(processed, ["train"], B, shuffle=True, num_workers=workers, drop_last=True)

        def loss_fn(model_, batch):  # the script's step: copy the uint8 batch, transform, mask, MAE
            images = batch["images"].to(device, non_blocking=True)  # (B, 3, S, S) uint8
            return mae_loss(model_, transform, images, generator, L), images.shape[0]

        # the same batches from a copy of the whole cache in device memory (data.on_device)
        device_loader = device_image_loader(processed, ["train"], B, shuffle=True, drop_last=True, device=device)
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

    names = {("data", "host"): f"data pipeline ({workers} workers + transform)",
             ("whole", "host"): "whole step, data from the host", ("data", "device"): "data pipeline, images in "
             "device memory", ("whole", "device"): "whole step, images in device memory"}
    n = args.steps * B
    return [Row("mae", "training step (fwd + bwd + AdamW)", step_s, n, step_ips, mfu(step_s))] + [
        Row("mae", name, seconds[key], n, step_ips, mfu(seconds[key]) if key[0] == "whole" else None)
        for key, name in names.items()]


def captioner_setup(args, device: torch.device):
    """The preset's captioner (command-line overrides applied, seeded, every encoder layer training):
    (cfg, vit, model, optimizer, unfreeze states, four synthetic batches, ``loss_fn(model, batch) -> (loss,
    captions)``), the loss the script's step: normalise the unique images, then teacher forcing."""
    cfg = load_config(CaptionerRunConfig, CAPTIONER_PRESETS[args.preset], command_line_overrides(args))
    vit = load_config(EncoderRunConfig, ROOT / cfg.encoder_config).model
    T, V = CAPTION_SHAPES[args.preset]  # T <= max_caption_len
    torch.manual_seed(0)
    model = build_captioner(vit, cfg.decoder, V, cfg.data.max_caption_len).to(device)
    optimizer = make_optimizer(unfreeze_param_groups(model, cfg.train.weight_decay), cfg.train.lr,
                               (cfg.train.beta1, cfg.train.beta2), device)
    unfrozen = train_everything(vit.depth)
    set_trainable(model, unfrozen)
    transform = EvalTransform(vit.image_size)

    def loss_fn(model_, batch):
        loss = teacher_forcing_loss(model_, transform(batch["images"]), batch["tokens"], batch["image_index"],
                                    cfg.label_smoothing)
        return loss, batch["tokens"].shape[0]

    U = max(1, cfg.data.batch_size // CAPTIONS_PER_IMAGE)  # images per step
    return cfg, vit, model, optimizer, unfrozen, synthetic_caption_batches(U, T, V, vit.image_size, device), loss_fn


def captioner_section(args, device: torch.device) -> list[Row]:
    cfg, vit, model, optimizer, unfrozen, batches, loss_fn = captioner_setup(args, device)
    precision = resolve_precision(cfg.train.precision, device, training=True)
    (B, T), U = batches[0]["tokens"].shape, batches[0]["images"].shape[0]  # captions, tokens, images per step
    print(f"captioner preset {args.preset}: {vit.image_size} px, {B} captions of {T} tokens from {U} images per step, "
          f"vocabulary {CAPTION_SHAPES[args.preset][1]}, {precision}, {compile_text(cfg.train)}, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    run = make_model_step(model, optimizer, cfg.train, device, precision)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    # epoch 0 of a schedule starting at epoch 1: the whole encoder frozen; then everything trains
    frozen = unfreeze_schedule(vit.depth, 0, start_epoch=1, decay=cfg.unfreeze.decay)
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
    return rows


def fastest_alternated(parts: dict, warmup: list, batches: list, device: torch.device, rounds: int = 3) -> dict:
    """``{name: seconds}``: the fastest of ``rounds`` timings of each ``parts[name](batches)`` (after its own
    warm-up), the parts alternated within each round so that a drift of the machine's speed hits all alike."""
    best = {}
    for _ in range(rounds):
        for name, go in parts.items():
            go(warmup)
            seconds = timed(lambda go=go: go(batches), device)
            best[name] = min(best.get(name, seconds), seconds)
    return best


def mae_batches_and_loss(cfg: EncoderRunConfig, num_patches: int, device: torch.device):
    """(batches, loss_fn): four MAE batches of synthetic uint8 images of ``cfg``'s size, transformed once,
    each with its masking noise, and ``loss_fn(model, batch) -> (loss, images)`` for :func:`train_steps`."""
    B, size = cfg.data.batch_size, cfg.model.image_size
    transform = MAETrainTransform(size, scale=(cfg.augment.crop_scale_min, 1.0), flip=cfg.augment.flip)
    generator = seeded_generator(device, 0, TRAIN_STREAM, 0)
    pixels = torch.randint(0, 256, (4, B, 3, size, size), dtype=torch.uint8, device=device)
    batches = [{"images": transform(p, generator),
                "noise": torch.rand(B, num_patches, generator=generator, device=device)} for p in pixels]

    def loss_fn(model_, batch):
        return model_(batch["images"], noise=batch["noise"])[0], B

    return batches, loss_fn


def precision_section(args, device: torch.device) -> list[Row]:
    """The MAE step and the unfrozen captioner step in fp32 and in bf16 autocast (what ``precision: auto``
    takes on a GPU or a CPU with AMX), alternated twice, the faster of each kept; ratios against fp32."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("precision section skipped: this GPU has no bf16")
        return []
    print(f"precision: {'AMX' if cpu_has_bf16_matrix_units() else 'no AMX'} on this CPU; auto trains in "
          f"{resolve_precision('auto', device, training=True)}; {args.warmup} warm-up + {args.steps} timed steps")
    rows = []
    mae_cfg, _, mae, mae_opt = mae_setup(args, device)
    mae_batches, mae_step = mae_batches_and_loss(mae_cfg, mae.num_patches, device)
    cap_cfg, _, captioner, cap_opt, unfrozen, cap_batches, cap_step = captioner_setup(args, device)
    for section, model, optimizer, train, batches, loss_fn, states, per_step, unit in (
            ("mae", mae, mae_opt, mae_cfg.train, mae_batches, mae_step, None, mae_cfg.data.batch_size, "images"),
            ("captioner", captioner, cap_opt, cap_cfg.train, cap_batches, cap_step, unfrozen,
             cap_batches[0]["tokens"].shape[0], "captions")):
        parts = {precision: lambda bs, run=make_model_step(model, optimizer, train, device, precision):
                 run(bs, loss_fn, states) for precision in ("fp32", "bf16")}
        best = fastest_alternated(parts, [batches[i % 4] for i in range(args.warmup)],
                                  [batches[i % 4] for i in range(args.steps)], device, rounds=2)
        reference = args.steps * per_step / best["fp32"]
        for precision in ("fp32", "bf16"):
            name = f"{section} step, {precision}" + (", encoder unfrozen" if section == "captioner" else "")
            rows.append(Row("precision", name, best[precision], args.steps * per_step, reference, None, unit))
    return rows


SECTIONS = {"mae": mae_section, "captioner": captioner_section, "precision": precision_section}


def print_profile(fn, device: torch.device) -> None:
    """The operators that take the most time over ``fn()`` (device time on CUDA, CPU time otherwise). A
    device total far below the wall time means the step is bound by the host (launches, Python)."""
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
                        help="configs/{preset}_{encoder,captioner}.yaml (default shapes)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile's mode (train.compile_mode; implies --compile unless it is 'default')")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="data.batch_size instead of the preset's (MAE: images; captioner: captions)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the preset's)")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of 3 MAE steps")
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
