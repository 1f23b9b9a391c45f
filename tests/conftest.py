from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from helpers import sysv_sets


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_kernel_objects() -> Iterator[None]:
    """The whole suite must leave no System V semaphore set behind."""
    if not sys.platform.startswith("linux"):
        yield
        return
    before = sysv_sets()
    yield
    leaked = sysv_sets() - before
    assert not leaked, f"tests leaked {len(leaked)} System V semaphore sets"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
