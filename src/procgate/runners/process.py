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
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from procgate import process
from procgate.jobs import Job, JobStatus, Outcome, Spec
from procgate.process import CancelCheck, OutputCallback, StartCallback
from procgate.runners.liveness import HEARTBEAT_INTERVAL, STALE_AFTER
from procgate.runners.sync import run_job
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
    runs_inline = False  # the point is to run jobs in the worker processes

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        max_queue: int = 1000,
        heartbeat: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        super().__init__(
            max_workers=max_workers or os.cpu_count() or 2,
            max_queue=max_queue,
            heartbeat=heartbeat,
            stale_after=stale_after,
        )

    @contextlib.contextmanager
    def _slot(self) -> Iterator[Callable[[JobStore, str], None]]:
        worker = _Worker()
        try:
            yield lambda store, job_id: run_job(
                store, job_id, self._halt, self._on_finish, worker.execute, self.owner
            )
        finally:
            worker.stop()


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def execute(
        self, job: Job, on_output: OutputCallback, cancelled: CancelCheck, on_start: StartCallback
    ) -> Outcome:
        """Run the job in the worker, relaying its output, its process tag, and our cancel
        requests."""
        try:
            conn = self._connection()
            conn.send(("run", job.id, _pack_spec(job.spec)))
            return self._follow(conn, on_output, cancelled, on_start)
        except (EOFError, OSError):
            logger.warning("worker process died while running job %s", job.id)
            self.stop()
            return Outcome(JobStatus.ERROR, error="the worker process running it died")

    def _follow(
        self,
        conn: Connection,
        on_output: OutputCallback,
        cancelled: CancelCheck,
        on_start: StartCallback,
    ) -> Outcome:
        cancel_sent = False
        next_check = time.monotonic()
        while True:
            if conn.poll(process.POLL_INTERVAL):
                message = conn.recv()
                if message[0] == "out":
                    on_output(message[1], message[2])
                elif message[0] == "started":
                    on_start(message[1])
                else:
                    return Outcome(JobStatus(message[1]), *message[2:])
            now = time.monotonic()  # checked even while output pours in
            if not cancel_sent and now >= next_check:
                next_check = now + process.POLL_INTERVAL
                if cancelled():
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
        spec.stdin_path,
        spec.files_dir,
        spec.user,
        spec.group,
    )
