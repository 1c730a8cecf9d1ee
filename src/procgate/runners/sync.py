"""SyncRunner, and ``run_job``: how any local runner takes one job from queued to finished."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable

from procgate import audit, process
from procgate.errors import ConfigError, JobNotFound, RunnerClosed, StoreUnavailable
from procgate.jobs import Job, JobStatus, Outcome
from procgate.process import CancelCheck, OutputCallback, StartCallback
from procgate.runners.journal import OutputWriter, cancel_check, persist
from procgate.runners.liveness import HEARTBEAT_INTERVAL, STALE_AFTER, Heartbeat, new_owner
from procgate.stores import JobStore

logger = logging.getLogger("procgate")


#: Runs a started job's process: ``execute(job, on_output, cancelled, on_start) -> Outcome``.
Execute = Callable[[Job, OutputCallback, CancelCheck, StartCallback], Outcome]

#: Called with a job id once that job has finished (see ``Runner.open``).
FinishHook = Callable[[str], None]


def execute_here(
    job: Job, on_output: OutputCallback, cancelled: CancelCheck, on_start: StartCallback
) -> Outcome:
    """Run the job's process from this process."""
    return process.execute(job.spec, on_output=on_output, cancelled=cancelled, on_start=on_start)


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
        job = persist(lambda: store.start(job_id, owner), halt, f"job {job_id}: start")
        if job is None:  # cancelled while queued, deleted, or taken by another runner
            final = persist(lambda: store.get(job_id, output=False), halt, f"job {job_id}: read")
            # Finished without ever starting: cancelled while queued, and this runner
            # does its hooks. A job another runner started (a message delivered twice)
            # is that runner's to finish.
            finished = final.status.finished and final.started_at is None
            if finished:  # it never ran: its upload files can go
                job = final
            return
        audit.record("running", job)
        writer = OutputWriter(store, job_id)
        outcome = execute(
            job,
            writer,
            cancel_check(store, job_id, halt),
            lambda tag: _record_process(store, job_id, tag),
        )
        if outcome.status is JobStatus.CANCELLED and halt.is_set():
            outcome = dataclasses.replace(outcome, error="cancelled: the server shut down")
        _discard_files(job)  # before the finish: a finished job has no files left
        # All output first: a reader that sees the job finished has all of it.
        persist(writer.flush, halt, f"job {job_id}: output")
        finished = persist(lambda: store.finish(job_id, outcome), halt, f"job {job_id}: finish")
        ended = outcome
    except JobNotFound:
        pass
    except StoreUnavailable:  # persist gave up and said why: the sweep takes it from here
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


def _record_process(store: JobStore, job_id: str, tag: str) -> None:
    """Note the child's process tag; without it, only the child's own end stops it."""
    try:
        store.record_process(job_id, tag)
    except StoreUnavailable as exc:
        logger.warning("job %s: cannot record its process: %s", job_id, exc.message)


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
        self._held: set[str] = set()  # jobs handed to this runner and not yet done with
        self._held_lock = threading.Lock()

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
            holding=self.holding,
        )
        self._heartbeat.start()

    def holding(self) -> set[str]:
        """The ids of the jobs this runner has in hand: queued in it, or running."""
        with self._held_lock:
            return set(self._held)

    def _hold(self, job_id: str) -> None:
        with self._held_lock:
            self._held.add(job_id)

    def _release(self, job_id: str) -> None:
        with self._held_lock:
            self._held.discard(job_id)

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
        self._hold(job_id)
        try:
            run_job(self._store, job_id, self._halt, self._on_finish, owner=self.owner)
        finally:
            self._release(job_id)

    def close(self) -> None:
        self._halt.set()
        if self._heartbeat is not None:
            self._heartbeat.stop()
