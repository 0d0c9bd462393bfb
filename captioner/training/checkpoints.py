"""Checkpoints: what a run saves after every epoch, written atomically, and how it is read back.

A checkpoint is a plain dict of state_dicts and plain data (model, optimiser, scaler, step, epoch,
the resolved config, RNG states, history), loadable with ``torch.load(..., weights_only=True)``.
It is written at the end of an epoch; the data order of epoch ``e`` is a function of ``(seed, e)``
and the learning rate a function of the step, so a resumed run repeats exactly what an
uninterrupted run would have done.

The second half reads what the model checkpoints hold. A captioner checkpoint is self-contained:
besides the training state (with the run config, which names the encoder and decoder kinds and the
decoder's settings) it stores the encoder architecture (``"vit"`` or ``"resnet"``), the vocabulary
size, the decoder's ``max_len`` and the tokenizer file's text (`checkpoint_extras`), so
`load_captioner` rebuilds model and tokenizer from the checkpoint alone. A pretrained encoder comes
from an MAE checkpoint or a retrieval checkpoint's image tower (`encoder_from_checkpoint`), whose own
stored config gives the architecture.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from captioner.config import CaptionerRunConfig, ConfigError, ResNetConfig, ViTConfig, config_from_dict, config_to_dict
from captioner.infra.fileio import atomic_write_bytes
from captioner.models.captioner import ENCODERS, KIND, captioner_for_config
from captioner.models.dual_encoder import KIND as RETRIEVAL_KIND
from captioner.models.vit import ImageEncoder
from captioner.text.tokenizers import parse_tokenizer
from transformer_components import EncoderDecoder

if TYPE_CHECKING:
    from captioner.training.distributed import DistInfo


CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or of the wrong kind for this script."""


def rng_state() -> dict:
    """Every RNG the training touches, as tensors and plain Python data (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where this machine has the same GPUs)."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(x: Any) -> Any:
    """Python's random state must be nested tuples; a round trip through a checkpoint may give lists."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` atomically (temporary file, fsync, ``os.replace``; see :func:`atomic_write_bytes`).

    A crash mid-write leaves the previous checkpoint (if any) intact and no file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The ``checkpoint{N}.pt`` with the largest N in ``run_dir`` (CheckpointError if there is none)."""
    run_dir = Path(run_dir)
    numbered = [(int(p.stem[len("checkpoint"):]), p) for p in run_dir.glob("checkpoint*.pt")
                if p.stem[len("checkpoint"):].isdigit()]
    if not numbered:
        raise CheckpointError(f"{run_dir}: no checkpoint<N>.pt files in this folder")
    return max(numbered)[1]


def read_torch_file(path: Path, missing: str, unreadable: str) -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU; CheckpointError naming the file when it is
    missing (``missing``) or cannot be read (``unreadable``, followed by torch's exception type)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path}: {unreadable}{type(e).__name__})") from None


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True`` onto the CPU, checking its format and ``kind``.

    ``path`` may also be a run folder: its latest ``checkpoint{N}.pt`` is loaded.

    Raises CheckpointError naming the file for a missing, unreadable or mismatched checkpoint.
    """
    path = latest_checkpoint(path) if Path(path).is_dir() else Path(path)
    payload = read_torch_file(path, "no such checkpoint file", "not a readable checkpoint (truncated, corrupt, "
                              "or not saved by this project; ")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format {CHECKPOINT_FORMAT} expected)")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: this is a {payload.get('kind')!r} checkpoint, but a {kind!r} checkpoint is needed")
    return payload


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoint{epoch}.pt``, where ``epoch`` counts completed epochs (1 after the first)."""
    return Path(run_dir) / f"checkpoint{epoch}.pt"


def load_state_dict_checked(module: nn.Module, state_dict: dict, source: str | Path) -> None:
    """``module.load_state_dict`` with an error that names the checkpoint and the mismatched keys/shapes."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"{source}: the weights do not fit this model: {detail}") from None


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, step: int,
                   epoch: int, kind: str, config: dict, history: list, **extra: Any) -> dict:
    """Everything a run needs to continue exactly, for :func:`save_checkpoint`.

    ``model`` is the plain module (not the compiled or DDP-wrapped one), so the keys carry no prefix.
    """
    return {
        "kind": kind,
        "epoch": epoch,
        "step": step,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "history": history,
        **extra,
    }


def resume_from(payload: dict | None, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, source: str | Path, dist: DistInfo) -> tuple[int, int, list]:
    """Restore a :func:`training_state` payload; return ``(first epoch to run, step, history so far)``.

    ``payload`` None is a fresh run: ``(0, 0, [])``. Loads the model, optimiser and scaler states and
    the RNG states. [distributed] A checkpoint written by as many processes gives each process its own
    RNG states back (``rng_by_rank``); any other gives every process rank 0's. Only rank 0 prints.
    """
    if payload is None:
        return 0, 0, []
    load_state_dict_checked(model, payload["model"], source)
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: the optimiser state does not fit this model: {e}") from None
    if payload["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(payload["scaler"])
    # else: the run switched between fp16 and bf16/fp32; the fresh scaler starts from its defaults.
    set_rng_state(payload["rng"])
    by_rank = payload.get("rng_by_rank")
    if dist.distributed and by_rank is not None and len(by_rank) == dist.world_size:
        set_rng_state(by_rank[dist.rank])  # [distributed] this process's own dropout stream
    if dist.is_main:
        print(f"resuming {source} after epoch {payload['epoch']} (step {payload['step']})")
    return payload["epoch"], payload["step"], list(payload["history"])


# ---- the captioner's and the MAE encoder's checkpoints


def checkpoint_extras(encoder_config: ViTConfig | ResNetConfig, vocab_size: int, max_len: int, tokenizer_text: str,
                      pretrained: str | None) -> dict:
    """What a captioner checkpoint stores besides the training state (see the module docstring): the
    encoder architecture under its kind (``"vit"`` or ``"resnet"``); ``pretrained`` is the MAE
    checkpoint the run started from (None: from scratch)."""
    return {ENCODERS[type(encoder_config)][0]: config_to_dict(encoder_config), "vocab_size": vocab_size,
            "max_len": max_len, "tokenizer": tokenizer_text, "pretrained": pretrained}


def captioner_from_payload(payload: dict, source: str | Path, cfg: CaptionerRunConfig | None = None,
                           max_len: int = 0) -> EncoderDecoder:
    """The captioner described by a checkpoint payload, with its weights (on the CPU).

    ``cfg`` replaces the stored run config's decoder settings (a resumed run's ``--set`` overrides);
    weights that then do not fit raise CheckpointError. ``max_len`` raises the decoder's position
    limit above the stored one (its position encoding is computed, not learned, so any length works).
    Checkpoints written before ResNets and LSTMs existed hold ``"vit"`` and a transformer decoder.
    """
    try:
        if "resnet" in payload:
            encoder_config = config_from_dict(ResNetConfig, payload["resnet"], source=f"{source} (resnet)")
        else:
            encoder_config = config_from_dict(ViTConfig, payload["vit"], source=f"{source} (vit)")
        if cfg is None:
            cfg = config_from_dict(CaptionerRunConfig, payload["config"], source=f"{source} (config)")
        stored_kind = ENCODERS[type(encoder_config)][0]
        if cfg.encoder_kind != stored_kind:
            raise ConfigError(f"encoder_kind is {cfg.encoder_kind!r}, but the checkpoint holds a {stored_kind!r} encoder")
        model = captioner_for_config(cfg, encoder_config, payload["vocab_size"], max(payload["max_len"], max_len))
    except KeyError as e:
        raise CheckpointError(f"{source}: the captioner checkpoint lacks its {e.args[0]!r} entry") from None
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{source}: the stored architecture is invalid: {e}") from None
    load_state_dict_checked(model, payload["model"], source)
    return model


def tokenizer_from_text(text: str, source: str | Path = "checkpoint"):
    """A tokenizer from the text of its file (as stored in a captioner checkpoint)."""
    try:
        return parse_tokenizer(text, source)
    except ValueError as e:
        raise CheckpointError(f"{source}: the stored tokenizer is unreadable: {e}") from None


def load_captioner(checkpoint_path: str | Path, device: torch.device | str = "cpu", max_len: int = 0):
    """``(model in eval mode on device, tokenizer, payload)`` from a captioner checkpoint alone.

    ``max_len``: decode up to this many positions even if training used fewer.
    Raises CheckpointError naming the file for a missing, corrupt or non-captioner checkpoint.
    """
    payload = load_checkpoint(checkpoint_path, kind=KIND)
    model = captioner_from_payload(payload, checkpoint_path, max_len=max_len).to(device).eval()
    return model, tokenizer_from_text(payload.get("tokenizer", ""), checkpoint_path), payload


def encoder_from_mae_checkpoint(payload: dict, source: str | Path = "checkpoint") -> ImageEncoder:
    """The pretrained :class:`ImageEncoder` in an MAE checkpoint payload (from ``load_checkpoint``).

    The architecture comes from the checkpoint's own config (``config["model"]``), never from a
    second YAML file, and the weights from the ``encoder.`` entries of ``payload["model"]``.
    Raises CheckpointError naming ``source`` when the payload is not an MAE checkpoint or its
    weights do not fit the architecture it describes.
    """
    if payload.get("kind") != "mae":
        raise CheckpointError(f"{source}: this is a {payload.get('kind')!r} checkpoint, not an MAE ('mae') checkpoint")
    return encoder_from_checkpoint(payload, source)


# Where each kind of checkpoint keeps its ViT: (the architecture's place, the prefix of its weights).
# A retrieval checkpoint's image tower is the ViT alone: its projection into the shared embedding space
# (``image_projection``) is not under the prefix, so a captioner, which reads the token grid, drops it.
ENCODER_CHECKPOINTS = {"mae": (("config", "model"), "encoder."), RETRIEVAL_KIND: (("vit",), "image_encoder.")}


def encoder_from_checkpoint(payload: dict, source: str | Path = "checkpoint") -> ImageEncoder:
    """The pretrained :class:`ImageEncoder` in an MAE (``train_encoder.py``) or retrieval
    (``train_retrieval.py``: the image tower) checkpoint payload, from ``load_checkpoint``.

    The architecture, mean and std and image size included, comes from the checkpoint itself (an MAE
    checkpoint's ``config["model"]``, a retrieval checkpoint's ``"vit"``), the weights from its
    ``payload["model"]`` entries under the kind's prefix (``ENCODER_CHECKPOINTS``). Raises
    CheckpointError naming ``source`` for another kind of checkpoint, a missing or invalid
    architecture, or weights that do not fit it.
    """
    kind = payload.get("kind")
    if kind not in ENCODER_CHECKPOINTS:
        expected = " or ".join(repr(k) for k in ENCODER_CHECKPOINTS)
        raise CheckpointError(f"{source}: this is a {kind!r} checkpoint; a pretrained ViT encoder comes from "
                              f"a {expected} checkpoint (train_encoder.py's or train_retrieval.py's)")
    where, prefix = ENCODER_CHECKPOINTS[kind]
    vit, state = payload, payload.get("model")
    for key in where:
        vit = vit.get(key) if isinstance(vit, dict) else None
    if not isinstance(vit, dict) or not isinstance(state, dict):
        section = f" (with a {where[1]!r} section)" if len(where) > 1 else ""
        raise CheckpointError(f"{source}: the {kind!r} checkpoint lacks its {where[0]!r}{section} architecture "
                              "or its 'model' weights")
    try:
        encoder = ImageEncoder(config_from_dict(ViTConfig, vit, source=f"{source} ({'.'.join(where)})"))
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{source}: the stored ViT architecture is invalid: {e}") from None
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise CheckpointError(f"{source}: the checkpoint holds no {prefix!r} weights")
    load_state_dict_checked(encoder, encoder_state, source)
    return encoder
