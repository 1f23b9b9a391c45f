"""ThrottledExecutor over a real Dask LocalCluster: the bound holds across its worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pool_tasks as tasks
from helpers import max_overlap
from procthrottle import ProcessSemaphore, ThrottledExecutor


@pytest.mark.timeout(120)
def test_dask_client_executor_is_bounded(dask_client: Any, tmp_path: Path) -> None:
    record = tmp_path / "intervals"
    sem = ProcessSemaphore(2)
    executor = ThrottledExecutor(dask_client.get_executor(), sem)
    futures = [executor.submit(tasks.hold, str(record), 0.1, i) for i in range(8)]
    assert [f.result(timeout=60) for f in futures] == list(range(8))
    rows = [line.split() for line in record.read_text().splitlines()]
    assert len({row[1] for row in rows}) == 2  # both Dask worker processes ran tasks
    assert max_overlap([(float(r[2]), float(r[3])) for r in rows]) == 2
    assert sem.value == 2
    sem.close()
