"""Shared fixtures. Real data comes from $FEWSHOT_DATA; derived caches go to $FEWSHOT_CACHE (CI sets both)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Run the suite with one torch thread: tiny kernels on a 2-core machine spend more time
    synchronising threads than computing (measured up to 10x slower with two on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """The data root holding omniglot/ (the official zips and splits/vinyals/); skips when FEWSHOT_DATA is unset."""
    data = os.environ.get("FEWSHOT_DATA")
    if not data:
        pytest.skip("FEWSHOT_DATA is unset: these tests need the real Omniglot data (see README)")
    return Path(data)


@pytest.fixture(scope="session")
def omniglot_store(omniglot_root: Path):
    """All of real Omniglot at 28x28, loaded once per session (decoded on the first run, then from the cache)."""
    from fewshot.data import load_omniglot

    return load_omniglot(omniglot_root, image_size=28, download=False)
