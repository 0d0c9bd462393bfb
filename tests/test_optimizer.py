"""captioner/training/optimizer.py: AdamW's parameter groups."""

import torch
from torch import nn

from captioner.training.optimizer import param_groups


def test_param_groups_exempt_biases_norms_and_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))

    net = Net()
    groups = param_groups(net.named_parameters(), weight_decay=0.05, name="enc")
    decay = [g for g in groups if g["weight_decay"] > 0]
    assert len(decay) == 1 and decay[0]["params"] == [net.linear.weight]
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {id(net.linear.bias), id(net.norm.weight), id(net.norm.bias), id(net.mask_token),
                        id(net.pos_embed)}
    assert all(g["name"] == "enc" for g in groups)  # the key of the group's unfreeze lr multiplier
    assert all(set(g) == {"params", "weight_decay", "name"} for g in groups)  # the scripts set the lr
    only_bias = param_groups([("b", nn.Parameter(torch.zeros(3)))], 0.1)
    assert len(only_bias) == 1 and only_bias[0]["name"] == "all"  # empty groups dropped; the default name
