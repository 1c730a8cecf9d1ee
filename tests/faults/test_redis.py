"""Redis faults, for real: client timeouts shorter than a wait, and a server that stops.

The store URLs carry redis-py client options (``?socket_timeout=1``), and every wait here
is longer than that option: a blocking read must be cut to fit under it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.test import Client

from procgate import Gate, ThreadRunner
from procgate.errors import StoreUnavailable
from procgate.stores.redis import RedisStore
from tests.conftest import wait_for
from tests.faults.conftest import RedisServer, fill
from tests.servers import Server, free_port, start_server
from tests.stores.test_contract import new_job

#: Longer than the client's socket_timeout (1 s) below, twice over.
WAIT = 2.5


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    """A Gate on Redis whose client gives up on any socket read after 1 s."""
    store = RedisStore(f"{redis_url}?socket_timeout=1", prefix=f"t-{uuid.uuid4().hex}:")
    gate = Gate(store=store, runner=ThreadRunner(max_workers=4), max_wait=60)
    gate.register("sh", 'eval "$1"', shell=True, timeout=30, kill_grace=1)
    yield Client(gate)
    gate.close()


def started(client: Client, script: str) -> str:
    response = client.post("/commands/sh", json={"args": [script]})
    assert response.status_code == 202, response.json
    job_id = str(response.json["id"])
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "running", timeout=30)
    return job_id


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_post_wait_outlasts_the_socket_timeout(client: Client) -> None:
    """ "wait": N longer than the client's socket timeout answers 200 with the finished
    job, not a 500 after the socket timeout."""
    began = time.monotonic()
    response = client.post("/commands/sh", json={"args": [f"sleep {WAIT}; echo done"], "wait": 10})
    assert response.status_code == 200, response.json
    assert response.json["stdout"] == "done\n"
    assert time.monotonic() - began >= WAIT


def test_get_wait_holds_for_the_whole_wait(client: Client) -> None:
    """GET ?wait= on a job that runs longer than the wait holds for the whole wait, then
    answers 200 with the job still running."""
    job_id = started(client, "sleep 30")
    began = time.monotonic()
    response = client.get(f"/jobs/{job_id}?wait={WAIT}")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "running"
    assert time.monotonic() - began >= WAIT
    assert client.delete(f"/jobs/{job_id}?wait=10").json["status"] == "cancelled"


def test_delete_wait_outlasts_the_socket_timeout(client: Client) -> None:
    """DELETE ?wait= for a child that takes longer than the socket timeout to stop."""
    job_id = started(client, f"trap 'sleep {WAIT}; exit 1' TERM; sleep 30 & wait")
    response = client.delete(f"/jobs/{job_id}?wait=20")
    assert response.status_code == 202, response.json
    assert response.json["status"] == "cancelled"


@pytest.mark.docs("live-output.md#polling-by-byte-offset")
def test_follow_and_offsets_outlast_the_socket_timeout(client: Client) -> None:
    """?follow=1 and ?offset=&wait= stay open through a silence longer than the socket
    timeout and deliver what comes after it."""
    job_id = started(client, f"echo one; sleep {WAIT}; echo two")
    response = client.get(f"/jobs/{job_id}/stdout?follow=1", buffered=False)
    assert b"".join(response.response) == b"one\ntwo\n"  # type: ignore[arg-type]
    job_id = started(client, f"sleep {WAIT}; echo late")
    part = client.get(f"/jobs/{job_id}/output?offset=0&wait=20")
    assert part.status_code == 200
    assert part.data == b"late\n"


def test_sse_outlasts_the_socket_timeout(client: Client) -> None:
    """An SSE stream through a silence longer than the socket timeout ends with the job's
    end event, not a cut connection."""
    job_id = started(client, f"sleep {WAIT}; echo end")
    response = client.get(f"/jobs/{job_id}/events", buffered=False)
    text = b"".join(response.response).decode()  # type: ignore[arg-type]
    events = [block for block in text.split("\n\n") if block.startswith("id:")]
    assert "event: end" in events[-1]
    end = json.loads(events[-1].split("data: ", 1)[1])
    assert end["status"] == "succeeded"
    assert end["stdout"] == "end\n"


COMMANDS = """
[gate]
max_running = 1
[runner]
kind = "thread"
heartbeat = 0.5
[commands.sleep]
argv = ["sleep"]
timeout = 30
kill_grace = 1
[commands.echo]
argv = ["echo"]
"""


def redis_server(tmp_path: Path, own_redis: RedisServer, servers: list[Server]) -> Server:
    config = f'[store]\nurl = "{own_redis.url}?socket_timeout=2"\n' + COMMANDS
    server = start_server(tmp_path, config, "--workers", "1")
    servers.append(server)
    return server


@pytest.mark.parametrize(
    ("runs", "outage"), [(3, 2.0), (2, 3.5)], ids=["ends-after-outage", "ends-during-outage"]
)
@pytest.mark.docs("security.md#failure-modes", "stores.md#when-the-store-fails")
def test_a_redis_outage_during_a_job_leaves_nothing_stuck(
    tmp_path: Path, own_redis: RedisServer, servers: list[Server], runs: int, outage: float
) -> None:
    """Redis stops while `sleep N` runs under max_running = 1: requests during the
    outage get a JSON 503 with Retry-After; the child is not disturbed (its cancel checks
    fail quietly), the job ends succeeded (its finish retried until Redis is back), and
    the next request is accepted (no capacity leaked)."""
    server = redis_server(tmp_path, own_redis, servers)
    status, job = server.json("POST", "/commands/sleep", {"args": [str(runs)]})
    assert status == 202, job
    wait_for(lambda: server.json("GET", f"/jobs/{job['id']}")[1]["status"] == "running")
    own_redis.stop()
    try:
        status, headers, body = server.request("POST", "/commands/echo", {"args": ["x"]})
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "store_unavailable"
        assert int(headers["Retry-After"]) >= 1
        status, _, body = server.request("GET", f"/jobs/{job['id']}")
        assert status == 503, body
        time.sleep(outage)  # a real outage: nothing to wait for but the clock
    finally:
        own_redis.start()
    status, done = server.json("GET", f"/jobs/{job['id']}?wait=30")
    assert status == 200, done
    assert done["status"] == "succeeded", done
    status, echo = server.json("POST", "/commands/echo", {"args": ["after"], "wait": 30})
    assert status == 200, echo
    assert echo["stdout"] == "after\n"


@pytest.mark.docs("stores.md#when-the-store-fails")
def blocked_reads(server: RedisServer) -> int:
    """How many clients of ``server`` are blocked in a command (a store's XREAD)."""
    with closing(redis.Redis.from_url(server.url)) as client:
        return int(client.info("clients")["blocked_clients"])


def test_a_wait_across_a_redis_restart_answers(
    tmp_path: Path, own_redis: RedisServer, servers: list[Server]
) -> None:
    """A long-poll in flight when Redis stops gets a JSON 503 (never a hang or an HTML
    500), and the job it waited for is intact when Redis is back."""
    server = redis_server(tmp_path, own_redis, servers)
    _, job = server.json("POST", "/commands/sleep", {"args": ["4"]})
    wait_for(lambda: server.json("GET", f"/jobs/{job['id']}")[1]["status"] == "running")
    answers: list[tuple[int, Any]] = []

    def poll() -> None:
        status, _, body = server.request("GET", f"/jobs/{job['id']}?wait=20")
        answers.append((status, json.loads(body)))

    assert blocked_reads(own_redis) == 0  # so the one below is the long-poll's XREAD
    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_for(lambda: blocked_reads(own_redis) == 1)
    own_redis.stop()
    try:
        waiter.join(60)
        assert answers, "the long-poll did not answer"
        status, body = answers[0]
        assert status == 503, body
        assert body["error"]["code"] == "store_unavailable"
    finally:
        own_redis.start()
    status, done = server.json("GET", f"/jobs/{job['id']}?wait=30")
    assert status == 200, done
    assert done["status"] == "succeeded", done


# -- Redis refusing work, in this process ---------------------------------------------


def _store(server: RedisServer, **options: Any) -> RedisStore:
    """A store of its own on ``server``, whose client gives up after 2 s."""
    url = f"{server.url}?socket_timeout=2&socket_connect_timeout=2"
    return RedisStore(url, prefix=f"t-{uuid.uuid4().hex}:", **options)


def _gate(store: RedisStore) -> Gate:
    gate = Gate(store=store, runner=ThreadRunner(max_workers=2), max_wait=60)
    gate.register("echo", ["echo"])
    return gate


def _refused(client: Client, why: str) -> None:
    """A new job is refused: 503 ``store_unavailable``, Retry-After, ``why`` in the message."""
    response = client.post("/commands/echo", json={"args": ["x"], "wait": True})
    assert response.status_code == 503, response.json
    assert response.json["error"]["code"] == "store_unavailable"
    assert why in response.json["error"]["message"]
    assert response.headers["Retry-After"] == "2"


UNAVAILABLE = r"^the Redis store is unavailable: "


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_stopped_redis_is_store_unavailable(own_redis: RedisServer) -> None:
    """Every call on a stopped Redis raises StoreUnavailable with redis-py's error, and
    works again once Redis is back (appendfsync always: the job is still there)."""
    store = _store(own_redis)
    try:
        job = new_job()
        store.create(job)
        own_redis.stop()
        with pytest.raises(StoreUnavailable, match=UNAVAILABLE + "ConnectionError: "):
            store.get(job.id)
        with pytest.raises(StoreUnavailable, match=UNAVAILABLE + "ConnectionError: "):
            store.create(new_job())
        own_redis.start()
        assert store.get(job.id).id == job.id
    finally:
        store.close()


#: Ways to make a Redis refuse writes, each with its undoing and what redis-py raises:
#: over ``maxmemory`` with nothing to evict (OOM, raised as OutOfMemoryError without its
#: code: the check looked for the code, so this was a 500), and a replica of nothing
#: that answers (READONLY).
REFUSALS = {
    "oom": (
        lambda admin: admin.config_set("maxmemory", "1"),
        lambda admin: admin.config_set("maxmemory", "0"),
        "OutOfMemoryError: command not allowed when used memory",
    ),
    "readonly": (
        lambda admin: admin.replicaof("127.0.0.1", str(free_port())),
        lambda admin: admin.replicaof("NO", "ONE"),
        "ReadOnlyError: You can't write against a read only replica",
    ),
}


@pytest.mark.docs("stores.md#when-the-store-fails")
@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_redis_refusing_writes_is_store_unavailable(own_redis: RedisServer, refusal: str) -> None:
    """A Redis that refuses writes (out of memory, a read-only replica) makes a new job
    503 with the reason, not a 500, and jobs go through again once it takes writes."""
    refuse, allow, reason = REFUSALS[refusal]
    gate = _gate(_store(own_redis))
    admin = redis.Redis(port=own_redis.port, socket_timeout=5)
    try:
        client = Client(gate)
        refuse(admin)
        _refused(client, reason)
        allow(admin)
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
    finally:
        allow(admin)
        admin.close()
        gate.close()


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_redis_that_cannot_save_is_store_unavailable(tmp_path: Path, tmpfs: Any) -> None:
    """A Redis with save points whose snapshot failed (its disk is full) refuses writes
    with MISCONF, which redis-py leaves a plain ResponseError: a new job is 503, and so is
    a read whose retention pass deletes an expired job in a pipeline (the reply then comes
    after "caused error: "). Jobs go through again once a snapshot succeeds."""
    disk = tmpfs(tmp_path / "redis", "4m")
    server = RedisServer(disk, options=("--save", "3600 1", "--appendonly", "no"))
    server.start()
    store = _store(server, ttl=0.2, evict_interval=0)
    gate = _gate(store)
    admin = redis.Redis(port=server.port, socket_timeout=5)
    filler = disk / "filler"
    try:
        client = Client(gate)
        done = client.post("/commands/echo", json={"wait": True}).json["id"]
        fill(disk)
        admin.bgsave()
        wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err")
        _refused(client, "MISCONF ")
        time.sleep(0.3)  # the finished job is past its ttl now
        response = client.get(f"/jobs/{done}")
        assert response.status_code == 503, response.json
        assert "caused error: MISCONF " in response.json["error"]["message"]
        filler.unlink()
        admin.bgsave()
        wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "ok")
        assert client.post("/commands/echo", json={"wait": True}).status_code == 200
    finally:
        filler.unlink(missing_ok=True)
        admin.close()
        gate.close()
        server.stop()


def test_a_reply_that_is_a_bug_is_not_a_fault(own_redis: RedisServer) -> None:
    """A reply that says procgate misused Redis (here WRONGTYPE, a job key of the wrong
    type) is not StoreUnavailable: it passes through as redis-py's ResponseError."""
    store = _store(own_redis)
    admin = redis.Redis(port=own_redis.port, socket_timeout=5)
    try:
        job = new_job()
        store.create(job)
        admin.set(f"{store.prefix}job:{job.id}", "not a hash")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE") as info:
            store.get(job.id)
        assert not isinstance(info.value, StoreUnavailable)
    finally:
        admin.close()
        store.close()
