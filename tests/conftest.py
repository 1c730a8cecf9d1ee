"""Fixtures shared by the test suite: Gates per runner kind, and process-tree probes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from procgate import Gate, JobStore, ProcessRunner, SyncRunner, ThreadRunner, open_store
from procgate.runners import Runner
from tests.proctable import processes
from tests.servers import Server

RUNNER_KINDS = ["sync", "thread", "process"]

#: The core suite, ``python -m pytest -m core``: the library's own behaviour (HTTP API,
#: jobs, processes, argument policy, config, auth, callbacks, streaming, uploads, a live
#: server, every store and runner). ``.ci/run`` runs it on the oldest and newest supported
#: Pythons as well; the rest (fault injection, Celery, several servers at once, fuzzing,
#: docs and examples checks) runs on the main interpreter only. Paths from the repository
#: root; a directory ends with "/".
CORE_SUITE = (
    "tests/runners/",
    "tests/stores/",
    "tests/test_app.py",
    "tests/test_auth.py",
    "tests/test_callbacks.py",
    "tests/test_config.py",
    "tests/test_job_object.py",
    "tests/test_live.py",
    "tests/test_openapi.py",
    "tests/test_policy.py",
    "tests/test_process.py",
    "tests/test_public_api.py",
    "tests/test_security.py",
    "tests/test_streaming.py",
    "tests/test_uploads.py",
    "tests/test_waiting.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``CORE_SUITE`` with ``core``."""
    for item in items:
        if not item.path.is_relative_to(config.rootpath):
            continue
        path = item.path.relative_to(config.rootpath).as_posix()
        if any(path == entry or path.startswith(entry) for entry in CORE_SUITE):
            item.add_marker(pytest.mark.core)


def make_runner(kind: str) -> Runner:
    """A small runner of the given kind, sized for tests."""
    if kind == "sync":
        return SyncRunner()
    if kind == "thread":
        return ThreadRunner(max_workers=4, max_queue=50)
    return ProcessRunner(max_workers=2, max_queue=50)


def register_defaults(gate: Gate) -> Gate:
    """The commands most tests use."""
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], timeout=60, kill_grace=1)
    gate.register("cat", ["cat"])
    gate.register("false", ["false"])
    gate.register("sh", 'eval "$1"', shell=True, timeout=30, kill_grace=1, allow_env=["FOO"])
    gate.register("env", ["env"], env={"CONFIGURED": "yes"}, allow_env=["FOO"])
    gate.register("short", ["sleep"], timeout=0.5, kill_grace=0.5)
    return gate


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: default SQLite stores go there, not the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=RUNNER_KINDS)
def runner_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: Every store kind, for modules that run their HTTP tests on each (see ``store_kind``).
STORE_KINDS = ["memory", "sqlite", "redis"]


def make_store(kind: str, request: pytest.FixtureRequest, directory: Path) -> JobStore:
    """A new, empty store of ``kind``: SQLite in ``directory``, Redis under a key prefix of
    its own and with a 1 s client ``socket_timeout`` (shorter than the waits of the tests
    that use it: every wait must hold past the client's own timeouts)."""
    if kind == "memory":
        return open_store("memory://")
    if kind == "sqlite":
        return open_store(f"sqlite:///{directory}/jobs.db")
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{os.urandom(8).hex()}:"
    return open_store(f"{url}?socket_timeout=1&socket_connect_timeout=1", prefix=prefix)


@pytest.fixture
def store_kind() -> str:
    """The store the ``gate`` fixture uses: memory, unless a module asks for every kind
    by overriding this fixture with ``params=STORE_KINDS`` (the HTTP contract modules)."""
    return "memory"


@pytest.fixture
def gate(
    runner_kind: str, store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Gate]:
    store = make_store(store_kind, request, tmp_path)
    gate = register_defaults(Gate(store=store, runner=make_runner(runner_kind), max_wait=20))
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def refused(store: JobStore, status: int, code: str, send: Callable[[], Any]) -> Any:
    """Make a request with ``send()``; check it is refused with ``status`` and the JSON
    error ``code``, and that no job was created for it. Jobs are counted by ``created_at``
    (``count(since=...)``), so one created and then deleted or evicted still counts."""
    hour_ago = time.time() - 3600  # a test is far shorter; count() looks back a day at most
    before = store.count(since=hour_ago)
    response = send()
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"]["code"] == code, response.json
    assert store.count(since=hour_ago) == before, "a refused request created a job"
    return response


def live_pids_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies count as gone)."""
    return [pid for pid, state, _, group, _ in processes() if group == pgid and state not in "ZX"]


def children_of(parent: int) -> list[int]:
    """Live child processes of ``parent``."""
    return [pid for pid, state, ppid, _, _ in processes() if ppid == parent and state != "Z"]


def open_files(under: Path) -> list[str]:
    """Files under ``under`` this process holds open (a deleted one ends " (deleted)"):
    a leaked SQLite connection shows here on every Python, not only as 3.13's warning."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of listdir itself is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{under}/"):
                paths.append(target)
    return paths


def zombie_children() -> list[int]:
    """Direct children of this process that exited but were never reaped."""
    me = os.getpid()
    return [pid for pid, state, ppid, _, _ in processes() if state == "Z" and ppid == me]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port, for the whole session.

    ``.ci/run`` installs redis-server; without it this fixture fails, it never skips.
    """
    import shutil
    import socket

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tmp_path_factory.mktemp("redis")
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*argv, "--dir", str(directory), "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        try:
            wait_for(lambda: _pings(client), timeout=20)
        finally:
            client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(params=STORE_KINDS)
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    """A new, empty store of each kind, for HTTP tests that must hold on every store.

    SQLite gets a file in ``tmp_path``, Redis a key prefix of its own. The Gate built on
    it closes it.
    """
    return make_store(str(request.param), request, tmp_path)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Real servers a test starts; each stopped after (SIGTERM). One that hangs is killed,
    and the test errors with its threads' stacks once all are stopped."""
    started: list[Server] = []
    yield started
    hung = []
    for server in started:
        if server.proc.poll() is None:
            try:
                server.stop()
            except AssertionError as exc:
                hung.append(str(exc))
    assert not hung, "\n\n".join(hung)
