"""captioner/infra/compile.py: the compile settings."""

import pytest
from torch import nn

from captioner.infra.compile import maybe_compile


def test_compile_modes_are_checked_even_without_compiling():
    model = nn.Linear(2, 2)
    assert maybe_compile(model, False, mode="reduce-overhead") is model
    with pytest.raises(ValueError, match="unknown train.compile_mode 'fast'"):
        maybe_compile(model, False, mode="fast")
