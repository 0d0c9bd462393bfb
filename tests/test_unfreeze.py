"""Layer-wise unfreezing: which parameters train, and at what lr scale, in every epoch."""

import io

import pytest
import torch

from captioner.captioning import build_captioner, teacher_forcing_loss
from captioner.config import CaptionDecoderConfig, UnfreezeConfig, ViTConfig
from captioner.training import make_optimizer
from captioner.unfreeze import (
    GroupState,
    apply_unfreeze,
    group_names,
    unfreeze_groups,
    unfreeze_param_groups,
    unfreeze_schedule,
)

VIT = ViTConfig(image_size=16, patch_size=8, width=16, depth=3, heads=2)
DECODER = CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0)
CFG = UnfreezeConfig(start_epoch=1, decay=0.5)


def tiny_captioner():
    torch.manual_seed(0)
    return build_captioner(VIT, DECODER, vocab_size=12, max_len=8)


def make_opt(model):
    return make_optimizer(unfreeze_param_groups(model, weight_decay=0.1), 1e-2, (0.9, 0.95), torch.device("cpu"))


# what each epoch should look like for depth 3, start_epoch 1, decay 0.5 (scale 0 = frozen)
EXPECTED = {
    0: {"patch_embed": 0, "encoder_layer0": 0, "encoder_layer1": 0, "encoder_layer2": 0, "decoder": 1},
    1: {"patch_embed": 0, "encoder_layer0": 0, "encoder_layer1": 0, "encoder_layer2": 0.5, "decoder": 1},
    2: {"patch_embed": 0, "encoder_layer0": 0, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
    3: {"patch_embed": 0, "encoder_layer0": 0.125, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
    4: {"patch_embed": 0.0625, "encoder_layer0": 0.125, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
    9: {"patch_embed": 0.0625, "encoder_layer0": 0.125, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
}


def owner_of(name: str) -> str:
    """The group a parameter name should belong to, spelled out independently of unfreeze_groups."""
    if name.startswith("decoder."):
        return "decoder"
    if name.startswith("encoder.transformer.layers."):
        return f"encoder_layer{name.split('.')[3]}"
    if name.startswith("encoder.transformer.norm."):
        return f"encoder_layer{VIT.depth - 1}"
    return "patch_embed"


@pytest.mark.parametrize("epoch", sorted(EXPECTED))
def test_schedule_table(epoch):
    states = unfreeze_schedule(VIT.depth, epoch, CFG.start_epoch, CFG.decay)
    assert list(states) == group_names(VIT.depth)
    for name, scale in EXPECTED[epoch].items():
        assert states[name] == GroupState(scale > 0, scale), (epoch, name)


def test_start_epoch_zero_unfreezes_the_top_layer_at_once():
    states = unfreeze_schedule(2, 0, start_epoch=0, decay=0.7)
    assert states["encoder_layer1"] == GroupState(True, 0.7)
    assert not states["encoder_layer0"].trainable


def test_groups_cover_every_parameter_once():
    model = tiny_captioner()
    groups = unfreeze_groups(model)
    seen = [id(p) for named in groups.values() for _, p in named]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    for group, named in groups.items():
        for name, _ in named:
            assert owner_of(name) == group, name
    assert any(name.startswith("encoder.patch_embed.") for name, _ in groups["patch_embed"])


@pytest.mark.parametrize("epoch", sorted(EXPECTED))
def test_apply_sets_requires_grad_and_lr_scale(epoch):
    model = tiny_captioner()
    opt = make_opt(model)
    apply_unfreeze(model, opt, epoch, CFG)
    for name, p in model.named_parameters():
        assert p.requires_grad == (EXPECTED[epoch][owner_of(name)] > 0), (epoch, name)
    for group in opt.param_groups:
        assert group["lr_scale"] == EXPECTED[epoch][group["name"]]


def test_every_group_is_in_the_optimizer_from_the_start():
    model = tiny_captioner()
    opt = make_opt(model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    names = {g["name"] for g in opt.param_groups}
    assert names == set(group_names(VIT.depth))


def test_from_scratch_trains_everything_at_full_lr():
    model = tiny_captioner()
    opt = make_opt(model)
    states = apply_unfreeze(model, opt, 0, None)
    assert all(s == GroupState(True, 1.0) for s in states.values())
    assert all(p.requires_grad for p in model.parameters())
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups)


def train_step(model, opt, trainer_lr=1e-2):
    """One optimiser step on a fixed random batch, lr scaled per group like the Trainer does."""
    for group in opt.param_groups:
        group["lr"] = trainer_lr * group["lr_scale"]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 16, generator=g)
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    loss = teacher_forcing_loss(model, images, tokens, torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_frozen_parameters_get_no_gradient_and_do_not_move():
    model = tiny_captioner()
    opt = make_opt(model)
    apply_unfreeze(model, opt, 2, CFG)  # top two layers train
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, opt)
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p)
        frozen = EXPECTED[2][owner_of(name)] == 0
        if frozen:
            # weight decay must not shrink them either: AdamW skips parameters without a gradient
            assert not moved, name
            assert p.grad is None
    assert not torch.equal(before["encoder.transformer.layers.1.attn.q_proj.weight"],
                           model.encoder.transformer.layers[1].attn.q_proj.weight)


def test_frozen_encoder_records_no_graph():
    model = tiny_captioner()
    apply_unfreeze(model, make_opt(model), 0, CFG)
    features = model.encode(torch.randn(2, 3, 16, 16))
    assert features.grad_fn is None  # nothing saved for backward: as cheap as torch.no_grad


def test_state_after_resume_matches_an_uninterrupted_run():
    """Epoch 3 after a checkpoint at epoch 2 looks exactly like epoch 3 of a straight run."""
    straight = tiny_captioner()
    straight_opt = make_opt(straight)
    for epoch in range(3):
        apply_unfreeze(straight, straight_opt, epoch, CFG)
        train_step(straight, straight_opt)
    buffer = io.BytesIO()  # a real checkpoint round trip (state_dict() alone would alias live tensors)
    torch.save({"model": straight.state_dict(), "opt": straight_opt.state_dict()}, buffer)
    apply_unfreeze(straight, straight_opt, 3, CFG)
    train_step(straight, straight_opt)

    resumed = tiny_captioner()
    resumed_opt = make_opt(resumed)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])  # brings back epoch 2's lr scales ...
    apply_unfreeze(resumed, resumed_opt, 3, CFG)  # ... which the epoch's state replaces
    for name, p in resumed.named_parameters():
        assert p.requires_grad == (EXPECTED[3][owner_of(name)] > 0), name
    assert [g["lr_scale"] for g in resumed_opt.param_groups] == [EXPECTED[3][g["name"]] for g in resumed_opt.param_groups]
    train_step(resumed, resumed_opt)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="decay"):
        unfreeze_schedule(3, 0, 1, 0.0)
    with pytest.raises(ValueError, match="depth"):
        unfreeze_schedule(0, 0, 1, 0.7)
