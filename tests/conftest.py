"""Shared fixtures. Real data comes from $FEWSHOT_DATA; derived caches go to $FEWSHOT_CACHE (CI sets both).

`omniglot_root` is the real data (tests that need it skip without it); `data_root` is the real data
when present and otherwise a miniature Omniglot written in the real formats (`tests/synthetic.py`), so
the CLI, evaluator and API tests run either way.
"""

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
    # Absolute now: a test may change directory before it reads the data.
    return Path(data).resolve()


@pytest.fixture(scope="session")
def gbu_root() -> Path:
    """The data root holding zsl/gbu/<NAME>/att_splits.mat; skips when FEWSHOT_DATA is unset."""
    data = os.environ.get("FEWSHOT_DATA")
    if not data:
        pytest.skip("FEWSHOT_DATA is unset: these tests need the real GBU split files (see README)")
    return Path(data).resolve()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature Omniglot (official zips and Vinyals split lists, drawn characters) for data-free tests."""
    from tests.support.synthetic import write_omniglot

    return write_omniglot(tmp_path_factory.mktemp("synthetic-data"))


@pytest.fixture(scope="session")
def data_root(request: pytest.FixtureRequest) -> Path:
    """The Omniglot data root: the real data when $FEWSHOT_DATA is set, else `synthetic_root`."""
    data = os.environ.get("FEWSHOT_DATA")
    return Path(data).resolve() if data else request.getfixturevalue("synthetic_root")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Without $FEWSHOT_CACHE, derived caches go to a session folder rather than the user's home."""
    if os.environ.get("FEWSHOT_CACHE"):
        yield
        return
    os.environ["FEWSHOT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    del os.environ["FEWSHOT_CACHE"]


@pytest.fixture(scope="session")
def omniglot_store(omniglot_root: Path):
    """All of real Omniglot at 28x28, loaded once per session (decoded on the first run, then from the cache)."""
    from fewshot.data import load_omniglot

    return load_omniglot(omniglot_root, image_size=28, download=False)
