"""Celery workers SIGKILLed with messages they had taken but not started.

Real processes, as in tests/test_celery.py (whose cluster fixture this uses): two
``procgate serve`` APIs, ``procgate worker`` processes, one redis-server as broker and store.
"""

from __future__ import annotations

import uuid

import pytest

from procgate.stores.redis import RedisStore
from tests.conftest import live_pids_in_group, wait_for
from tests.test_celery import Cluster, get, post, processes_with


@pytest.mark.docs("security.md#failure-modes")
@pytest.mark.docs("scaling.md#when-a-worker-dies")
def test_messages_a_killed_worker_held_run_within_stale_after(
    cluster: Cluster, redis_url: str
) -> None:
    """A worker with one thread runs a long job and holds the next job's message (Celery
    prefetches while the thread is busy). SIGKILL it: the broker would give the held
    message back only after its visibility timeout (300 s), but the store knows the
    worker took that job, so the sweep sends it again and another worker runs it within
    stale_after (3 s here) plus a few seconds; the running job becomes lost and its
    orphaned child, on this host, is killed."""
    w1 = cluster.add_worker("w1", "--concurrency", "1")
    a, b = cluster.apis
    mark = f"8{uuid.uuid4().int % 10**6}.5"
    long = post(a, "sleep", {"args": [mark]})
    wait_for(lambda: len(processes_with(f"sleep {mark}")) == 1, timeout=20)
    child = processes_with(f"sleep {mark}")[0]
    held = post(a, "echo", {"args": ["held"]})
    prefix = cluster.config.split('prefix = "', 1)[1].split('"', 1)[0]
    base = redis_url.rsplit("/", 1)[0]
    store = RedisStore(f"{base}/0", prefix=prefix)
    try:
        # The worker received the message while its one thread was busy: it claimed it.
        wait_for(lambda: store.get(held["id"]).owner is not None, timeout=20)
        assert get(b, held["id"])["status"] == "queued"
    finally:
        store.close()
    w1.kill()
    cluster.add_worker("w2")
    done = get(b, held["id"], wait=3 + 15)
    assert done["status"] == "succeeded", done
    assert done["stdout"] == "held\n"
    lost = get(a, long["id"], wait=15)
    assert lost["status"] == "lost", lost
    wait_for(lambda: not live_pids_in_group(child), timeout=15)
