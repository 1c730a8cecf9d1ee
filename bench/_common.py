"""Helpers shared by the benchmarks: closed-loop measurement, ``procgate serve``, reports.

Not a benchmark itself. The scripts beside it import it as ``_common`` (a script's own
folder is first on ``sys.path``), and so do the client processes they spawn.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
#: Seconds a server may take to answer ``GET /health`` after it is started.
START_DEADLINE = 30.0
#: Seconds a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0


@dataclass
class Sample:
    """One measurement: successful jobs, errors, wall time and latency percentiles."""

    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


# -- measurements ----------------------------------------------------------------------


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank) of latencies in seconds, in milliseconds."""
    if not latencies:
        return float("nan"), float("nan")
    ordered = sorted(latencies)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index] * 1000.0

    return rank(0.50), rank(0.99)


def closed_loop(
    threads: int,
    duration: float,
    one: Callable[[list[Any]], bool],
    make: Callable[[], Any] | None = None,
) -> Sample:
    """Run ``one(state)`` on ``threads`` threads until ``duration`` is up; it says if it was ok.

    ``state`` is a one-item list holding what ``make()`` gave the thread (a connection,
    say), so that ``one`` can replace it; whatever it holds at the end is closed.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    start = time.perf_counter()
    deadline = start + duration

    def loop() -> None:
        state = [make()] if make is not None else [None]
        mine: list[float] = []
        ok = errors = 0
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                if one(state):
                    ok += 1
                    mine.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            if state[0] is not None:
                state[0].close()
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["errors"] += errors

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    return Sample(counts["ok"], counts["errors"], seconds, p50, p99)


# -- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def health(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, errors="replace") as file:
            return "".join(file.readlines()[-lines:])


@contextlib.contextmanager
def serve(
    name: str,
    config: str,
    workdir: str,
    extra: Sequence[str] = (),
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """``procgate serve`` of the TOML text ``config`` on a free port, until the block ends.

    The config file and the server's log are ``<name>.toml`` and ``<name>.log`` in
    ``workdir``; ``extra`` is added to the command line (``--workers 1``, say). The server
    runs in ``cwd`` when given (a config without ``[store] url`` keeps its SQLite file in
    ``procgate-data/`` there), else in this process's working directory. ``env`` is added
    to the server's environment (this process's, with ``PROCGATE_LOG_LEVEL=warning``): a
    ``PYTHONPATH``, say, to run another procgate source tree.
    """
    config_path = os.path.join(workdir, f"{name}.toml")
    with open(config_path, "w") as file:
        file.write(config)
    port = free_port()
    log_path = os.path.join(workdir, f"{name}.log")
    argv = [sys.executable, "-m", "procgate", "serve", "--config", config_path]
    argv += ["--host", HOST, "--port", str(port), *extra]
    server_env = {**os.environ, "PROCGATE_LOG_LEVEL": "warning", **(env or {})}
    with open(log_path, "wb") as log:
        # A session of its own: the arbiter, its workers and the runner's worker processes
        # are one process group, which a kill reaches whole.
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env,
            cwd=cwd,
            start_new_session=True,
        )
    server = Server(name, port, proc, log_path)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not health(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"procgate serve ({name}) exited with {proc.returncode}:\n{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"procgate serve ({name}) not healthy after {START_DEADLINE:g} s:\n"
                    + server.log_tail()
                )
            time.sleep(0.05)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (gunicorn's graceful stop), wait, then SIGKILL the whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"server {proc.pid} ignored SIGTERM for {STOP_TIMEOUT:g} s: killing it")
    # Whatever the arbiter left behind (it normally leaves nothing) goes with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- wrk -------------------------------------------------------------------------------

#: The end of every wrk Lua script: per-thread counters (``responses``, ``non200``,
#: ``bad``), summed over the threads in ``done()``, which prints one JSON line that
#: ``run_wrk`` reads. A script puts its own ``wrk.method``, ``wrk.body``, headers and a
#: ``response(status, headers, body)`` that counts into those globals before this.
WRK_COUNTERS = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  non200 = 0
  bad = 0
end

function done(summary, latency, requests)
  local total = {responses = 0, non200 = 0, bad = 0}
  for _, thread in ipairs(threads) do
    for key, _ in pairs(total) do
      total[key] = total[key] + thread:get(key)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'PROCGATE_BENCH {"responses":%d,"non200":%d,"bad":%d,"duration_us":%d,' ..
    '"p50_us":%d,"p99_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    total.responses, total.non200, total.bad, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
end
"""


def run_wrk(
    wrk: str, script: str, url: str, concurrency: int, duration: float
) -> tuple[Sample, list[str]]:
    """``wrk`` with one client thread and the Lua ``script`` (ending in ``WRK_COUNTERS``).

    A response counts as ok unless the script counted it in ``non200`` or ``bad``; socket
    errors and timeouts are errors too. wrk takes whole seconds.
    """
    seconds = max(1, round(duration))
    argv = [
        wrk,
        "-t1",  # one client thread is plenty, and leaves the CPU to the server
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        script,
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next(
        (line for line in done.stdout.splitlines() if line.startswith("PROCGATE_BENCH ")), None
    )
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    socket_errors = result["connect"] + result["read"] + result["write"] + result["timeout"]
    errors = result["non200"] + result["bad"] + socket_errors
    problems = []
    if errors:
        problems.append(
            f"wrk: {result['non200']} unexpected statuses, {result['bad']} wrong bodies, "
            f"{socket_errors} socket errors/timeouts"
        )
    sample = Sample(
        ok=result["responses"] - result["non200"] - result["bad"],
        errors=errors,
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000.0,
        p99_ms=result["p99_us"] / 1000.0,
    )
    return sample, problems


# -- /proc -----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from a scan of ``/proc`` (Linux only)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a gunicorn arbiter's are its workers)."""
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                result.append(int(entry))
    return sorted(result)


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` and its descendants: their own, and their reaped children's.

    The second number grows by the CPU of every child (``echo``, say) that a process of
    the tree started and waited for, so a difference of two calls splits a measurement's
    CPU into the server's own and its children's. Processes that come and go between
    the calls are counted by their parent's second number.
    """
    own = reaped = 0
    for member in descendants(pid):
        fields = _stat_fields(member)
        if fields is None:
            continue
        own += int(fields[11]) + int(fields[12])  # utime, stime
        reaped += int(fields[13]) + int(fields[14])  # cutime, cstime
    return own / CLOCK_TICKS, reaped / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (KiB) of ``pid`` from ``/proc/<pid>/status``."""
    values = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


# -- report ----------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def round_ratio(
    samples: Sequence[Any], base: Sequence[Any], rate: Callable[[Any], float] = lambda s: s.rate
) -> float:
    """Median over the rounds of ``rate`` over the base's in the same round.

    Ratios are taken round by round, so each compares two figures that saw the same noise.
    """
    pairs = zip(samples, base, strict=False)
    return median([rate(s) / rate(b) for s, b in pairs if rate(b) > 0])


def cpu_count() -> int:
    """The cores this process may run on (``nproc``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def procgate_version() -> str:
    try:
        import procgate
    except ImportError:
        return "not importable"
    return str(getattr(procgate, "__version__", "unknown"))


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" [")[0] if first else "wrk"


def publish(report: str, notes: Sequence[str], elapsed: float, output: str | None) -> None:
    """Print a run's report, its notes and its duration; also write the report to ``output``."""
    print()
    print(report)
    if notes:
        print()
        print("\n".join(notes))
    print(f"\ntotal {elapsed:.0f} s")
    if output:
        with open(output, "w") as file:
            file.write(report + "\n")
