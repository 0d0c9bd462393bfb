"""The original projects' experiments as presets (configs/original_*.yaml): each loads, builds and trains
one step on a tiny processed set, with tiny random weights in the published formats standing in for the
ImageNet ResNets and the official MAE ViT-B (the preset's own decoder, decoding and schedule settings)."""

import pytest
import torch

import train_captioner
from captioner.config import CaptionerRunConfig, load_config
from captioner.training.checkpoints import load_checkpoint
from tiny_checkpoints import (
    TINY_IMAGENET_RESNET,
    official_mae_state,
    saved_bytes,
    tiny_processed_shapes,
    torchvision_resnet_state,
)

PRESETS = {  # preset -> what the original project's write-up says, checked in the loaded config
    "original_show_attend_tell_flickr8k": {"encoder_kind": "resnet", "decoder_kind": "attention-lstm",
                                           "resnet.weights": "resnet101", "resnet.blocks": [3, 4, 23, 3],
                                           "lstm.embed_dim": 300, "lstm.attention_dim": 512, "lstm.hidden": 512,
                                           "lstm.dropout": 0.5, "data.processed_dir": "data/flickr8k/processed"},
    "original_cnn_lstm_flickr8k": {"encoder_kind": "resnet", "decoder_kind": "lstm", "resnet.weights": "resnet152",
                                   "resnet.blocks": [3, 8, 36, 3], "eval.beam_size": 1,
                                   "data.processed_dir": "data/flickr8k/processed"},
    "original_resnet101_transformer_flickr30k": {"encoder_kind": "resnet", "decoder_kind": "transformer",
                                                 "resnet.weights": "resnet101", "decoder.depth": 10,
                                                 "decoder.width": 512, "train.schedule": "inverse-sqrt", "eos_suppression": 0.1,
                                                 "eval.beam_size": 5, "eval.alpha": 0.6,
                                                 "data.processed_dir": "data/flickr30k/processed"},
    "original_mae_vit_coco_karpathy": {"encoder_kind": "vit", "decoder_kind": "transformer", "decoder.depth": 6,
                                       "eval.beam_size": 6, "eval.alpha": 0.8,
                                       "data.processed_dir": "data/coco_karpathy/processed"},
}


def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    tiny_processed_shapes(root / "data", n_val=2)
    (root / "resnet.pth").write_bytes(saved_bytes(torchvision_resnet_state()))
    (root / "mae.pth").write_bytes(saved_bytes({"model": official_mae_state()}))
    return root


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_states_the_original_experiment(preset):
    cfg = load_config(CaptionerRunConfig, f"configs/{preset}.yaml")
    for key, value in PRESETS[preset].items():
        assert get(cfg, key) == value, key


def tiny_sets(workdir, preset, run_name):
    """The overrides that shrink a preset to the tiny data and the stand-in weights (the architecture's)."""
    r = TINY_IMAGENET_RESNET
    sets = [f"run_dir={workdir / run_name}", f"data.processed_dir={workdir / 'data' / 'processed'}",
            "data.batch_size=50", "data.num_workers=0", "train.epochs=1", "train.compile=false",
            "train.precision=fp32", "eval.select_images=2", "eval.max_len=6", "data.max_caption_len=16"]
    if PRESETS[preset]["decoder_kind"] == "transformer":  # the preset's depth, at a width a CPU test affords
        sets += ["decoder.width=32", "decoder.heads=2"]
    extra = []
    if PRESETS[preset]["encoder_kind"] == "resnet":
        sets += [f"resnet.weights={workdir / 'resnet.pth'}", f"resnet.image_size={r.image_size}",
                 f"resnet.widths={r.widths}", f"resnet.blocks={r.blocks}", f"resnet.stem_width={r.stem_width}"]
    else:
        sets += ["vit_image_size=32"]
        extra = ["-p", str(workdir / "mae.pth")]
    return ["--config", f"configs/{preset}.yaml", "--no-progress", *extra, *[a for s in sets for a in ("--set", s)]]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_a_step_on_tiny_data(workdir, preset):
    """One step (all 50 training captions in one batch), with a tiny stand-in for the published weights and
    a narrow transformer decoder of the preset's depth."""
    history = train_captioner.main(tiny_sets(workdir, preset, preset))
    assert len(history) == 1 and history[0]["step"] == 1
    payload = load_checkpoint(workdir / preset / "checkpoint1.pt", kind="captioner")
    assert payload["pretrained"] is not None  # started from the (stand-in) published weights
    # the stored config keeps the preset's decoder, decoding and schedule settings
    for key, value in PRESETS[preset].items():
        if not key.startswith(("resnet.", "data.", "decoder.width")):
            node = payload["config"]
            for part in key.split("."):
                node = node[part]
            assert node == value, key


def test_show_attend_tell_preset_with_imagenet_weights_resumes_exactly(workdir):
    """Two epochs of one step, the encoder unfrozen in the second: straight, and resumed after the first."""
    name = "original_show_attend_tell_flickr8k"
    straight = train_captioner.main(tiny_sets(workdir, name, "sat") + ["--set", "train.epochs=2", "--set",
                                                                      "unfreeze.start_epoch=1"])
    assert straight[0]["trainable_groups"] == ["decoder"] and len(straight[1]["trainable_groups"]) == 4
    resumed = train_captioner.main(["-c", str(workdir / "sat" / "checkpoint1.pt"), "--no-progress",
                                    "--set", f"run_dir={workdir / 'sat_resumed'}"])
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in straight]
    a = load_checkpoint(workdir / "sat" / "checkpoint2.pt", kind="captioner")["model"]
    b = load_checkpoint(workdir / "sat_resumed" / "checkpoint2.pt", kind="captioner")["model"]
    assert all(torch.equal(b[k], t) for k, t in a.items())
