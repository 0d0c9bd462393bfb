"""Fixtures shared by the whole test suite."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run faster on one thread, much faster when other processes share the cores, and
    forked workers (loaders, torch.distributed tests) must not inherit a busy thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
