"""Contrastive pretraining, then captioning: train_captioner.py -p takes a retrieval checkpoint's image tower.

A tiny retrieval run (train_retrieval.py, 1 epoch) on a tiny shapes set, then captioners started from it;
the expected weights are read from the retrieval checkpoint file, not through the loader under test.
"""

import pytest
import torch
import yaml

import evaluate
import train_captioner
import train_retrieval
from captioner.config import ConfigError, ViTConfig, config_to_dict
from captioner.training.checkpoints import CheckpointError, encoder_from_checkpoint, load_checkpoint, save_checkpoint
from tiny_checkpoints import tiny_processed_shapes

# Not the ViTConfig defaults: the mean, std and image size must come from the retrieval checkpoint
VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=2, heads=2, patch_overlap=2,
                mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny shapes set, a 1-epoch retrieval run on it, and a captioner YAML whose encoder YAML differs."""
    root = tmp_path_factory.mktemp("contrastive_init")
    processed = tiny_processed_shapes(root / "data")
    (root / "encoder.yaml").write_text(yaml.safe_dump({"model": config_to_dict(VIT)}))
    (root / "other_encoder.yaml").write_text(yaml.safe_dump({"model": {"image_size": 32, "width": 24, "heads": 2,
                                                                       "depth": 3}}))
    retrieval = {
        "run_dir": str(root / "retrieval"), "encoder_config": str(root / "encoder.yaml"),
        "data": {"processed_dir": str(processed), "batch_size": 8, "max_caption_len": 24},
        "text": {"width": 16, "depth": 1, "heads": 2},
        "contrastive": {"embed_dim": 8},
        "train": {"epochs": 1, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 2},
        "eval": {"picture_images": 2, "top_k": 2},
    }
    (root / "retrieval.yaml").write_text(yaml.safe_dump(retrieval))
    train_retrieval.main(["--config", str(root / "retrieval.yaml"), "--no-progress"])
    captioner = {
        "encoder_config": str(root / "other_encoder.yaml"),  # read only without -p
        "data": {"processed_dir": str(processed), "batch_size": 10, "max_caption_len": 16},
        "decoder": {"width": 16, "depth": 1, "heads": 2},
        "unfreeze": {"start_epoch": 1, "decay": 0.5},
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 2, "seed": 0},
        "eval": {"beam_size": 2, "max_len": 8, "select_images": 2},
    }
    (root / "captioner.yaml").write_text(yaml.safe_dump(captioner))
    return root


def run(workdir, name, *extra):
    return train_captioner.main(["--config", str(workdir / "captioner.yaml"), "--set", f"run_dir={workdir / name}",
                                 "--no-progress", *extra])


def tower(path):
    """The image tower's weights as the retrieval checkpoint file holds them, under the captioner's names."""
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {"encoder." + k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}


@pytest.fixture(scope="module")
def from_retrieval(workdir):
    """Two captioner epochs from the retrieval run folder (its latest checkpoint): frozen, then the top layer."""
    history = run(workdir, "captioner", "-p", str(workdir / "retrieval"))
    return workdir / "captioner", history


def test_the_encoder_is_the_retrieval_image_tower_and_unfreezes_on_schedule(workdir, from_retrieval):
    run_dir, history = from_retrieval
    expected = tower(workdir / "retrieval" / "checkpoint1.pt")
    assert len(expected) > 10
    epoch1 = load_checkpoint(run_dir / "checkpoint1.pt", kind="captioner")
    epoch2 = load_checkpoint(run_dir / "checkpoint2.pt", kind="captioner")["model"]
    encoder_keys = {k for k in epoch1["model"] if k.startswith("encoder.")}
    assert encoder_keys == set(expected)  # every tower weight, nothing else: the projection head is dropped
    for name, tensor in expected.items():
        assert torch.equal(epoch1["model"][name], tensor), name  # loaded, and frozen in epoch 0
    assert not any("projection" in k or "text_encoder" in k for k in epoch1["model"])
    top = "encoder.transformer.layers.1.attn.q_proj.weight"
    assert not torch.equal(epoch2[top], expected[top])  # the top layer trained in epoch 1
    for name in ("encoder.transformer.layers.0.attn.q_proj.weight", "encoder.patch_embed.proj.weight"):
        assert torch.equal(epoch2[name], expected[name]), name  # the layers below did not
    assert [h["trainable_groups"] for h in history] == [["decoder"], ["encoder_layer1", "decoder"]]
    # the architecture, the preprocessing (mean, std) and the image size are the retrieval run's
    assert epoch1["vit"] == config_to_dict(VIT)
    assert epoch1["pretrained"] == str(workdir / "retrieval")


def test_the_captioner_evaluates_and_resumes(workdir, from_retrieval):
    run_dir, history = from_retrieval
    scores = evaluate.main(["-c", str(run_dir / "checkpoint_best.pt"), "--no-progress"])
    assert 0.0 <= scores["model"]["BLEU-4"] <= 1.0
    resumed = train_captioner.main(["-c", str(run_dir / "checkpoint1.pt"), "--set",
                                    f"run_dir={workdir / 'resumed'}", "--no-progress"])
    assert resumed[1]["train_loss"] == history[1]["train_loss"]
    assert resumed[1]["trainable_groups"] == ["encoder_layer1", "decoder"]  # still the pretrained schedule


def test_encoder_from_checkpoint_reads_both_kinds(workdir):
    payload = load_checkpoint(workdir / "retrieval" / "checkpoint1.pt", kind="retrieval")
    encoder = encoder_from_checkpoint(payload, "r.pt")
    assert encoder.config == VIT
    state = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    assert state.keys() == tower(workdir / "retrieval" / "checkpoint1.pt").keys()


def test_wrong_kinds_and_mismatched_checkpoints_are_clear_errors(workdir, from_retrieval, tmp_path):
    run_dir, _ = from_retrieval
    with pytest.raises(CheckpointError, match=r"'captioner' checkpoint; a pretrained ViT encoder comes from a "
                                              r"'mae' or 'retrieval' checkpoint"):
        run(workdir, "wrong_kind", "-p", str(run_dir / "checkpoint1.pt"))
    payload = load_checkpoint(workdir / "retrieval" / "checkpoint1.pt")
    wider = dict(payload, vit={**payload["vit"], "width": 32, "heads": 4})  # the architecture the weights do not have
    save_checkpoint(tmp_path / "wider.pt", wider)
    with pytest.raises(CheckpointError, match=r"wider.pt: the weights do not fit this model"):
        run(workdir, "wider", "-p", str(tmp_path / "wider.pt"))
    save_checkpoint(tmp_path / "no_vit.pt", {k: v for k, v in payload.items() if k != "vit"})
    with pytest.raises(CheckpointError, match=r"no_vit.pt: the 'retrieval' checkpoint lacks its 'vit' architecture"):
        run(workdir, "no_vit", "-p", str(tmp_path / "no_vit.pt"))
    save_checkpoint(tmp_path / "no_tower.pt", dict(payload, model={k: v for k, v in payload["model"].items()
                                                                   if not k.startswith("image_encoder.")}))
    with pytest.raises(CheckpointError, match=r"no_tower.pt: the checkpoint holds no 'image_encoder.' weights"):
        run(workdir, "no_tower", "-p", str(tmp_path / "no_tower.pt"))
    with pytest.raises(CheckpointError, match=r"'retrieval' checkpoint was trained at 32 pixels; another size"):
        run(workdir, "resized", "-p", str(workdir / "retrieval"), "--set", "vit_image_size=64")
    with pytest.raises(ConfigError, match=r"encoder_kind: -p starts from a pretrained ViT encoder.*'resnet'"):
        run(workdir, "resnet", "-p", str(workdir / "retrieval"), "--set", "encoder_kind=resnet")
