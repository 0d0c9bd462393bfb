"""Fixed (not learned) sin-cos position encodings: 1-D for text, 2-D for image patches.

Both are built from the same ingredient: each position p is turned into the angles
p * w_i for a geometric ladder of frequencies w_i = 1 / 10000^(2i / dim), and a vector holds
sin and cos of those angles. Low dimensions turn quickly with p, high dimensions slowly, so
every position gets a distinct code and nearby positions get similar codes.
"""

import torch
from torch import Tensor


def _angles(positions: Tensor, dim: int) -> Tensor:
    """Angles p * w_i for `dim // 2` frequencies w_i = 1 / 10000^(2i / dim).

    positions (N,) float -> (N, dim // 2)
    """
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    return positions.double()[:, None] * inv_freq[None, :]  # (N, dim/2)


def sinusoidal_position_encoding(length: int, dim: int) -> Tensor:
    """The 1-D encoding of "Attention is all you need", interleaved as in the paper.

    PE[p, 2i] = sin(p / 10000^(2i/dim)),  PE[p, 2i+1] = cos(p / 10000^(2i/dim)).

    Returns (length, dim) float32. Example: row 0 is [0, 1, 0, 1, ...] and
    PE[1, :2] = [sin(1), cos(1)] = [0.8415, 0.5403].
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_position_encoding needs an even dim, got {dim}")
    angles = _angles(torch.arange(length), dim)  # (length, dim/2)
    # stack then flatten interleaves: sin0, cos0, sin1, cos1, ...
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()  # (length, dim)


def _sincos_half(positions: Tensor, dim: int) -> Tensor:
    """MAE's 1-D block: [sin(angles), cos(angles)] concatenated. (N,) -> (N, dim)."""
    angles = _angles(positions, dim)  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim)


def sincos_2d_position_encoding(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """MAE's fixed 2-D sin-cos encoding for a grid of patches, in row-major patch order.

    Patch n sits at row n // grid_w and column n % grid_w. Its code is
    [column block (dim/2) | row block (dim/2)], each block being [sin(angles) | cos(angles)]
    over dim/4 frequencies, exactly like facebookresearch/mae's `get_2d_sincos_pos_embed`
    (which puts the column coordinate first).

    Returns (grid_h * grid_w, dim) float32. Example: patch 0 (row 0, column 0) is
    [0]*(dim/4) + [1]*(dim/4) + [0]*(dim/4) + [1]*(dim/4).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d_position_encoding needs dim divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (N,) 0,0,..,1,1,..
    cols = torch.arange(grid_w).repeat(grid_h)  # (N,) 0,1,..,0,1,..
    half = dim // 2
    return torch.cat([_sincos_half(cols, half), _sincos_half(rows, half)], dim=1).float()  # (N, dim)
