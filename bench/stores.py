"""Job store overhead: MemoryStore, SQLiteStore and RedisStore, in process and over HTTP.

Run it with ``python bench/stores.py`` (``--help`` for the options). In one bounded run
it measures, each ``--rounds`` times, interleaved so that every round sees the same noise:

* in this process, with no HTTP and no child process: one job's store round trips as the
  Gate and the thread runner make them for an ``echo hello`` job (``create``, ``start``,
  ``cancel_requested``, ``append_output`` of ``"hello\\n"``, ``finish``, then ``get``),
  in a loop on 1 and on 16 threads, for each store;
* over HTTP, against ``procgate serve`` with each store and the thread runner: ``POST
  /commands/echo`` with ``{"args": ["hello"]}`` (202), then ``GET /jobs/<id>?wait=10``
  (200, ``status`` succeeded, ``stdout`` ``"hello\\n"``), at concurrency 1 and 16;

and prints markdown tables of medians. The Redis store uses a ``redis-server`` that the
script starts on a free port, without persistence, and stops at the end; without
``redis-server`` or redis-py, the Redis rows say skipped.

Loopback only: every server binds 127.0.0.1 and every request goes there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import shutil
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
    Sample,
    Server,
    closed_loop,
    cpu_count,
    free_port,
    median,
    percentiles,
    procgate_version,
    publish,
    round_ratio,
    serve,
    stop,
)

from procgate.commands import make_command
from procgate.jobs import Chunk, Job, JobStatus, Outcome, new_job_id
from procgate.runners.liveness import new_owner
from procgate.stores import JobStore, open_store

KINDS = ("memory", "sqlite", "redis")
STORE_THREADS = (1, 16)
CONCURRENCIES = (1, 16)
MAX_WORKERS = 8
#: Seconds the GET may wait for its job (``?wait=``).
WAIT = 10
PATH = "/commands/echo"
BODY = b'{"args": ["hello"]}'
HEADERS = {"Content-Type": "application/json"}
#: The store calls of one job, in the order the Gate and the thread runner make them.
#: The one chunk of output each job writes.
HELLO = Chunk(1, "stdout", 0, b"hello\n")

OPS = ("create", "start", "cancel_requested", "append_output", "finish", "get")
OUTCOME = Outcome(JobStatus.SUCCEEDED, returncode=0)
#: Key prefixes in the one redis-server: the in-process store's, and the servers'.
DIRECT_PREFIX = "procgate-bench:direct:"
SERVE_PREFIX = "procgate-bench:serve:"
#: Seconds of client traffic (concurrency 8, every body checked) after a server starts:
#: it starts the runner's threads in each gunicorn worker.
WARMUP = 1.0
#: Rough seconds it takes to fill each in-process store to its max_jobs (2 cores, loopback).
FILL_ESTIMATE = {"memory": 0.1, "sqlite": 3.0, "redis": 12.0}
#: Seconds redis-server may take to answer PING after it is started.
REDIS_DEADLINE = 10.0

CONFIG = """\
[runner]
kind = "thread"
max_workers = {max_workers}

[store]
url = {url}
{extra}
[commands.echo]
argv = ["echo"]
timeout = 60
"""


@dataclass
class StoreSample:
    """One in-process loop: jobs done, errors, wall time, latency and mean µs per call."""

    jobs: int
    errors: int
    seconds: float
    p50_us: float
    p99_us: float
    op_us: dict[str, float]

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class HttpSample(Sample):
    """A ``Sample`` of submit + wait jobs, with the p50 of each of the two requests."""

    post_p50_ms: float = float("nan")
    get_p50_ms: float = float("nan")


@dataclass
class Row:
    kind: str
    label: str
    samples: list[Any] = field(default_factory=list)
    skipped: str = ""


# -- in process: store round trips -----------------------------------------------------


def job_factory() -> Callable[[], Job]:
    """New ``echo hello`` jobs, built as ``POST /commands/echo`` builds them."""
    command = make_command("echo", ["echo"], timeout=60)
    owner = new_owner()

    def make() -> Job:
        spec = command.spec(["hello"], env={}, stdin=b"", timeout=None)
        return Job(id=new_job_id(), command="echo", args=("hello",), spec=spec, owner=owner)

    return make


def open_direct(kind: str, workdir: str, redis_url: str) -> JobStore:
    """The store of ``kind`` with its defaults, as ``[store] url = ...`` alone makes it."""
    if kind == "memory":
        return open_store("memory://")
    if kind == "sqlite":
        return open_store("sqlite:///" + os.path.join(workdir, "direct.db"))
    return open_store(redis_url, prefix=DIRECT_PREFIX)


def fill(store: JobStore, make_job: Callable[[], Job], count: int) -> None:
    """Store ``count`` finished jobs: a store in use sits at its ``max_jobs``."""
    for _ in range(count):
        job = make_job()
        store.create(job)
        store.start(job.id)
        store.append_output(job.id, HELLO)
        store.finish(job.id, OUTCOME)


def store_loop(
    store: JobStore, make_job: Callable[[], Job], threads: int, duration: float
) -> tuple[StoreSample, list[str]]:
    """One job's store calls in a loop on ``threads`` threads for ``duration`` seconds.

    The job record is built before the clock starts: only the store calls are timed.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    totals = dict.fromkeys(OPS, 0.0)
    counts = {"ok": 0, "errors": 0}
    problems: list[str] = []
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def loop() -> None:
        clock = time.perf_counter
        mine: list[float] = []
        spent = [0.0] * len(OPS)
        ok = errors = 0
        barrier.wait()
        while clock() < deadline[0]:
            job = make_job()
            job_id = job.id
            try:
                t0 = clock()
                store.create(job)
                t1 = clock()
                started = store.start(job_id)
                t2 = clock()
                store.cancel_requested(job_id)
                t3 = clock()
                store.append_output(job.id, HELLO)
                t4 = clock()
                store.finish(job_id, OUTCOME)
                t5 = clock()
                got = store.get(job_id)
                t6 = clock()
            except Exception as exc:
                errors += 1
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc}")
                continue
            if started is None or got.status is not JobStatus.SUCCEEDED or got.stdout != b"hello\n":
                errors += 1
                with lock:
                    problems.append(f"wrong job: {got!r}"[:300])
                continue
            ok += 1
            mine.append(t6 - t0)
            for index, took in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                spent[index] += took
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["errors"] += errors
            for index, op in enumerate(OPS):
                totals[op] += spent[index]

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    start = time.perf_counter()
    deadline[0] = start + duration
    barrier.wait()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    jobs = counts["ok"]
    op_us = {op: totals[op] / jobs * 1e6 if jobs else float("nan") for op in OPS}
    sample = StoreSample(jobs, counts["errors"], seconds, p50 * 1000, p99 * 1000, op_us)
    return sample, problems[:5]


# -- over HTTP: submit, then wait ------------------------------------------------------


def submit_wait_client(port: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Keep-alive ``http.client`` connections on ``concurrency`` threads, each job checked.

    A job is ``POST /commands/echo`` (202 expected) then ``GET /jobs/<id>?wait=10`` on the
    same connection (200, succeeded, ``"hello\\n"``); its latency covers both. Runs in a
    process of its own, so its GIL is not the server's; returns plain data.
    """

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, port, timeout=30)

    problems: list[str] = []
    posts: list[float] = []  # list.append is atomic: the threads share these
    gets: list[float] = []

    def one(state: list[Any]) -> bool:
        conn = state[0]
        try:
            t0 = time.perf_counter()
            conn.request("POST", PATH, BODY, HEADERS)
            response = conn.getresponse()
            data = response.read()
            if response.status != 202:
                problems.append(f"POST: HTTP {response.status}: {data[:200]!r}")
                return False
            job_id = json.loads(data)["id"]
            t1 = time.perf_counter()
            conn.request("GET", f"/jobs/{job_id}?wait={WAIT}")
            response = conn.getresponse()
            data = response.read()
            t2 = time.perf_counter()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            state[0] = connect()
            problems.append(f"{type(exc).__name__}: {exc}")
            return False
        except (ValueError, KeyError, TypeError):
            problems.append(f"POST: no job id in {data[:200]!r}")
            return False
        if response.status != 200:
            problems.append(f"GET: HTTP {response.status}: {data[:200]!r}")
            return False
        try:
            job = json.loads(data)
        except ValueError:
            problems.append(f"GET: not JSON: {data[:200]!r}")
            return False
        if job.get("status") != "succeeded" or job.get("stdout") != "hello\n":
            problems.append(f"GET: wrong job: {data[:300]!r}")
            return False
        posts.append(t1 - t0)
        gets.append(t2 - t1)
        return True

    sample = closed_loop(concurrency, duration, one, make=connect)
    return {
        **sample.__dict__,
        "post_p50_ms": percentiles(posts)[0],
        "get_p50_ms": percentiles(gets)[0],
        "problems": problems[:5],
    }


def measure_http(
    pool: concurrent.futures.Executor, port: int, concurrency: int, duration: float
) -> tuple[HttpSample, list[str]]:
    result = pool.submit(submit_wait_client, port, concurrency, duration).result()
    problems = result.pop("problems")
    return HttpSample(**result), problems


def server_config(kind: str, workdir: str, redis_url: str) -> tuple[str, list[str]]:
    """The config file text and the extra ``procgate serve`` flags for a store kind."""
    extra = ""
    flags: list[str] = []
    if kind == "memory":
        url = "memory://"
        flags = ["--workers", "1"]  # the memory store lives in one process
    elif kind == "sqlite":
        url = "sqlite:///" + os.path.join(workdir, "serve.db")
    else:
        url = redis_url
        extra = f"prefix = {json.dumps(SERVE_PREFIX)}\n"
    text = CONFIG.format(max_workers=MAX_WORKERS, url=json.dumps(url), extra=extra)
    return text, flags


# -- redis-server ----------------------------------------------------------------------


def redis_unavailable() -> str:
    """Why the Redis rows cannot run here, or "" when they can."""
    if shutil.which("redis-server") is None:
        return "skipped (no redis-server: apt-get install redis-server)"
    try:
        import redis  # noqa: F401  # the redis extra is optional
    except ImportError:
        return "skipped (no redis-py: pip install 'procgate[redis]')"
    return ""


@contextlib.contextmanager
def redis_server(workdir: str) -> Iterator[str]:
    """A ``redis-server`` on a free 127.0.0.1 port, without persistence; yields its URL."""
    import redis

    port = free_port()
    directory = os.path.join(workdir, "redis")
    os.makedirs(directory)
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
    ]
    log_path = os.path.join(workdir, "redis.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://{HOST}:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + REDIS_DEADLINE
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, errors="replace") as file:
                        raise RuntimeError(f"redis-server did not start:\n{file.read()}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(proc)


def redis_versions(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        server = client.info("server")["redis_version"]
    finally:
        client.close()
    return f"Redis {server} (redis-py {redis.__version__})"


# -- report ----------------------------------------------------------------------------


def store_table(rows: dict[tuple[str, int], Row]) -> str:
    lines = [
        "| store | threads | µs/job p50 | µs/job p99 | jobs/s | µs/job (1e6 / jobs/s) "
        "| ratio jobs/s to memory | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, threads), row in rows.items():
        if not row.samples:
            lines.append(f"| {kind} | {threads} | {row.skipped or 'skipped'} | | | | | |")
            continue
        rate = median([s.rate for s in row.samples])
        base = rows["memory", threads]
        lines.append(
            f"| {kind} | {threads} | {median([s.p50_us for s in row.samples]):.0f} "
            f"| {median([s.p99_us for s in row.samples]):.0f} | {rate:.0f} "
            f"| {1e6 / rate if rate else float('nan'):.0f} "
            f"| {round_ratio(row.samples, base.samples):.2f} "
            f"| {sum(s.errors for s in row.samples)} |"
        )
    return "\n".join(lines)


def ops_table(rows: dict[tuple[str, int], Row]) -> str:
    columns = [key for key, row in rows.items() if row.samples]
    lines = [
        "| call | " + " | ".join(f"{kind}, {threads} thr" for kind, threads in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for op in (*OPS, "sum"):
        cells = []
        for key in columns:
            samples = rows[key].samples
            if op == "sum":
                cells.append(median([sum(s.op_us.values()) for s in samples]))
            else:
                cells.append(median([s.op_us[op] for s in samples]))
        lines.append(f"| {op} | " + " | ".join(f"{value:.1f}" for value in cells) + " |")
    return "\n".join(lines)


def http_table(rows: dict[tuple[str, int], Row], workers: dict[str, str]) -> str:
    lines = [
        "| store | server | c | jobs/s | p50 ms | p99 ms | POST p50 ms | GET ?wait p50 ms "
        "| errors | ratio to memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, concurrency), row in rows.items():
        if not row.samples:
            skipped = row.skipped or "skipped"
            lines.append(f"| {kind} | {workers[kind]} | {concurrency} | {skipped} | | | | | | |")
            continue
        base = rows["memory", concurrency]
        lines.append(
            f"| {kind} | {workers[kind]} | {concurrency} "
            f"| {median([s.rate for s in row.samples]):.0f} "
            f"| {median([s.p50_ms for s in row.samples]):.2f} "
            f"| {median([s.p99_ms for s in row.samples]):.2f} "
            f"| {median([s.post_p50_ms for s in row.samples]):.2f} "
            f"| {median([s.get_p50_ms for s in row.samples]):.2f} "
            f"| {sum(s.errors for s in row.samples)} "
            f"| {round_ratio(row.samples, base.samples):.2f} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Job store overhead: memory, SQLite and Redis, in process and over HTTP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per HTTP measurement")
    parser.add_argument(
        "--store-duration",
        type=float,
        default=1.0,
        help="seconds per in-process store measurement",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the tables show medians")
    parser.add_argument(
        "--no-fill",
        action="store_true",
        help="do not fill the in-process stores to their max_jobs before measuring",
    )
    parser.add_argument("--no-http", action="store_true", help="leave out the HTTP part")
    parser.add_argument("--output", help="also write the header and tables to this file")
    options = parser.parse_args(argv)
    if options.duration <= 0 or options.store_duration <= 0 or options.rounds < 1:
        parser.error("durations must be positive and --rounds at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    no_redis = redis_unavailable()
    kinds = [kind for kind in KINDS if not (kind == "redis" and no_redis)]
    client = "python http.client (keep-alive, 1 thread per connection, own process)"
    http_part = not options.no_http
    if not http_part:
        client = "none (--no-http)"
    projected = 3.0 + options.rounds * len(kinds) * len(STORE_THREADS) * options.store_duration
    if not options.no_fill:
        projected += sum(FILL_ESTIMATE[kind] for kind in kinds)
    if http_part:
        projected += len(kinds) * (2.5 + WARMUP)
        projected += options.rounds * len(kinds) * len(CONCURRENCIES) * (options.duration + 0.1)
    print(
        f"stores: {options.rounds} round(s) x ({options.store_duration:g} s per store loop"
        + (f", {options.duration:g} s per HTTP measurement" if http_part else "")
        + f"); about {projected:.0f} s"
    )

    store_rows = {
        (kind, threads): Row(
            kind, f"{kind}/{threads}t", skipped=no_redis if kind == "redis" else ""
        )
        for threads in STORE_THREADS
        for kind in KINDS
    }
    http_rows = {
        (kind, c): Row(kind, f"{kind}/c{c}", skipped=no_redis if kind == "redis" else "")
        for c in CONCURRENCIES
        for kind in KINDS
    }
    if not http_part:
        for row in http_rows.values():
            row.skipped = "skipped (--no-http)"
    default_workers = max(2, os.cpu_count() or 1)  # what procgate serve picks
    workers = {
        "memory": "1 worker",
        "sqlite": f"{default_workers} workers",
        "redis": f"{default_workers} workers",
    }
    notes: list[str] = []
    redis_version = "Redis: " + no_redis if no_redis else ""
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="procgate-bench-"))
        redis_url = ""
        if "redis" in kinds:
            redis_url = stack.enter_context(redis_server(workdir))
            redis_version = redis_versions(redis_url)

        make_job = job_factory()
        direct: dict[str, JobStore] = {}
        for kind in kinds:
            store = open_direct(kind, workdir, redis_url)
            stack.callback(store.close)
            direct[kind] = store
            if not options.no_fill:
                t0 = time.perf_counter()
                fill(store, make_job, int(getattr(store, "max_jobs", 0)))
                notes.append(
                    f"filled the in-process {kind} store with its max_jobs "
                    f"({getattr(store, 'max_jobs', 0)}) finished jobs in "
                    f"{time.perf_counter() - t0:.1f} s"
                )

        servers: dict[str, Server] = {}
        client_pool: concurrent.futures.Executor | None = None
        if http_part:
            context = multiprocessing.get_context("spawn")
            client_pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
            )
            for kind in kinds:
                text, flags = server_config(kind, workdir, redis_url)
                servers[kind] = stack.enter_context(serve(kind, text, workdir, flags))
                sample, problems = measure_http(client_pool, servers[kind].port, 8, WARMUP)
                notes.append(
                    f"{kind} server warm-up (c=8, every job checked): "
                    f"{sample.ok} ok, {sample.errors} errors"
                )
                notes.extend(f"  {problem}" for problem in problems)

        for round_number in range(1, options.rounds + 1):
            for threads in STORE_THREADS:
                for kind in kinds:
                    sample, problems = store_loop(
                        direct[kind], make_job, threads, options.store_duration
                    )
                    store_rows[kind, threads].samples.append(sample)
                    notes.extend(
                        f"round {round_number}, {kind} store, {threads} threads: {problem}"
                        for problem in problems
                    )
            if client_pool is not None:
                for concurrency in CONCURRENCIES:
                    for kind in kinds:
                        sample, problems = measure_http(
                            client_pool, servers[kind].port, concurrency, options.duration
                        )
                        http_rows[kind, concurrency].samples.append(sample)
                        notes.extend(
                            f"round {round_number}, {kind} server, c={concurrency}: {problem}"
                            for problem in problems
                        )
            summary = ", ".join(
                f"{row.label} {row.samples[-1].rate:.0f}/s"
                for row in (*store_rows.values(), *http_rows.values())
                if row.samples
            )
            print(f"round {round_number}: {summary}", flush=True)

        for kind, server in servers.items():
            if server.proc.poll() is not None:
                notes.append(f"{kind} server died during the run:\n{server.log_tail()}")
            else:
                logged = server.log_tail()
                if logged.strip():
                    notes.append(
                        f"{kind} server log (last lines):\n{textwrap.indent(logged, '  ')}"
                    )

    elapsed = time.monotonic() - started
    header = (
        f"nproc {cpu_count()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {redis_version}, procgate {procgate_version()}, "
        f"client: {client}; {options.rounds} round(s)"
    )
    fill_note = (
        "each first filled to its max_jobs with finished jobs"
        if not options.no_fill
        else "not filled first (--no-fill)"
    )
    parts = [
        header,
        "",
        f"### Store round trips in process, no HTTP, no child ({options.store_duration:g} s "
        "per loop)",
        "",
        "One job: create, start, cancel_requested, append_output (stdout `hello\\n`), "
        "finish, get, as the Gate and the thread runner call them. Stores with their "
        f"defaults (max_jobs: memory 1000, SQLite and Redis 10000; no ttl), {fill_note}.",
        "",
        store_table(store_rows),
        "",
        "Mean µs per call (median over the rounds):",
        "",
        ops_table(store_rows),
    ]
    if http_part:
        parts += [
            "",
            f"### HTTP: POST /commands/echo (202), then GET /jobs/<id>?wait={WAIT} "
            f"({options.duration:g} s per measurement)",
            "",
            f"`procgate serve`, gunicorn gthread (default threads), thread runner "
            f"max_workers={MAX_WORKERS}; a job's latency covers both requests.",
            "",
            http_table(http_rows, workers),
        ]
    parts += [
        "",
        "Latencies and jobs/s: medians over the rounds; errors: total over the rounds; "
        "ratios: jobs/s over the memory store's at the same threads or concurrency in the "
        "same round, median over the rounds. At 16 threads a job's latency includes waiting "
        "for the GIL and for the other threads' locks.",
    ]
    report = "\n".join(parts)
    publish(report, notes, elapsed, options.output)
    rows = (*store_rows.values(), *http_rows.values())
    return 1 if any(s.errors for row in rows for s in row.samples) else 0


if __name__ == "__main__":
    sys.exit(main())
