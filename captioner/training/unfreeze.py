"""Layer-wise unfreezing: the pretrained encoder joins the training one layer at a time, top first.

A freshly initialised caption decoder sends large, noisy gradients for its first epochs. Letting them
into a pretrained encoder at full strength would overwrite what MAE taught it. So the captioner's
parameters are split into groups::

    patch_embed       the patch embedding (the encoder's input side)
    encoder_layer0    the first transformer layer
    ...
    encoder_layer{d-1}  the top layer, together with the encoder's final LayerNorm
    decoder           the whole caption decoder

For a ResNet encoder the same names stand for its stem (``patch_embed``) and its stages
(``encoder_layer{i}``): the stem is the input side, as the patch embedding is for the ViT. Each encoder
lists its groups in ``layer_groups()``. A ResNet with ImageNet weights (``resnet.weights``) unfreezes
stage by stage like the ViT layer by layer; a random one trains every group from the first step.

The decoder always trains at the full learning rate. The encoder is frozen before
``unfreeze.start_epoch``; from then on ``unfreeze.groups_per_epoch`` more encoder groups train each
epoch (one by default), from the top layer down to the patch embedding, and each group's learning rate is ``decay`` times that of the group
above it (top layer ``decay``, the next ``decay**2``, ...): the lower a layer, the more general its
features and the less it should move.

The state is a pure function of the epoch (:func:`unfreeze_schedule`), and every group sits in the
optimiser from the first step (frozen ones at learning rate 0), so the optimiser's ``state_dict``
has the same structure at every epoch and a resumed run has exactly the state it would have had.

Frozen parameters have ``requires_grad=False``: autograd then records nothing below the lowest
trainable layer (no saved activations, no backward work there); when the whole encoder is frozen
no encoder tensor requires grad at all, which saves as much as running it under ``torch.no_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from captioner.training.optimizer import param_groups

DECODER = "decoder"
PATCH_EMBED = "patch_embed"


@dataclass(frozen=True)
class GroupState:
    """One parameter group's state in an epoch: does it train, and at what fraction of the lr."""

    trainable: bool
    lr_scale: float


def group_names(depth: int) -> list[str]:
    """The groups from the input side up: ``patch_embed, encoder_layer0 .. encoder_layer{depth-1}, decoder``."""
    return [PATCH_EMBED] + [f"encoder_layer{i}" for i in range(depth)] + [DECODER]


def unfreeze_schedule(depth: int, epoch: int, start_epoch: int, decay: float,
                      groups_per_epoch: int = 1) -> dict[str, GroupState]:
    """Every group's state in (0-based) ``epoch``, for an encoder of ``depth`` layers.

    The encoder group k-th from the top (k = 1 for the top layer, k = depth + 1 for the patch
    embedding) trains from epoch ``start_epoch + ceil(k / groups_per_epoch) - 1`` on (one group more
    each epoch by default), at lr scale ``decay ** k``; before that its lr scale is 0. The decoder
    always trains at scale 1.

    Example, depth 2, start_epoch 1, decay 0.5 (scale 0 = frozen)::

        epoch   patch_embed  encoder_layer0  encoder_layer1  decoder
        0       0            0               0               1
        1       0            0               0.5             1
        2       0            0.25            0.5             1
        3       0.125        0.25            0.5             1
    """
    if depth < 1 or start_epoch < 0 or not 0.0 < decay <= 1.0 or groups_per_epoch < 1:
        raise ValueError(f"unfreeze_schedule needs depth >= 1, start_epoch >= 0, 0 < decay <= 1 and "
                         f"groups_per_epoch >= 1; got depth={depth}, start_epoch={start_epoch}, decay={decay}, "
                         f"groups_per_epoch={groups_per_epoch}")
    states = {}
    for name in group_names(depth)[:-1]:
        # rank from the top: encoder_layer{depth-1} -> 1, ..., encoder_layer0 -> depth, patch_embed -> depth + 1
        k = depth + 1 if name == PATCH_EMBED else depth - int(name.removeprefix("encoder_layer"))
        trainable = epoch >= start_epoch + -(-k // groups_per_epoch) - 1  # -(-a // b): ceil(a / b)
        states[name] = GroupState(trainable, decay**k if trainable else 0.0)
    states[DECODER] = GroupState(True, 1.0)
    return states


def train_everything(depth: int) -> dict[str, GroupState]:
    """Every group trainable at the full learning rate: a captioner trained from scratch has no
    pretrained encoder to protect, so it does not unfreeze gradually."""
    return {name: GroupState(True, 1.0) for name in group_names(depth)}


def unfreeze_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The named parameters of each group of a captioner (``build_captioner``'s model).

    ``model.encoder.layer_groups()`` lists the modules of ``encoder_layer0, 1, ...`` (an ImageEncoder:
    its transformer layers, the final LayerNorm joining the top one; a ResNetEncoder: its stages);
    everything else in the encoder (the patch embedding, or the stem) forms ``patch_embed``.
    ``model.decoder`` is one group.
    """
    layer_groups = model.encoder.layer_groups()
    groups = {name: [] for name in group_names(len(layer_groups))}
    owner = {}  # id(parameter) -> group, for the parameters of the layers
    for i, modules in enumerate(layer_groups):
        for module in modules:
            for p in module.parameters():
                owner[id(p)] = f"encoder_layer{i}"
    for pname, p in model.encoder.named_parameters(prefix="encoder"):
        groups[owner.get(id(p), PATCH_EMBED)].append((pname, p))
    groups[DECODER] = list(model.decoder.named_parameters(prefix="decoder"))
    return groups


def unfreeze_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups for every unfreeze group (each split into decayed / not decayed), all present
    from the start; each carries its group ``name``, the key of its learning-rate multiplier in
    the states of :func:`unfreeze_schedule`."""
    groups = []
    for name, named in unfreeze_groups(model).items():
        groups += param_groups(named, weight_decay, name=name)
    return groups


def set_trainable(model: nn.Module, states: dict[str, GroupState]) -> None:
    """Set ``requires_grad`` of every parameter of the captioner to its group's state."""
    for name, named in unfreeze_groups(model).items():
        for _, p in named:
            p.requires_grad_(states[name].trainable)


def describe_unfreeze(states: dict[str, GroupState]) -> str:
    """A short summary for the epoch line, e.g. ``"encoder: 2/7 groups trainable"``."""
    encoder = [s for name, s in states.items() if name != DECODER]
    return f"encoder: {sum(s.trainable for s in encoder)}/{len(encoder)} groups trainable"
