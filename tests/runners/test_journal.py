"""The runner's journal: how long a store call is retried, and how output is numbered."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import pytest

from procgate import JobStatus, MemoryStore
from procgate.errors import StoreUnavailable
from procgate.jobs import Chunk
from procgate.runners.journal import RETRY_WHILE_CLOSING, OutputWriter, cancel_check, persist
from procgate.runners.sync import run_job
from procgate.stores.redis import RedisStore
from tests.conftest import wait_for
from tests.faults.conftest import RedisServer
from tests.stores.test_contract import new_job


def test_a_closing_runner_retries_for_retry_while_closing_then_gives_up() -> None:
    """Once the runner is shutting down, a store that stays unavailable is retried for
    ``RETRY_WHILE_CLOSING`` seconds (not the ten minutes of ``retry_for``), several times,
    and then its ``StoreUnavailable`` is raised."""
    calls = []

    def unavailable() -> None:
        calls.append(time.monotonic())
        raise StoreUnavailable("the store is down")

    halt = threading.Event()
    halt.set()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        persist(unavailable, halt, "finish job x", retry_for=600)
    took = time.monotonic() - started
    assert RETRY_WHILE_CLOSING - 0.1 <= took < 4 * RETRY_WHILE_CLOSING
    assert len(calls) >= 3  # tried again with backoff, not given up at once


def test_output_is_numbered_from_1_with_offsets_per_stream() -> None:
    """Chunk indexes count 1, 2, 3... across both streams; each offset is where the chunk
    starts in its own stream."""
    store = MemoryStore()
    job = store.create(new_job())
    store.start(job.id)
    write = OutputWriter(store, job.id, hold=0)
    write("stdout", b"ab")
    write("stderr", b"x")
    write("stdout", b"c")
    write("stderr", b"yz")
    chunks = store.read_output(job.id)
    assert [(c.index, c.stream, c.offset, c.data) for c in chunks] == [
        (1, "stdout", 0, b"ab"),
        (2, "stderr", 0, b"x"),
        (3, "stdout", 2, b"c"),
        (4, "stderr", 1, b"yz"),
    ]


def test_a_cancel_check_the_store_cannot_answer_is_no_cancel_warned_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """While the store cannot say whether a job was cancelled (here its Redis stopped),
    every check answers "not cancelled", so the child goes on, and the log says so once
    for the job, not every 50 ms. A halting runner still stops it."""
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore(f"{server.url}?socket_connect_timeout=1")
    server.stop()
    halt = threading.Event()
    check = cancel_check(store, "job-1", halt)
    with caplog.at_level(logging.WARNING, logger="procgate"):
        assert [check(), check(), check()] == [False, False, False]
    warnings = [r.getMessage() for r in caplog.records if "cancel" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "job job-1: cannot check for a cancel: the Redis store is unavailable: ConnectionError"
    )
    halt.set()
    assert check() is True
    store.close()


class _CountingStore(MemoryStore):
    """A memory store that counts its output writes."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0

    def append_output(self, job_id: str, chunk: Chunk) -> None:
        self.appends += 1
        super().append_output(job_id, chunk)


def test_output_of_the_first_moments_waits_for_the_finish_or_the_hold() -> None:
    """The output of a job's first ``hold`` seconds is kept back (to go with its finish,
    in the same write); past the hold, a ``tick`` (each cancel check) writes what was kept
    and new chunks are written at once."""
    store = _CountingStore()
    job = store.create(new_job())
    store.start(job.id)
    write = OutputWriter(store, job.id, hold=0.2)
    write("stdout", b"early")
    write.tick()
    assert store.read_output(job.id) == []
    assert store.appends == 0
    assert [c.data for c in write.pending] == [b"early"]
    time.sleep(0.25)
    write.tick()
    assert [c.data for c in store.read_output(job.id)] == [b"early"]
    write("stderr", b"late")
    assert [c.data for c in store.read_output(job.id)] == [b"early", b"late"]
    assert not write.pending


def test_a_short_job_writes_its_output_with_its_finish_once() -> None:
    """A job that ends within the hold has no output write of its own: its output goes to
    the store with the finish, and a reader that sees it finished has all of it."""
    store = _CountingStore()
    job = store.create(new_job())
    run_job(store, job.id, threading.Event())
    got = store.get(job.id)
    assert (got.status, got.stdout) == (JobStatus.SUCCEEDED, b"a\n")
    assert store.appends == 0


def test_the_first_output_of_a_long_job_is_live_within_a_poll_of_the_hold() -> None:
    """A job that prints at once, then runs on, has that output in the store while it
    still runs, within the hold and a cancel-check interval (not at its end)."""
    store = MemoryStore()
    job = store.create(
        dataclasses.replace(
            new_job(),
            spec=dataclasses.replace(
                new_job().spec, argv=("/bin/sh", "-c", "echo first; sleep 30"), timeout=60.0
            ),
        )
    )
    halt = threading.Event()
    runner = threading.Thread(target=run_job, args=(store, job.id, halt))
    runner.start()
    try:
        # Within 3 s, far from the 30 s after which a write with the finish would come.
        wait_for(lambda: store.read_output(job.id), timeout=3)
        assert [c.data for c in store.read_output(job.id)] == [b"first\n"]
        assert store.get(job.id).status is JobStatus.RUNNING
    finally:
        halt.set()
        runner.join(30)
