"""train_captioner.py and captioner/models/captioner.py on a tiny processed shapes set and tiny models."""

import json
import math
import shutil

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

import process_coco
import train_captioner
from captioner.config import (
    CaptionDecoderConfig,
    ConfigError,
    EncoderRunConfig,
    MAEConfig,
    ViTConfig,
    config_to_dict,
)
from captioner.data.loaders import image_captions_loader
from captioner.data.transforms import EvalTransform
from captioner.evaluation.captioning import caption_images
from captioner.models.caption_decoder import CaptionDecoder
from captioner.models.captioner import build_captioner, caption_loss, teacher_forcing_loss
from captioner.models.mae import MaskedAutoencoder
from captioner.text.tokenizers import EOS_ID, PAD_ID, SOS_ID
from captioner.training.checkpoints import CheckpointError, load_captioner, load_checkpoint, save_checkpoint

VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=2, heads=2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A processed 10 + 4 image shapes set, a tiny MAE checkpoint, an encoder YAML and a captioner YAML."""
    root = tmp_path_factory.mktemp("captioner")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "10", "--n-val", "4", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VIT, MAEConfig(decoder_width=16, decoder_depth=1, decoder_heads=2))
    encoder_cfg = config_to_dict(EncoderRunConfig(model=VIT))
    save_checkpoint(root / "mae.pt", {"kind": "mae", "epoch": 1, "config": encoder_cfg, "model": mae.state_dict()})
    (root / "encoder.yaml").write_text(yaml.safe_dump({"model": config_to_dict(VIT)}))
    config = {
        "run_dir": str(root / "run"),
        "encoder_config": str(root / "encoder.yaml"),
        "data": {"processed_dir": str(root / "data" / "processed"), "batch_size": 10, "max_caption_len": 16},
        "decoder": {"width": 16, "depth": 1, "heads": 2, "dropout": 0.1},
        "unfreeze": {"start_epoch": 1, "decay": 0.5},
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 2, "seed": 0},
        "eval": {"beam_size": 2, "max_len": 10, "select_images": 3},
        "label_smoothing": 0.1,
    }
    (root / "captioner.yaml").write_text(yaml.safe_dump(config))
    return root


def run(workdir, run_name, *extra):
    return train_captioner.main(["--config", str(workdir / "captioner.yaml"), "--set", f"run_dir={workdir / run_name}",
                                 "--no-progress", *extra])


@pytest.fixture(scope="module")
def pretrained_run(workdir):
    """Two epochs from the MAE checkpoint: the encoder is frozen in epoch 0, its top layer trains in epoch 1."""
    history = run(workdir, "straight", "-p", str(workdir / "mae.pt"))
    return workdir / "straight", history


def comparable(history):
    """History without the wall-clock fields."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "captions_per_s")} for h in history]


def test_exact_resume(workdir, pretrained_run):
    run_dir, straight = pretrained_run
    resumed = train_captioner.main(["-c", str(run_dir / "checkpoint1.pt"), "--set", f"run_dir={workdir / 'resumed'}",
                                    "--no-progress"])
    assert len(resumed) == 2
    assert comparable(resumed) == comparable(straight)
    a = load_checkpoint(run_dir / "checkpoint2.pt", kind="captioner")
    b = load_checkpoint(workdir / "resumed" / "checkpoint2.pt", kind="captioner")
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_augmentation_ramp_reaches_training_batches_only_and_resumes_exactly(workdir, pretrained_run, monkeypatch):
    calls = []  # (epoch's strength, images, checksum of the augmented batch) of every augment_batch call
    real = train_captioner.augment_batch

    def recording(images, strength, cfg, generator):
        out = real(images, strength, cfg, generator)
        calls.append((strength, images.shape[0], int(out.long().sum())))
        return out

    monkeypatch.setattr(train_captioner, "augment_batch", recording)
    straight = run(workdir, "augmented", "-p", str(workdir / "mae.pt"), "--set", "augment.enabled=true",
                   "--set", "augment.ramp_epochs=1")
    steps = straight[0]["step"]
    # one call per training step, at exp(-5 (1 - epoch / 1)^2): none for the validation loss or captions
    assert [strength for strength, *_ in calls] == [pytest.approx(math.exp(-5))] * steps + [1.0] * steps
    assert [h["augment_strength"] for h in straight] == [pytest.approx(math.exp(-5)), 1.0]
    assert "augment_strength" not in pretrained_run[1][0]  # off by default
    assert straight[1]["train_loss"] != pretrained_run[1][1]["train_loss"]  # the augmentation changed training
    epoch2 = calls[steps:]
    calls.clear()
    resumed = train_captioner.main(["-c", str(workdir / "augmented" / "checkpoint1.pt"), "--set",
                                    f"run_dir={workdir / 'augmented_resumed'}", "--no-progress"])
    assert calls == epoch2  # the same batches, augmented the same way
    assert comparable(resumed) == comparable(straight)
    a = load_checkpoint(workdir / "augmented" / "checkpoint2.pt", kind="captioner")["model"]
    b = load_checkpoint(workdir / "augmented_resumed" / "checkpoint2.pt", kind="captioner")["model"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_pretrained_encoder_weights_are_loaded_and_unfrozen_on_schedule(workdir, pretrained_run):
    run_dir, history = pretrained_run
    mae = load_checkpoint(workdir / "mae.pt", kind="mae")["model"]
    encoder = {k: v for k, v in mae.items() if k.startswith("encoder.")}
    epoch1 = load_checkpoint(run_dir / "checkpoint1.pt", kind="captioner")["model"]
    epoch2 = load_checkpoint(run_dir / "checkpoint2.pt", kind="captioner")["model"]
    for name, tensor in encoder.items():
        assert torch.equal(epoch1[name], tensor), name  # loaded, and frozen in epoch 0
    top = "encoder.transformer.layers.1.attn.q_proj.weight"
    assert not torch.equal(epoch2[top], encoder[top])  # the top layer trained in epoch 1
    for name in ("encoder.transformer.layers.0.attn.q_proj.weight", "encoder.patch_embed.proj.weight"):
        assert torch.equal(epoch2[name], encoder[name]), name  # the layers below did not
    assert history[0]["trainable_groups"] == ["decoder"]
    assert history[1]["trainable_groups"] == ["encoder_layer1", "decoder"]
    assert not torch.equal(epoch1["decoder.lm_head.weight"], epoch2["decoder.lm_head.weight"])


def test_groups_per_epoch_reaches_the_unfreeze_schedule(workdir):
    history = run(workdir, "two_per_epoch", "-p", str(workdir / "mae.pt"), "--set", "unfreeze.groups_per_epoch=2",
                  "--set", "eval.select_images=1")
    assert history[0]["trainable_groups"] == ["decoder"]
    assert history[1]["trainable_groups"] == ["encoder_layer0", "encoder_layer1", "decoder"]


def test_group_by_length_reaches_the_training_loader_only(workdir, monkeypatch):
    seen = {}
    real = train_captioner.caption_loader

    def spy(processed_dir, split, *args, **kwargs):
        loader = real(processed_dir, split, *args, **kwargs)
        seen[split] = loader.batch_sampler.lengths
        return loader

    monkeypatch.setattr(train_captioner, "caption_loader", spy)
    run(workdir, "by_length", "--set", "data.group_by_length=true", "--set", "train.epochs=1",
        "--set", "eval.select_images=1")
    assert seen["train"] is not None and seen["val"] is None  # validation keeps its fixed order


def test_checkpoint_is_self_contained_and_best_is_kept(workdir, pretrained_run):
    run_dir, history = pretrained_run
    model, tokenizer, payload = load_captioner(run_dir / "checkpoint2.pt")
    assert payload["vit"] == config_to_dict(VIT)
    assert payload["tokenizer"] == (workdir / "data" / "processed" / "tokenizer.txt").read_text()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, payload["model"][name]), name
    assert tokenizer.decode(tokenizer.encode("a red circle")) == "a red circle"
    assert load_captioner(run_dir / "checkpoint2.pt", max_len=40)[0].decoder.max_len == 40  # longer decoding

    loader = image_captions_loader(workdir / "data" / "processed", "val", 3)
    captions = caption_images(model, loader, tokenizer, EvalTransform(32), torch.device("cpu"), "fp32",
                              beam_size=2, alpha=0.6, max_len=10, limit=4, progress=False)
    assert list(captions) == loader.dataset.image_ids[:4].tolist()
    assert all(isinstance(c, str) for c in captions.values())

    best_epoch = max(range(len(history)), key=lambda i: (history[i]["val_scores"]["CIDEr-D"], -i)) + 1
    assert load_checkpoint(run_dir / "checkpoint_best.pt", kind="captioner")["epoch"] == best_epoch
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "selection" in r] == [1, 2]
    for record in [r for r in log if "selection" in r]:  # every score of the 3 images of eval.select_images, the truth score too (shapes)
        assert set(record["val_scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D",
                                             "captions_true", "n_images", "n_empty"}
        assert record["val_scores"]["n_images"] == 3
        assert record["select_by"] == "CIDEr-D" and record["selection"] == record["val_scores"]["CIDEr-D"]


def test_from_scratch_takes_the_architecture_from_the_encoder_yaml(workdir):
    history = run(workdir, "scratch", "--set", "train.epochs=1")
    payload = load_checkpoint(workdir / "scratch" / "checkpoint1.pt", kind="captioner")
    assert payload["vit"] == config_to_dict(VIT)
    assert payload["pretrained"] is None
    assert history[0]["trainable_groups"] == ["patch_embed", "encoder_layer0", "encoder_layer1", "decoder"]


def test_wrong_checkpoint_kinds_are_clear_errors(workdir, pretrained_run):
    run_dir, _ = pretrained_run
    with pytest.raises(CheckpointError, match="'captioner' checkpoint; a pretrained ViT encoder comes from a 'mae'"):
        run(workdir, "wrong_p", "-p", str(run_dir / "checkpoint1.pt"))
    with pytest.raises(CheckpointError, match="'mae' checkpoint, but a 'captioner' checkpoint is needed"):
        run(workdir, "wrong_c", "-c", str(workdir / "mae.pt"))
    with pytest.raises(ValueError, match="not both"):
        run(workdir, "both", "-c", str(run_dir / "checkpoint1.pt"), "-p", str(workdir / "mae.pt"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint or weights file, nor named weights"):
        run(workdir, "missing", "-p", str(workdir / "nope.pt"))
    with pytest.raises(ValueError, match="data.on_device is a train_encoder.py setting"):
        run(workdir, "on_device", "--set", "data.on_device=true")


# ---- the script's wiring: label smoothing, early stopping, gradient clipping ----------------------

SCRIPTED_CIDER = [0.1, 0.3, 0.2, 0.25, 0.9, 0.95]  # best after epoch 2, then two epochs without a better one
SCRIPTED_BLEU = [0.5, 0.1, 0.6, 0.2, 0.0, 0.0]  # disagrees: epoch 3 would be BLEU-4's pick


@pytest.fixture(scope="module")
def instrumented_run(workdir):
    """A from-scratch run with label_smoothing=0.25, grad_clip=0.01, patience=2 and up to 6 epochs, with
    CIDEr-D and BLEU-4 scripted by epoch; records every caption_loss call and the gradient norm at every optimiser
    step (whatever does the clipping, the gradients the optimiser sees must have norm <= grad_clip)."""
    real_caption_loss = train_captioner.caption_loss
    loss_calls, step_norms, scripted = [], [], iter(zip(SCRIPTED_CIDER, SCRIPTED_BLEU))

    def recording_loss(logits, targets, label_smoothing=None):
        loss_calls.append((torch.is_grad_enabled(), label_smoothing))  # grad enabled: a training step
        return real_caption_loss(logits, targets, label_smoothing or 0.0)

    def grad_norm_before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        step_norms.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_captioner, "caption_loss", recording_loss)
        mp.setattr(train_captioner, "evaluate_captions",
                   lambda references, hypotheses: dict(zip(("CIDEr-D", "BLEU-4"), next(scripted)), n_images=1))
        handle = register_optimizer_step_pre_hook(grad_norm_before_step)
        try:
            history = run(workdir, "instrumented", "--set", "label_smoothing=0.25", "--set", "train.grad_clip=0.01",
                          "--set", "eval.patience=2", "--set", "train.epochs=6")
        finally:
            handle.remove()
    return history, loss_calls, step_norms


def test_label_smoothing_reaches_the_training_and_the_validation_loss(instrumented_run):
    history, loss_calls, _ = instrumented_run
    training = [smoothing for grad, smoothing in loss_calls if grad]
    validation = [smoothing for grad, smoothing in loss_calls if not grad]
    assert len(training) == history[-1]["step"]  # one loss per optimisation step
    assert validation and len(validation) % len(history) == 0  # the same batches after every epoch
    assert set(training) == set(validation) == {0.25}  # the configured value, not the default 0.1 or none


def test_patience_stops_after_that_many_epochs_without_a_better_score(instrumented_run):
    history, _, _ = instrumented_run
    # CIDEr-D 0.1, 0.3 (best), 0.2, 0.25: two epochs without a better score = patience, so the fifth
    # epoch never starts (the scripted 0.9 would have been the best); without patience 6 epochs run.
    assert [h["selection"] for h in history] == SCRIPTED_CIDER[:4]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_checkpoint_best_follows_the_configured_criterion(workdir, instrumented_run):
    # CIDEr-D (the default) picked epoch 2; BLEU-4 would have picked epoch 3
    assert load_checkpoint(workdir / "instrumented" / "checkpoint_best.pt", kind="captioner")["epoch"] == 2
    scripted = iter(zip(SCRIPTED_CIDER, SCRIPTED_BLEU))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_captioner, "evaluate_captions",
                   lambda references, hypotheses: dict(zip(("CIDEr-D", "BLEU-4"), next(scripted)), n_images=1))
        history = run(workdir, "by_bleu", "--set", "eval.select_by=BLEU-4", "--set", "train.epochs=4",
                      "--set", "eval.select_images=1")
    assert [h["selection"] for h in history] == SCRIPTED_BLEU[:4]
    assert load_checkpoint(workdir / "by_bleu" / "checkpoint_best.pt", kind="captioner")["epoch"] == 3


def test_captions_true_selection_needs_the_shapes_scenes(workdir, tmp_path):
    history = run(workdir, "by_truth", "--set", "eval.select_by=captions_true", "--set", "train.epochs=1",
                  "--set", "eval.select_images=0")
    assert history[0]["selection"] == history[0]["val_scores"]["captions_true"]
    assert history[0]["val_scores"]["n_images"] == 4  # 0: all the validation images
    not_shapes = tmp_path / "processed"
    shutil.copytree(workdir / "data" / "processed", not_shapes)
    meta = json.loads((not_shapes / "meta.json").read_text())
    (not_shapes / "meta.json").write_text(json.dumps({**meta, "source": "coco"}))
    with pytest.raises(ConfigError, match="captions_true needs the shapes data"):
        run(workdir, "by_truth_coco", "--set", "eval.select_by=captions_true", "--set", f"data.processed_dir={not_shapes}")


def test_gradients_are_clipped_to_train_grad_clip(instrumented_run):
    history, _, step_norms = instrumented_run
    assert len(step_norms) == history[-1]["step"]
    # clip_grad_norm_ scales by max_norm / (norm + 1e-6): the norm lands just below 0.01. Unclipped,
    # or clipped to another value, the cross-entropy gradients of a fresh model are far larger.
    assert max(step_norms) <= 0.01 * (1 + 1e-5)
    assert min(step_norms) >= 0.01 * (1 - 1e-3)


def test_decoder_input_is_the_scaled_embedding_plus_the_sinusoidal_position():
    """x = E[token] * sqrt(d) + PE[position], PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...):
    written out by hand and compared with what enters the decoder's transformer."""
    torch.manual_seed(0)
    d, vocab = 8, 11
    decoder = CaptionDecoder(vocab, d, n_layers=1, n_heads=2, d_ff=16, max_len=6).eval()
    tokens = torch.tensor([[SOS_ID, 5, 9, EOS_ID], [SOS_ID, 7, PAD_ID, PAD_ID]])
    seen = []
    decoder.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        decoder(tokens, torch.randn(2, 3, d))
    weight = decoder.token_embedding.weight.detach()
    expected = torch.zeros(2, 4, d)
    for b in range(2):
        for p in range(4):
            for i in range(d // 2):
                angle = p / 10000 ** (2 * i / d)
                expected[b, p, 2 * i] = weight[tokens[b, p], 2 * i] * math.sqrt(d) + math.sin(angle)
                expected[b, p, 2 * i + 1] = weight[tokens[b, p], 2 * i + 1] * math.sqrt(d) + math.cos(angle)
    assert weight.std().item() == pytest.approx(d ** -0.5, rel=0.3)  # unit scale only after the sqrt(d)
    torch.testing.assert_close(seen[0], expected, rtol=1e-6, atol=1e-6)


def test_epochs_since_best():
    assert train_captioner.epochs_since_best([]) == 0
    assert train_captioner.epochs_since_best([{"selection": 0.1}, {"selection": 0.3}]) == 0
    assert train_captioner.epochs_since_best([{"selection": 0.3}, {"selection": 0.3}, {"selection": 0.2}]) == 2


def test_pad_targets_do_not_contribute_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[5, 6, EOS_ID, PAD_ID], [4, EOS_ID, PAD_ID, PAD_ID]])
    loss = caption_loss(logits, targets, label_smoothing=0.1)
    changed = logits.clone()
    changed[targets == PAD_ID] = torch.randn(3, 7) * 100  # anything at pad positions
    assert torch.equal(caption_loss(changed, targets, label_smoothing=0.1), loss)
    real = targets != PAD_ID
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real], label_smoothing=0.1)
    assert torch.allclose(loss, expected)  # the mean over the 5 real targets only


def test_overfitting_a_handful_of_pairs():
    """Four images with four captions: the loss goes to ~0 and greedy decoding reproduces every caption."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=8, width=32, depth=1, heads=2)
    model = build_captioner(vit, CaptionDecoderConfig(width=32, depth=2, heads=2, dropout=0.0), 16, 10)
    images = torch.randn(4, 3, 16, 16)
    captions = [[4, 5, 6, EOS_ID], [7, 8, 9, 10, EOS_ID], [5, 4, 11, 12, 13, EOS_ID], [9, 9, 14, EOS_ID]]
    tokens = torch.full((4, 7), PAD_ID)
    tokens[:, 0] = SOS_ID
    for i, caption in enumerate(captions):
        tokens[i, 1 : len(caption) + 1] = torch.tensor(caption)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = teacher_forcing_loss(model, images, tokens, torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    generated, _ = model.eval().generate(images, SOS_ID, EOS_ID, PAD_ID, max_len=8)
    for row, caption in zip(generated.tolist(), captions):
        assert row[: len(caption)] == caption


# ---- the script's own step: the teacher-forcing shift, the unfreezing multipliers, the extra loss terms -----

@pytest.fixture(scope="module")
def wired_run(workdir):
    """Two epochs from the MAE checkpoint with a Show-Attend-Tell decoder, eos_suppression=0.3 and
    lstm.attention_reg=0.05, observed inside train_captioner.main: every decoder call's input tokens, every
    loss term with its arguments, the loss the step logs, and each parameter group's lr at every step."""
    seen = {"decoder_input": None, "losses": [], "eos": [], "attention": [], "logged": [], "group_lrs": []}
    real_build, real_meter = train_captioner.captioner_for_config, train_captioner.LossMeter
    real_ce, real_eos = train_captioner.caption_loss, train_captioner.eos_suppression_loss
    real_penalty = train_captioner.doubly_stochastic_penalty

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.decoder.register_forward_pre_hook(
            lambda module, args: seen.__setitem__("decoder_input", args[0].detach().clone()))
        return model

    def ce(logits, targets, label_smoothing=0.0):
        value = real_ce(logits, targets, label_smoothing)
        seen["losses"].append((torch.is_grad_enabled(), seen["decoder_input"], targets.detach().clone(), value.item()))
        return value

    def eos(logits, targets):
        value = real_eos(logits, targets)
        seen["eos"].append(value.item())
        return value

    def penalty(alphas, real):
        value = real_penalty(alphas, real)
        seen["attention"].append((real.clone(), value.item()))
        return value

    class Meter(real_meter):
        def add(self, loss, step, items):
            seen["logged"].append(loss.item())
            super().add(loss, step, items)

    def lrs_before_step(optimizer, args, kwargs):
        seen["group_lrs"].append({group["name"]: group["lr"] for group in optimizer.param_groups})

    with pytest.MonkeyPatch.context() as mp:
        for name, spy in [("captioner_for_config", build), ("caption_loss", ce), ("eos_suppression_loss", eos),
                          ("doubly_stochastic_penalty", penalty), ("LossMeter", Meter)]:
            mp.setattr(train_captioner, name, spy)
        handle = register_optimizer_step_pre_hook(lrs_before_step)
        try:
            history = run(workdir, "wired", "-p", str(workdir / "mae.pt"), "--set", "decoder_kind=attention-lstm",
                          "--set", "lstm.embed_dim=8", "--set", "lstm.hidden=16", "--set", "lstm.attention_dim=8",
                          "--set", "eos_suppression=0.3", "--set", "lstm.attention_reg=0.05",
                          "--set", "eval.select_images=1")
        finally:
            handle.remove()
    return history, seen


def test_the_decoder_reads_the_caption_shifted_right_and_predicts_it_shifted_left(wired_run):
    history, seen = wired_run
    training = [(x, y) for grad, x, y, _ in seen["losses"] if grad]
    validation = [(x, y) for grad, x, y, _ in seen["losses"] if not grad]
    assert len(training) == history[-1]["step"] and validation
    for decoder_input, targets in training + validation:
        assert decoder_input.shape == targets.shape
        assert (decoder_input[:, 0] == SOS_ID).all()  # it reads <sos> first ...
        assert not (targets == SOS_ID).any()  # ... and never has to predict it
        assert torch.equal(decoder_input[:, 1:], targets[:, :-1])  # target t is input t + 1
        assert ((targets == EOS_ID).sum(1) == 1).all()  # every caption's end is a target
        assert (decoder_input[:, 1:] != EOS_ID).any()  # real words, not a copy of padding


def test_the_loss_is_cross_entropy_plus_the_weighted_eos_and_attention_terms(wired_run):
    history, seen = wired_run
    ce = [value for grad, _, _, value in seen["losses"] if grad]
    attention = [value for _, value in seen["attention"]]
    assert len(ce) == len(seen["eos"]) == len(attention) == len(seen["logged"]) == history[-1]["step"]
    for logged, c, e, a in zip(seen["logged"], ce, seen["eos"], attention):
        assert e > 0.0 and a > 0.0
        assert logged == pytest.approx(c + 0.3 * e + 0.05 * a, rel=1e-5)


def test_the_doubly_stochastic_term_counts_the_real_steps_only(wired_run):
    _, seen = wired_run
    targets = [y for grad, _, y, _ in seen["losses"] if grad]
    assert any((y == PAD_ID).any() for y in targets)  # captions of several lengths: padding to leave out
    for (real, _), y in zip(seen["attention"], targets):
        assert torch.equal(real, y != PAD_ID)


def test_each_unfrozen_group_trains_at_its_multiplier_of_the_learning_rate(wired_run):
    history, seen = wired_run
    # unfreeze.start_epoch=1, decay=0.5, 2 encoder layers: epoch 0 trains the decoder alone; epoch 1 also the
    # top layer (encoder_layer1) at 0.5 x the decoder's rate; the layer below and the patch embedding stay at 0
    steps_per_epoch = history[0]["step"]
    assert len(seen["group_lrs"]) == 2 * steps_per_epoch
    for step, lrs in enumerate(seen["group_lrs"]):
        top = 0.5 if step >= steps_per_epoch else 0.0
        assert lrs["decoder"] > 0
        assert lrs["encoder_layer1"] == pytest.approx(top * lrs["decoder"], rel=1e-12)
        assert lrs["encoder_layer0"] == lrs["patch_embed"] == 0.0
