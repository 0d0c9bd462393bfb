"""The LSTM cell, written out (Hochreiter & Schmidhuber, 1997; the form of ``torch.nn.LSTMCell``).

One step reads an input x (B, I) and the previous state (h, c), each (B, H)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     input gate: how much of the candidate to write
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)     forget gate: how much of the old cell to keep
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)     the candidate values
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)     output gate: how much of the cell to show
    c' = f * c + i * g                             the cell: a running sum, so gradients flow through time
    h' = o * tanh(c')                              the hidden state, what the next layer reads

The four gates' weights are stacked into one (4H, I) and one (4H, H) matrix, in the order i, f, g, o,
so a step is two matrix products; this is exactly ``nn.LSTMCell``'s layout, which is how
``tests/test_lstm.py`` checks this cell against PyTorch's with copied weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LSTMCell(nn.Module):
    """x (B, I), state (h, c) each (B, H) -> new (h, c), each (B, H).

    Parameters have nn.LSTMCell's names and shapes: weight_ih (4H, I), weight_hh (4H, H), bias_ih and
    bias_hh (4H,), initialised uniformly in +-1/sqrt(H) like PyTorch's, except that the forget gate's
    bias starts at 1 (Jozefowicz et al., 2015): the cell remembers by default until it learns to forget.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.bias_ih[hidden_size : 2 * hidden_size] = 1.0  # forget gate (the second quarter)
            self.bias_hh[hidden_size : 2 * hidden_size] = 0.0

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state  # (B, H) each
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
        return h, c
