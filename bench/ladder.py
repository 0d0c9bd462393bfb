"""The results ladder on shapes: six captioners, trained and scored the same way; prints one table.

Rows (each one ``train_captioner.py`` command, then ``evaluate.py`` on its best checkpoint):

    CNN + LSTM                  configs/ladder_resnet_lstm.yaml
    CNN + attention LSTM        configs/ladder_resnet_attention_lstm.yaml
    CNN + transformer           configs/ladder_resnet_transformer.yaml
    ViT scratch + transformer   configs/shapes_captioner.yaml, no -p
    MAE-ViT + transformer       configs/shapes_captioner.yaml -p runs/shapes_encoder (train_encoder.py first if missing)
    contrastive-ViT + transformer  configs/shapes_captioner.yaml -p runs/shapes_retrieval: the image tower of the
                                retrieval model (train_retrieval.py first if missing)

Every row trains ``--epochs`` epochs (default 4) on the same processed data and tokenizer and is
decoded with the same beam settings (the configs' eval section: beam 3, alpha 0.6, max_len 24).
Columns: parameters, the wall-clock seconds of the training command (its per-epoch validation and
BLEU-4 captioning included; for the pretrained rows, not the encoder's pretraining, which is printed apart),
BLEU-1..4 and CIDEr-D on the 500 validation images, the share of captions true in full (the truth
score), and the blind baseline's BLEU-4 / CIDEr-D / captions true (one caption for every image).

Usage: OMP_NUM_THREADS=1 python bench/ladder.py [--epochs 4] [--rows lstm,attention-lstm,...]
Runs take minutes each on a CPU; the runs go to runs/ladder_*.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.training.checkpoints import load_captioner  # noqa: E402

ROWS = {  # key: (label, run folder, arguments of train_captioner.py)
    "lstm": ("CNN + LSTM", "runs/ladder_resnet_lstm", ["--config", "configs/ladder_resnet_lstm.yaml"]),
    "attention-lstm": ("CNN + attention LSTM", "runs/ladder_resnet_attention_lstm",
                       ["--config", "configs/ladder_resnet_attention_lstm.yaml"]),
    "cnn-transformer": ("CNN + transformer", "runs/ladder_resnet_transformer",
                        ["--config", "configs/ladder_resnet_transformer.yaml"]),
    "vit-scratch": ("ViT scratch + transformer", "runs/ladder_vit_scratch",
                    ["--config", "configs/shapes_captioner.yaml"]),
    "mae-vit": ("MAE-ViT + transformer", "runs/ladder_mae_vit",
                ["--config", "configs/shapes_captioner.yaml", "-p", "runs/shapes_encoder"]),
    "contrastive-vit": ("contrastive-ViT + transformer", "runs/ladder_contrastive_vit",
                        ["--config", "configs/shapes_captioner.yaml", "-p", "runs/shapes_retrieval"]),
}
PRETRAINING = {  # row key: (the run folder its -p reads, the script whose preset writes it)
    "mae-vit": ("runs/shapes_encoder", "train_encoder.py"),
    "contrastive-vit": ("runs/shapes_retrieval", "train_retrieval.py"),
}


def run(command: list[str]) -> float:
    """Run a command in the repository root; its wall-clock seconds. Raises on failure."""
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def ladder_row(key: str, epochs: int, overrides: list[str] = ()) -> dict:
    label, run_dir, args = ROWS[key]
    extra = [a for o in overrides for a in ("--set", o)]
    seconds = run([sys.executable, "train_captioner.py", *args, "--set", f"run_dir={run_dir}",
                   "--set", f"train.epochs={epochs}", *extra, "--no-progress"])
    checkpoint = ROOT / run_dir / "checkpoint_best.pt"
    run([sys.executable, "evaluate.py", "-c", str(checkpoint), "--no-progress"])
    scores = json.loads((checkpoint.parent / "eval_checkpoint_best_val" / "captions.scores.json").read_text())
    model, _, _ = load_captioner(checkpoint)
    return {"label": label, "params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
            "model": scores["model"], "truth": scores["truth"], "blind": scores["blind_baseline"]}


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    metrics = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D")
    lines = ["| row | parameters | training s | " + " | ".join(metrics) + " | captions true | "
             "blind BLEU-4 / CIDEr-D / true |", "|---" * (len(metrics) + 5) + "|"]
    for r in rows:
        truth = r["truth"]["model"]["captions_true"] if r["truth"] else None
        blind_truth = r["truth"]["blind_baseline"]["captions_true"] if r["truth"] else None
        blind = r["blind"]["scores"]
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['seconds']:.0f} | "
                     + " | ".join(f"{r['model'][m]:.3f}" for m in metrics)
                     + f" | {share(truth)} | {blind['BLEU-4']:.3f} / {blind['CIDEr-D']:.3f} / {share(blind_truth)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every row (default 4)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override passed to every row's train_captioner.py (repeatable)")
    args = parser.parse_args()
    keys = args.rows.split(",")
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    for key in keys:
        if key in PRETRAINING and not (ROOT / PRETRAINING[key][0]).is_dir():
            script = PRETRAINING[key][1]
            print(f"{ROWS[key][0]}: pretraining ({script}): {run([sys.executable, script, '--no-progress']):.0f} s")
    rows = [ladder_row(key, args.epochs, args.overrides) for key in keys]
    print(f"\n{platform.machine()} {platform.processor() or ''}, torch threads from OMP_NUM_THREADS, "
          f"{args.epochs} epochs per row")
    print(table(rows))


if __name__ == "__main__":
    main()
