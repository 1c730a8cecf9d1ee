"""SyncRunner, and ``run_job``: how any local runner takes one job from queued to finished."""

from __future__ import annotations

import dataclasses
import logging
import threading

from procgate import process
from procgate.errors import RunnerClosed
from procgate.jobs import JobStatus, Outcome
from procgate.runners.liveness import Heartbeat, new_owner
from procgate.stores import JobStore

logger = logging.getLogger("procgate")


def run_job(store: JobStore, job_id: str, halt: threading.Event) -> None:
    """Start, execute and finish one job, writing every step to the store.

    Does nothing when the job was cancelled while queued. ``halt`` is the runner shutting
    down: its running children are stopped like a cancel. Never raises: a failure of the
    store or of procgate itself finishes the job as ``error`` and is logged.
    """
    try:
        job = store.start(job_id)
        if job is None:
            return
        outcome = process.execute(
            job.spec,
            on_output=lambda stream, data: store.append_output(job_id, stream, data),
            cancelled=lambda: halt.is_set() or store.cancel_requested(job_id),
        )
        if outcome.status is JobStatus.CANCELLED and halt.is_set():
            outcome = dataclasses.replace(outcome, error="cancelled: the server shut down")
        store.finish(job_id, outcome)
    except Exception:
        logger.exception("job %s failed inside procgate", job_id)
        try:
            store.finish(job_id, Outcome(JobStatus.ERROR, error="internal error in procgate"))
        except Exception:
            logger.exception("job %s could not be marked as error", job_id)


class SyncRunner:
    """Runs each job in the thread that submits it: no pool, no queue.

    ``submit`` returns when the job has finished, so a request holds its server thread for
    the job's whole life. Useful in tests, in CLIs, and behind a server whose own threads
    or processes are the pool.
    """

    kind = "sync"

    def __init__(self) -> None:
        self.owner = new_owner()
        self._store: JobStore | None = None
        self._halt = threading.Event()
        self._heartbeat: Heartbeat | None = None

    def open(self, store: JobStore) -> None:
        """Bind to the store, and start heartbeats (which sweep up lost jobs at once)."""
        self._store = store
        self._heartbeat = Heartbeat(store, self.owner)
        self._heartbeat.start()

    def submit(self, job_id: str) -> None:
        if self._store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        if self._halt.is_set():
            raise RunnerClosed("the runner is shutting down")
        run_job(self._store, job_id, self._halt)

    def close(self) -> None:
        self._halt.set()
        if self._heartbeat is not None:
            self._heartbeat.stop()
