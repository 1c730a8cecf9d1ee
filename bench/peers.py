"""procgate against its peers, adnanh/webhook and Flask-Shell2HTTP, on the same ``echo hello``.

Run it with ``python bench/peers.py`` (``--help`` for the options). In one bounded run
(about 4-5 minutes by default) it measures, each ``--rounds`` times and interleaved so that
every round sees the same noise:

* the spawn limit: ``subprocess.run(["echo", "hello"], capture_output=True)`` in a loop on
  1 and on 2 threads, in this process;
* adnanh/webhook (``webhook -hooks <file>``): ``POST /hooks/echo`` with
  ``{"args": ["hello"]}``, a hook that runs ``/bin/echo`` with the payload's first arg and
  answers with its output, under wrk at concurrency 1, 4 and 16;
* Flask-Shell2HTTP in a venv of its own, under gunicorn (1 worker, 16 threads): ``POST
  /echo`` with ``{"args": ["hello"], "force_unique_key": true}`` (202 and a key), then
  ``GET /echo?key=<key>&wait=true``, by a keep-alive Python client, at 1, 4 and 16;
* ``procgate serve`` with its defaults and the example config's ``echo`` command
  (``timeout = 60``, as in ``examples/procgate.toml``), apart from the store and runner
  kinds: the memory store (1 worker), the default SQLite store (default workers) and, when
  ``redis-server`` is installed, the Redis store (default workers; a throwaway
  ``redis-server`` on a free loopback port, a key prefix per server), each with the thread
  and the process runner. Sync: ``POST /commands/echo`` with ``{"args":
  ["hello"], "wait": true}`` under wrk; async: ``POST`` without ``wait`` (202), then ``GET
  /jobs/<id>?wait=10``, by the Python client; both at 1, 4 and 16. With ``--baseline DIR``
  (another procgate source checkout), each of these servers is also started from
  ``DIR/src`` (``PYTHONPATH``) and measured right after its twin, in the same rounds; a
  table gives the current/baseline ratios.

Then, once: lookup errors of Flask-Shell2HTTP with two gunicorn workers (and of procgate's
SQLite server) when the GET does not reuse the POST's connection, and the memory of a
procgate server: idle, after 10,000 retained finished jobs, and while one job prints 1 GiB
with a 16 MiB cap. It prints markdown tables of medians, with the server-side CPU per job.

What is not installed is said and skipped: wrk (then the Python client does the sync
rows), webhook (``apt-get install webhook``), and Flask-Shell2HTTP (a venv that pip could
not fill). Loopback only: every server binds 127.0.0.1 and every request goes there.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import http.client
import importlib.util
import inspect
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from _common import (
    HOST,
    START_DEADLINE,
    WRK_COUNTERS,
    Sample,
    Server,
    children,
    closed_loop,
    cpu_count,
    descendants,
    free_port,
    median,
    memory_kib,
    procgate_version,
    publish,
    round_ratio,
    run_wrk,
    serve,
    stop,
    tree_cpu,
    wrk_version,
)
from stores import WAIT, redis_server, submit_wait_client
from sync_echo import WRK_SCRIPT as PROCGATE_WRK_SCRIPT
from sync_echo import measure_spawn

CONCURRENCIES = (1, 4, 16)
JSON_HEADERS = {"Content-Type": "application/json"}
PROCGATE_PATH = "/commands/echo"
PROCGATE_SYNC_BODY = b'{"args": ["hello"], "wait": true}'
WEBHOOK_PATH = "/hooks/echo"
WEBHOOK_BODY = b'{"args": ["hello"]}'
PROCGATE_ASYNC_BODY = b'{"args": ["hello"]}'
FS2H_PATH = "/echo"
FS2H_BODY = b'{"args": ["hello"], "force_unique_key": true}'
#: Seconds of checked Python-client traffic at concurrency 8 after a server starts; the
#: process runner's servers get more, as they start a Python interpreter per runner slot.
WARMUP = 1.0
WARMUP_PROCESS = 2.0
#: Threads of the Flask-Shell2HTTP gunicorn worker.
FS2H_THREADS = 16
#: Jobs of the lookup-error check, per way of connecting.
LOOKUP_JOBS = 200
#: The memory part: retained jobs, the store's max_jobs, and the big job.
RETAIN_JOBS = 10_000
RETAIN_MAX_JOBS = 20_000
RETAIN_WARMUP = 1_000  # jobs before the retained-memory measurement starts
BIG_BYTES = 1 << 30
BIG_CAP = 16 << 20
#: Seconds the big job may take.
BIG_TIMEOUT = 300

STORES = ("memory", "sqlite", "redis")
STORE_NAMES = {"memory": "memory", "sqlite": "SQLite", "redis": "Redis"}
RUNNERS = ("thread", "process")
MODES = ("sync", "async")

# adnanh/webhook: /bin/echo with the payload's args[0]; the answer is its stdout.
HOOKS = [
    {
        "id": "echo",
        "execute-command": "/bin/echo",
        "include-command-output-in-response": True,
        "pass-arguments-to-command": [{"source": "payload", "name": "args.0"}],
    }
]

WEBHOOK_WRK_SCRIPT = (
    r"""
wrk.method = "POST"
wrk.body = '{"args": ["hello"]}'
wrk.headers["Content-Type"] = "application/json"

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
  elseif body ~= "hello\n" then
    bad = bad + 1
  end
end
"""
    + WRK_COUNTERS
)

# The Python floor of a sync job: the least a WSGI app can do for one (parse the JSON, run
# the child, answer JSON), served by the engine and the settings of ``procgate serve``.
FLOOR_APP = """\
import json
import subprocess


def app(environ, start_response):
    if environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status":"ok"}']
    size = int(environ.get("CONTENT_LENGTH") or 0)
    args = json.loads(environ["wsgi.input"].read(size))["args"]
    done = subprocess.run(["echo", *args], capture_output=True)
    body = json.dumps(
        {
            "status": "succeeded" if done.returncode == 0 else "failed",
            "returncode": done.returncode,
            "stdout": done.stdout.decode(),
            "stderr": done.stderr.decode(),
        },
        separators=(",", ":"),
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""

FS2H_APP = """\
from flask import Flask
from flask_executor import Executor
from flask_shell2http import Shell2HTTP

app = Flask(__name__)
executor = Executor(app)
shell2http = Shell2HTTP(app, executor)
shell2http.register_command(endpoint="echo", command_name="echo")


@app.get("/health")
def health():
    return "ok"
"""

FS2H_VERSIONS = """\
import importlib.metadata as m, platform
names = ("Flask-Shell2HTTP", "Flask-Executor", "Flask", "gunicorn")
print(", ".join(f"{n} {m.version(n)}" for n in names) + f" (Python {platform.python_version()})")
"""


@dataclass
class Row:
    label: str
    server: str
    concurrency: int | None
    short: str
    samples: list[Sample] = field(default_factory=list)
    #: Per round: CPU ms per job of the server's processes, and of the children they reaped.
    cpu: list[tuple[float, float]] = field(default_factory=list)
    skipped: str = ""
    #: A sync procgate row's Python floor: the same engine and workers, the least app.
    floor: Row | None = None


# -- load clients (they run in a process of their own) ----------------------------------


def _connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(HOST, port, timeout=30)


def _exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body, JSON_HEADERS if body is not None else {})
    response = conn.getresponse()
    return response.status, response.read()


def _procgate_ok(data: bytes) -> bool:
    job = json.loads(data)
    return bool(job.get("status") == "succeeded" and job.get("stdout") == "hello\n")


def sync_client(port: int, peer: str, concurrency: int, duration: float) -> dict[str, Any]:
    """One request per job (procgate ``wait: true``, or webhook), every body checked.

    The fallback for the sync rows when wrk is missing, and the warm-up of those servers.
    """
    path, body = (
        (WEBHOOK_PATH, WEBHOOK_BODY) if peer == "webhook" else (PROCGATE_PATH, PROCGATE_SYNC_BODY)
    )
    problems: list[str] = []

    def one(state: list[Any]) -> bool:
        try:
            status, data = _exchange(state[0], "POST", path, body)
        except (OSError, http.client.HTTPException) as exc:
            state[0].close()
            state[0] = _connect(port)
            problems.append(f"{type(exc).__name__}: {exc}")
            return False
        try:
            good = status == 200 and (
                data == b"hello\n" if peer == "webhook" else _procgate_ok(data)
            )
        except ValueError:
            good = False
        if not good:
            problems.append(f"HTTP {status}: {data[:200]!r}")
        return good

    sample = closed_loop(concurrency, duration, one, make=lambda: _connect(port))
    return {**sample.__dict__, "problems": problems[:5]}


def fs2h_client(port: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Flask-Shell2HTTP's two steps on one keep-alive connection, every result checked."""
    problems: list[str] = []

    def one(state: list[Any]) -> bool:
        conn = state[0]
        try:
            status, data = _exchange(conn, "POST", FS2H_PATH, FS2H_BODY)
            if status != 202:
                problems.append(f"POST: HTTP {status}: {data[:200]!r}")
                return False
            key = json.loads(data)["key"]
            status, data = _exchange(conn, "GET", f"{FS2H_PATH}?key={key}&wait=true")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            state[0] = _connect(port)
            problems.append(f"{type(exc).__name__}: {exc}")
            return False
        except (ValueError, KeyError, TypeError):
            problems.append(f"POST: no key in {data[:200]!r}")
            return False
        try:
            report = json.loads(data) if status == 200 else {}
        except ValueError:
            report = {}
        if report.get("report") != "hello\n" or report.get("returncode") != 0:
            problems.append(f"GET: HTTP {status}: {data[:200]!r}")
            return False
        return True

    sample = closed_loop(concurrency, duration, one, make=lambda: _connect(port))
    return {**sample.__dict__, "problems": problems[:5]}


def fill_client(port: int, count: int, concurrency: int) -> dict[str, Any]:
    """Exactly ``count`` sync procgate echo jobs on ``concurrency`` keep-alive connections."""
    tickets = itertools.count()
    lock = threading.Lock()
    totals = {"ok": 0, "errors": 0}
    problems: list[str] = []

    def loop() -> None:
        conn = _connect(port)
        ok = errors = 0
        try:
            while next(tickets) < count:
                try:
                    status, data = _exchange(conn, "POST", PROCGATE_PATH, PROCGATE_SYNC_BODY)
                    good = status == 200 and _procgate_ok(data)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    conn.close()
                    conn = _connect(port)
                    status, data, good = 0, repr(exc).encode(), False
                if good:
                    ok += 1
                else:
                    errors += 1
                    problems.append(f"HTTP {status}: {data[:200]!r}")
        finally:
            conn.close()
        with lock:
            totals["ok"] += ok
            totals["errors"] += errors

    start = time.perf_counter()
    pool = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {**totals, "seconds": time.perf_counter() - start, "problems": problems[:5]}


def lookup_client(port: int, peer: str, count: int, keepalive: bool) -> dict[str, Any]:
    """``count`` submit + wait jobs one after the other; counts how the wait request ended.

    Without ``keepalive`` every request has a connection of its own, as a client without
    a session (curl, say) does, so gunicorn may hand the GET to another worker than the
    POST's. Returns counts of ``ok``, ``not_found`` (404) and ``other``, and samples.
    """
    counts = {"ok": 0, "not_found": 0, "other": 0}
    samples: list[str] = []
    conn = _connect(port) if keepalive else None
    for _ in range(count):
        try:
            post = conn or _connect(port)
            if peer == "fs2h":
                status, data = _exchange(post, "POST", FS2H_PATH, FS2H_BODY)
                get_path = f"{FS2H_PATH}?key={json.loads(data)['key']}&wait=true"
            else:
                status, data = _exchange(post, "POST", PROCGATE_PATH, PROCGATE_ASYNC_BODY)
                get_path = f"/jobs/{json.loads(data)['id']}?wait={WAIT}"
            if post is not conn:
                post.close()
            get = conn or _connect(port)
            status, data = _exchange(get, "GET", get_path)
            if get is not conn:
                get.close()
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            counts["other"] += 1
            samples.append(repr(exc))
            if conn is not None:
                conn.close()
                conn = _connect(port)
            continue
        if status == 404:
            counts["not_found"] += 1
            if len(samples) < 3:
                samples.append(f"HTTP 404: {data[:120]!r}")
        elif status == 200:
            counts["ok"] += 1
        else:
            counts["other"] += 1
            samples.append(f"HTTP {status}: {data[:120]!r}")
    if conn is not None:
        conn.close()
    return {**counts, "samples": samples[:5]}


# -- measurements in this process ------------------------------------------------------


class Bench:
    """The client process, the clients' choice, and CPU accounting around measurements."""

    def __init__(self, pool: concurrent.futures.Executor, wrk: str | None, workdir: str):
        self.pool = pool
        self.wrk = wrk
        self.scripts = {}
        for name, text in (("procgate", PROCGATE_WRK_SCRIPT), ("webhook", WEBHOOK_WRK_SCRIPT)):
            path = os.path.join(workdir, f"{name}.lua")
            with open(path, "w") as file:
                file.write(text)
            self.scripts[name] = path

    def run(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        return self.pool.submit(fn, *args).result()

    def sample(self, fn: Callable[..., dict[str, Any]], *args: Any) -> tuple[Sample, list[str]]:
        result = self.run(fn, *args)
        fields = ("ok", "errors", "seconds", "p50_ms", "p99_ms")
        return Sample(**{key: result[key] for key in fields}), result["problems"]

    def sync(
        self, server: Server, peer: str, concurrency: int, duration: float
    ) -> tuple[Sample, list[str]]:
        if self.wrk is not None:
            path = WEBHOOK_PATH if peer == "webhook" else PROCGATE_PATH
            url = f"http://{HOST}:{server.port}{path}"
            return run_wrk(self.wrk, self.scripts[peer], url, concurrency, duration)
        return self.sample(sync_client, server.port, peer, concurrency, duration)

    @staticmethod
    def cpu_of(
        server: Server, measure: Callable[[], tuple[Sample, list[str]]]
    ) -> tuple[Sample, list[str], tuple[float, float]]:
        """Run ``measure`` and the CPU ms per job that the server's processes spent."""
        own0, reaped0 = tree_cpu(server.proc.pid)
        sample, problems = measure()
        own1, reaped1 = tree_cpu(server.proc.pid)
        jobs = max(1, sample.ok)
        return sample, problems, ((own1 - own0) * 1e3 / jobs, (reaped1 - reaped0) * 1e3 / jobs)


def spawn_with_cpu(threads: int, duration: float) -> tuple[Sample, tuple[float, float]]:
    before = os.times()
    sample = measure_spawn(threads, duration)
    after = os.times()
    jobs = max(1, sample.ok)
    own = (after.user + after.system) - (before.user + before.system)
    reaped = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return sample, (own * 1e3 / jobs, reaped * 1e3 / jobs)


# -- servers ---------------------------------------------------------------------------


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def start_server(
    name: str, argv: list[str], workdir: str, port: int, ready_path: str, cwd: str | None = None
) -> Iterator[Server]:
    """A peer's server, in a session of its own, until ``GET ready_path`` is 200."""
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    server = Server(name, port, proc, log_path)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while http_status(port, ready_path) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {START_DEADLINE:g} s")
            time.sleep(0.05)
        yield server
    finally:
        stop(proc)


def webhook_server(webhook: str, workdir: str) -> contextlib.AbstractContextManager[Server]:
    hooks = os.path.join(workdir, "hooks.json")
    with open(hooks, "w") as file:
        json.dump(HOOKS, file)
    port = free_port()
    argv = [webhook, "-hooks", hooks, "-ip", HOST, "-port", str(port)]
    return start_server("webhook", argv, workdir, port, "/")


def floor_server(workdir: str, workers: int) -> contextlib.AbstractContextManager[Server]:
    """The Python floor app under granian, as ``procgate serve`` runs it: WSGI, the same
    workers, threads and backlog."""
    from procgate.cli import DEFAULT_BACKLOG, DEFAULT_THREADS

    app_dir = os.path.join(workdir, "floor-app")
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, "floor_app.py"), "w") as file:
        file.write(FLOOR_APP)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--no-ws",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--blocking-threads",
        str(DEFAULT_THREADS),
        "--backlog",
        str(DEFAULT_BACKLOG),
        "floor_app:app",
    ]
    return start_server(f"floor-{workers}", argv, workdir, port, "/health", cwd=app_dir)


def fs2h_server(venv: str, workdir: str, workers: int) -> contextlib.AbstractContextManager[Server]:
    app_dir = os.path.join(workdir, "fs2h-app")
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, "fs2h_app.py"), "w") as file:
        file.write(FS2H_APP)
    port = free_port()
    argv = [
        os.path.join(venv, "bin", "python"),
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--threads",
        str(FS2H_THREADS),
        "--bind",
        f"{HOST}:{port}",
        "--chdir",
        app_dir,
        "--log-level",
        "warning",
        *no_control_socket(venv),
        "fs2h_app:app",
    ]
    return start_server(f"fs2h-{workers}w", argv, workdir, port, "/health")


def no_control_socket(venv: str) -> list[str]:
    """``--no-control-socket`` where gunicorn has one (27+): else every gunicorn listens on
    the same ``~/.gunicorn/gunicorn.ctl``, and the first to stop removes it."""
    done = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return ["--no-control-socket"] if "--no-control-socket" in done.stdout else []


def make_fs2h_venv(where: str) -> tuple[str, str]:
    """A venv with flask-shell2http and gunicorn; (its path, its versions), or ("", why)."""
    venv = os.path.join(where, "fs2h-venv")
    steps = [
        ("python -m venv", [sys.executable, "-m", "venv", venv]),
        (
            "pip install flask-shell2http gunicorn",
            [
                os.path.join(venv, "bin", "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "flask-shell2http",
                "gunicorn",
            ],
        ),
    ]
    for what, argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            tail = lines[-1] if lines else f"exit {done.returncode}"
            return "", f"{what} failed: {tail}"
    versions = fs2h_versions(venv)
    return (venv, versions) if versions else ("", "the venv lacks a package after pip install")


def fs2h_versions(venv: str) -> str:
    """The versions in the venv; "" when its Python, Flask-Shell2HTTP or gunicorn is missing."""
    try:
        done = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c", FS2H_VERSIONS],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def procgate_config(store: str, runner: str, redis_url: str = "", prefix: str = "") -> str:
    """The bare defaults (``[commands.echo] argv = ["echo"]`` and nothing else), apart from
    the store and runner kinds."""
    text = ""
    if runner != "thread":  # the thread runner is the default
        text += f'[runner]\nkind = "{runner}"\n\n'
    if store == "memory":  # without [store], the default SQLite file under procgate-data/
        text += '[store]\nurl = "memory://"\n\n'
    if store == "redis":  # a key prefix per server: they share the one redis-server
        text += f'[store]\nurl = "{redis_url}"\nprefix = "{prefix}"\n\n'
    return text + '[commands.echo]\nargv = ["echo"]\n'


#: What ``--baseline`` checks in a quick child with the baseline's environment: where
#: ``procgate`` and the CLI that ``python -m procgate serve`` runs come from.
BASELINE_CHECK = """\
import procgate, procgate.cli
print(procgate.__file__)
print(procgate.cli.__file__)
print(getattr(procgate, "__version__", "unknown"))
"""


def git_describe(directory: str) -> str:
    """``git -C directory describe --always --dirty``, or why there is none."""
    git = shutil.which("git")
    if git is None:
        return "git not installed"
    try:
        done = subprocess.run(
            [git, "-C", directory, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        return f"no git ({exc})"
    return done.stdout.strip() if done.returncode == 0 else "not a git checkout"


@dataclass
class Baseline:
    """Another procgate source checkout that ``--baseline`` runs beside the current one."""

    directory: str
    #: Added to a baseline server's environment: ``PYTHONPATH`` with ``<directory>/src``.
    env: dict[str, str]
    version: str
    describe: str


def baseline_checkout(directory: str) -> Baseline:
    """The baseline's environment, checked: a child with it must import ``<dir>/src/procgate``.

    RuntimeError, saying why, when there is no ``<dir>/src/procgate`` or when a child
    started as the servers are (this Python, ``PYTHONPATH=<dir>/src`` first, a working
    directory without a ``procgate`` of its own) imports ``procgate`` from elsewhere.
    """
    directory = os.path.abspath(directory)
    src = os.path.join(directory, "src")
    package = os.path.realpath(os.path.join(src, "procgate"))
    if not os.path.isfile(os.path.join(package, "__init__.py")):
        raise RuntimeError(f"--baseline {directory}: no procgate package at {package}")
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": pythonpath}
    with tempfile.TemporaryDirectory(prefix="procgate-baseline-check-") as empty:
        done = subprocess.run(
            [sys.executable, "-c", BASELINE_CHECK],
            env={**os.environ, **env},
            cwd=empty,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 3:
        raise RuntimeError(
            f"--baseline {directory}: importing procgate with PYTHONPATH={pythonpath} "
            f"failed ({done.returncode}):\n{done.stderr.strip()}"
        )
    for path in lines[:2]:
        if os.path.dirname(os.path.realpath(path)) != package:
            raise RuntimeError(
                f"--baseline {directory}: with PYTHONPATH={pythonpath}, Python imports "
                f"{path}, not a module of {package}"
            )
    return Baseline(directory, env, lines[2], git_describe(directory))


def procgate_defaults() -> dict[str, str]:
    """What ``procgate serve`` picks without flags: workers, threads, runner workers."""
    from procgate.cli import DEFAULT_THREADS
    from procgate.runners.process import ProcessRunner
    from procgate.runners.thread import ThreadRunner

    thread_workers = inspect.signature(ThreadRunner.__init__).parameters["max_workers"].default
    process_workers = ProcessRunner(max_workers=None).max_workers
    shared = shared_workers()
    return {
        "threads": str(DEFAULT_THREADS),
        "memory": f"granian 1 worker x {DEFAULT_THREADS} threads",
        "sqlite": f"granian {shared} workers x {DEFAULT_THREADS} threads",
        "redis": f"granian {shared} workers x {DEFAULT_THREADS} threads",
        "thread": f"thread runner, {thread_workers} threads",
        "process": f"process runner, {process_workers} processes",
    }


def shared_workers() -> int:
    """``procgate serve``'s workers for a shared store (SQLite, Redis)."""
    return max(2, os.cpu_count() or 1)


def worker_pid(server: Server) -> int:
    """The one gunicorn worker of a 1-worker server (the arbiter's only child)."""
    deadline = time.monotonic() + 10
    while True:
        pids = children(server.proc.pid)
        if len(pids) == 1:
            return pids[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: expected 1 worker process, found {pids}")
        time.sleep(0.05)


# -- the memory part -------------------------------------------------------------------

RETAIN_CONFIG = f"""\
[store]
url = "memory://"
max_jobs = {RETAIN_MAX_JOBS}

[commands.echo]
argv = ["echo"]
timeout = 60
"""

BIG_CONFIG = f"""\
[store]
url = "memory://"

[commands.big]
argv = ["head", "-c", "{BIG_BYTES}", "/dev/zero"]
max_output = {BIG_CAP}
timeout = {BIG_TIMEOUT}
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def measure_retained(bench: Bench, workdir: str, jobs: int, notes: list[str]) -> list[str]:
    """Table rows: the worker's RSS idle, after a warm-up, and after ``jobs`` more retained
    finished jobs.

    The warm-up (``RETAIN_WARMUP`` jobs, retained too) starts the server's threads and
    fills its caches, which a server does once whatever it keeps; the growth after it is
    what the retained jobs cost.
    """
    with serve("mem-retain", RETAIN_CONFIG, workdir) as server:
        pid = worker_pid(server)
        idle = memory_kib(pid)
        warm = bench.run(fill_client, server.port, RETAIN_WARMUP, 16)
        warmed = memory_kib(pid)
        result = bench.run(fill_client, server.port, jobs, 16)
        after = memory_kib(pid)
        listed = count_jobs(server.port)
    notes.append(
        f"retained jobs: {warm['ok']} warm-up and {result['ok']} measured sync jobs in "
        f"{result['seconds']:.1f} s ({warm['errors'] + result['errors']} errors), then "
        f"GET /jobs lists {listed}"
    )
    notes.extend(f"  {problem}" for problem in warm["problems"] + result["problems"])
    per_job = (after["VmRSS"] - warmed["VmRSS"]) * 1024 / max(1, result["ok"])
    return [
        f"| procgate, memory store (max_jobs {RETAIN_MAX_JOBS}), 1 worker: idle "
        f"| {mib(idle['VmRSS'])} | {mib(idle['VmHWM'])} | |",
        f"| the same after a warm-up of {warm['ok']} jobs | {mib(warmed['VmRSS'])} "
        f"| {mib(warmed['VmHWM'])} | +{mib(warmed['VmRSS'] - idle['VmRSS'])} MiB |",
        f"| the same after {result['ok']} more finished echo jobs, all retained "
        f"| {mib(after['VmRSS'])} | {mib(after['VmHWM'])} "
        f"| +{mib(after['VmRSS'] - warmed['VmRSS'])} MiB, {per_job / 1024:.2f} KiB/job |",
    ]


def count_jobs(port: int) -> int:
    """Jobs that ``GET /jobs`` lists, page by page."""
    conn = _connect(port)
    total, cursor = 0, ""
    try:
        while True:
            path = "/jobs?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            status, data = _exchange(conn, "GET", path)
            page = json.loads(data) if status == 200 else {"jobs": [], "next": None}
            total += len(page["jobs"])
            cursor = page.get("next") or ""
            if not cursor:
                return total
    finally:
        conn.close()


def measure_big_output(workdir: str, notes: list[str]) -> list[str]:
    """Table rows: the worker's RSS while one job prints 1 GiB, capped at 16 MiB."""
    with serve("mem-big", BIG_CONFIG, workdir) as server:
        pid = worker_pid(server)
        idle = memory_kib(pid)
        conn = _connect(server.port)
        start = time.perf_counter()
        status, data = _exchange(conn, "POST", "/commands/big", b"{}")
        if status != 202:
            raise RuntimeError(f"big job: HTTP {status}: {data[:200]!r}")
        job_id = json.loads(data)["id"]
        peak_rss, seen = idle["VmRSS"], False
        deadline = time.monotonic() + BIG_TIMEOUT
        while time.monotonic() < deadline:  # until the `head` child has come and gone
            running = any(comm(child) == "head" for child in descendants(pid)[1:])
            seen = seen or running
            peak_rss = max(peak_rss, memory_kib(pid)["VmRSS"])
            if seen and not running:
                break
            if not seen and time.perf_counter() - start > 10:
                break  # never saw it: the job may be over already
            time.sleep(0.01)
        ran = time.perf_counter() - start
        time.sleep(0.2)  # the runner reads the last of the pipe and stores the outcome
        done = memory_kib(pid)
        t0 = time.perf_counter()
        status, data = _exchange(conn, "GET", f"/jobs/{job_id}?wait=60")
        fetch = time.perf_counter() - t0
        conn.close()
        fetched = memory_kib(pid)
    job = json.loads(data) if status == 200 else {}
    text = job.get("stdout") or ""
    # NUL bytes come as base64 (see job_to_json); count the bytes, not the characters
    stdout = base64.b64decode(text) if job.get("encoding") == "base64" else text.encode()
    notes.append(
        f"1 GiB job: {job.get('status')}, stdout_truncated {job.get('stdout_truncated')}, "
        f"{len(stdout)} bytes kept ({job.get('encoding')}), ran {ran:.2f} s; "
        "GET /jobs/<id> answered "
        f"{len(data) / 2**20:.0f} MiB of JSON in {fetch:.2f} s"
    )
    if status != 200 or job.get("status") != "succeeded" or len(stdout) != BIG_CAP:
        notes.append(f"  unexpected big job: HTTP {status}: {data[:300]!r}")
    return [
        f"| procgate, memory store, 1 worker, a `big` command: idle | {mib(idle['VmRSS'])} "
        f"| {mib(idle['VmHWM'])} | |",
        f"| one job printing 1 GiB (max_output {BIG_CAP}): while it runs (sampled peak) "
        f"| {mib(peak_rss)} | {mib(done['VmHWM'])} "
        f"| +{mib(done['VmHWM'] - idle['VmRSS'])} MiB peak |",
        f"| the same, after `GET /jobs/<id>` of that job ({len(data) / 2**20:.0f} MiB JSON) "
        f"| {mib(fetched['VmRSS'])} | {mib(fetched['VmHWM'])} "
        f"| +{mib(fetched['VmHWM'] - idle['VmRSS'])} MiB peak |",
    ]


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as file:
            return file.read().strip()
    except OSError:
        return ""


# -- report ----------------------------------------------------------------------------


def cell(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def ratio(row: Row, base: Row | None) -> float:
    """Median over the rounds of the row's jobs/s over the base's in the same round."""
    if base is None or not base.samples or not row.samples:
        return float("nan")
    return round_ratio(row.samples, base.samples)


def throughput_table(
    rows: list[Row], spawn2: Row, webhook: dict[int, Row], fs2h: dict[int, Row]
) -> str:
    lines = [
        "| what | server | c | jobs/s | p50 ms | p99 ms | errors | server CPU ms/job "
        "| children CPU ms/job | ratio to spawn 2 thr | ratio to webhook | ratio to FS2H "
        "| ratio to floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        c = "" if row.concurrency is None else str(row.concurrency)
        if not row.samples:
            lines.append(
                f"| {row.label} | {row.server} | {c} | {row.skipped or 'skipped'} "
                "| | | | | | | | |"
            )
            continue
        peers = [
            ratio(row, group.get(row.concurrency)) if row.concurrency is not None else float("nan")
            for group in (webhook, fs2h)
        ]
        lines.append(
            f"| {row.label} | {row.server} | {c} "
            f"| {median([s.rate for s in row.samples]):.0f} "
            f"| {median([s.p50_ms for s in row.samples]):.2f} "
            f"| {median([s.p99_ms for s in row.samples]):.2f} "
            f"| {sum(s.errors for s in row.samples)} "
            f"| {median([own for own, _ in row.cpu]):.2f} "
            f"| {median([reaped for _, reaped in row.cpu]):.2f} "
            f"| {cell(ratio(row, spawn2))} | {cell(peers[0])} | {cell(peers[1])} "
            f"| {cell(ratio(row, row.floor))} |"
        )
    return "\n".join(lines)


def baseline_table(current: dict[Any, Row], baseline: dict[Any, Row]) -> str:
    """Each procgate row over its baseline twin: per-round ratios, median over the rounds."""
    lines = [
        "| what | server | c | jobs/s | baseline jobs/s | jobs/s ratio | p50 ratio "
        "| p99 ratio | server CPU ms/job ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in current.items():
        twin = baseline.get(key)
        if twin is None or not row.samples or not twin.samples:
            continue
        lines.append(
            f"| {row.label} | {row.server} | {row.concurrency} "
            f"| {median([s.rate for s in row.samples]):.0f} "
            f"| {median([s.rate for s in twin.samples]):.0f} "
            f"| {cell(round_ratio(row.samples, twin.samples))} "
            f"| {cell(round_ratio(row.samples, twin.samples, lambda s: s.p50_ms))} "
            f"| {cell(round_ratio(row.samples, twin.samples, lambda s: s.p99_ms))} "
            f"| {cell(round_ratio(row.cpu, twin.cpu, lambda cpu: cpu[0]))} |"
        )
    return "\n".join(lines)


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        model = next((line.split(":", 1)[1].strip() for line in file if "model name" in line), "")
    mem = ""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as file:
        mem = f", {int(file.readline().split()[1]) / 2**20:.0f} GiB RAM"
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"{model or 'CPU unknown'}, nproc {cpu_count()}{mem}"
    )


def versions_line(
    wrk: str | None, webhook_version: str, fs2h_version: str, baseline: Baseline | None
) -> str:
    import gunicorn  # type: ignore[import-untyped]  # the server extra

    sync_client = (
        f"{wrk_version(wrk)} (1 thread, Lua-checked bodies)"
        if wrk
        else "Python http.client (no wrk)"
    )
    procgate = f"procgate {procgate_version()}"
    if baseline is not None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        procgate += (
            f" (`{git_describe(here)}`), baseline procgate {baseline.version} from "
            f"{baseline.directory}/src (`{baseline.describe}`)"
        )
    return (
        f"Python {platform.python_version()}, {procgate} "
        f"(gunicorn {gunicorn.__version__}, SQLite {sqlite3.sqlite_version}); "
        f"{webhook_version}; {fs2h_version}; clients: {sync_client} for sync rows, "
        "Python http.client (keep-alive, one thread per connection, own process) for "
        "two-step rows"
    )


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="procgate vs. adnanh/webhook and Flask-Shell2HTTP on `echo hello`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds per measurement (wrk: whole s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the tables show medians")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="sync rows' client: auto is wrk when installed, else the Python client",
    )
    parser.add_argument("--no-process", action="store_true", help="leave out the process runner")
    parser.add_argument("--no-redis", action="store_true", help="leave out the Redis store")
    parser.add_argument("--no-webhook", action="store_true", help="leave out adnanh/webhook")
    parser.add_argument("--no-fs2h", action="store_true", help="leave out Flask-Shell2HTTP")
    parser.add_argument(
        "--fs2h-venv",
        help="an existing venv with flask-shell2http and gunicorn (default: a new one in a "
        "temporary directory, removed at the end)",
    )
    parser.add_argument("--no-memory", action="store_true", help="leave out the memory part")
    parser.add_argument(
        "--retain-jobs", type=int, default=RETAIN_JOBS, help="finished jobs for the RSS check"
    )
    parser.add_argument(
        "--lookup-jobs", type=int, default=LOOKUP_JOBS, help="jobs per lookup-error check"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another procgate source checkout (with DIR/src/procgate): also run every "
        "procgate server from it (PYTHONPATH=DIR/src), and compare",
    )
    parser.add_argument("--output", help="also write the header and tables to this file")
    options = parser.parse_args(argv)
    if options.duration <= 0 or options.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    if options.retain_jobs < 1 or options.retain_jobs > RETAIN_MAX_JOBS:
        parser.error(f"--retain-jobs must be between 1 and {RETAIN_MAX_JOBS}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # SIGTERM (kill, a CI timeout) cleans up as Ctrl-C does: the servers are stopped.
    signal.signal(signal.SIGTERM, _terminated)
    notes: list[str] = []
    started = time.monotonic()

    wrk = shutil.which("wrk") if options.client in ("auto", "wrk") else None
    if options.client == "wrk" and wrk is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if wrk is None and options.client == "auto":
        print("note: wrk is not installed (apt-get install wrk): sync rows use the Python client")
    webhook = None if options.no_webhook else shutil.which("webhook")
    webhook_skip = "skipped (--no-webhook)" if options.no_webhook else ""
    webhook_version = "webhook: not run"
    if webhook is None and not options.no_webhook:
        webhook_skip = "skipped (webhook not installed: apt-get install webhook)"
        print(f"note: adnanh/webhook {webhook_skip}")
    elif webhook is not None:
        done = subprocess.run([webhook, "-version"], capture_output=True, text=True, check=False)
        webhook_version = (done.stdout or done.stderr).strip() or "webhook version unknown"
        webhook_version = webhook_version.replace("webhook version", "adnanh/webhook")
    runners = ("thread",) if options.no_process else RUNNERS
    redis_skip = ""
    if options.no_redis:
        redis_skip = "skipped (--no-redis)"
    elif shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None:
        redis_skip = "skipped (no redis-server or redis-py: apt-get install redis-server)"
        print(f"note: the Redis store rows are {redis_skip}")
    defaults = procgate_defaults()
    baseline = None
    if options.baseline:
        try:
            baseline = baseline_checkout(options.baseline)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(
            f"baseline: procgate {baseline.version} from {baseline.directory}/src "
            f"({baseline.describe})",
            flush=True,
        )
    variants = (False, True) if baseline is not None else (False,)

    measure_s = options.duration + 0.15 if wrk is None else max(1, round(options.duration)) + 0.1
    stores = tuple(store for store in STORES if store != "redis" or redis_skip == "")
    procgate_servers = len(stores) * len(runners) * len(variants)
    per_round = 2 * options.duration + (procgate_servers * 2 + 2) * 3 * measure_s
    # Each baseline server adds a start-up and a warm-up.
    projected = 25 + 3 * (len(variants) - 1) * len(stores) * len(runners)
    projected += options.rounds * per_round
    if not options.no_memory:
        projected += 8 + options.retain_jobs / 450
    print(
        f"peers: {options.rounds} round(s) x {options.duration:g} s per measurement; "
        f"about {projected:.0f} s",
        flush=True,
    )

    # -- the rows, in the table's order
    spawn = [
        Row(
            f"spawn `echo hello`, {n} thread{'s' if n > 1 else ''}",
            "this script",
            None,
            f"spawn{n}",
        )
        for n in (1, 2)
    ]
    webhook_rows = {
        c: Row("adnanh/webhook, sync", "1 Go process", c, f"webhook/c{c}", skipped=webhook_skip)
        for c in CONCURRENCIES
    }
    floor_workers = {"memory": 1, "sqlite": shared_workers(), "redis": shared_workers()}
    floor_rows = {
        (w, c): Row(
            "Python floor: parse JSON, `subprocess.run`, answer JSON",
            f"granian {w} worker{'s' if w > 1 else ''} x {defaults['threads']} threads",
            c,
            f"floor{w}/c{c}",
        )
        for w in sorted(set(floor_workers.values()))
        for c in CONCURRENCIES
    }
    fs2h_rows = {
        c: Row(
            "Flask-Shell2HTTP, POST + GET ?wait=true",
            f"gunicorn 1 worker x {FS2H_THREADS} threads",
            c,
            f"fs2h/c{c}",
        )
        for c in CONCURRENCIES
    }
    # procgate rows by (mode, store, runner, c), and their twins from --baseline's checkout.
    procgate_rows: dict[tuple[str, str, str, int], Row] = {}
    baseline_rows: dict[tuple[str, str, str, int], Row] = {}
    for mode in MODES:
        for store in STORES:
            for runner in RUNNERS:
                for c in CONCURRENCIES:
                    what = "sync" if mode == "sync" else f"async, POST + GET ?wait={WAIT}"
                    for twin in variants:
                        if twin and runner not in runners:
                            continue  # a skipped row needs no skipped twin
                        row = Row(
                            f"procgate {what}, {STORE_NAMES[store]}"
                            + (" (baseline)" if twin else ""),
                            "the baseline checkout's `procgate serve` defaults"
                            if twin
                            else f"{defaults[store]}, {defaults[runner]}",
                            c,
                            f"{mode}/{store}/{runner}/c{c}" + ("/baseline" if twin else ""),
                        )
                        if runner not in runners:
                            row.skipped = "skipped (--no-process)"
                        elif store not in stores:
                            row.skipped = redis_skip
                        if mode == "sync":
                            row.floor = floor_rows[floor_workers[store], c]
                        (baseline_rows if twin else procgate_rows)[mode, store, runner, c] = row
    all_rows = [*spawn, *webhook_rows.values(), *floor_rows.values(), *fs2h_rows.values()]
    for key, row in procgate_rows.items():  # each baseline row right below its twin
        all_rows += [row, baseline_rows[key]] if key in baseline_rows else [row]
    lookup_lines: list[str] = []
    memory_lines: list[str] = []
    fs2h_version = "Flask-Shell2HTTP: not run"

    with contextlib.ExitStack() as outer:
        workdir = outer.enter_context(tempfile.TemporaryDirectory(prefix="procgate-peers-"))
        context = multiprocessing.get_context("spawn")
        pool = outer.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=context))
        bench = Bench(pool, wrk, workdir)

        fs2h_venv, fs2h_skip = "", ""
        if options.no_fs2h:
            fs2h_skip = "skipped (--no-fs2h)"
        elif options.fs2h_venv:
            fs2h_version = fs2h_versions(options.fs2h_venv)
            if fs2h_version:
                fs2h_venv = options.fs2h_venv
            else:
                fs2h_skip = (
                    f"skipped (--fs2h-venv {options.fs2h_venv}: no Flask-Shell2HTTP, "
                    "Flask-Executor or gunicorn there)"
                )
                fs2h_version = "Flask-Shell2HTTP: not run"
                print(f"note: Flask-Shell2HTTP {fs2h_skip}")
        else:
            t0 = time.monotonic()
            fs2h_venv, fs2h_version = make_fs2h_venv(workdir)
            if fs2h_venv:
                notes.append(f"Flask-Shell2HTTP venv made in {time.monotonic() - t0:.0f} s")
            else:
                print(f"note: Flask-Shell2HTTP skipped: {fs2h_version}")
                notes.append(f"Flask-Shell2HTTP skipped: {fs2h_version}")
                fs2h_skip = "skipped (no venv for it: see the notes)"
                fs2h_version = "Flask-Shell2HTTP: not run"
        if fs2h_skip:
            for row in fs2h_rows.values():
                row.skipped = fs2h_skip

        with contextlib.ExitStack() as stack:
            servers: dict[Any, Server] = {}
            idle_rss: dict[str, int] = {}
            peer_servers = (
                ("webhook", webhook is not None, webhook_rows, "adnanh/webhook"),
                ("fs2h", bool(fs2h_venv), fs2h_rows, "Flask-Shell2HTTP"),
            )
            for key, wanted, rows, name in peer_servers:
                if not wanted:
                    continue
                try:
                    if key == "webhook":
                        server = stack.enter_context(webhook_server(webhook or "", workdir))
                        pid = server.proc.pid
                    else:
                        server = stack.enter_context(fs2h_server(fs2h_venv, workdir, 1))
                        pid = worker_pid(server)
                except RuntimeError as exc:  # say so, and go on without this peer
                    print(f"note: {name} did not start, skipped: {exc}")
                    for row in rows.values():
                        row.skipped = f"skipped ({name} did not start; see the notes)"
                    notes.append(f"{name} did not start:\n{exc}")
                    continue
                servers[key] = server
                idle_rss[key] = memory_kib(pid)["VmRSS"]
            for w in sorted(set(floor_workers.values())):
                servers["floor", w] = stack.enter_context(floor_server(workdir, w))
            redis_url = stack.enter_context(redis_server(workdir)) if "redis" in stores else ""
            for store in stores:
                for runner in runners:
                    for twin in variants:
                        name = f"{store}-{runner}" + ("-baseline" if twin else "")
                        home = os.path.join(workdir, name)
                        os.makedirs(home)
                        config = procgate_config(store, runner, redis_url, f"peers-{name}:")
                        env = baseline.env if twin and baseline is not None else None
                        server = stack.enter_context(
                            serve(name, config, workdir, cwd=home, env=env)
                        )
                        servers[(store, runner, "baseline") if twin else (store, runner)] = server

            # Warm-up: starts runner threads and worker processes; every body decoded.
            for key, server in servers.items():
                if key == "fs2h":
                    sample, problems = bench.sample(fs2h_client, server.port, 8, WARMUP)
                elif isinstance(key, tuple) and key[0] == "floor":
                    sample, problems = bench.sample(sync_client, server.port, "procgate", 8, WARMUP)
                else:
                    peer = "webhook" if key == "webhook" else "procgate"
                    seconds = WARMUP_PROCESS if "process" in key else WARMUP
                    sample, problems = bench.sample(sync_client, server.port, peer, 8, seconds)
                notes.append(
                    f"{server.name} warm-up (Python client, c=8, every body decoded): "
                    f"{sample.ok} ok, {sample.errors} errors"
                )
                notes.extend(f"  {problem}" for problem in problems)

            def record(row: Row, server: Server, measure: Callable[[], Any], tag: str) -> None:
                sample, problems, cpu = bench.cpu_of(server, measure)
                row.samples.append(sample)
                row.cpu.append(cpu)
                notes.extend(f"{tag}: {problem}" for problem in problems)

            duration = options.duration

            def procgate_measure(
                server: Server, mode: str, c: int
            ) -> Callable[[], tuple[Sample, list[str]]]:
                if mode == "sync":
                    return lambda: bench.sync(server, "procgate", c, duration)
                return lambda: bench.sample(submit_wait_client, server.port, c, duration)

            for number in range(1, options.rounds + 1):
                for n, row in zip((1, 2), spawn, strict=True):
                    sample, cpu = spawn_with_cpu(n, duration)
                    row.samples.append(sample)
                    row.cpu.append(cpu)
                for c in CONCURRENCIES:
                    tag = f"round {number}, c={c}"
                    if "webhook" in servers:
                        server = servers["webhook"]
                        record(
                            webhook_rows[c],
                            server,
                            lambda s=server, c=c: bench.sync(s, "webhook", c, duration),
                            f"{tag}, webhook",
                        )
                    for (w, fc), row in floor_rows.items():
                        if fc == c:
                            server = servers["floor", w]
                            record(
                                row,
                                server,
                                lambda s=server, c=c: bench.sync(s, "procgate", c, duration),
                                f"{tag}, floor {w}",
                            )
                    if "fs2h" in servers:
                        server = servers["fs2h"]
                        record(
                            fs2h_rows[c],
                            server,
                            lambda s=server, c=c: bench.sample(fs2h_client, s.port, c, duration),
                            f"{tag}, Flask-Shell2HTTP",
                        )
                    # Each server's sync, then async; a baseline twin right after its current.
                    for store in stores:
                        for runner in runners:
                            for mode in MODES:
                                for twin in variants:
                                    rows = baseline_rows if twin else procgate_rows
                                    server = servers[
                                        (store, runner, "baseline") if twin else (store, runner)
                                    ]
                                    record(
                                        rows[mode, store, runner, c],
                                        server,
                                        procgate_measure(server, mode, c),
                                        f"{tag}, procgate {mode} {store}/{runner}"
                                        + (" (baseline)" if twin else ""),
                                    )
                summary = ", ".join(
                    f"{row.short} {row.samples[-1].rate:.0f}/s"
                    for row in (*spawn, *webhook_rows.values(), *fs2h_rows.values())
                    if row.samples
                )
                best = max(
                    (row for row in procgate_rows.values() if row.samples),
                    key=lambda row: row.samples[-1].rate,
                )
                print(
                    f"round {number} ({time.monotonic() - started:.0f} s): {summary}; "
                    f"best procgate: {best.short} {best.samples[-1].rate:.0f}/s",
                    flush=True,
                )

            # Peers' memory after the rounds (context for the memory table).
            for key, label in (("webhook", "adnanh/webhook"), ("fs2h", "Flask-Shell2HTTP")):
                if key in servers:
                    pid = servers[key].proc.pid if key == "webhook" else worker_pid(servers[key])
                    now = memory_kib(pid)
                    memory_lines.append(
                        f"| {label}: idle, then after the rounds | "
                        f"{mib(idle_rss[key])} → {mib(now['VmRSS'])} | {mib(now['VmHWM'])} | |"
                    )

            # Lookup errors: the GET on a connection of its own, so maybe another worker.
            if options.lookup_jobs > 0:
                targets: list[tuple[str, str, Server]] = []
                if "fs2h" in servers:
                    two = stack.enter_context(fs2h_server(fs2h_venv, workdir, 2))
                    targets.append(
                        (
                            f"Flask-Shell2HTTP, gunicorn 2 workers x {FS2H_THREADS} threads",
                            "fs2h",
                            two,
                        )
                    )
                targets.append(
                    (
                        f"procgate async, SQLite, {defaults['sqlite']}",
                        "procgate",
                        servers["sqlite", "thread"],
                    )
                )
                for label, peer, server in targets:
                    for keepalive in (False, True):
                        result = bench.run(
                            lookup_client, server.port, peer, options.lookup_jobs, keepalive
                        )
                        how = "same keep-alive connection" if keepalive else "new connection each"
                        lookup_lines.append(
                            f"| {label} | {how} | {options.lookup_jobs} | {result['ok']} "
                            f"| {result['not_found']} | {result['other']} |"
                        )
                        notes.extend(f"lookup {label}, {how}: {s}" for s in result["samples"])

            for server in servers.values():
                if server.proc.poll() is not None:
                    notes.append(f"{server.name} died during the run:\n{server.log_tail()}")
                else:
                    logged = server.log_tail(8)
                    if logged.strip():
                        notes.append(
                            f"{server.name} log (last lines):\n{textwrap.indent(logged, '  ')}"
                        )

        if not options.no_memory:
            memory_lines = [
                *measure_retained(bench, workdir, options.retain_jobs, notes),
                *measure_big_output(workdir, notes),
                *memory_lines,
            ]

    elapsed = time.monotonic() - started
    header = [
        f"Machine: {machine_line()}.",
        f"Versions: {versions_line(wrk, webhook_version, fs2h_version, baseline)}.",
        f"{options.rounds} round(s) x {options.duration:g} s per measurement; "
        f"the run took {elapsed:.0f} s.",
    ]
    parts = [
        "\n".join(header),
        "",
        "### Throughput: `echo hello` per job",
        "",
        "procgate servers use `procgate serve` defaults (no flags) and a config of "
        "`[commands.echo] argv = [\"echo\"]` alone, apart from the store and runner kinds"
        + (
            "; a (baseline) row is the same server run from the baseline checkout, "
            "measured right after the row above it"
            if baseline is not None
            else ""
        )
        + ". Sync: one request per job; async and Flask-Shell2HTTP: two requests "
        "(submit, then wait). Sync rows: "
        + ("wrk, one thread" if wrk else "the Python client (wrk is not installed)")
        + "; two-step rows: the Python client, in its own process.",
        "",
        throughput_table(all_rows, spawn[1], webhook_rows, fs2h_rows),
        "",
        "jobs/s, latencies and CPU: medians over the rounds; errors: total. Server CPU "
        "ms/job: user+system CPU of the server's processes (arbiter, workers, runner "
        "processes; for spawn rows, this script) per successful job; children CPU: the "
        "reaped `echo` children's. Ratio columns: jobs/s over the spawn loop's (2 threads), "
        "webhook's and Flask-Shell2HTTP's at the same concurrency in the same round, "
        "median over the rounds; ratio to floor: a sync procgate row's jobs/s over the "
        "Python floor's with the same engine and workers (the memory store's 1 worker, "
        "the others' default).",
    ]
    if baseline is not None:
        parts += [
            "",
            f"### Current over baseline (`{baseline.describe}`)",
            "",
            "Each procgate row over its (baseline) twin: that round's figure over the twin's "
            "in the same round, median over the rounds (so a ratio can differ a little from "
            "dividing the medians). jobs/s ratio above 1 and latency or CPU ratios below 1 "
            "favour the current code.",
            "",
            baseline_table(procgate_rows, baseline_rows),
        ]
    if lookup_lines:
        parts += [
            "",
            "### Lookup errors: the wait request on a connection of its own",
            "",
            "Sequential jobs: POST, then the wait request (`GET ?key=&wait=true`, or "
            f"`GET /jobs/<id>?wait={WAIT}`).",
            "",
            "| server | connections | jobs | ok | 404 (no report / not found) | other |",
            "|---|---|---:|---:|---:|---:|",
            *lookup_lines,
        ]
    if memory_lines:
        parts += [
            "",
            "### Memory (the server worker's /proc/<pid>/status; webhook: its process)",
            "",
            "| what | VmRSS MiB | VmHWM MiB | growth |",
            "|---|---:|---:|---|",
            *memory_lines,
        ]
    report = "\n".join(parts)
    publish(report, notes, elapsed, options.output)
    return 1 if any(s.errors for row in all_rows for s in row.samples) else 0



def _terminated(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so that the cleanup in ``finally`` runs."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
