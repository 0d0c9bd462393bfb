"""train_captioner.py and evaluate.py for every encoder and decoder kind: train, resume exactly, evaluate."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import caption
import evaluate
import process_coco
import train_captioner
from captioner.config import (CaptionDecoderConfig, CaptionerRunConfig, ConfigError, ConfigWarning, ViTConfig,
                              config_from_dict)
from captioner.evaluation.own_images import ImageCaptioner
from captioner.serve.server import caption_json
from captioner.text.tokenizers import load_tokenizer
from captioner.training.checkpoints import load_captioner, load_checkpoint, save_checkpoint
from tiny_checkpoints import save_untrained_captioner

TINY_RESNET = {"image_size": 32, "stem_width": 8, "widths": [8, 16], "blocks": [1, 1]}
TINY_VIT = {"image_size": 32, "patch_size": 8, "width": 16, "depth": 1, "heads": 2}

# (encoder_kind, decoder_kind, extra overrides); vit + transformer is tests/test_train_captioner.py's
KINDS = [
    ("resnet", "lstm", ["lstm.image_input=first_input"]),
    ("resnet", "attention-lstm", ["lstm.attention_dim=8"]),
    ("resnet", "transformer", ["eos_suppression=0.5", "train.schedule=inverse-sqrt"]),
    ("vit", "attention-lstm", ["lstm.attention_dim=8"]),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "10", "--n-val", "4", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    (root / "encoder.yaml").write_text(yaml.safe_dump({"model": TINY_VIT}))
    config = {
        "encoder_config": str(root / "encoder.yaml"),
        "data": {"processed_dir": str(root / "data" / "processed"), "batch_size": 25, "max_caption_len": 16},
        "resnet": TINY_RESNET,
        "decoder": {"width": 16, "depth": 1, "heads": 2, "dropout": 0.1},
        "lstm": {"embed_dim": 8, "hidden": 16, "dropout": 0.1},  # attention_dim: attention-lstm only (KINDS)
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 1, "seed": 0},
        "eval": {"beam_size": 2, "max_len": 8, "select_images": 2},
    }
    (root / "captioner.yaml").write_text(yaml.safe_dump(config))
    return root


def train(workdir, name, *args):
    return train_captioner.main(["--config", str(workdir / "captioner.yaml"), "--set", f"run_dir={workdir / name}",
                                 "--no-progress", *args])


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "captions_per_s")} for h in history]


@pytest.mark.parametrize("encoder_kind, decoder_kind, extra", KINDS, ids=[f"{e}+{d}" for e, d, _ in KINDS])
def test_every_kind_trains_resumes_exactly_and_evaluates(workdir, encoder_kind, decoder_kind, extra):
    name = f"{encoder_kind}_{decoder_kind}"
    sets = [f"encoder_kind={encoder_kind}", f"decoder_kind={decoder_kind}", *extra]
    straight = train(workdir, name, *[a for s in sets for a in ("--set", s)])
    resumed = train_captioner.main(["-c", str(workdir / name / "checkpoint1.pt"), "--no-progress",
                                    "--set", f"run_dir={workdir / (name + '_resumed')}"])
    assert comparable(resumed) == comparable(straight)
    a = load_checkpoint(workdir / name / "checkpoint2.pt", kind="captioner")
    b = load_checkpoint(workdir / (name + "_resumed") / "checkpoint2.pt", kind="captioner")
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert encoder_kind in a  # the encoder's architecture, under its kind
    model, _, _ = load_captioner(workdir / name / "checkpoint2.pt")
    assert type(model.encoder).__name__ == {"resnet": "ResNetEncoder", "vit": "ImageEncoder"}[encoder_kind]

    summary = evaluate.main(["-c", str(workdir / name / "checkpoint2.pt"), "--limit", "2", "--no-progress"])
    assert summary["n_images"] == 2
    assert (summary["files"]["attention"] is None) == (decoder_kind == "lstm")

    # the web page's answer: heat maps per word when the decoder attends, none for Show and Tell
    captioner = ImageCaptioner.from_checkpoint(workdir / name / "checkpoint2.pt", torch.device("cpu"), "fp32",
                                               beam_size=2, max_len=8)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    answer = caption_json(captioner.caption([image], top=2, attention=True)[0], 2, 0.6)
    has_words = any(beam["words"] for beam in answer["beams"])
    assert has_words == (decoder_kind != "lstm")
    if decoder_kind == "lstm":  # caption.py --attention says why it cannot draw
        Image.fromarray(image).save(workdir / "black.png")
        with pytest.raises(ValueError, match="does not attend"):
            caption.main(["-c", str(workdir / name / "checkpoint2.pt"), str(workdir / "black.png"),
                          "--attention", str(workdir / "maps"), "--no-progress"])


def old_checkpoint(workdir, tmp_path) -> tuple:
    """(path, payload) of a tiny ViT + transformer checkpoint, whose payload a test turns into an older format."""
    tokenizer_path = workdir / "data" / "processed" / "tokenizer.txt"
    decoder = CaptionDecoderConfig(width=16, depth=1, heads=2)
    path = save_untrained_captioner(tmp_path / "old.pt", ViTConfig(**TINY_VIT), decoder,
                                    CaptionerRunConfig(decoder=decoder), tokenizer_path.read_text(),
                                    load_tokenizer(tokenizer_path).vocab_size, 8)
    return path, load_checkpoint(path, kind="captioner")


def test_pre_resnet_checkpoints_still_load(workdir, tmp_path):
    """A ViT + transformer checkpoint whose config predates encoder_kind/decoder_kind loads as before."""
    path, payload = old_checkpoint(workdir, tmp_path)
    for key in ("encoder_kind", "decoder_kind", "resnet", "lstm", "eos_suppression"):
        payload["config"].pop(key, None)
    payload["config"]["train"].pop("schedule", None)
    save_checkpoint(path, payload)
    model, _, _ = load_captioner(path)
    assert type(model.decoder).__name__ == "CaptionDecoder"


def test_checkpoints_from_before_select_by_load_with_their_bleu4_selection(workdir, tmp_path):
    """eval.bleu_images (best epoch by BLEU-4 on that many val images) reads as select_by BLEU-4 on them."""
    path, payload = old_checkpoint(workdir, tmp_path)
    payload["config"]["eval"] = {"beam_size": 2, "alpha": 0.6, "max_len": 8, "bleu_images": 50, "patience": 0}
    save_checkpoint(path, payload)
    with pytest.warns(ConfigWarning, match="bleu_images=50 is read as select_images=50 with select_by=BLEU-4"):
        model, _, payload = load_captioner(path)
    with pytest.warns(ConfigWarning):
        evaluation = config_from_dict(CaptionerRunConfig, payload["config"]).eval
    assert (evaluation.select_by, evaluation.select_images, evaluation.beam_size) == ("BLEU-4", 50, 2)


def test_bad_kinds_name_the_key(workdir):
    with pytest.raises(ConfigError, match="decoder_kind"):
        train(workdir, "bad", "--set", "decoder_kind=gru")
    with pytest.raises(ConfigError, match="encoder_kind"):
        train(workdir, "bad", "--set", "encoder_kind=resnet", "-p", str(workdir / "none.pt"))
