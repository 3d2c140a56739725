"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core machine: one intra-op thread is much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
