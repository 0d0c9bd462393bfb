"""Benchmark: beam search with vs without the KV cache, and handwritten attention vs torch's.

    python bench/bench_generate.py [--device auto|cpu|cuda]

1. Batched beam search (beam 1, 3, 6) with a random caption decoder of realistic size
   (6 layers x 512, vocabulary 10000) over a batch of image memories, max_len=20: with the KV
   cache against recomputing the whole prefix each step. A random model almost never emits
   <eos>, so every run takes all 20 steps (the table shows the steps taken).
2. Multi-head attention forward + backward at captioner shapes: our fused and manual paths
   against torch.nn.MultiheadAttention holding the same weights.
Ratios: uncached/cached is the cache's speed-up (target >= 4 at beam 6 on a CPU);
fused/torch and manual/torch are time ratios (target <= 1.15).

On a shared, busy CPU, `--threads 1` avoids idle-spinning thread pools and gives steadier figures.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from captioner.models.caption_decoder import CaptionDecoder  # noqa: E402
from transformer_components import MultiHeadAttention, EncoderDecoder  # noqa: E402

PAD, SOS, EOS = 0, 1, 2


def clock(fn, device):
    """(wall time of one call of fn(), its result), synchronising the GPU around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def timed(fn, device, repeats, warmup):
    """(median wall time of `repeats` calls of fn(), fn's last result), after one call of warmup()."""
    warmup()
    runs = [clock(fn, device) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def timed_round_robin(fns, device, repeats):
    """Median wall time of each fn over `repeats` rounds that call every fn once, in turn.

    Interleaving keeps a change in machine load (a shared CPU) from favouring one of them.
    """
    for fn in fns:  # warm-up
        fn()
    rounds = [[clock(fn, device)[0] for fn in fns] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*rounds)]


def bench_beam_search(args, device):
    torch.manual_seed(0)
    decoder = CaptionDecoder(args.vocab, 512, n_layers=6, n_heads=8, d_ff=2048, max_len=32)
    model = EncoderDecoder(nn.Identity(), decoder).to(device).eval()
    memory = torch.randn(args.batch, args.memory_len, 512, device=device)  # (B, S, C) image tokens
    print(f"\nBeam search: batch {args.batch}, memory {args.memory_len} x 512, decoder 6 x 512, "
          f"vocab {args.vocab}, max_len 20, fp32")
    print(f"{'beam':>4} {'steps':>5} {'cached s':>9} {'uncached s':>11} {'uncached/cached':>16}")
    for beam in (1, 3, 6):
        seconds, steps = {}, {}
        for use_cache in (True, False):
            def run(max_len=20):
                return model.generate(memory, SOS, EOS, PAD, max_len, beam_size=beam, use_cache=use_cache)

            seconds[use_cache], (tokens, _) = timed(run, device, args.repeats, warmup=lambda: run(max_len=3))
            steps[use_cache] = tokens.size(1)
        print(f"{beam:>4} {steps[True]:>2}/{steps[False]:<2} {seconds[True]:>9.3f} {seconds[False]:>11.3f} "
              f"{seconds[False] / seconds[True]:>15.2f}x")


def bench_attention(args, device):
    shapes = [  # name, batch, query length, key length, causal
        ("decoder self-attn (causal)", 64, 20, 20, True),
        ("decoder cross-attn", 64, 20, args.memory_len, False),
        ("encoder self-attn", 16, 196, 196, False),
    ]
    C, H = 512, 8
    print(f"\nAttention forward + backward, C={C}, H={H}, fp32 (median of {args.attn_repeats})")
    print(f"{'shape':<27} {'B x Tq x Tk':>14} {'torch ms':>9} {'fused ms':>9} {'manual ms':>10} "
          f"{'fused/torch':>12} {'manual/torch':>13}")
    for name, B, Tq, Tk, causal in shapes:
        torch.manual_seed(0)
        ref = nn.MultiheadAttention(C, H, batch_first=True).to(device)
        ours = MultiHeadAttention(C, H).to(device)
        ours.load_torch_mha(ref)
        x = torch.randn(B, Tq, C, device=device, requires_grad=True)
        mem = None if Tq == Tk else torch.randn(B, Tk, C, device=device, requires_grad=True)
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=device).triu(1) if causal else None

        def torch_step():
            kv = x if mem is None else mem
            out, _ = ref(x, kv, kv, attn_mask=mask, need_weights=False, is_causal=causal)
            out.sum().backward()

        def ours_step():
            ours(x, mem, causal=causal).sum().backward()

        def fused_step():
            ours.fused = True
            ours_step()

        def manual_step():
            ours.fused = False
            ours_step()

        t_ref, t_fused, t_manual = timed_round_robin([torch_step, fused_step, manual_step], device, args.attn_repeats)
        print(f"{name:<27} {f'{B}x{Tq}x{Tk}':>14} {t_ref * 1e3:>9.2f} {t_fused * 1e3:>9.2f} {t_manual * 1e3:>10.2f} "
              f"{t_fused / t_ref:>11.2f}x {t_manual / t_ref:>12.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8, help="sources decoded together")
    parser.add_argument("--memory-len", type=int, default=49, help="image tokens per source")
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per beam search setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--attn-repeats", type=int, default=20, help="timed runs per attention setting")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}; device {device}")
    bench_beam_search(args, device)
    bench_attention(args, device)


if __name__ == "__main__":
    main()
