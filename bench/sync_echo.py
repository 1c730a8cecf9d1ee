"""Sync echo jobs through procgate, against the cost of spawning ``echo`` directly.

Run it with ``python bench/sync_echo.py`` (``--help`` for the options). In one bounded run
it measures, each ``--rounds`` times, interleaved so that every round sees the same noise:

* the spawn limit: ``subprocess.run(["echo", "hello"])`` in a loop on 1 and on 2 threads;
* ``POST /commands/echo`` with ``{"args": ["hello"], "wait": true}`` against ``procgate
  serve`` with the thread runner, then with the process runner, at concurrency 1 and 8;

and prints a markdown table of medians. The load client is ``wrk`` when it is installed
(it costs the server far less CPU than a Python client on a 2-core machine), otherwise
a Python ``http.client`` client in a separate process. Either way every response is
checked (HTTP 200, ``status`` succeeded, ``stdout`` ``"hello\\n"``), and a Python client
fully decodes a sample of responses after each server starts.

Loopback only: the servers bind 127.0.0.1 and every request goes there.
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
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

from _common import (
    HOST,
    WRK_COUNTERS,
    Sample,
    Server,
    closed_loop,
    cpu_count,
    median,
    procgate_version,
    publish,
    round_ratio,
    run_wrk,
    serve,
    wrk_version,
)

PATH = "/commands/echo"
BODY = b'{"args": ["hello"], "wait": true}'
HEADERS = {"Content-Type": "application/json"}
CONCURRENCIES = (1, 8)
MAX_WORKERS = 8
#: Seconds of Python-client traffic (concurrency 8, every response decoded) after a
#: server starts: it starts the runner's threads or worker processes, and checks bodies.
WARMUP = 1.0
#: The total this script should stay under by default; the process runner is left out
#: when the projected run would exceed it.
BUDGET = 170.0

CONFIG = """\
[runner]
kind = "{kind}"
max_workers = {max_workers}

[store]
url = "memory://"

[commands.echo]
argv = ["echo"]
timeout = 60
"""

# wrk: POST the body and check every response; WRK_COUNTERS sums the counters over the
# wrk threads and prints one JSON line when done.
WRK_SCRIPT = (
    r"""
wrk.method = "POST"
wrk.body = '{"args": ["hello"], "wait": true}'
wrk.headers["Content-Type"] = "application/json"

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
  elseif not (string.find(body, '"status":"succeeded"', 1, true)
              and string.find(body, '"stdout":"hello\\n"', 1, true)) then
    bad = bad + 1
  end
end
"""
    + WRK_COUNTERS
)


@dataclass
class Row:
    label: str
    short: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ""


# -- measurements ----------------------------------------------------------------------


def spawn_echo(state: list[Any]) -> bool:
    done = subprocess.run(["echo", "hello"], capture_output=True, check=False)  # noqa: S607
    return done.returncode == 0 and done.stdout == b"hello\n"


def measure_spawn(threads: int, duration: float) -> Sample:
    return closed_loop(threads, duration, spawn_echo)


def python_client(port: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Keep-alive ``http.client`` connections on ``concurrency`` threads; every body decoded.

    Runs in a process of its own (see ``measure_python``), so its GIL is not the server's
    and not the spawn loop's. Returns plain data, to cross the process boundary.
    """

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, port, timeout=30)

    problems: list[str] = []

    def one(state: list[Any]) -> bool:
        conn = state[0]
        try:
            conn.request("POST", PATH, BODY, HEADERS)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            state[0] = connect()
            problems.append(f"{type(exc).__name__}: {exc}")
            return False
        if response.status != 200:
            problems.append(f"HTTP {response.status}: {data[:200]!r}")
            return False
        try:
            job = json.loads(data)
        except ValueError:
            problems.append(f"not JSON: {data[:200]!r}")
            return False
        if job.get("status") != "succeeded" or job.get("stdout") != "hello\n":
            problems.append(f"wrong job: {data[:300]!r}")
            return False
        return True

    sample = closed_loop(concurrency, duration, one, make=connect)
    return {**sample.__dict__, "problems": problems[:5]}


def measure_python(port: int, concurrency: int, duration: float) -> tuple[Sample, list[str]]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(python_client, port, concurrency, duration).result()
    problems = result.pop("problems")
    return Sample(**result), problems


def measure_wrk(
    wrk: str, script: str, port: int, concurrency: int, duration: float
) -> tuple[Sample, list[str]]:
    return run_wrk(wrk, script, f"http://{HOST}:{port}{PATH}", concurrency, duration)


# -- servers ---------------------------------------------------------------------------


def serve_runner(kind: str, workdir: str) -> contextlib.AbstractContextManager[Server]:
    """``procgate serve`` with runner ``kind`` on a free port, until the block ends."""
    return serve(kind, CONFIG.format(kind=kind, max_workers=MAX_WORKERS), workdir)


# -- report ----------------------------------------------------------------------------


def table(rows: list[Row], base1: Row, base2: Row) -> str:
    lines = [
        "| measurement | jobs/s | p50 ms | p99 ms | errors "
        "| ratio to spawn 1 thread | ratio to spawn 2 threads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.samples:
            lines.append(f"| {row.label} | {row.skipped or 'skipped'} | | | | | |")
            continue
        ratios = [round_ratio(row.samples, base.samples) for base in (base1, base2)]
        lines.append(
            f"| {row.label} | {median([s.rate for s in row.samples]):.0f} "
            f"| {median([s.p50_ms for s in row.samples]):.2f} "
            f"| {median([s.p99_ms for s in row.samples]):.2f} "
            f"| {sum(s.errors for s in row.samples)} "
            f"| {ratios[0]:.2f} | {ratios[1]:.2f} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sync echo jobs through procgate vs. spawning echo directly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (wrk: whole s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load client: auto is wrk when installed, else the Python client",
    )
    parser.add_argument("--no-process", action="store_true", help="leave out the process runner")
    parser.add_argument("--output", help="also write the header and table to this file")
    options = parser.parse_args(argv)
    if options.duration <= 0 or options.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    wrk = shutil.which("wrk") if options.client in ("auto", "wrk") else None
    if options.client == "wrk" and wrk is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    client = f"{wrk_version(wrk)} (1 thread, Lua-checked bodies)" if wrk else "python"
    if not wrk:
        client = "python http.client (keep-alive, 1 thread per connection, own process)"

    kinds = ["thread", "process"]
    per_measurement = (max(1, round(options.duration)) if wrk else options.duration) + 0.3
    projected = 2 * (WARMUP + 2) + options.rounds * 6 * per_measurement
    skipped_process = ""
    if options.no_process:
        kinds, skipped_process = ["thread"], "skipped (--no-process)"
    elif projected > BUDGET:
        kinds = ["thread"]
        skipped_process = f"skipped (projected {projected:.0f} s > {BUDGET:.0f} s budget)"
    if len(kinds) == 1:
        projected = WARMUP + 2 + options.rounds * 4 * per_measurement
    print(
        f"sync_echo: {options.rounds} round(s) x {options.duration:g} s per measurement, "
        f"client {client}; about {projected:.0f} s"
    )

    rows = [
        Row("spawn `echo hello`, 1 thread", "spawn1"),
        Row("spawn `echo hello`, 2 threads", "spawn2"),
    ]
    runner_rows: dict[tuple[str, int], Row] = {}
    for kind in ("thread", "process"):
        for concurrency in CONCURRENCIES:
            row = Row(f"procgate {kind} runner, c={concurrency}", f"{kind}/c{concurrency}")
            if kind not in kinds:
                row.skipped = skipped_process
            runner_rows[kind, concurrency] = row
            rows.append(row)
    notes: list[str] = []
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="procgate-bench-"))
        script = os.path.join(workdir, "echo.lua")
        with open(script, "w") as file:
            file.write(WRK_SCRIPT)
        servers = {}
        for kind in kinds:
            servers[kind] = stack.enter_context(serve_runner(kind, workdir))
            # Warm up (starts the runner's threads or worker processes) and check bodies.
            sample, problems = measure_python(servers[kind].port, MAX_WORKERS, WARMUP)
            notes.append(
                f"{kind} runner check (python client, c={MAX_WORKERS}, every body decoded): "
                f"{sample.ok} ok, {sample.errors} errors"
            )
            notes.extend(f"  {problem}" for problem in problems)

        for round_number in range(1, options.rounds + 1):
            rows[0].samples.append(measure_spawn(1, options.duration))
            rows[1].samples.append(measure_spawn(2, options.duration))
            for kind in kinds:
                for concurrency in CONCURRENCIES:
                    port = servers[kind].port
                    if wrk:
                        sample, problems = measure_wrk(
                            wrk, script, port, concurrency, options.duration
                        )
                    else:
                        sample, problems = measure_python(port, concurrency, options.duration)
                    runner_rows[kind, concurrency].samples.append(sample)
                    notes.extend(
                        f"round {round_number}, {kind} c={concurrency}: {problem}"
                        for problem in problems
                    )
            summary = ", ".join(
                f"{row.short} {row.samples[-1].rate:.0f}/s" for row in rows if row.samples
            )
            print(f"round {round_number}: {summary}")
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
    cpus = cpu_count()
    header = (
        f"nproc {cpus}, Python {platform.python_version()}, procgate {procgate_version()}, "
        f"client: {client}; {options.rounds} round(s) x {options.duration:g} s; "
        f"servers: procgate serve, 1 gunicorn gthread worker (default threads), "
        f"runner max_workers={MAX_WORKERS}, memory store"
    )
    report = "\n".join(
        [
            header,
            "",
            table(rows, rows[0], rows[1]),
            "",
            "jobs/s, p50 and p99: medians over the rounds; errors: total over the rounds; "
            "ratios: jobs/s over the spawn loop's in the same round, median over the rounds.",
        ]
    )
    publish(report, notes, elapsed, options.output)
    return 1 if any(s.errors for row in rows for s in row.samples) else 0


if __name__ == "__main__":
    sys.exit(main())
