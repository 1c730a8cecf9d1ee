"""The Celery runner with real processes: two API servers, Celery workers, one Redis.

No eager mode anywhere: the API servers are ``procgate serve`` with ``[runner] kind =
"celery"``, the workers are ``procgate worker``, and Redis (a real ``redis-server`` on a
free port) is both the broker and the job store. Each test gets its own queues and key
prefix, so tests never see each other's messages or jobs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from procgate import Gate, MemoryStore
from procgate.errors import ConfigError
from procgate.runners import by_kind
from procgate.runners.celery import CeleryRunner
from tests.conftest import wait_for
from tests.servers import Server, Worker, start_server, start_worker

COMMANDS = """
[commands.echo]
argv = ["echo"]
timeout = 60

[commands.tree]  # a process tree: two sleeps under a shell
argv = ["sh", "-c", "sleep \\"$1\\" & sleep \\"$1\\"; wait", "tree"]
timeout = 120
kill_grace = 1

[commands.sleep]
argv = ["sleep"]
timeout = 120
kill_grace = 1

[commands.again]  # run once more if its worker dies
argv = ["sleep"]
timeout = 120
kill_grace = 1
retry_on_worker_loss = true

[commands.special]
argv = ["echo", "special"]
queue = "{special}"
timeout = 60
"""


@dataclass
class Cluster:
    """What one test runs: API servers and workers sharing a broker and a store."""

    directory: Path
    config: str
    queue: str
    special: str
    apis: list[Server]
    workers: list[Worker]

    def add_worker(self, name: str, *extra: str, config: str | None = None) -> Worker:
        worker = start_worker(self.directory, config or self.config, name, *extra)
        self.workers.append(worker)
        return worker

    def add_api(self, name: str, config: str | None = None) -> Server:
        server = start_server(self.directory, config or self.config, "--workers", "1", name=name)
        self.apis.append(server)
        return server


def cluster_config(redis_url: str, tag: str, commands: str = COMMANDS) -> tuple[str, str, str]:
    """(config, default queue, special queue) for one test's cluster."""
    base = redis_url.rsplit("/", 1)[0]
    queue, special = f"jobs-{tag}", f"special-{tag}"
    config = f"""
[runner]
kind = "celery"
broker = "{base}/1"
queue = "{queue}"
heartbeat = 0.5
stale_after = 3

[store]
url = "{base}/0"
prefix = "test-{tag}:"
""" + commands.replace("{special}", special)
    return config, queue, special


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Two API servers and no workers yet; everything is stopped afterwards."""
    config, queue, special = cluster_config(redis_url, uuid.uuid4().hex[:12])
    made = Cluster(tmp_path, config, queue, special, [], [])
    try:
        made.add_api("api-a")
        made.add_api("api-b")
        yield made
    finally:
        for worker in made.workers:
            if worker.proc.poll() is None:
                worker.kill()
        for server in made.apis:
            if server.proc.poll() is None:
                server.stop()


def post(server: Server, command: str, body: dict[str, Any]) -> dict[str, Any]:
    status, job = server.json("POST", f"/commands/{command}", body)
    assert status in (200, 202), job
    return dict(job)


def get(server: Server, job_id: str, wait: float = 0) -> dict[str, Any]:
    status, job = server.json("GET", f"/jobs/{job_id}?wait={wait:g}")
    assert status == 200, job
    return dict(job)


def processes_with(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``text``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                cmdline = file.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as file:
                state = file.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != b"Z":
            pids.append(int(entry))
    return pids


def _kill_processes(text: str) -> None:
    for pid in processes_with(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as file:
        return int(file.read().rsplit(b")", 1)[1].split()[1])


@pytest.mark.docs("scaling.md#the-topology")
def test_jobs_spread_over_both_workers_and_read_from_both_apis(cluster: Cluster) -> None:
    """200 jobs submitted round-robin through two APIs all finish; both workers ran some;
    every job reads the same from both APIs."""
    workers = [cluster.add_worker("w1", "--concurrency", "4"), cluster.add_worker("w2")]
    a, b = cluster.apis

    def submit(number: int) -> tuple[str, int]:
        job = post((a, b)[number % 2], "echo", {"args": [f"job-{number}"]})
        return str(job["id"]), number

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit, range(200)))
    assert len({job_id for job_id, _ in submitted}) == 200
    for job_id, number in submitted:
        seen = [get(api, job_id, wait=30) for api in (b, a)]
        for job in seen:
            assert job["status"] == "succeeded", job
            assert job["stdout"] == f"job-{number}\n"
        assert {**seen[0], "url": ""} == {**seen[1], "url": ""}  # each API's own URL
    counts = [sum(worker.ran(job_id) for job_id, _ in submitted) for worker in workers]
    assert sum(counts) == 200
    assert all(count > 0 for count in counts), counts


@pytest.mark.docs("stores.md#cancelling-across-processes")
@pytest.mark.docs("scaling.md#cancelling")
def test_cancel_through_the_other_api_kills_the_tree(cluster: Cluster) -> None:
    """A job submitted through one API and cancelled through the other: its whole process
    tree, on the worker's side, is gone within 2 s."""
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    a, b = cluster.apis
    mark = f"6{uuid.uuid4().int % 10**6}.5"  # a sleep argument no other process has
    job = post(a, "tree", {"args": [mark]})
    wait_for(lambda: get(b, job["id"])["status"] == "running", timeout=20)
    wait_for(lambda: len(processes_with(f"sleep {mark}")) == 2, timeout=10)
    status, cancelled = b.json("DELETE", f"/jobs/{job['id']}?wait=10")
    assert status == 202, cancelled
    assert cancelled["status"] == "cancelled"
    wait_for(lambda: processes_with(f"sleep {mark}") == [], timeout=2)
    assert get(a, job["id"])["status"] == "cancelled"


@pytest.mark.docs("scaling.md#when-a-worker-dies")
def test_a_killed_worker_s_job_becomes_lost(cluster: Cluster) -> None:
    """SIGKILL the worker running a job: the job is lost within the heartbeat settings
    (stale_after = 3 s), and never stays running."""
    workers = [cluster.add_worker("w1"), cluster.add_worker("w2")]
    a, b = cluster.apis
    mark = f"7{uuid.uuid4().int % 10**6}.5"
    job = post(a, "sleep", {"args": [mark]})
    wait_for(lambda: len(processes_with(f"sleep {mark}")) == 1, timeout=20)
    child = processes_with(f"sleep {mark}")[0]
    victim = next(worker for worker in workers if worker.proc.pid == parent_of(child))
    try:
        victim.kill()
        wait_for(lambda: get(b, job["id"])["status"] != "running", timeout=3 + 5)
        lost = get(a, job["id"])
        assert lost["status"] == "lost"
        assert "stopped before the job finished" in lost["error"]
    finally:
        _kill_processes(f"sleep {mark}")  # a killed worker leaves its children behind


@pytest.mark.docs("scaling.md#when-a-worker-dies")
def test_a_killed_worker_s_job_runs_again_once_when_configured(cluster: Cluster) -> None:
    """With retry_on_worker_loss, the job of a SIGKILLed worker is queued again and run
    by the other worker, once."""
    workers = [cluster.add_worker("w1"), cluster.add_worker("w2")]
    a, b = cluster.apis
    mark = f"2.{uuid.uuid4().int % 10**6}"  # about 2 s
    job = post(a, "again", {"args": [mark]})
    wait_for(lambda: len(processes_with(f"sleep {mark}")) == 1, timeout=20)
    first = get(b, job["id"])
    assert first["status"] == "running"
    victim = next(w for w in workers if w.proc.pid == parent_of(processes_with(f"sleep {mark}")[0]))
    survivor = next(worker for worker in workers if worker is not victim)
    try:
        victim.kill()
        done = get(b, job["id"], wait=30)  # lost, queued again, run again, finished
        assert done["status"] == "succeeded", done
        assert done["started_at"] != first["started_at"]
        # Once only, counted by the workers' audit trails: the victim's first start and the
        # survivor's one retry; a duplicated requeue would show a third ``running`` line.
        assert (victim.starts(job["id"]), survivor.starts(job["id"])) == (1, 1)
    finally:
        _kill_processes(f"sleep {mark}")


@pytest.mark.docs("configuration.md#procgate-worker", "scaling.md#routing-commands-to-workers")
def test_a_queue_s_jobs_run_only_on_its_workers(cluster: Cluster) -> None:
    """A command with queue = "special" runs only on the worker that consumes that queue;
    the other worker still takes the default queue's jobs."""
    plain = cluster.add_worker("w1")
    special = cluster.add_worker("w2", "--queues", cluster.special)
    a, b = cluster.apis
    special_ids = [post((a, b)[n % 2], "special", {})["id"] for n in range(10)]
    plain_ids = [post((a, b)[n % 2], "echo", {"args": ["x"]})["id"] for n in range(10)]
    for job_id in special_ids:
        job = get(a, job_id, wait=30)
        assert job["status"] == "succeeded", job
        assert job["stdout"] == "special\n"
        assert special.ran(job_id)
        assert not plain.ran(job_id)
    for job_id in plain_ids:
        assert get(b, job_id, wait=30)["status"] == "succeeded"
        assert plain.ran(job_id)
        assert not special.ran(job_id)


@pytest.mark.docs("scaling.md#routing-commands-to-workers")
def test_a_worker_without_the_command_says_so(cluster: Cluster, redis_url: str) -> None:
    """Commands are resolved on the worker's host: one it lacks, or whose program is not
    there, ends the job as an error that names the worker."""
    commands = COMMANDS + '\n[commands.gpu]\nargv = ["/opt/no-such-dir/render"]\ntimeout = 60\n'
    api_only = commands + '\n[commands.api_only]\nargv = ["true"]\n'
    tag = cluster.queue.removeprefix("jobs-")
    api_config = cluster_config(redis_url, tag, api_only)[0]
    worker_config = cluster_config(redis_url, tag, commands)[0]
    api = cluster.add_api("api-c", config=api_config)  # the program is on the workers only
    cluster.add_worker("w1", config=worker_config)
    missing = get(api, post(api, "api_only", {})["id"], wait=30)
    assert missing["status"] == "error"
    assert missing["error"] == "worker w1@test: command 'api_only' is not configured on this worker"
    absent = get(api, post(api, "gpu", {})["id"], wait=30)
    assert absent["status"] == "error"
    assert "program '/opt/no-such-dir/render' not found here" in absent["error"]


@pytest.mark.docs("scaling.md#restarts")
def test_queued_jobs_wait_in_the_broker_for_a_worker(cluster: Cluster) -> None:
    """Jobs submitted while no worker runs (the only one was stopped) stay queued, and run
    when a worker starts again, even after the API that took them has restarted."""
    a, b = cluster.apis
    first = cluster.add_worker("w1")
    assert get(b, post(a, "echo", {"args": ["before"]})["id"], wait=30)["status"] == "succeeded"
    assert first.stop() == 0  # SIGTERM: a warm shutdown
    ids = [post(a, "echo", {"args": [str(n)]})["id"] for n in range(5)]
    assert all(get(b, job_id)["status"] == "queued" for job_id in ids)
    a.stop()
    cluster.apis.remove(a)
    restarted = cluster.add_api("api-a2")
    cluster.add_worker("w1-again")
    for number, job_id in enumerate(ids):
        job = get(restarted, job_id, wait=30)
        assert job["status"] == "succeeded", job
        assert job["stdout"] == f"{number}\n"


@pytest.mark.docs("scaling.md#configuration")
def test_celery_runner_config_errors() -> None:
    """The runner kind needs Celery and a broker; its heartbeat settings are checked."""
    assert by_kind("celery") is CeleryRunner
    with pytest.raises(ConfigError, match="broker"):
        CeleryRunner(None)
    with pytest.raises(ConfigError, match="stale_after"):
        CeleryRunner("redis://127.0.0.1:1/0", heartbeat=5, stale_after=5)


@pytest.mark.docs("scaling.md#what-else-to-know")
def test_an_unreachable_broker_is_a_503(tmp_path: Path) -> None:
    """When the job cannot be queued the client hears so (503), and no job is left."""
    from werkzeug.test import Client

    runner = CeleryRunner("redis://127.0.0.1:1/0")
    runner.app.conf.broker_connection_max_retries = 0
    runner.app.conf.task_publish_retry = False
    store = MemoryStore()
    gate = Gate(store=store, runner=runner)
    gate.register("echo", ["echo"])
    try:
        response = Client(gate).post("/commands/echo", json={"args": ["x"]})
    finally:
        gate.close()
    assert response.status_code == 503
    assert response.json["error"]["code"] == "runner_closed"
    assert store.list().jobs == []


@pytest.mark.docs("configuration.md#procgate-worker")
def test_procgate_worker_needs_the_celery_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config without [runner] kind = "celery" has nothing for a worker to take."""
    from procgate.cli import main

    path = tmp_path / "thread.toml"
    path.write_text('[commands.echo]\nargv = ["echo"]\n')
    assert main(["worker", "--config", str(path)]) == 2
    assert 'procgate worker needs [runner] kind = "celery"' in capsys.readouterr().err
    path.write_text(
        '[runner]\nkind = "celery"\nbroker = "redis://127.0.0.1:1/0"\nconcurrency = 0\n'
        '[store]\nurl = "memory://"\n'
    )
    assert main(["worker", "--config", str(path)]) == 2
    assert "concurrency" in capsys.readouterr().err


@pytest.mark.docs("scaling.md#configuration")
def test_a_sqlite_store_serves_api_and_worker_on_one_host(
    redis_url: str, tmp_path: Path
) -> None:
    """On a single host the store may be SQLite: API and worker share the file."""
    tag = uuid.uuid4().hex[:12]
    config = cluster_config(redis_url, tag)[0].replace(
        f'url = "{redis_url.rsplit("/", 1)[0]}/0"\nprefix = "test-{tag}:"',
        f'url = "sqlite:///{tmp_path}/jobs.db"',
    )
    assert "sqlite:///" in config
    api = start_server(tmp_path, config, "--workers", "2", name="api")
    worker = start_worker(tmp_path, config, "w1")
    try:
        ids = [post(api, "echo", {"args": [str(n)]})["id"] for n in range(20)]
        for number, job_id in enumerate(ids):
            job = get(api, job_id, wait=30)
            assert job["status"] == "succeeded", job
            assert job["stdout"] == f"{number}\n"
            assert worker.ran(job_id)
        synced = post(api, "echo", {"args": ["now"], "wait": 30})
        assert synced["status"] == "succeeded"
    finally:
        worker.stop()
        api.stop()
