"""The SQLite store's own paths: its documented defaults and option checks, retention in
one pass over a store another process filled, SQLite without ``RETURNING`` (before 3.35,
as Debian 11 ships 3.34), and the per-job bookkeeping of waiting threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import time_machine

from procgate import JobStatus
from procgate.errors import ConfigError, JobNotFound
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


@pytest.mark.docs("stores.md#options")
def test_a_sqlite_store_has_the_documented_defaults_and_checks_its_options(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """``max_jobs`` 10000, ``busy_timeout`` 10 s, ``evict_interval`` 1 s, no ``ttl``;
    ``ttl`` takes any number above 0 and ``max_jobs`` a whole number from 1, each refused
    otherwise with its message."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    stores.append(store)
    assert (store.max_jobs, store.busy_timeout, store.evict_interval, store.ttl) == (
        10_000,
        10.0,
        1.0,
        None,
    )
    stores.append(SQLiteStore(str(tmp_path / "half.db"), ttl=0.5, max_jobs=1))
    for bad in (0, -1, "5"):
        with pytest.raises(ConfigError) as caught:
            SQLiteStore(str(tmp_path / "bad.db"), ttl=bad)  # type: ignore[arg-type]
        assert caught.value.message == "ttl must be a positive number of seconds"
    for bad_jobs in (0, "5", 1.5):
        with pytest.raises(ConfigError) as caught:
            SQLiteStore(str(tmp_path / "bad.db"), max_jobs=bad_jobs)  # type: ignore[arg-type]
        assert caught.value.message == "max_jobs must be at least 1"


def finished(store: SQLiteStore) -> str:
    """A job cancelled while queued: finished in two writes."""
    job = store.create(new_job())
    store.cancel(job.id)
    return job.id


@pytest.mark.docs("stores.md#retention")
def test_one_retention_pass_applies_ttl_and_then_max_jobs(
    tmp_path: Path, stores: list[SQLiteStore], time_machine: time_machine.TimeMachineFixture
) -> None:
    """A pass first drops what is past ``ttl``, then the oldest finished jobs over
    ``max_jobs`` among the rest: here one of each, as a store with those options finds
    a file another process filled."""
    path = str(tmp_path / "jobs.db")
    filler = SQLiteStore(path)
    stores.append(filler)
    time_machine.move_to(time.time() - 120, tick=False)
    expired = finished(filler)
    time_machine.move_to(time.time() + 120, tick=False)
    oldest, *kept = [finished(filler) for _ in range(3)]
    store = SQLiteStore(path, ttl=60, max_jobs=2)
    stores.append(store)
    assert [job.id for job in store.list().jobs] == kept[::-1]
    assert {expired, oldest}.isdisjoint(job.id for job in filler.list().jobs)


@pytest.mark.docs("stores.md#retention")
def test_a_retention_pass_deletes_any_number_of_jobs(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """More jobs than one statement may name (SQLite's limit on variables) go in one
    pass: 1100 over ``max_jobs``."""
    path = str(tmp_path / "jobs.db")
    filler = SQLiteStore(path)
    stores.append(filler)
    ids = [finished(filler) for _ in range(1101)]
    store = SQLiteStore(path, max_jobs=1)
    stores.append(store)
    assert [job.id for job in store.list().jobs] == ids[-1:]
    assert store.count() == 1


@pytest.mark.docs("stores.md#retention")
def test_a_sqlite_store_applies_retention_at_most_once_per_evict_interval(
    tmp_path: Path, stores: list[SQLiteStore], time_machine: time_machine.TimeMachineFixture
) -> None:
    """Between two retention passes an expired job stays: the pass that found it not yet
    expired is the last for ``evict_interval`` seconds of the store's own clock."""
    time_machine.move_to(time.time(), tick=False)
    store = SQLiteStore(str(tmp_path / "jobs.db"), ttl=60, evict_interval=3600)
    stores.append(store)
    job_id = finished(store)
    assert [job.id for job in store.list().jobs] == [job_id]
    time_machine.shift(61)  # the wall clock moves; the store's monotonic clock barely
    assert [job.id for job in store.list().jobs] == [job_id]
