"""Fixtures shared by the whole test suite."""

import sys
from pathlib import Path

import pytest
import torch

# bench/ holds the FLOP counters (bench/flops.py), which the MAE tests check against PyTorch's counter
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run faster on one thread, much faster when other processes share the cores, and
    forked workers (loaders, torch.distributed tests) must not inherit a busy thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
