"""Layer-wise unfreezing: which parameters train, and at what lr scale, in every epoch."""

import io

import pytest
import torch

from captioner.config import CaptionDecoderConfig, UnfreezeConfig, ViTConfig
from captioner.models.captioner import build_captioner, teacher_forcing_loss
from captioner.training.optimizer import make_optimizer
from captioner.training.unfreeze import (
    GroupState,
    group_names,
    set_trainable,
    train_everything,
    unfreeze_groups,
    unfreeze_param_groups,
    unfreeze_schedule,
)

VIT = ViTConfig(image_size=16, patch_size=8, width=16, depth=3, heads=2)
DECODER = CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0)
CFG = UnfreezeConfig(start_epoch=1, decay=0.5)
LR = 1e-2  # the schedule's learning rate of a step


def tiny_captioner():
    torch.manual_seed(0)
    return build_captioner(VIT, DECODER, vocab_size=12, max_len=8)


def make_opt(model):
    return make_optimizer(unfreeze_param_groups(model, weight_decay=0.1), LR, (0.9, 0.95), torch.device("cpu"))


def states_at(epoch):
    return unfreeze_schedule(VIT.depth, epoch, CFG.start_epoch, CFG.decay)


def set_lrs(opt, states, lr=LR):
    """What train_captioner.py does every step: each group's lr is the step's lr times its group's multiplier."""
    for group in opt.param_groups:
        group["lr"] = lr * states[group["name"]].lr_scale


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


# depth 3 (4 encoder groups), start_epoch 1, decay 0.5, two groups per epoch: the top two join in
# epoch 1, the other two in epoch 2; the lr scales are those of one group per epoch
EXPECTED_TWO_PER_EPOCH = {
    0: {"patch_embed": 0, "encoder_layer0": 0, "encoder_layer1": 0, "encoder_layer2": 0, "decoder": 1},
    1: {"patch_embed": 0, "encoder_layer0": 0, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
    2: {"patch_embed": 0.0625, "encoder_layer0": 0.125, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
    5: {"patch_embed": 0.0625, "encoder_layer0": 0.125, "encoder_layer1": 0.25, "encoder_layer2": 0.5, "decoder": 1},
}


@pytest.mark.parametrize("epoch", sorted(EXPECTED_TWO_PER_EPOCH))
def test_schedule_table_two_groups_per_epoch(epoch):
    states = unfreeze_schedule(VIT.depth, epoch, CFG.start_epoch, CFG.decay, groups_per_epoch=2)
    for name, scale in EXPECTED_TWO_PER_EPOCH[epoch].items():
        assert states[name] == GroupState(scale > 0, scale), (epoch, name)


EXPECTED_STATES_AT_THE_END = {name: GroupState(True, scale) for name, scale in EXPECTED[9].items()}


@pytest.mark.parametrize("groups_per_epoch", [4, 9])
def test_enough_groups_per_epoch_unfreeze_the_whole_encoder_at_start_epoch(groups_per_epoch):
    before = unfreeze_schedule(VIT.depth, 0, CFG.start_epoch, CFG.decay, groups_per_epoch)
    at = unfreeze_schedule(VIT.depth, 1, CFG.start_epoch, CFG.decay, groups_per_epoch)
    assert not any(s.trainable for name, s in before.items() if name != "decoder")
    assert at == EXPECTED_STATES_AT_THE_END


def test_zero_groups_per_epoch_is_refused():
    with pytest.raises(ValueError, match="groups_per_epoch"):
        unfreeze_schedule(VIT.depth, 0, CFG.start_epoch, CFG.decay, groups_per_epoch=0)


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
def test_set_trainable_and_the_scripts_lr_per_group(epoch):
    model = tiny_captioner()
    opt = make_opt(model)
    if epoch > 0:
        set_trainable(model, states_at(epoch - 1))  # from the previous epoch's state, as a run goes
    states = states_at(epoch)
    set_trainable(model, states)
    set_lrs(opt, states)
    for name, p in model.named_parameters():
        assert p.requires_grad == (EXPECTED[epoch][owner_of(name)] > 0), (epoch, name)
    for group in opt.param_groups:  # the optimiser's groups agree with the parameters' unfreeze groups
        expected = EXPECTED[epoch][group["name"]]
        assert group["lr"] == pytest.approx(LR * expected), (epoch, group["name"])
        assert all(p.requires_grad == (expected > 0) for p in group["params"]), (epoch, group["name"])


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
    set_trainable(model, states_at(0))  # whatever was frozen before ...
    states = train_everything(VIT.depth)
    assert list(states) == group_names(VIT.depth)
    assert all(s == GroupState(True, 1.0) for s in states.values())
    set_trainable(model, states)  # ... trains now
    set_lrs(opt, states)
    assert all(p.requires_grad for p in model.parameters())
    assert all(g["lr"] == LR for g in opt.param_groups)


def train_step(model, opt, states):
    """One optimiser step on a fixed random batch, lr scaled per group like train_captioner.py does."""
    set_lrs(opt, states)
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
    states = states_at(2)  # top two layers train
    set_trainable(model, states)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, opt, states)
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
    set_trainable(model, states_at(0))
    features = model.encode(torch.randn(2, 3, 16, 16))
    assert features.grad_fn is None  # nothing saved for backward: as cheap as torch.no_grad


def test_state_after_resume_matches_an_uninterrupted_run():
    """Epoch 3 after a checkpoint at epoch 2 looks exactly like epoch 3 of a straight run."""
    straight = tiny_captioner()
    straight_opt = make_opt(straight)
    for epoch in range(3):
        set_trainable(straight, states_at(epoch))
        train_step(straight, straight_opt, states_at(epoch))
    buffer = io.BytesIO()  # a real checkpoint round trip (state_dict() alone would alias live tensors)
    torch.save({"model": straight.state_dict(), "opt": straight_opt.state_dict()}, buffer)
    set_trainable(straight, states_at(3))
    train_step(straight, straight_opt, states_at(3))

    resumed = tiny_captioner()  # a new process: everything trainable, every group at the base lr
    resumed_opt = make_opt(resumed)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])  # brings back epoch 2's learning rates ...
    assert [g["lr"] for g in resumed_opt.param_groups] == \
        pytest.approx([LR * EXPECTED[2][g["name"]] for g in resumed_opt.param_groups])
    states = states_at(3)  # ... which the epoch's state replaces, with the parameters' trainability
    set_trainable(resumed, states)
    for name, p in resumed.named_parameters():
        assert p.requires_grad == (EXPECTED[3][owner_of(name)] > 0), name
    train_step(resumed, resumed_opt, states)
    assert [g["lr"] for g in resumed_opt.param_groups] == \
        pytest.approx([LR * EXPECTED[3][g["name"]] for g in resumed_opt.param_groups])
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="decay"):
        unfreeze_schedule(3, 0, 1, 0.0)
    with pytest.raises(ValueError, match="depth"):
        unfreeze_schedule(0, 0, 1, 0.7)
