"""Where one job's time goes: procgate's layers measured one at a time, in one process.

Run it with ``python bench/breakdown.py`` (``--help`` for the options); about a minute.
Each row runs ``echo hello`` (or a store's part of one job) ``--jobs`` times in a loop on
one thread, after 100 untimed ones, and reports wall time and this process's CPU per job
(``time.process_time``: the children's CPU is not in it). Rows, each adding a layer:

* ``subprocess.run(["echo", "hello"], capture_output=True)``: the spawn limit;
* ``procgate.process.execute``: procgate's spawn, pipes and supervision;
* the Gate as a WSGI callable (no HTTP server) answering ``POST /commands/echo`` with
  ``{"args": ["hello"], "wait": true}``: with the SyncRunner and the ThreadRunner (the job
  runs in the request's thread), on the memory and SQLite stores;
* a trivial WSGI app under ``gunicorn`` (gthread, one worker, 32 threads) and under the
  sync worker, loaded by ``wrk`` at 16 connections: what the HTTP server itself costs per
  request (needs gunicorn and wrk; skipped otherwise);
* the store calls of one job (``create``, ``start``, ``append_output``, ``finish``,
  ``wait``, ``get``) for the memory and SQLite stores, microseconds each.

Differences between rows are the cost of a layer. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

from _common import HOST, free_port

from procgate import Gate, MemoryStore, SyncRunner, ThreadRunner, process
from procgate.commands import make_command
from procgate.jobs import Chunk, Job, JobStatus, Outcome, new_job_id
from procgate.stores import JobStore
from procgate.stores.sqlite import SQLiteStore

#: The spawn limit's argv, resolved once like procgate resolves a command's program.
ECHO = [shutil.which("echo") or "/bin/echo", "hello"]

BODY = json.dumps({"args": ["hello"], "wait": True}).encode()

HELLO_APP = """
def app(environ, start_response):
    environ["wsgi.input"].read()
    body = b'{"status":"succeeded","stdout":"hello\\\\n"}'
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

WRK_POST = """
wrk.method = "POST"
wrk.body = '{"args":["hello"],"wait":true}'
wrk.headers["Content-Type"] = "application/json"
"""


def per_job(fn: Callable[[], Any], jobs: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call of ``fn``, after 100 untimed calls."""
    for _ in range(100):
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(jobs):
        fn()
    return (time.perf_counter() - wall) * 1e3 / jobs, (time.process_time() - cpu) * 1e3 / jobs


def environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/commands/echo",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": HOST,
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": f"{HOST}:8000",
        "REMOTE_ADDR": HOST,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def gate_row(store: JobStore, runner: Any, jobs: int) -> tuple[float, float]:
    gate = Gate(store=store, runner=runner)
    gate.register("echo", ["echo"], timeout=60)
    statuses: list[str] = []

    def call() -> None:
        body = b"".join(gate(environ(), lambda status, headers, exc=None: statuses.append(status)))
        if not statuses[-1].startswith("200") or b'"stdout":"hello\\n"' not in body:
            raise RuntimeError(f"unexpected answer {statuses[-1]}: {body[:200]!r}")

    try:
        return per_job(call, jobs)
    finally:
        gate.close()


def store_calls(store: JobStore, jobs: int) -> dict[str, float]:
    """Microseconds per call of each store method one echo job makes."""
    spec = make_command("echo", ["echo"], timeout=60).spec(
        ["hello"], env={}, stdin=b"", timeout=None
    )
    ids = [new_job_id() for _ in range(jobs)]
    calls: dict[str, Callable[[str], Any]] = {
        "create": lambda i: store.create(Job(id=i, command="echo", args=("hello",), spec=spec)),
        "start": store.start,
        "append_output": lambda i: store.append_output(i, Chunk(1, "stdout", 0, b"hello\n")),
        "finish": lambda i: store.finish(i, Outcome(JobStatus.SUCCEEDED, returncode=0)),
        "wait": lambda i: store.wait(i, 10),
        "get": store.get,
    }
    micros = {}
    for name, call in calls.items():
        started = time.perf_counter()
        for job_id in ids:
            call(job_id)
        micros[name] = (time.perf_counter() - started) * 1e6 / jobs
    return micros


def http_server_rows(seconds: int) -> list[tuple[str, float, float]]:
    """(label, requests/s, server CPU ms per request) of a trivial app under gunicorn."""
    gunicorn, wrk = shutil.which("gunicorn"), shutil.which("wrk")
    if gunicorn is None or wrk is None:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, "hello.py"), "w") as file:
            file.write(HELLO_APP)
        script = os.path.join(workdir, "post.lua")
        with open(script, "w") as file:
            file.write(WRK_POST)
        for label, flags in (
            ("gunicorn gthread, 1 worker x 32 threads", ["-k", "gthread", "--threads", "32"]),
            ("gunicorn sync, 1 worker (no keep-alive)", ["-k", "sync"]),
        ):
            port = free_port()
            server = subprocess.Popen(
                [gunicorn, "-b", f"{HOST}:{port}", "-w", "1", *flags, "hello:app"],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(1.5)
                before = _tree_cpu(server.pid)
                done = subprocess.run(
                    [wrk, "-t1", "-c16", f"-d{seconds}s", "-s", script, f"http://{HOST}:{port}/"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                cpu = _tree_cpu(server.pid) - before
            finally:
                server.terminate()
                server.wait(15)
            total = next(
                int(line.split()[0]) for line in done.stdout.splitlines() if "requests in" in line
            )
            rows.append((label, total / seconds, cpu * 1e3 / max(1, total)))
    return rows


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (a gunicorn arbiter and its worker)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for member in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per row")
    parser.add_argument("--http-seconds", type=int, default=4, help="wrk seconds per server")
    parser.add_argument("--output", help="also write the tables to this file")
    options = parser.parse_args(argv)
    jobs = options.jobs
    spec = make_command("echo", ["echo"], timeout=60).spec(
        ["hello"], env={}, stdin=b"", timeout=None
    )
    rows: list[tuple[str, float, float]] = [
        (
            "`subprocess.run` of `echo hello`",
            *per_job(lambda: subprocess.run(ECHO, capture_output=True, check=True), jobs),
        ),
        (
            "`procgate.process.execute`",
            *per_job(
                lambda: process.execute(spec, on_output=lambda s, d: None, cancelled=lambda: False),
                jobs,
            ),
        ),
    ]
    with tempfile.TemporaryDirectory() as workdir:
        for store_name, make_store in (
            ("memory", lambda: MemoryStore(max_jobs=jobs + 200)),
            ("SQLite", lambda: SQLiteStore(os.path.join(workdir, f"{time.time_ns()}.db"))),
        ):
            for runner_name, runner in (("SyncRunner", SyncRunner), ("ThreadRunner", ThreadRunner)):
                rows.append(
                    (
                        f"Gate (WSGI call, no server), {runner_name}, {store_name} store",
                        *gate_row(make_store(), runner(), jobs),
                    )
                )
        stores = {
            "memory": store_calls(MemoryStore(max_jobs=jobs), jobs),
            "SQLite": store_calls(SQLiteStore(os.path.join(workdir, "calls.db")), jobs),
        }
    http_rows = http_server_rows(options.http_seconds)

    base_wall, base_cpu = rows[0][1], rows[0][2]
    lines = [
        f"{jobs} jobs per row, one thread; CPU is this process's (children excluded).",
        "",
        "| what | wall ms/job | CPU ms/job | wall over `subprocess.run` | CPU over it |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {wall:.3f} | {cpu:.3f} | +{wall - base_wall:.3f} "
            f"| +{cpu - base_cpu:.3f} |"
            for label, wall, cpu in rows
        ),
    ]
    if http_rows:
        lines += [
            "",
            "A trivial WSGI app (a fixed JSON body) under gunicorn, wrk at 16 connections:",
            "",
            "| server | requests/s | server CPU ms/request |",
            "|---|---:|---:|",
            *(f"| {label} | {rate:.0f} | {cpu:.3f} |" for label, rate, cpu in http_rows),
        ]
    else:
        lines += ["", "(gunicorn or wrk not found: the HTTP server rows are skipped)"]
    names = list(next(iter(stores.values())))
    lines += [
        "",
        "Store calls of one job, microseconds each (one thread):",
        "",
        f"| store | {' | '.join(names)} | sum |",
        f"|---|{'---:|' * (len(names) + 1)}",
        *(
            f"| {name} | {' | '.join(f'{calls[n]:.0f}' for n in names)} "
            f"| {sum(calls.values()):.0f} |"
            for name, calls in stores.items()
        ),
    ]
    report = "\n".join(lines)
    print(report)
    if options.output:
        with open(options.output, "w") as file:
            file.write(textwrap.dedent(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
