"""Compression tests run their small tensor ops on one thread.

Their tensors are small, so a second thread gains nothing, and on a shared 2-core machine
OpenMP threads waiting for a busy core made single ops up to 100x slower (measured: a 4096x48
``index_add`` took 0.4 ms alone and 84 ms beside another test run). Restored afterwards.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
