"""Typed run configurations: YAML in, dataclasses out, every key checked.

Each script run is described by one YAML file (see ``configs/``) that is loaded into one of the
dataclasses below. Unknown keys are an error that names the key and the file, values are checked
against the field's type, and any value can be overridden on the command line::

    python train_encoder.py --config configs/shapes_encoder.yaml --set train.lr=3e-4 --set train.epochs=2

A file may extend another with ``base: other.yaml`` and state only what differs (`read_yaml`). A key
that no file states takes its run's built-in default, which is the run's shapes preset
(``configs/shapes_*.yaml``), with one exception: the captioner's built-in checkpoint selection is the
field's (CIDEr-D), the shapes presets' the truth score.
The resolved configuration (file + overrides) is stored as a plain dict inside every checkpoint, so a
resumed run uses exactly the settings it was started with.

The captioner never repeats the encoder's architecture: with ``-p`` it comes from the MAE checkpoint
(or the retrieval checkpoint whose image tower it takes),
and when training from scratch it is read from the ``model`` section of the encoder YAML file that
``CaptionerRunConfig.encoder_config`` points to.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration file or override is malformed, has an unknown key, or a value of the wrong type."""


class ConfigWarning(UserWarning):
    """An override made a key of the configuration file unread (e.g. ``--set train.schedule=inverse-sqrt``
    beside the file's ``train.min_lr``)."""


def only_when(default: Any, key: str, *values: str, scope: str = "section") -> Any:
    """A field that the run reads only when ``key`` has one of ``values``: ``key`` is a field of the same
    section, or with ``scope="run"`` of the run configuration itself. A configuration file that sets the
    field while choosing another value is an error (:func:`unread_keys`)."""
    return field(default=default, metadata={"only_when": (key, values, scope)})


# --------------------------------------------------------------------------------------------------
# The schemas
# --------------------------------------------------------------------------------------------------

# The ImageNet statistics that every encoder here normalises with (torchvision's and MAE's too)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# torch.compile's modes, the choices of TrainConfig.compile_mode
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    processed_dir: str = "data/shapes/processed"  # written by process_coco.py
    batch_size: int = 128  # images per step (MAE) or captions per step (captioner)
    num_workers: int = 0  # DataLoader worker processes; 0 reads in the main process (fast: uint8 cache)
    on_device: bool = False  # MAE only: copy the whole image cache into the device's memory, batch there (no workers)
    max_caption_len: int = 32  # tokens per caption including <sos> and <eos>; longer ones are truncated
    group_by_length: bool = False  # captioner only: batches of images whose captions are about as long (less padding)


@dataclass
class UrlDataConfig(DataConfig):
    """The data of the captioner and the retrieval model, which may also stream their training images from a
    URL-caption list (``captioner/data/url_stream.py``, docs/urls.md); the tokenizer and the validation
    split still come from processed_dir."""

    source: Literal["processed", "urls"] = "processed"  # urls: the training images are fetched while training runs
    url_file: str = only_when("", "source", "urls")  # TSV, CSV or JSON lines, gzipped or not
    url_format: Literal["auto", "tsv", "csv", "jsonl"] = only_when("auto", "source", "urls")
    url_column: str = only_when("url", "source", "urls")  # column name or JSON key (a 0-based number: no header)
    caption_column: str = only_when("caption", "source", "urls")
    url_cache_dir: str = only_when("", "source", "urls")  # keep fetched images here for later epochs ("": no cache)
    fetch_concurrency: int = only_when(16, "source", "urls")  # fetches in flight per loader process
    fetch_timeout: float = only_when(10.0, "source", "urls")  # seconds for one attempt, the whole body included
    fetch_retries: int = only_when(2, "source", "urls")  # further attempts after a timeout, 5xx or cut body
    max_image_bytes: int = only_when(20_000_000, "source", "urls")  # larger payloads are skipped
    max_image_pixels: int = only_when(64_000_000, "source", "urls")  # larger headers are skipped undecoded


@dataclass
class ViTConfig:
    """The Vision Transformer that MAE pretrains and the captioner reuses."""

    image_size: int = 64  # network input resolution (square)
    patch_size: int = 8
    width: int = 128  # d_model
    depth: int = 4  # number of encoder layers
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Pixels each patch's embedding also sees on every side of its own patch: 0 is the plain ViT
    # (each token sees its patch only); > 0 lets a token see the edges its patch shares with its
    # neighbours (MAE blanks the masked patches first, so nothing hidden leaks; models/vit.py). The
    # quickstart's 4 is EncoderRunConfig's default; 0 here is what published weights and other callers build.
    patch_overlap: int = 0
    # The field's published ViTs (the official MAE weights, timm's): a class token ahead of the patches,
    # LayerNorm epsilon 1e-6, and for timm's a learned position embedding (captioner/models/pretrained.py).
    class_token: bool = False
    position_embedding: Literal["sincos", "learned"] = "sincos"  # sincos: fixed, not stored; learned: a parameter
    norm_eps: float = 1e-5
    # The preprocessing the weights expect, kept with the architecture in every checkpoint
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class ResNetConfig:
    """A handwritten ResNet encoder (``captioner/models/resnet.py``); its architecture lives in the captioner config."""

    image_size: int = 64  # network input resolution (square)
    block: Literal["basic", "bottleneck"] = "basic"  # basic: two 3x3 convs; bottleneck: 1x1, 3x3, 1x1 (x4 wider out)
    stem_width: int = 32  # channels of the stem's strided convolution
    stem_kernel: int = 3  # 7 in ResNet-50/101 (with stem_pool); 3 for small images
    stem_pool: bool = False  # 3x3 max pool of stride 2 after the stem conv (ResNet-50/101: true)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # inner width of each stage's blocks
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])  # blocks per stage; stages after the first halve H, W
    # torchvision ImageNet weights to start from: a name (resnet50, resnet101, ...: docs/pretrained.md) or a
    # file; "" starts random. The architecture above must be the file's.
    weights: str = ""
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # the preprocessing, as in ViTConfig
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class MAEConfig:
    """The masked-autoencoder objective and its light decoder."""

    mask_ratio: float = 0.75
    decoder_width: int = 96
    decoder_depth: int = 1
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # regress per-patch normalised pixels (MAE paper, better features)


@dataclass
class AugmentConfig:
    crop_scale_min: float = 0.35  # random resized crop: smallest fraction of the image area kept
    flip: bool = True  # horizontal flips: images only (MAE); never used with captions


@dataclass
class CaptionAugmentConfig:
    """The captioner's training augmentation, stronger each epoch (``captioner/data/augment_ramp.py``).

    Training batches only, never validation or test. The epoch's strength is
    ``s = exp(-5 (1 - min(epoch / ramp_epochs, 1))^2)`` (0-based epoch: 0.0067 in the first, 1 from epoch
    ``ramp_epochs`` on), and each amount below is what the augmentation reaches at ``s = 1``. No horizontal
    flip (it makes "left of" false): unlike the MAE ``AugmentConfig``, there is no ``flip`` key.
    """

    enabled: bool = False  # off: the captioner sees every training image whole and unchanged
    ramp_epochs: float = 8.0  # epochs until full strength (0: full strength from the start)
    crop_scale_min: float = 0.8  # random resized crop: smallest fraction of the image area kept, as in AugmentConfig
    crop_ratio_max: float = 1.15  # the crop's aspect ratio (width / height) lies in [1 / this, this]
    brightness: float = 0.2  # brightness factor in [1 - this, 1 + this]
    contrast: float = 0.2  # contrast factor in [1 - this, 1 + this]
    saturation: float = 0.3  # saturation factor in [1 - this, 1 + this]
    hue: float = 0.02  # hue rotation in [-this, this] turns of the colour circle (0.5: opposite colours)
    grayscale_p: float = 0.05  # probability of a grey (ITU-R 601 luma) image
    blur_p: float = 0.2  # probability of a Gaussian blur
    blur_sigma: float = 1.0  # the blur's sigma in pixels is drawn from [0.1, this]


@dataclass
class TrainConfig:
    """How a run trains. Each run configuration below gives its own defaults, its shapes preset's (the
    captioner's learning rate is not MAE's): the values here are where a run states none."""

    epochs: int = 10
    lr: float = 1.5e-3  # peak learning rate, reached after warm-up
    min_lr: float = only_when(1e-5, "schedule", "cosine")  # end of the cosine decay (inverse-sqrt has no floor)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    precision: str = "auto"  # auto | bf16 | fp16 | fp32  (auto: bf16 on CUDA if supported, else fp16; on a CPU bf16 with AMX, else fp32)
    compile: bool = False  # torch.compile the model
    # torch.compile's mode: default | reduce-overhead (CUDA graphs: fewer kernel launches; best with fixed shapes,
    # i.e. MAE) | max-autotune (searches matmul kernels, long first compile) | max-autotune-no-cudagraphs
    compile_mode: Literal[COMPILE_MODES] = "default"
    seed: int = 0
    log_every: int = 20  # steps between log lines (and host syncs)
    # cosine: linear warm-up then cosine decay to min_lr; inverse-sqrt: linear warm-up then lr * sqrt(warmup / step)
    schedule: Literal["cosine", "inverse-sqrt"] = "cosine"
    # Gradient accumulation (train_encoder.py, train_captioner.py; train_retrieval.py refuses it): one optimiser
    # step per this many micro-batches of data.batch_size each (captioner/training/accumulate.py); the
    # schedule counts optimiser steps
    accumulate_steps: int = 1


@dataclass
class EncoderRunConfig:
    """Configuration of ``train_encoder.py``."""

    run_dir: str = "runs/shapes_encoder"
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=64))
    model: ViTConfig = field(default_factory=lambda: ViTConfig(patch_overlap=4))
    mae: MAEConfig = field(default_factory=MAEConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=24, precision="fp32"))
    splits: list[str] = field(default_factory=lambda: ["train"])  # image splits MAE learns from (e.g. add "unlabeled")
    n_reconstructions: int = 8  # validation images in the per-epoch reconstruction picture


@dataclass
class CaptionDecoderConfig:
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class LSTMDecoderConfig:
    """The LSTM caption decoders (``decoder_kind`` lstm or attention-lstm, ``captioner/models/lstm_decoders.py``)."""

    embed_dim: int = 128  # token embedding
    hidden: int = 256  # the LSTM's hidden and cell state
    # attention-lstm: width of the additive attention's hidden layer
    attention_dim: int = only_when(128, "decoder_kind", "attention-lstm", scope="run")
    dropout: float = 0.0  # before the output layer
    # lstm: the pooled image sets (h0, c0), or is step 0's input
    image_input: Literal["state", "first_input"] = only_when("state", "decoder_kind", "lstm", scope="run")
    # attention-lstm: lambda of the doubly stochastic term lambda * sum_cells (1 - sum_t alpha_t)^2. The sum runs over
    # all S cells, and a caption of T < S steps cannot give each cell a full unit: the term's floor is S * (1 - T/S)^2,
    # 43.6 on average for shapes (64 cells, 11.3 steps). 0.02 (about 1/S) keeps it beside the cross-entropy.
    attention_reg: float = only_when(0.02, "decoder_kind", "attention-lstm", scope="run")


@dataclass
class UnfreezeConfig:
    """Layer-wise unfreezing of the pretrained encoder, from the top layer down."""

    start_epoch: int = 0  # first (0-based) epoch in which the top encoder layer trains
    decay: float = 0.8  # each encoder group's lr is `decay` times the lr of the group above it
    groups_per_epoch: int = 1  # encoder groups unfrozen per epoch, from the top (depth + 1 or more: all at once)


@dataclass
class EvalConfig:
    beam_size: int = 3
    alpha: float = 0.6  # length-normalisation exponent, GNMT's ((5 + len) / 6) ** alpha
    max_len: int = 24  # generated tokens, <eos> included
    # The score that picks checkpoint_best.pt on the validation subset: CIDEr-D (the field's choice), BLEU-4,
    # ROUGE-L, or captions_true (the share of captions true in full; shapes data only, docs/protocol.md#selection)
    select_by: Literal["CIDEr-D", "BLEU-4", "ROUGE-L", "captions_true"] = "CIDEr-D"
    select_images: int = 1000  # the first N validation images, captioned and scored after each epoch (0: all)
    patience: int = 0  # stop after this many epochs without a better select_by score (0: never stop early)


@dataclass
class CaptionerRunConfig:
    """Configuration of ``train_captioner.py``."""

    run_dir: str = "runs/shapes_captioner"
    encoder_kind: Literal["vit", "resnet"] = "vit"  # resnet: architecture (and weights) from the resnet section
    decoder_kind: Literal["transformer", "lstm", "attention-lstm"] = "transformer"
    encoder_config: str = "configs/shapes_encoder.yaml"  # vit: architecture source when training from scratch (no -p)
    vit_image_size: int = 0  # -p with published ViT weights: the input size (0: the weights' own)
    data: UrlDataConfig = field(default_factory=lambda: UrlDataConfig(batch_size=100, max_caption_len=24))
    resnet: ResNetConfig = field(default_factory=ResNetConfig)  # encoder_kind resnet only
    decoder: CaptionDecoderConfig = field(default_factory=CaptionDecoderConfig)  # decoder_kind transformer only
    lstm: LSTMDecoderConfig = field(default_factory=LSTMDecoderConfig)  # decoder_kind lstm / attention-lstm only
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    augment: CaptionAugmentConfig = field(default_factory=CaptionAugmentConfig)  # training batches only; off by default
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=16, lr=2e-3, warmup_epochs=0.5, beta2=0.98))
    # The field's selection (CIDEr-D on 1000 val images), for real data; the shapes presets choose captions_true
    eval: EvalConfig = field(default_factory=EvalConfig)
    label_smoothing: float = 0.1
    eos_suppression: float = 0.0  # weight of the mean probability put on <eos> before a caption's true end (0: off)


@dataclass
class RewardConfig:
    """The weights of self-critical training's rewards (``captioner/training/rewards.py``); 0 leaves one out."""

    cider_d: float = 1.0  # CIDEr-D against the image's references (in [0, 10]), idf from the training references
    bleu4: float = 0.0  # BLEU-4 of the caption alone
    truth: float = 0.0  # shapes only: 1 when the caption is true in full of its scene, else 0
    claims: float = 0.0  # shapes only: the share of the caption's claims that hold


@dataclass
class SCSTConfig:
    """Self-critical sequence training (``train_scst.py``, ``captioner/training/scst.py``)."""

    samples: int = 5  # K captions sampled per image and step
    baseline: Literal["greedy", "mean"] = "greedy"  # greedy: the greedy caption's reward (Rennie); mean: the other samples' (Luo)
    train_encoder: bool = False  # false: the encoder stays frozen, only the decoder learns
    max_len: int = 24  # generated tokens per sampled (and greedy) caption, <eos> included
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class SCSTRunConfig:
    """Configuration of ``train_scst.py``; the model comes from the ``-p`` captioner checkpoint."""

    run_dir: str = "runs/shapes_scst"
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=20))  # batch_size counts images per step
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=5e-5, min_lr=1e-6, warmup_epochs=0.0,
                                                                   weight_decay=0.0, beta2=0.999, log_every=10))
    # select_images: validation images scored after each epoch
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(select_images=200))
    scst: SCSTConfig = field(default_factory=SCSTConfig)


@dataclass
class TextEncoderConfig:
    """The retrieval model's text tower: a bidirectional transformer encoder over caption tokens."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class ContrastiveConfig:
    """How the dual encoder is trained: the loss, its settings, and the optimiser."""

    loss: Literal["info_nce", "cosine"] = "info_nce"  # CLIP's in-batch InfoNCE, or the original project's +-1 cosine loss
    embed_dim: int = 64  # the shared embedding space
    init_temperature: float = 0.07  # InfoNCE: the learned temperature's start (CLIP's)
    margin: float = only_when(0.0, "loss", "cosine")  # cosine loss: a negative pair costs max(0, cos - margin)
    optimizer: Literal["adamw", "lamb"] = "adamw"


@dataclass
class RetrievalEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val"])  # Recall@K after training on these (need captions)
    picture_images: int = 8  # images in retrieval.png, each with its top retrieved captions
    top_k: int = 3  # captions shown per image


@dataclass
class RetrievalRunConfig:
    """Configuration of ``train_retrieval.py``."""

    run_dir: str = "runs/shapes_retrieval"
    encoder_config: str = "configs/shapes_encoder.yaml"  # image tower's architecture without -p
    data: UrlDataConfig = field(default_factory=lambda: UrlDataConfig(batch_size=64, max_caption_len=24))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-3, warmup_epochs=0.5, beta2=0.98))
    eval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)


# --------------------------------------------------------------------------------------------------
# Loading, overriding, converting
# --------------------------------------------------------------------------------------------------

C = TypeVar("C")


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int -> float is allowed), or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return _check_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation}")


def _eval_bleu_images(data: dict, where: str) -> dict:
    """A checkpoint written before ``eval.select_by`` stores ``bleu_images``: its run picked the best epoch by
    BLEU-4 on that many val images, which is ``select_by: BLEU-4`` on ``select_images`` of them now."""
    data = dict(data)
    n_images = data.pop("bleu_images")
    data.setdefault("select_images", n_images)
    data.setdefault("select_by", "BLEU-4")
    warnings.warn(f"{where}.bleu_images={n_images} is read as select_images={data['select_images']} with "
                  f"select_by={data['select_by']} (the key's meaning before select_by)", ConfigWarning, stacklevel=2)
    return data


# Keys of earlier versions that stored configs (checkpoints) may hold: section, old key, its translation
RETIRED_KEYS = {(EvalConfig, "bleu_images"): _eval_bleu_images}


def _from_dict(cls: type[C], data: dict, where: str, start: C | None = None) -> C:
    """``start`` (default: ``cls()``) with the keys of ``data`` replaced. A section missing from ``data``, or a
    key missing from a section, keeps the value of the instance that contains it: a run's own default
    (``CaptionerRunConfig.train`` is not ``TrainConfig()``), not the section class's."""
    for (section, key), translate in RETIRED_KEYS.items():
        if cls is section and key in data:
            data = translate(data, where or section.__name__)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known keys: {', '.join(sorted(names))})")
    start = cls() if start is None else start
    kwargs = {}
    for k, v in data.items():
        key_where = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            kwargs[k] = _from_dict(hints[k], v, key_where, getattr(start, k))
        else:
            kwargs[k] = _check_value(v, hints[k], key_where)
    return dataclasses.replace(start, **kwargs)


def config_from_dict(cls: type[C], data: dict, source: str = "config") -> C:
    """Build ``cls`` from a nested dict; missing keys take their defaults, unknown keys raise.

    >>> config_from_dict(TrainConfig, {"lr": 1}).lr
    1.0
    """
    try:
        return _from_dict(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def config_to_dict(config: Any) -> dict:
    """The plain nested dict of a config dataclass (what checkpoints store)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``a.b=value`` overrides to a nested dict; values are parsed as YAML (``3e-4``, ``true``, ``[a, b]``)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: expected KEY=VALUE, got {item!r}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: cannot parse the value of {key!r}: {e}") from None
    return data


def merge_configs(base: dict, changes: dict) -> dict:
    """``changes`` laid over ``base``: sections (mappings) merge key by key, any other value replaces.

    >>> merge_configs({"train": {"lr": 1.0, "epochs": 4}, "run_dir": "a"}, {"train": {"epochs": 8}})
    {'train': {'lr': 1.0, 'epochs': 8}, 'run_dir': 'a'}
    """
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_configs(merged[key], value)
        merged[key] = value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, with errors that name the file.

    A top-level ``base: other.yaml`` (a path relative to this file) makes the file a list of changes to
    that one: the base is read first (it may have a base of its own) and this file merged over it
    (`merge_configs`), so a preset states only what differs from the one it extends.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the path of another config file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in _seen + (path.resolve(),):
        raise ConfigError(f"{path}: base: {base} leads back to a file already read (a cycle of bases)")
    return merge_configs(read_yaml(base_path, _seen + (path.resolve(),)), data)


def unread_keys(cls: type, data: dict) -> list[str]:
    """The keys that ``data`` sets and a run configured by it never reads (an :func:`only_when` field whose
    condition fails), each as a sentence naming the key and the choice that leaves it unread.

    >>> unread_keys(CaptionerRunConfig, {"train": {"min_lr": 0.0, "schedule": "inverse-sqrt"}})
    ['train.min_lr is set, but train.schedule=inverse-sqrt never reads it (only cosine does)']
    """
    run = _from_dict(cls, data, "")
    found = []

    def walk(section: Any, section_data: dict, where: str) -> None:
        for f in dataclasses.fields(section):
            if f.name not in section_data:
                continue
            path = f"{where}{f.name}"
            if "only_when" in f.metadata:
                key, values, scope = f.metadata["only_when"]
                value = getattr(run if scope == "run" else section, key)
                if value not in values:
                    key_path = key if scope == "run" else f"{where}{key}"
                    found.append(f"{path} is set, but {key_path}={value} never reads it "
                                 f"(only {' or '.join(values)} does)")
            child = getattr(section, f.name)
            if dataclasses.is_dataclass(child) and isinstance(section_data[f.name], dict):
                walk(child, section_data[f.name], f"{path}.")

    walk(run, data, "")
    return found


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Load ``path`` (or the defaults when None), apply ``--set`` overrides, and check every key.

    Raises ConfigError naming the file and the offending key, also for a key that the file's own choices
    never read (:func:`unread_keys`, e.g. ``min_lr`` beside ``schedule: inverse-sqrt``). A key of the file
    that an override leaves unread is a :class:`ConfigWarning` (an override cannot remove a key).
    """
    source = str(path) if path is not None else "defaults"
    file_data = read_yaml(path) if path is not None else {}
    data = apply_overrides(file_data, list(overrides))
    config = config_from_dict(cls, data, source=source)
    try:
        in_file = unread_keys(cls, file_data)
    except ConfigError:
        in_file = []  # a value of the file that the overrides replace: checked above, with them
    if in_file:
        raise ConfigError(f"{source}: {in_file[0]}; remove it")
    for problem in unread_keys(cls, data):
        warnings.warn(f"{source} with --set: {problem}", ConfigWarning, stacklevel=2)
    return config
