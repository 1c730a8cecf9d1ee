"""ProcessRunner: jobs supervised by a pool of worker processes.

Each pool thread of the parent owns one worker process (``python -m
procgate.runners._worker``, started when first needed) and hands it one job at a time over
a socket. The worker spawns and supervises the child; the
parent thread writes what it reports (output, outcome) to the store, so this works with a
store that lives in the parent's memory, and forwards cancel requests to the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from procgate import process
from procgate.jobs import JobStatus, Outcome, Spec
from procgate.runners.thread import CLOSE_TIMEOUT, ThreadRunner
from procgate.stores import JobStore

logger = logging.getLogger("procgate")


class ProcessRunner(ThreadRunner):
    """Runs jobs in ``max_workers`` worker processes (default: one per core).

    Spawning children, reading their pipes and enforcing deadlines happen in the workers, so
    that work stays off the server's GIL and request threads. Workers are fresh interpreters
    (not forks of a threaded server, and not ``multiprocessing``: nothing of the server's
    ``__main__`` is re-imported).
    """

    kind = "process"

    def __init__(self, *, max_workers: int | None = None, max_queue: int = 1000) -> None:
        super().__init__(max_workers=max_workers or os.cpu_count() or 2, max_queue=max_queue)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[Callable[[JobStore, str], None]]:
        worker = _Worker(self._halt)
        try:
            yield worker.run
        finally:
            worker.stop()


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, halt: threading.Event) -> None:
        self._halt = halt
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def run(self, store: JobStore, job_id: str) -> None:
        """Execute one job in the worker; never raises (see ``run_job``)."""
        try:
            job = store.start(job_id)
            if job is None:
                return
            conn = self._connection()
            conn.send(("run", job_id, _pack_spec(job.spec)))
            outcome = self._follow(store, job_id, conn)
        except (EOFError, OSError):
            logger.warning("worker process died while running job %s", job_id)
            self.stop()
            outcome = Outcome(JobStatus.ERROR, error="the worker process running it died")
        except Exception:
            logger.exception("job %s failed inside procgate", job_id)
            outcome = Outcome(JobStatus.ERROR, error="internal error in procgate")
        try:
            store.finish(job_id, outcome)
        except Exception:
            logger.exception("job %s could not be finished", job_id)

    def _follow(self, store: JobStore, job_id: str, conn: Connection) -> Outcome:
        """Relay the worker's reports to the store, and cancel requests to the worker."""
        cancel_sent = False
        next_check = time.monotonic()
        while True:
            if conn.poll(process.POLL_INTERVAL):
                message = conn.recv()
                if message[0] == "out":
                    store.append_output(job_id, message[1], message[2])
                    continue
                outcome = Outcome(JobStatus(message[1]), *message[2:])
                if outcome.status is JobStatus.CANCELLED and self._halt.is_set():
                    outcome = Outcome(
                        JobStatus.CANCELLED,
                        outcome.returncode,
                        "cancelled: the server shut down",
                        outcome.stdout_truncated,
                        outcome.stderr_truncated,
                    )
                return outcome
            now = time.monotonic()
            if not cancel_sent and now >= next_check:
                next_check = now + process.POLL_INTERVAL
                if self._halt.is_set() or store.cancel_requested(job_id):
                    conn.send(("cancel",))
                    cancel_sent = True

    def _connection(self) -> Connection:
        if self._conn is None or self._process is None or self._process.poll() is not None:
            self.stop()
            self._process, sock = process.start_python("procgate.runners._worker")
            self._conn = Connection(sock.detach())
        return self._conn

    def stop(self) -> None:
        """Ask the worker to exit (it stops its running child first), then reap it."""
        worker, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        if conn is not None:
            conn.close()
        if worker is not None:
            process.reap(worker, CLOSE_TIMEOUT)


def _pack_spec(spec: Spec) -> tuple[Any, ...]:
    return (
        spec.argv,
        dict(spec.env),
        spec.cwd,
        spec.stdin,
        spec.timeout,
        spec.max_output,
        spec.kill_grace,
    )
