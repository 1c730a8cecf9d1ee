"""ThreadRunner against CeleryRunner for short jobs: ``echo hello``, one Redis for all.

Run it with ``python bench/celery_runner.py`` (``--help`` for the options). In one bounded run
(about 2 minutes by default) it starts a ``redis-server`` of its own (a free 127.0.0.1
port, no persistence) and three procgate stacks on it, each with a Redis store under a
key prefix of its own:

* A: ``procgate serve`` with ``[runner] kind = "thread"`` (``max_workers = 8``);
* B: ``procgate serve`` with ``[runner] kind = "celery"`` (broker: the same redis-server,
  database 1, queue ``bench-b``) and one ``procgate worker --concurrency 8``;
* C: the same as B with queue ``bench-c`` and two such workers: a stack of its own, so
  that B and C are both up the whole run and measured in the same rounds.

Then, each ``--rounds`` times, interleaved so that every round sees the same noise (for
each mode and concurrency: A, then B, then C), it measures sync jobs (``POST
/commands/echo`` with ``{"args": ["hello"], "wait": true}`` under wrk, one wrk thread,
every body checked) and async jobs (``POST`` without ``wait``, 202, then ``GET
/jobs/<id>?wait=10`` by a Python client in a process of its own), each at concurrency 1
and 16. It prints a markdown table of medians with the server-side CPU per job (the API
server's process tree plus the workers' trees) and each Celery row's jobs/s over the
ThreadRunner's in the same round, the jobs/s per worker process of B and C at c=16, and
how C's jobs were spread over its two workers (from Celery's ``inspect stats``).

Every server and worker runs with ``PROCGATE_LOG_LEVEL=warning`` and logs to a file in a
temporary directory; all of them, and redis-server, are stopped at the end. Loopback
only: every server binds 127.0.0.1 and every request goes there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from _common import (
    HOST,
    STOP_TIMEOUT,
    Sample,
    Server,
    children,
    median,
    procgate_version,
    publish,
    round_ratio,
    run_wrk,
    serve,
    tree_cpu,
    wrk_version,
)
from peers import comm, machine_line
from stores import WAIT, redis_server, redis_unavailable, redis_versions, submit_wait_client
from sync_echo import WRK_SCRIPT, python_client

from procgate.runners.celery import TASK_NAME

PATH = "/commands/echo"
CONCURRENCIES = (1, 16)
MODES = ("sync", "async")
#: The ThreadRunner's max_workers and each procgate worker's --concurrency: the job slots
#: of one process.
SLOTS = 8
#: Seconds of sync Python-client traffic at c=8 (every body decoded) after a stack is up.
WARMUP = 1.0
#: Seconds a worker may take to answer a Celery ping (or log ``<node> ready``).
WORKER_DEADLINE = 60.0
#: Seconds a Celery control request (ping, inspect stats) waits for the replies.
CONTROL_TIMEOUT = 2.0

#: The store and the command, the same for every stack.
STORE_AND_ECHO = """
[store]
url = {store}
prefix = {prefix}

[commands.echo]
argv = ["echo"]
timeout = 60
"""

THREAD_CONFIG = (
    """\
[runner]
kind = "thread"
max_workers = {slots}
"""
    + STORE_AND_ECHO
)

CELERY_CONFIG = (
    """\
[runner]
kind = "celery"
broker = {broker}
queue = {queue}
concurrency = {slots}
"""
    + STORE_AND_ECHO
)


@dataclass
class Worker:
    """A ``procgate worker`` process, its Celery node name and its log."""

    node: str
    proc: subprocess.Popen[bytes]
    log_path: str
    ready_after: float = float("nan")
    ready_by: str = ""

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()


@dataclass
class Stack:
    """An API server and its runner: A (thread), B and C (celery, 1 and 2 workers)."""

    key: str
    label: str
    runner: str
    workers: int
    queue: str = ""
    server: Server | None = None
    procs: list[Worker] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.key}-{self.runner}" + (f"-{self.workers}w" if self.workers else "")


@dataclass
class Cpu:
    """CPU ms per successful job over one measurement, by group of processes."""

    api: float  # the API server's tree (arbiter, gunicorn worker), own CPU
    workers: float  # the procgate worker processes' trees, own CPU
    children: float  # the echo children that either of them reaped
    redis: float  # the one redis-server (store and broker of every stack)

    @property
    def server(self) -> float:
        return self.api + self.workers


@dataclass
class Row:
    stack: Stack
    mode: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    cpu: list[Cpu] = field(default_factory=list)
    #: Per round: tasks each worker node accepted during the measurement (celery only).
    tasks: list[dict[str, int] | None] = field(default_factory=list)


# -- celery -----------------------------------------------


def real_celery() -> ModuleType:
    """The ``celery`` package (the ``celery`` extra), imported when the run needs it."""
    return importlib.import_module("celery")


def control_app(celery: ModuleType, broker: str) -> Any:
    """A Celery app on the broker, for ``ping`` and ``inspect stats`` of the workers."""
    return celery.Celery("procgate-bench", broker=broker, set_as_current=False)


def ping(app: Any, nodes: list[str]) -> set[str]:
    """The nodes among ``nodes`` that answer a Celery ping."""
    try:
        replies = app.control.ping(destination=nodes, timeout=0.5, limit=len(nodes))
    except Exception:  # the broker's error types vary; not ready yet, ask again
        return set()
    return {name for reply in replies or [] for name in reply}


def task_counts(app: Any, nodes: list[str]) -> dict[str, int] | None:
    """Tasks each node has accepted since it started (``inspect stats``), or None."""
    try:
        stats = app.control.inspect(
            destination=nodes, timeout=CONTROL_TIMEOUT, limit=len(nodes)
        ).stats()
    except Exception:
        return None
    if not stats or set(stats) != set(nodes):
        return None
    return {node: int(stats[node].get("total", {}).get(TASK_NAME, 0)) for node in nodes}


# -- workers -----------------------------------------------------------------------------


def start_worker(config_path: str, workdir: str, node: str) -> Worker:
    """``procgate worker --concurrency SLOTS --hostname node``, in a session of its own."""
    log_path = os.path.join(workdir, f"{node.split('@')[0]}.log")
    argv = [sys.executable, "-m", "procgate", "worker", "--config", config_path]
    argv += ["--concurrency", str(SLOTS), "--hostname", node]
    env = {**os.environ, "PROCGATE_LOG_LEVEL": "warning"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    return Worker(node, proc, log_path)


def wait_ready(workers: list[Worker], app: Any, started: float) -> None:
    """Until each worker logged ``<node> ready`` or answered a Celery ping.

    Celery logs ``<node> ready.`` at INFO, which ``PROCGATE_LOG_LEVEL=warning`` hides; the
    ping's answer comes from the worker's event loop, which runs once it consumes tasks.
    """
    pending = {worker.node: worker for worker in workers}
    deadline = time.monotonic() + WORKER_DEADLINE
    while pending:
        for node, worker in list(pending.items()):
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {node} exited with {worker.proc.returncode}:\n"
                    + tail(worker.log_text())
                )
            if f"{node} ready" in worker.log_text():
                worker.ready_after, worker.ready_by = time.monotonic() - started, "log line"
                del pending[node]
        if pending:
            for node in ping(app, list(pending)):
                worker = pending.pop(node)
                worker.ready_after, worker.ready_by = time.monotonic() - started, "ping"
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"worker(s) {', '.join(pending)} not ready after {WORKER_DEADLINE:g} s:\n"
                + "\n".join(tail(worker.log_text()) for worker in pending.values())
            )
        if pending:
            time.sleep(0.1)


def stop_workers(workers: list[Worker]) -> None:
    """SIGTERM to all (Celery's warm shutdown), wait, then SIGKILL each process group."""
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        try:
            worker.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"worker {worker.node} ignored SIGTERM for {STOP_TIMEOUT:g} s: killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()


def tail(text: str, lines: int = 20) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


#: Worker log lines worth a note: warnings and errors after start-up, tracebacks.
NOTEWORTHY = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error:")
#: Celery's warning about running as root, printed by every worker at start-up.
ROOT_WARNING = re.compile(r"superuser privileges|--uid option|User information|uid=0|_warn_or_")


def worker_notes(worker: Worker) -> list[str]:
    lines = [
        line
        for line in worker.log_text().splitlines()
        if NOTEWORTHY.search(line) and not ROOT_WARNING.search(line)
    ]
    return lines[:8]


# -- measurements ----------------------------------------------------------------------


class Bench:
    """The load clients, the CPU accounting and the task counts around a measurement."""

    def __init__(
        self,
        pool: concurrent.futures.Executor,
        wrk: str | None,
        script: str,
        app: Any,
        redis_pid: int | None,
    ):
        self.pool = pool
        self.wrk = wrk
        self.script = script
        self.app = app
        self.redis_pid = redis_pid

    def client(self, fn: Callable[..., dict[str, Any]], *args: Any) -> tuple[Sample, list[str]]:
        result = self.pool.submit(fn, *args).result()
        fields = ("ok", "errors", "seconds", "p50_ms", "p99_ms")
        return Sample(**{key: result[key] for key in fields}), result["problems"]

    def load(self, port: int, mode: str, c: int, duration: float) -> tuple[Sample, list[str]]:
        if mode == "async":
            return self.client(submit_wait_client, port, c, duration)
        if self.wrk is None:
            return self.client(python_client, port, c, duration)
        return run_wrk(self.wrk, self.script, f"http://{HOST}:{port}{PATH}", c, duration)

    def cpu_now(self, stack: Stack) -> tuple[float, float, float, float]:
        """CPU seconds so far: API tree, workers' trees, their reaped children, redis."""
        assert stack.server is not None  # noqa: S101  # started before any measurement
        api, reaped = tree_cpu(stack.server.proc.pid)
        workers = 0.0
        for worker in stack.procs:
            own, theirs = tree_cpu(worker.proc.pid)
            workers += own
            reaped += theirs
        redis = tree_cpu(self.redis_pid)[0] if self.redis_pid else float("nan")
        return api, workers, reaped, redis

    def measure(
        self, stack: Stack, mode: str, c: int, duration: float
    ) -> tuple[Sample, list[str], Cpu, dict[str, int] | None]:
        assert stack.server is not None  # noqa: S101
        nodes = [worker.node for worker in stack.procs]
        tasks_before = task_counts(self.app, nodes) if nodes else None
        before = self.cpu_now(stack)
        sample, problems = self.load(stack.server.port, mode, c, duration)
        after = self.cpu_now(stack)
        tasks_after = task_counts(self.app, nodes) if nodes else None
        jobs = max(1, sample.ok)
        cpu = Cpu(*((b - a) * 1e3 / jobs for a, b in zip(before, after, strict=True)))
        tasks = None
        if tasks_before is not None and tasks_after is not None:
            tasks = {node: tasks_after[node] - tasks_before[node] for node in nodes}
        return sample, problems, cpu, tasks


# -- report ----------------------------------------------------------------------------


def cell(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def table(rows: dict[tuple[str, str, int], Row]) -> str:
    lines = [
        "| mode | c | stack | jobs/s | p50 ms | p99 ms | errors | server CPU ms/job "
        "| of which workers | echo children CPU ms/job | redis-server CPU ms/job "
        "| jobs/s ratio to thread | CPU ms/job ratio to thread |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (key, mode, c), row in rows.items():
        base = rows["A", mode, c]
        is_base = key == "A"
        lines.append(
            f"| {mode} | {c} | {row.stack.label} "
            f"| {median([s.rate for s in row.samples]):.0f} "
            f"| {median([s.p50_ms for s in row.samples]):.2f} "
            f"| {median([s.p99_ms for s in row.samples]):.2f} "
            f"| {sum(s.errors for s in row.samples)} "
            f"| {median([cpu.server for cpu in row.cpu]):.2f} "
            f"| {median([cpu.workers for cpu in row.cpu]):.2f} "
            f"| {median([cpu.children for cpu in row.cpu]):.2f} "
            f"| {cell(median([cpu.redis for cpu in row.cpu]))} "
            f"| {'1 (base)' if is_base else cell(round_ratio(row.samples, base.samples))} "
            f"| {'1 (base)' if is_base else cell(cpu_ratio(row, base))} |"
        )
    return "\n".join(lines)


def cpu_ratio(row: Row, base: Row) -> float:
    """Median over the rounds of the row's server CPU ms/job over the base's."""
    return round_ratio(row.cpu, base.cpu, lambda cpu: cpu.server)


def per_worker_lines(rows: dict[tuple[str, str, int], Row], stacks: dict[str, Stack]) -> list[str]:
    lines = []
    c = max(CONCURRENCIES)
    for mode in MODES:
        b, cc = rows["B", mode, c], rows["C", mode, c]
        nb, nc = stacks["B"].workers, stacks["C"].workers
        rate_b = median([s.rate for s in b.samples])
        rate_c = median([s.rate for s in cc.samples])
        scale = round_ratio(cc.samples, b.samples)
        lines.append(
            f"- {mode}, c={c}: B {rate_b:.0f} jobs/s / {nb} worker = {rate_b / nb:.0f}; "
            f"C {rate_c:.0f} jobs/s / {nc} workers = {rate_c / nc:.0f} "
            f"(C over B in the same round: {cell(scale)}, i.e. {cell(scale / nc * nb)} "
            "per worker process)"
        )
    return lines


def spread_lines(rows: dict[tuple[str, str, int], Row]) -> list[str]:
    """How many tasks each worker of B and C accepted, summed over the rounds."""
    lines = []
    for (key, mode, c), row in rows.items():
        if key == "A":
            continue
        counted = [tasks for tasks in row.tasks if tasks is not None]
        if not counted:
            lines.append(f"- {row.stack.label}, {mode}, c={c}: no counts (inspect failed)")
            continue
        totals = {node: sum(tasks[node] for tasks in counted) for node in counted[0]}
        everything = sum(totals.values())
        ok = sum(s.ok for s, t in zip(row.samples, row.tasks, strict=True) if t is not None)
        shares = ", ".join(
            f"{node.split('@')[0]} {count} ({count / everything:.0%})"
            if everything
            else f"{node.split('@')[0]} 0"
            for node, count in totals.items()
        )
        missing = len(row.tasks) - len(counted)
        lines.append(
            f"- {row.stack.label}, {mode}, c={c}: {shares}; {everything} tasks for {ok} ok jobs"
            + (f" ({missing} round(s) without counts)" if missing else "")
        )
    return lines


def versions_line(wrk: str | None, redis_version: str) -> str:
    import gunicorn  # type: ignore[import-untyped]  # the server extra

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    sync_client = (
        f"{wrk_version(wrk)} (1 thread, Lua-checked bodies)"
        if wrk
        else "Python http.client (no wrk)"
    )
    return (
        f"Python {platform.python_version()}, procgate {procgate_version()} "
        f"(gunicorn {gunicorn.__version__}), Celery {version('celery')}, "
        f"kombu {version('kombu')}, {redis_version}; clients: {sync_client} for sync rows, "
        "Python http.client (keep-alive, one thread per connection, own process) for "
        "async rows"
    )


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="ThreadRunner vs. CeleryRunner (1 and 2 workers) for short echo jobs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds per measurement (wrk: whole s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="gunicorn worker processes of each API server (procgate serve --workers)",
    )
    parser.add_argument("--output", help="also write the header and tables to this file")
    options = parser.parse_args(argv)
    if options.duration <= 0 or options.rounds < 1 or options.api_workers < 1:
        parser.error("--duration must be positive, --rounds and --api-workers at least 1")
    return options


def find_redis_pid(port: int) -> int | None:
    """The redis-server child of this process that listens on ``port``."""
    for pid in children(os.getpid()):
        if comm(pid) == "redis-server":
            # redis-server retitles itself "redis-server 127.0.0.1:<port>"
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as file:
                if re.search(rb"[:\0 ]%d\b" % port, file.read()):
                    return pid
    return None


def config_text(stack: Stack, redis_url: str, prefix: str) -> str:
    store, prefix_toml = json.dumps(redis_url), json.dumps(prefix)
    if stack.runner == "thread":
        return THREAD_CONFIG.format(slots=SLOTS, store=store, prefix=prefix_toml)
    broker = json.dumps(redis_url.rsplit("/", 1)[0] + "/1")
    return CELERY_CONFIG.format(
        broker=broker, queue=json.dumps(stack.queue), slots=SLOTS, store=store, prefix=prefix_toml
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    started = time.monotonic()
    notes: list[str] = []

    why = redis_unavailable()
    if why:
        print(f"celery: {why}", file=sys.stderr)
        return 2
    try:
        celery = real_celery()
    except ImportError as exc:
        print(f"celery: Celery is not installed (pip install 'procgate[celery]'): {exc}")
        return 2
    wrk = shutil.which("wrk")
    if wrk is None:
        print("note: wrk is not installed (apt-get install wrk): sync rows use the Python client")

    stacks = {
        "A": Stack("A", f"A: thread runner ({SLOTS} threads)", "thread", 0),
        "B": Stack("B", f"B: celery, 1 worker x {SLOTS}", "celery", 1, queue="bench-b"),
        "C": Stack("C", f"C: celery, 2 workers x {SLOTS}", "celery", 2, queue="bench-c"),
    }
    rows = {
        (key, mode, c): Row(stacks[key], mode, c)
        for mode in MODES
        for c in CONCURRENCIES
        for key in stacks
    }
    sync_s = max(1, round(options.duration)) if wrk else options.duration
    per_round = len(rows) / 2 * (sync_s + options.duration + 0.2)
    projected = 8 + len(stacks) * (WARMUP + 0.3) + options.rounds * per_round
    print(
        f"celery: {options.rounds} round(s) x {options.duration:g} s per measurement; "
        f"about {projected:.0f} s",
        flush=True,
    )
    host = socket.gethostname()
    run_id = f"{os.getpid()}-{int(time.time())}"

    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="procgate-celery-"))
        context = multiprocessing.get_context("spawn")
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=context))
        pool.submit(int).result()  # start the client process now, not in a measurement
        redis_url = stack.enter_context(redis_server(workdir))
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        redis_pid = find_redis_pid(redis_port)
        if redis_pid is None:
            notes.append("redis-server's pid not found: its CPU column says n/a")
        redis_version = redis_versions(redis_url)
        app = control_app(celery, redis_url.rsplit("/", 1)[0] + "/1")
        stack.callback(app.close)
        script = os.path.join(workdir, "echo.lua")
        with open(script, "w") as file:
            file.write(WRK_SCRIPT)
        bench = Bench(pool, wrk, script, app, redis_pid)

        # Workers first (they take longest to start), then the API servers, then wait.
        t0 = time.monotonic()
        config_paths = {}
        all_workers: list[Worker] = []
        stack.callback(stop_workers, all_workers)  # after the servers stop (LIFO)
        for key, st in stacks.items():
            prefix = f"procgate-bench-celery:{run_id}:{key}:"
            config_paths[key] = os.path.join(workdir, f"{st.name}.toml")
            with open(config_paths[key], "w") as file:
                file.write(config_text(st, redis_url, prefix))
            for n in range(1, st.workers + 1):
                node = f"bench-{key.lower()}{n}@{host}"
                worker = start_worker(config_paths[key], workdir, node)
                st.procs.append(worker)
                all_workers.append(worker)
        for key, st in stacks.items():
            with open(config_paths[key]) as file:
                text = file.read()
            st.server = stack.enter_context(
                serve(
                    st.name,
                    text,
                    workdir,
                    extra=["--workers", str(options.api_workers)],
                    cwd=workdir,
                )
            )
        servers_up = time.monotonic() - t0
        wait_ready(all_workers, app, t0)
        notes.append(
            f"start-up: API servers healthy after {servers_up:.1f} s; workers ready after "
            + ", ".join(
                f"{w.node.split('@')[0]} {w.ready_after:.1f} s ({w.ready_by})" for w in all_workers
            )
        )
        print(notes[-1], flush=True)

        # Warm-up: threads, connections, Celery consumers; every body decoded.
        for st in stacks.values():
            assert st.server is not None  # noqa: S101
            nodes = [w.node for w in st.procs]
            before = task_counts(app, nodes) if nodes else None
            sample, problems = bench.client(python_client, st.server.port, 8, WARMUP)
            after = task_counts(app, nodes) if nodes else None
            spread = ""
            if before is not None and after is not None:
                spread = "; tasks per worker: " + ", ".join(
                    f"{n.split('@')[0]} {after[n] - before[n]}" for n in nodes
                )
            notes.append(
                f"{st.name} warm-up (Python client, sync, c=8, {WARMUP:g} s, every body "
                f"decoded): {sample.ok} ok, {sample.errors} errors{spread}"
            )
            notes.extend(f"  {problem}" for problem in problems)

        for number in range(1, options.rounds + 1):
            for mode in MODES:
                for c in CONCURRENCIES:
                    for key, st in stacks.items():
                        sample, problems, cpu, tasks = bench.measure(st, mode, c, options.duration)
                        row = rows[key, mode, c]
                        row.samples.append(sample)
                        row.cpu.append(cpu)
                        row.tasks.append(tasks)
                        notes.extend(
                            f"round {number}, {st.name} {mode} c={c}: {problem}"
                            for problem in problems
                        )
            summary = ", ".join(
                f"{key}/{mode}/c{c} {row.samples[-1].rate:.0f}/s"
                for (key, mode, c), row in rows.items()
            )
            print(f"round {number} ({time.monotonic() - started:.0f} s): {summary}", flush=True)

        for st in stacks.values():
            assert st.server is not None  # noqa: S101
            if st.server.proc.poll() is not None:
                notes.append(f"{st.name} server died during the run:\n{st.server.log_tail()}")
            else:
                logged = st.server.log_tail(8)
                if logged.strip():
                    notes.append(
                        f"{st.name} server log (last lines):\n{textwrap.indent(logged, '  ')}"
                    )
            for worker in st.procs:
                if worker.proc.poll() is not None:
                    notes.append(
                        f"worker {worker.node} died during the run:\n{tail(worker.log_text())}"
                    )
                else:
                    lines = worker_notes(worker)
                    if lines:
                        notes.append(
                            f"worker {worker.node} log (warnings, errors):\n"
                            + textwrap.indent("\n".join(lines), "  ")
                        )

    elapsed = time.monotonic() - started
    header = [
        f"Machine: {machine_line()}.",
        f"Versions: {versions_line(wrk, redis_version)}.",
        f"{options.rounds} round(s) x {options.duration:g} s per measurement; "
        f"the run took {elapsed:.0f} s.",
    ]
    workers_word = "worker" if options.api_workers == 1 else "workers"
    parts = [
        "\n".join(header),
        "",
        "### ThreadRunner vs CeleryRunner: `echo hello` per job",
        "",
        f"Every API server: `procgate serve --workers {options.api_workers}` (gunicorn "
        f"gthread, {options.api_workers} {workers_word}, default threads). Stores: one "
        "throwaway redis-server on 127.0.0.1 (no persistence), database 0, a key prefix per "
        f"stack; Celery broker: database 1 of the same server. A: `[runner] kind = "
        f'"thread"`, max_workers {SLOTS}. B: `kind = "celery"`, queue `bench-b`, one '
        f"`procgate worker --concurrency {SLOTS}` (thread pool). C: the same config with "
        f"queue `bench-c` and its own prefix, and two such workers; its own API server, "
        "so that A, B and C are all up for the whole run and measured in the same rounds. "
        'Sync: `POST /commands/echo` `{"args": ["hello"], "wait": true}` (200, one '
        "request per job); async: the same without `wait` (202), then "
        f"`GET /jobs/<id>?wait={WAIT}` on the same connection (two requests per job). "
        "In each round, for each mode and concurrency: A, then B, then C.",
        "",
        table(rows),
        "",
        "jobs/s, latencies and CPU: medians over the rounds; errors: total over the rounds. "
        "Server CPU ms/job: user+system CPU per successful job of the API server's process "
        "tree (gunicorn arbiter and worker) plus, for B and C, the procgate worker "
        "processes' trees (one Celery process each, thread pool), from `/proc`; the `echo` "
        "children they reaped are in their own column. redis-server CPU is the one shared "
        "server's (store and broker; the idle stacks' polling included), not in the server "
        "CPU. Ratio columns: that round's figure over the thread runner's at the same mode "
        "and concurrency, median over the rounds (jobs/s above 1 and CPU below 1 favour "
        "Celery). The load clients (wrk, the Python client) share the 2 cores.",
        "",
        "Jobs/s per worker process (medians; C over B is that round's ratio, median over "
        "the rounds):",
        "",
        *per_worker_lines(rows, stacks),
        "",
        "Tasks each worker accepted during the measurements (Celery `inspect stats`, "
        "summed over the rounds):",
        "",
        *spread_lines(rows),
    ]
    report = "\n".join(parts)
    publish(report, notes, elapsed, options.output)
    return 1 if any(s.errors for row in rows.values() for s in row.samples) else 0


if __name__ == "__main__":
    sys.exit(main())
