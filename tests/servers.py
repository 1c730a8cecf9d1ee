"""Real ``procgate serve`` processes for tests: start on a free port, talk HTTP, stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.proctable import processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``procgate serve`` (gunicorn master and workers, one session)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """The status, the headers (looked up in any case: granian sends them in lower
        case) and the body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if body is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body)
        return status, json.loads(data)

    def stop(self) -> int:
        """SIGTERM, as a service manager would; SIGKILL the group if it hangs."""
        return _terminate(self.proc, self.crash, self.log)

    def crash(self) -> None:
        """SIGKILL the master and every worker at once, like an OOM kill or a power cut."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_server(
    directory: Path,
    config: str,
    *extra: str,
    env: dict[str, str] | None = None,
    prefix: str = "",
    name: str = "server",
) -> Server:
    """Serve ``config`` from ``directory`` (its SQLite store lives there) and wait for it."""
    path = directory / f"{name}.toml"
    path.write_text(config)
    port = free_port()
    log = directory / f"{name}.log"
    argv = [sys.executable, "-m", "procgate", "serve", "--config", str(path)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port), "--threads", "8", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
            cwd=directory,
            start_new_session=True,  # so crash() reaches the workers too
        )
    return serving(Server(proc, port, log), prefix)


def serving(server: Server, prefix: str = "") -> Server:
    """``server`` once its ``/health`` answers 200; killed, with its log, if it never does."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.request("GET", f"{prefix}/health")[0] == 200:
                return server
        except OSError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.crash()
            raise AssertionError(f"server did not start:\n{server.log.read_text()}")
        time.sleep(0.05)


@dataclass
class Worker:
    """A running ``procgate worker`` (one Celery worker process with a thread pool)."""

    proc: subprocess.Popen[bytes]
    name: str
    log: Path

    def ran(self, job_id: str) -> bool:
        """Whether this worker started the job (its audit trail says ``running``)."""
        return self.starts(job_id) > 0

    def starts(self, job_id: str) -> int:
        """How many times this worker started the job (``running`` lines in its audit trail)."""
        return self.text().count(f'"event": "running", "job": "{job_id}"')

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM: Celery's warm shutdown (running jobs finish); SIGKILL if it hangs."""
        return _terminate(self.proc, self.kill, self.log)

    def kill(self) -> None:
        """SIGKILL the worker process alone, as the OOM killer would; its jobs' children
        (each in a session of its own) are left behind."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()


def start_worker(directory: Path, config: str, name: str, *extra: str) -> Worker:
    """Run ``procgate worker`` for ``config`` as Celery node ``name@test``; wait until ready."""
    path = directory / f"{name}.toml"
    path.write_text(config)
    log = directory / f"{name}.log"
    argv = [sys.executable, "-m", "procgate", "worker", "--config", str(path)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*argv, "--hostname", f"{name}@test", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            cwd=directory,
            start_new_session=True,
        )
    worker = Worker(proc, name, log)
    deadline = time.monotonic() + 60
    while f"{name}@test ready" not in worker.text():
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise AssertionError(f"worker did not start:\n{worker.text()}")
        time.sleep(0.05)
    return worker


#: gunicorn's graceful_timeout, which ``procgate serve`` keeps: after SIGTERM, workers get
#: this long to finish their requests before the master kills them.
GRACEFUL_TIMEOUT = 30.0
#: The rest of a stop (the master exiting, its workers reaped): worst 0.49 s in 10 stops on
#: 2 cores loaded by two busy loops, doubled and rounded up.
STOP_MARGIN = 1.0


def _terminate(proc: subprocess.Popen[bytes], kill: Callable[[], None], log: Path) -> int:
    """SIGTERM ``proc`` and return its exit status; ``kill()`` it if it is still there
    after the graceful timeout and a margin. Waiting only the graceful timeout (as this
    did) killed a server that was stopping exactly as documented.

    A process that hangs is first sent SIGSEGV, it and every process of its session (gunicorn
    workers handle SIGABRT themselves, SIGSEGV they leave to it):
    Python's fault handler (``PYTHONFAULTHANDLER``, set by ``start_server`` and
    ``start_worker``) writes each thread's stack to the log, and the failure shows it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(GRACEFUL_TIMEOUT + STOP_MARGIN)
    except subprocess.TimeoutExpired:
        for pid in _session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSEGV)
        deadline = time.monotonic() + ABORT_WAIT
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill()
        tail = log.read_bytes().decode(errors="replace")[-LOG_TAIL:]
        raise AssertionError(
            f"{proc.args!r} did not stop within {GRACEFUL_TIMEOUT + STOP_MARGIN} s of "
            f"SIGTERM; the end of its log, with the stacks of its threads:\n{tail}"
        ) from None


#: How long the stacks of a hung process take to be written (it exits after them).
ABORT_WAIT = 5.0
#: How much of a hung process's log a failure shows (its last characters).
LOG_TAIL = 60_000


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid``."""
    return [
        pid for pid, state, _, _, session in processes() if session == sid and state not in "ZX"
    ]
