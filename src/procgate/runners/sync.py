"""SyncRunner, and ``run_job``: how any local runner takes one job from queued to finished."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable

from procgate import audit, process
from procgate.errors import ConfigError, JobNotFound, RunnerClosed
from procgate.jobs import Chunk, Job, JobStatus, Outcome
from procgate.process import CancelCheck, OutputCallback
from procgate.runners.liveness import HEARTBEAT_INTERVAL, STALE_AFTER, Heartbeat, new_owner
from procgate.stores import JobStore

logger = logging.getLogger("procgate")


#: Runs a started job's process: ``execute(job, on_output, cancelled) -> Outcome``.
Execute = Callable[[Job, OutputCallback, CancelCheck], Outcome]

#: Called with a job id once that job has finished (see ``Runner.open``).
FinishHook = Callable[[str], None]


def execute_here(job: Job, on_output: OutputCallback, cancelled: CancelCheck) -> Outcome:
    """Run the job's process from this process."""
    return process.execute(job.spec, on_output=on_output, cancelled=cancelled)


class OutputWriter:
    """The one writer of a job's output: numbers chunks from 1, keeps stream offsets."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.index = 0
        self.offsets = {"stdout": 0, "stderr": 0}

    def __call__(self, stream: str, data: bytes) -> None:
        self.index += 1
        self.store.append_output(self.job_id, Chunk(self.index, stream, self.offsets[stream], data))
        self.offsets[stream] += len(data)


def run_job(
    store: JobStore,
    job_id: str,
    halt: threading.Event,
    on_finish: FinishHook | None = None,
    execute: Execute = execute_here,
    owner: str | None = None,
) -> None:
    """Start, execute and finish one job, writing every step to the store.

    A job cancelled while it was queued is not started. ``halt`` is the runner shutting
    down: its running children are stopped like a cancel. Whatever happens, the job's
    upload directory is removed, and ``on_finish(job_id)`` is called once if the job
    finished (here, or by a cancel while it waited). ``owner``: the runner taking the job,
    when it is not the one that created it. Never raises: a failure of the store
    or of procgate itself finishes the job as ``error`` and is logged.
    """
    job: Job | None = None
    final: Job | None = None  # the job as it finished, for the audit trail...
    ended: Outcome | None = None  # ...or the outcome that finished the started ``job``
    finished = False
    try:
        job = store.start(job_id, owner)
        if job is None:  # cancelled while queued, deleted, or taken by another runner
            final = store.get(job_id, output=False)
            # Finished without ever starting: cancelled while queued, and this runner
            # does its hooks. A job another runner started (a message delivered twice)
            # is that runner's to finish.
            finished = final.status.finished and final.started_at is None
            if finished:  # it never ran: its upload files can go
                job = final
            return
        audit.record("running", job)
        outcome = execute(
            job,
            OutputWriter(store, job_id),
            lambda: halt.is_set() or store.cancel_requested(job_id),
        )
        if outcome.status is JobStatus.CANCELLED and halt.is_set():
            outcome = dataclasses.replace(outcome, error="cancelled: the server shut down")
        _discard_files(job)  # before the finish: a finished job has no files left
        finished = store.finish(job_id, outcome)
        ended = outcome
    except JobNotFound:
        pass
    except Exception:
        logger.exception("job %s failed inside procgate", job_id)
        _discard_files(job)
        try:
            finished = store.finish(
                job_id, Outcome(JobStatus.ERROR, error="internal error in procgate")
            )
        except Exception:
            logger.exception("job %s could not be marked as error", job_id)
    finally:
        _discard_files(job)
        if finished:
            _audit_finish(store, job_id, final, job, ended)
        if finished and on_finish is not None:
            on_finish(job_id)


def _audit_finish(
    store: JobStore, job_id: str, final: Job | None, job: Job | None, ended: Outcome | None
) -> None:
    """Log the finish: ``final``, or the started ``job`` as ``ended`` finished it; the job
    is read back only when the runner does not know its end."""
    if not audit.logger.isEnabledFor(logging.INFO):
        return
    if final is None and job is not None and ended is not None:
        final = job.finished_with(ended)
    if final is None:
        try:
            final = store.get(job_id, output=False)
        except JobNotFound:
            return
    audit.record(final.status.value, final)


def _discard_files(job: Job | None) -> None:
    if job is not None and job.spec.files_dir is not None:
        shutil.rmtree(job.spec.files_dir, ignore_errors=True)


class SyncRunner:
    """Runs each job in the thread that submits it: no pool, no queue.

    ``submit`` returns when the job has finished, so a request holds its server thread for
    the job's whole life. Useful in tests, in CLIs, and behind a server whose own threads
    or processes are the pool.
    """

    kind = "sync"
    #: Whether jobs run on this host: commands' programs must be found here.
    runs_here = True

    def __init__(
        self, *, heartbeat: float = HEARTBEAT_INTERVAL, stale_after: float = STALE_AFTER
    ) -> None:
        if not heartbeat > 0 or not stale_after > heartbeat:
            raise ConfigError("heartbeat must be > 0 seconds, and stale_after above it")
        self.owner = new_owner()
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self._store: JobStore | None = None
        self._on_finish: FinishHook | None = None
        self._halt = threading.Event()
        self._heartbeat: Heartbeat | None = None

    def open(self, store: JobStore, on_finish: FinishHook | None = None) -> None:
        """Bind to the store, and start heartbeats (which sweep up lost jobs at once)."""
        self._store = store
        self._on_finish = on_finish
        self._heartbeat = Heartbeat(
            store,
            self.owner,
            interval=self.heartbeat,
            stale_after=self.stale_after,
            resubmit=self._resubmit,
        )
        self._heartbeat.start()

    def _resubmit(self, job_id: str) -> None:
        """Run a dead runner's job again (``retry_on_worker_loss``), off the heartbeat."""
        threading.Thread(
            target=self.submit, args=(job_id,), name=f"procgate-rerun-{job_id}", daemon=True
        ).start()

    def submit(self, job_id: str, *, inline: bool = False, queue: str | None = None) -> None:
        if self._store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        if self._halt.is_set():
            raise RunnerClosed("the runner is shutting down")
        run_job(self._store, job_id, self._halt, self._on_finish, owner=self.owner)

    def close(self) -> None:
        self._halt.set()
        if self._heartbeat is not None:
            self._heartbeat.stop()
