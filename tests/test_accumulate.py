"""Gradient accumulation (captioner/training/accumulate.py, train.accumulate_steps in the scripts)."""

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

import train_captioner
import train_encoder
import train_retrieval
from captioner.config import CaptionDecoderConfig, MAEConfig, ViTConfig
from captioner.data.transforms import EvalTransform
from captioner.models.captioner import build_captioner, caption_loss
from captioner.models.mae import MaskedAutoencoder
from captioner.models.vit import patchify
from captioner.text.tokenizers import PAD_ID
from captioner.training.accumulate import micro_batch_weights
from captioner.training.checkpoints import load_checkpoint
from test_train_encoder import args as encoder_args
from test_train_encoder import processed  # noqa: F401 (a fixture)
from tiny_checkpoints import tiny_processed_shapes

VIT = ViTConfig(image_size=16, patch_size=4, width=16, depth=1, heads=2)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def accumulated(model, micro_batches, weights, loss_fn):
    """The gradients of micro-batches, each loss weighted, summed in .grad as the scripts do it."""
    model.zero_grad()
    for batch, weight in zip(micro_batches, weights):
        (loss_fn(*batch) * weight).backward()
    return grads(model)


def test_captioner_micro_batches_equal_one_big_batch_in_float64():
    """Captions of different lengths: the big batch averages over all its tokens; the micro-batches' losses,
    weighted by their token counts, give the same gradient. Plain 1/K weights would not."""
    torch.manual_seed(0)
    model = build_captioner(VIT, CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0), 30, 12).double()
    images = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    tokens = torch.randint(4, 30, (8, 10))
    for row, length in enumerate([10, 3, 7, 4, 9, 2, 6, 5]):  # padding after each caption's end
        tokens[row, length:] = PAD_ID
    image_index = torch.arange(8) // 2

    def loss_fn(imgs, toks, index):
        return caption_loss(model(imgs, toks[:, :-1], src_index=index), toks[:, 1:], 0.1)

    big = accumulated(model, [(images, tokens, image_index)], [1.0], loss_fn)
    micro = [(images[:2], tokens[:4], image_index[:4]), (images[2:], tokens[4:], image_index[4:] - 2)]
    counts = [int((toks[:, 1:] != PAD_ID).sum()) for _, toks, _ in micro]
    assert counts[0] != counts[1]  # else plain 1/K weights would also be right
    summed = accumulated(model, micro, micro_batch_weights(counts), loss_fn)
    for name, g in big.items():
        torch.testing.assert_close(summed[name], g, rtol=1e-12, atol=1e-14, msg=name)
    naive = accumulated(model, micro, [0.5, 0.5], loss_fn)
    assert not all(torch.allclose(naive[n], g, rtol=1e-9, atol=1e-12) for n, g in big.items())


def test_mae_micro_batches_equal_one_big_batch_in_float64():
    torch.manual_seed(0)
    model = MaskedAutoencoder(VIT, MAEConfig(decoder_width=8, decoder_depth=1, decoder_heads=2)).double()
    images, noise = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.rand(6, 16)

    def loss_fn(x, n):
        return model(x, noise=n)[0]

    big = accumulated(model, [(images, noise)], [1.0], loss_fn)
    micro = [(images[:3], noise[:3]), (images[3:], noise[3:])]
    summed = accumulated(model, micro, micro_batch_weights([3, 3]), loss_fn)
    for name, g in big.items():
        torch.testing.assert_close(summed[name], g, rtol=1e-12, atol=1e-14, msg=name)


@pytest.fixture(scope="module")
def captioner_yaml(tmp_path_factory):
    root = tmp_path_factory.mktemp("accumulate")
    processed_dir = tiny_processed_shapes(root / "data")
    (root / "encoder.yaml").write_text(yaml.safe_dump({"model": {"image_size": 32, "patch_size": 8, "width": 16,
                                                                  "depth": 1, "heads": 2}}))
    config = {
        "encoder_config": str(root / "encoder.yaml"),
        "data": {"processed_dir": str(processed_dir), "batch_size": 10, "max_caption_len": 16},
        "decoder": {"width": 16, "depth": 1, "heads": 2, "dropout": 0.0},
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 1, "seed": 0, "precision": "fp32"},
        "eval": {"beam_size": 2, "max_len": 6, "select_images": 2},
    }
    (root / "captioner.yaml").write_text(yaml.safe_dump(config))
    return root


def train(root, name, *sets):
    return train_captioner.main(["--config", str(root / "captioner.yaml"), "--no-progress", "--set",
                                 f"run_dir={root / name}", *[a for s in sets for a in ("--set", s)]])


def test_captioner_script_accumulates_as_one_bigger_batch(captioner_yaml):
    """Two micro-batches of 2 images per step train the weights of one batch of 4 images per step (fp32)."""
    big = train(captioner_yaml, "big", "data.batch_size=20")
    small = train(captioner_yaml, "accumulated", "train.accumulate_steps=2")
    assert [h["step"] for h in small] == [h["step"] for h in big] == [2, 4]
    a = load_checkpoint(captioner_yaml / "big" / "checkpoint2.pt")["model"]
    b = load_checkpoint(captioner_yaml / "accumulated" / "checkpoint2.pt")["model"]
    for key, tensor in a.items():
        if key.endswith("k_proj.bias"):  # its true gradient is 0 (softmax ignores a shift shared by all keys):
            continue  # Adam turns the rounding noise left there into steps of full size, different in each run
        torch.testing.assert_close(b[key], tensor, rtol=1e-4, atol=1e-5, msg=key)


def test_captioner_script_resumes_exactly_with_accumulation(captioner_yaml):
    straight = train(captioner_yaml, "acc_straight", "train.accumulate_steps=2")
    resumed = train_captioner.main(["-c", str(captioner_yaml / "acc_straight" / "checkpoint1.pt"), "--no-progress",
                                    "--set", f"run_dir={captioner_yaml / 'acc_resumed'}"])
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in straight]
    a = load_checkpoint(captioner_yaml / "acc_straight" / "checkpoint2.pt")["model"]
    b = load_checkpoint(captioner_yaml / "acc_resumed" / "checkpoint2.pt")["model"]
    assert all(torch.equal(b[k], t) for k, t in a.items())


def test_encoder_script_resumes_exactly_with_accumulation(processed, tmp_path):  # noqa: F811
    """3 batches of 8 a epoch, 2 per step: 1 step an epoch, the third batch left out."""
    history = train_encoder.main(encoder_args(processed, tmp_path / "straight", "train.accumulate_steps=2"))
    assert [h["step"] for h in history] == [1, 2]
    resumed = train_encoder.main(["-c", str(tmp_path / "straight" / "checkpoint1.pt"), "--device", "cpu",
                                  "--no-progress", "--set", f"run_dir={tmp_path / 'resumed'}"])
    assert resumed[1]["train_loss"] == history[1]["train_loss"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoint2.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint2.pt")["model"]
    assert all(torch.equal(b[k], t) for k, t in a.items())


def test_encoder_script_accumulates_as_one_bigger_batch(processed, tmp_path, monkeypatch):  # noqa: F811
    """The gradient of train_encoder.py's first step: 2 micro-batches of 8 images against one batch of 16, with
    crops, flips and masks made independent of the batching (a mask ranked by each image's own pixels)."""
    def batching_free_mae_loss(model, transform, images, generator, num_patches):
        x = EvalTransform(16)(images)  # (B, 3, 16, 16): no random crop or flip
        return model(x, noise=patchify(x, 4).sum(-1))[0]  # noise (B, L) from each image alone

    monkeypatch.setattr(train_encoder, "mae_loss", batching_free_mae_loss)
    first_grads = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: first_grads.append(
        [p.grad.clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]))
    try:
        for name, sets in [("big", ["data.batch_size=16"]), ("accumulated", ["train.accumulate_steps=2"])]:
            train_encoder.main(encoder_args(processed, tmp_path / name, "train.epochs=1", "train.grad_clip=0", *sets))
    finally:
        handle.remove()
    big, accumulated = first_grads[0], first_grads[1]  # each run has one step (3 batches of 8: 1 window of 2)
    assert len(first_grads) == 2 and len(big) == len(accumulated)
    for a, b in zip(accumulated, big):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_retrieval_refuses_accumulation():
    with pytest.raises(ValueError, match="train.accumulate_steps must be 1 here"):
        train_retrieval.main(["--no-progress", "--set", "train.accumulate_steps=2"])
