"""Deployments with several processes: gunicorn workers on SQLite, servers sharing Redis.

Every test here runs real ``procgate serve`` processes and talks HTTP to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import live_pids_in_group, wait_for
from tests.servers import Server, start_server

COMMANDS = """
[runner]
kind = "thread"
max_workers = 8
[commands.echo]
argv = ["echo"]
[commands.sh]
shell = true
argv = 'eval "$1"'
kill_grace = 1
"""


def sqlite_config(directory: Path) -> str:
    return f'[store]\nurl = "sqlite:///{directory}/jobs.db"\n' + COMMANDS


def redis_config(url: str, prefix: str) -> str:
    return f'[store]\nurl = "{url}"\nprefix = "{prefix}"\n' + COMMANDS


def submit_and_check(targets: list[Server], jobs: int = 500, clients: int = 16) -> None:
    """Submit async echo jobs from many threads round-robin, then read every one back.

    Every job must be found through every server, finished ``succeeded`` with its own
    output, and no job may appear twice.
    """
    submitted: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(n, jobs, clients):
            server = targets[i % len(targets)]
            status, job = server.json("POST", "/commands/echo", {"args": [f"job-{i}"]})
            if status != 202:
                errors.append(f"{status} {job}")
                continue
            with lock:
                submitted[job["id"]] = f"job-{i}\n"

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    assert len(submitted) == jobs
    for index, (job_id, stdout) in enumerate(submitted.items()):
        server = targets[(index + 1) % len(targets)]  # read through another server
        status, job = server.json("GET", f"/jobs/{job_id}?wait=30")
        assert status == 200, job
        assert job["status"] == "succeeded", job
        assert job["stdout"] == stdout
    for server in targets:
        seen: list[str] = []
        cursor = ""
        while True:
            _, page = server.json("GET", f"/jobs?command=echo&limit=1000{cursor}")
            seen += [job["id"] for job in page["jobs"]]
            if page["next"] is None:
                break
            cursor = f"&cursor={page['next']}"
        assert len(seen) == len(set(seen)) == jobs
        assert set(seen) == set(submitted)


@pytest.mark.docs("stores.md#choosing-a-store")
def test_four_gunicorn_workers_on_sqlite(tmp_path: Path, servers: list[Server]) -> None:
    """500 async jobs from 16 clients through 4 workers: all found, right, no duplicates."""
    servers.append(start_server(tmp_path, sqlite_config(tmp_path), "--workers", "4"))
    submit_and_check(servers)


@pytest.mark.docs("http-api.md#conventions")
@pytest.mark.docs("stores.md#choosing-a-store")
def test_two_servers_sharing_redis(tmp_path: Path, servers: list[Server], redis_url: str) -> None:
    """Two separate servers on one Redis: jobs from either are read through the other."""
    config = redis_config(redis_url, f"{tmp_path.name}:")
    for name in ("a", "b"):
        servers.append(start_server(tmp_path, config, "--workers", "2", name=name))
    submit_and_check(servers)


def shared_pair(tmp_path: Path, servers: list[Server], store: str, redis_url: str) -> None:
    """Two servers, one worker each, on one SQLite file or one Redis prefix."""
    if store == "sqlite":
        config = sqlite_config(tmp_path)
    else:
        config = redis_config(redis_url, f"{tmp_path.name}:")
    for name in ("a", "b"):
        servers.append(start_server(tmp_path, config, "--workers", "1", name=name))


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_redis_url(store_kind: str, request: pytest.FixtureRequest) -> str:
    """The Redis URL when the test runs on Redis; Redis is only started when needed."""
    return str(request.getfixturevalue("redis_url")) if store_kind == "redis" else ""


def start_tree(server: Server) -> tuple[str, int]:
    """Start a job whose shell prints its pid and leaves a background child."""
    status, job = server.json("POST", "/commands/sh", {"args": ["echo $$; sleep 100 & sleep 100"]})
    assert status == 202
    wait_for(lambda: server.json("GET", f"/jobs/{job['id']}")[1]["stdout"], timeout=20)
    return job["id"], int(server.json("GET", f"/jobs/{job['id']}")[1]["stdout"])


@pytest.mark.docs("http-api.md#delete-jobsid")
@pytest.mark.docs("stores.md#cancelling-across-processes")
def test_cancel_through_another_process(
    tmp_path: Path, servers: list[Server], store_kind: str, any_redis_url: str
) -> None:
    """DELETE served by another process kills the job's whole tree within a second."""
    shared_pair(tmp_path, servers, store_kind, any_redis_url)
    first, second = servers
    job_id, pgid = start_tree(first)
    assert live_pids_in_group(pgid)
    status, job = second.json("DELETE", f"/jobs/{job_id}")
    assert status == 202
    wait_for(lambda: not live_pids_in_group(pgid), timeout=1.0, interval=0.01)
    status, job = first.json("GET", f"/jobs/{job_id}?wait=10")
    assert job["status"] == "cancelled"


@pytest.mark.docs("live-output.md#followers-on-other-workers-and-hosts")
def test_output_so_far_is_visible_from_another_process(
    tmp_path: Path, servers: list[Server], store_kind: str, any_redis_url: str
) -> None:
    """A running job's output is readable through a process that does not run it."""
    shared_pair(tmp_path, servers, store_kind, any_redis_url)
    first, second = servers
    _status, job = first.json("POST", "/commands/sh", {"args": ["echo one; sleep 100"]})
    wait_for(lambda: second.json("GET", f"/jobs/{job['id']}")[1]["stdout"] == "one\n")
    assert second.json("GET", f"/jobs/{job['id']}")[1]["status"] == "running"
    _, _raw, data = second.request("GET", f"/jobs/{job['id']}/stdout")
    assert data == b"one\n"
    second.json("DELETE", f"/jobs/{job['id']}?wait=10")


@pytest.mark.docs("http-api.md#idempotency")
def test_idempotency_key_across_processes(
    tmp_path: Path, servers: list[Server], store_kind: str, any_redis_url: str
) -> None:
    """Concurrent POSTs with one idempotency key, through two processes, run one job."""
    shared_pair(tmp_path, servers, store_kind, any_redis_url)
    body = {"args": ["once"], "idempotency_key": "deploy-7"}
    results: list[tuple[int, Any]] = []
    barrier = threading.Barrier(16)

    def post(server: Server) -> None:
        barrier.wait()
        results.append(server.json("POST", "/commands/echo", body))

    threads = [threading.Thread(target=post, args=(servers[i % 2],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {status for status, _ in results} == {202}
    assert len({job["id"] for _, job in results}) == 1
    _, listed = servers[0].json("GET", "/jobs?command=echo")
    assert len(listed["jobs"]) == 1


@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_crash_leaves_lost_jobs_not_running(tmp_path: Path, servers: list[Server]) -> None:
    """SIGKILL of the whole server mid-job: after a restart the jobs are lost, not running,
    and the children the crash orphaned (each in a process group of its own) are killed.

    Jobs that had finished before the crash are all still there.
    """
    config = sqlite_config(tmp_path)
    server = start_server(tmp_path, config, "--workers", "2")
    servers.append(server)
    finished = [
        server.json("POST", "/commands/echo", {"args": [str(i)], "wait": True})[1]["id"]
        for i in range(5)
    ]
    sleepers = [
        server.json("POST", "/commands/sh", {"args": ["echo $$; exec sleep 100"]})[1]["id"]
        for _ in range(8)  # all running, however they spread: 8 threads per worker
    ]
    wait_for(
        lambda: all(server.json("GET", f"/jobs/{j}")[1]["stdout"] for j in sleepers[:8]),
        timeout=20,
    )
    pids = [server.json("GET", f"/jobs/{j}")[1]["stdout"] for j in sleepers[:8]]
    server.crash()
    try:
        again = start_server(tmp_path, config, "--workers", "2", name="again")
        servers.append(again)
        _, running = again.json("GET", "/jobs?status=running")
        assert running["jobs"] == []
        for job_id in sleepers:
            _, job = again.json("GET", f"/jobs/{job_id}")
            assert job["status"] == "lost", job
            assert "its runner" in job["error"]
            assert job["finished_at"] is not None
        for job_id in sleepers[:8]:
            _, job = again.json("GET", f"/jobs/{job_id}")
            assert "what was left of its process group was killed" in job["error"], job
        for pid in pids:
            wait_for(lambda pid=pid: not live_pids_in_group(int(pid)), timeout=10)
        for job_id in finished:
            _, job = again.json("GET", f"/jobs/{job_id}")
            assert job["status"] == "succeeded"
    finally:  # if the sweep failed to, kill what the crash orphaned
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)


@pytest.mark.docs("live-output.md#followers-on-other-workers-and-hosts")
def test_follower_in_another_process(
    tmp_path: Path, servers: list[Server], store_kind: str, any_redis_url: str
) -> None:
    """SSE and raw followers on one server see a job that runs on the other."""
    shared_pair(tmp_path, servers, store_kind, any_redis_url)
    first, second = servers
    script = "for i in 1 2 3; do echo out $i; echo err $i >&2; sleep 0.2; done"
    _, job = first.json("POST", "/commands/sh", {"args": [script]})
    status, headers, body = second.request("GET", f"/jobs/{job['id']}/events")
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    text = body.decode()
    blocks = [b for b in text.split("\n\n") if b.startswith("id:")]
    outputs = [json.loads(b.split("data: ", 1)[1]) for b in blocks if "event: output" in b]
    assert "".join(o["data"] for o in outputs if o["stream"] == "stdout") == (
        "out 1\nout 2\nout 3\n"
    )
    assert "".join(o["data"] for o in outputs if o["stream"] == "stderr") == (
        "err 1\nerr 2\nerr 3\n"
    )
    assert "event: end" in blocks[-1]
    _, _, raw = second.request("GET", f"/jobs/{job['id']}/stderr?follow=1")
    assert raw == b"err 1\nerr 2\nerr 3\n"


def test_flood_gets_429s_not_5xx_and_loses_nothing(tmp_path: Path, servers: list[Server]) -> None:
    """2,000 requests from 32 clients against a 2-worker runner: the server answers every
    one (202 or 429 with Retry-After, never 5xx), and every accepted job finishes."""
    config = """
[store]
url = "memory://"
[runner]
kind = "thread"
max_workers = 2
max_queue = 20
[commands.work]
argv = ["sleep", "0.01"]
"""
    server = start_server(tmp_path, config, "--threads", "40")
    servers.append(server)
    statuses: dict[int, int] = {}
    accepted: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for _ in range(n, 2000, 32):
            status, headers, body = server.request("POST", "/commands/work", {})
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    accepted.append(json.loads(body)["id"])
                elif status == 429:
                    assert int(headers["Retry-After"]) >= 1
                    assert json.loads(body)["error"]["code"] == "runner_busy"

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sum(statuses.values()) == 2000
    assert set(statuses) <= {202, 429}, statuses
    assert statuses.get(202, 0) >= 20
    assert server.json("GET", "/health") == (200, {"status": "ok"})  # still responsive
    for job_id in accepted:
        status, job = server.json("GET", f"/jobs/{job_id}?wait=30")
        assert status == 200
        assert job["status"] == "succeeded", job
    print(f"flood: {statuses}")
