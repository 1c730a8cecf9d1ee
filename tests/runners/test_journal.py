"""The runner's journal: how long a store call is retried, and how output is numbered."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from procgate import MemoryStore
from procgate.errors import StoreUnavailable
from procgate.runners.journal import RETRY_WHILE_CLOSING, OutputWriter, cancel_check, persist
from procgate.stores.redis import RedisStore
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
    write = OutputWriter(store, job.id)
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
