"""The Heartbeat thread of a runner: what it is, how it stops, what it sweeps with."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time

import pytest

from procgate import JobStatus
from procgate.runners.liveness import Heartbeat, new_owner, owner_is_dead
from procgate.stores.memory import MemoryStore
from tests.stores.test_contract import new_job


def test_the_heartbeat_is_a_daemon_thread_named_for_its_owner() -> None:
    """A server that forgets to close its runner can still exit; stop() waits for it."""
    heartbeat = Heartbeat(MemoryStore(), "host-a:1:beat", interval=60)
    heartbeat.start()
    try:
        (thread,) = [
            t for t in threading.enumerate() if t.name == "procgate-heartbeat-host-a:1:beat"
        ]
        assert thread.daemon is True
    finally:
        heartbeat.stop()
    assert not thread.is_alive()
    Heartbeat(MemoryStore(), "host-a:1:never").stop()  # a runner closed before it started


@pytest.mark.docs("scaling.md#when-a-worker-dies")
def test_the_heartbeat_sweeps_with_its_own_stale_after() -> None:
    """An owner that beat a moment ago is dead to a heartbeat whose stale_after is 0,
    alive to one with the default (30 s)."""
    store = MemoryStore()
    job = store.create(new_job(owner="other-host:1:x"))
    store.start(job.id, "other-host:1:x")
    store.heartbeat("other-host:1:x")
    lenient = Heartbeat(store, "host-a:1:y", interval=60)
    lenient.start()
    lenient.stop()
    assert store.get(job.id).status is JobStatus.RUNNING
    mine = store.create(new_job(owner="host-a:1:z"))
    store.start(mine.id, "host-a:1:z")
    strict = Heartbeat(store, "host-a:1:z", interval=60, stale_after=0.0)
    strict.start()
    strict.stop()
    assert store.get(job.id).status is JobStatus.LOST
    # Its own jobs are never its sweep's, and its beat is recorded under its name.
    assert store.get(mine.id).status is JobStatus.RUNNING
    assert set(store.heartbeats()) >= {"host-a:1:y", "host-a:1:z"}


def test_an_owner_names_its_host_and_process() -> None:
    """``host:pid:random``, the random part 8 hex digits: unique per runner object."""
    owners = {new_owner() for _ in range(50)}
    assert len(owners) == 50
    for owner in owners:
        assert re.fullmatch(
            rf"{re.escape(socket.gethostname())}:{os.getpid()}:[0-9a-f]{{8}}", owner
        )


def test_checking_a_live_owner_leaves_its_process_alone() -> None:
    """The liveness probe of a process on this host sends it nothing (signal 0): a live
    owner is alive, and stays so."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        now = time.time()
        owner = f"{socket.gethostname()}:{child.pid}:abcd0123"
        assert owner_is_dead(owner, now, now, 30.0) is False
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)  # a signal would have ended it by now
    finally:
        child.kill()
        child.wait(timeout=30)
    assert owner_is_dead(owner, now, now, 30.0) is True  # reaped: gone
