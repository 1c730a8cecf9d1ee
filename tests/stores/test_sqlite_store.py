"""The SQLite store's own paths: SQLite without ``RETURNING`` (before 3.35, as Debian 11
ships 3.34), and the per-job bookkeeping of waiting threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from procgate import JobStatus
from procgate.errors import JobNotFound
from procgate.jobs import Chunk, Outcome
from procgate.stores import sqlite as sqlite_module
from procgate.stores.sqlite import SQLiteStore
from tests.conftest import wait_for
from tests.stores.test_contract import new_job


def test_start_without_returning_reads_the_job_back(
    tmp_path: Path, stores: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLite has no ``RETURNING``, ``start`` updates and then reads the job: the
    same running job, once; a second start is None, an unknown id JobNotFound."""
    monkeypatch.setattr(sqlite_module, "_RETURNING", False)
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    stores.append(store)
    job = store.create(new_job())
    started = store.start(job.id, owner="host:1:abcdef12")
    assert started is not None
    assert started.id == job.id
    assert started.status is JobStatus.RUNNING
    assert started.started_at is not None
    assert started.owner == "host:1:abcdef12"
    assert store.get(job.id) == started
    assert store.start(job.id) is None
    with pytest.raises(JobNotFound):
        store.start("no-such-job")


def test_waits_leave_no_bookkeeping_behind(tmp_path: Path, stores: list[SQLiteStore]) -> None:
    """Each waiting thread is counted for its job while it waits, and the count and the
    job's news are dropped when the last waiter leaves: a long-running server that waits
    on a million jobs holds nothing for them afterwards."""
    store = SQLiteStore(str(tmp_path / "jobs.db"), poll_interval=0.01)
    stores.append(store)
    job = store.create(new_job())
    store.start(job.id)
    inside = threading.Barrier(4)
    waiters = []
    for _ in range(3):

        def wait() -> None:
            inside.wait(30)
            store.wait(job.id, 60)

        waiters.append(threading.Thread(target=wait))
        waiters[-1].start()
    inside.wait(30)
    wait_for(lambda: store._watched.get(job.id) == 3, timeout=60)  # all three waiting
    assert store._watched == {job.id: 3}
    store.append_output(job.id, Chunk(1, "stdout", 0, b"x"))  # news for the waiters
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    for thread in waiters:
        thread.join(60)
    assert not any(thread.is_alive() for thread in waiters)
    assert store._watched == {}
    assert store._job_news == {}
    store.wait(job.id, 0)  # a finished job: in and out at once
    store.wait_output(job.id, 1, 0)
    assert store._watched == {}
    assert store._job_news == {}
