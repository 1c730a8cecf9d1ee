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


#: Runs a started job's process: ``execute(job, on_output, cancelled, on_start) -> Outcome``,
#: or a ``Later``: the process still runs, and calling it supervises it to the end.
Execute = Callable[[Job, OutputCallback, CancelCheck, StartCallback], "Outcome | Later"]

#: What is left of a job's run, to call in another thread; it returns the Outcome.
Later = Callable[[], Outcome]

#: Takes the rest of a job's run (a callable) to run it in another thread.
HandOff = Callable[[Callable[[], None]], None]

#: Called with a job id once that job has finished (see ``Runner.open``).
FinishHook = Callable[[str], None]


def execute_here(
    job: Job, on_output: OutputCallback, cancelled: CancelCheck, on_start: StartCallback
) -> Outcome:
    """Run the job's process from this process."""
    return process.execute(job.spec, on_output=on_output, cancelled=cancelled, on_start=on_start)


def execute_until(until: float) -> Execute:
    """Run the job's process from this process, in this thread until ``until`` (a
    ``time.monotonic()`` time); a ``Later`` for the rest when the child outlives it."""

    def execute(
        job: Job, on_output: OutputCallback, cancelled: CancelCheck, on_start: StartCallback
    ) -> Outcome | Later:
        started = process.start(
            job.spec, on_output=on_output, cancelled=cancelled, on_start=on_start
        )
        if isinstance(started, Outcome):
            return started
        outcome = started.run(until)
        return outcome if outcome is not None else started.run_to_end

    return execute


def run_job(
    store: JobStore,
    job_id: str,
    halt: threading.Event,
    on_finish: FinishHook | None = None,
    execute: Execute = execute_here,
    owner: str | None = None,
    hand_off: HandOff | None = None,
    started: Job | None = None,
) -> None:
    """Start, execute and finish one job, writing every step to the store.

    A job cancelled while it was queued is not started. ``halt`` is the runner shutting
    down: its running children are stopped like a cancel. Whatever happens, the job's
    upload directory is removed, and ``on_finish(job_id)`` is called once if the job
    finished (here, or by a cancel while it waited). ``owner``: the runner taking the job,
    when it is not the one that created it. When ``execute`` returns a ``Later`` (the
    child outlived the time this thread had for it), the rest of the run, finish
    included, goes to ``hand_off`` and this returns at once. ``started``: the job, created
    ``running`` already by this runner's caller (``Slot``), so not started again. Never
    raises: a failure of the store or of procgate itself finishes the job as ``error`` and
    is logged.
    """
    run = _Run(store, job_id, halt, on_finish)
    try:
        job = started or persist(lambda: store.start(job_id, owner), halt, f"job {job_id}: start")
        if job is None:  # cancelled while queued, deleted, or taken by another runner
            final = persist(lambda: store.get(job_id, output=False), halt, f"job {job_id}: read")
            # Finished without ever starting: cancelled while queued, and this runner
            # does its hooks. A job another runner started (a message delivered twice)
            # is that runner's to finish.
            run.finished = final.status.finished and final.started_at is None
            run.final = final
            if run.finished:  # it never ran: its upload files can go
                run.job = final
            run.done()
            return
        run.job = job
        audit.record("running", job)
        writer = OutputWriter(store, job_id)
        outcome = execute(
            job,
            writer,
            cancel_check(store, job_id, halt, writer),
            lambda tag: _record_process(store, job_id, tag),
        )
    except BaseException as exc:
        run.failed(exc)
        return
    if isinstance(outcome, Outcome):
        run.end(writer, lambda: outcome)
    elif hand_off is None:
        run.end(writer, outcome)
    else:
        hand_off(lambda: run.end(writer, outcome))


class _Run:
    """The end of one job's run: finish it in the store, clean up, audit, call hooks."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        halt: threading.Event,
        on_finish: FinishHook | None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.halt = halt
        self.on_finish = on_finish
        self.job: Job | None = None
        self.final: Job | None = None  # the job as it finished, for the audit trail...
        self.ended: Outcome | None = None  # ...or the outcome that finished ``job``
        self.finished = False

    def end(self, writer: OutputWriter, outcome: Later) -> None:
        """Wait for the child's outcome, write the output and the finish, clean up."""
        store, job_id, halt = self.store, self.job_id, self.halt
        try:
            ended = outcome()
            if ended.status is JobStatus.CANCELLED and halt.is_set():
                ended = dataclasses.replace(ended, error="cancelled: the server shut down")
            _discard_files(self.job)  # before the finish: a finished job has no files left
            # The output kept back goes with the finish, in the same write: a reader that
            # sees the job finished has all of its output.
            self.finished = persist(
                lambda: store.finish(job_id, ended, tuple(writer.pending)),
                halt,
                f"job {job_id}: finish",
            )
            writer.pending.clear()
            self.ended = ended
        except BaseException as exc:
            self.failed(exc)
            return
        self.done()

    def failed(self, exc: BaseException) -> None:
        """The run broke off: the job is ``error`` unless the store is what failed."""
        try:
            if isinstance(exc, (JobNotFound, StoreUnavailable)):
                return  # StoreUnavailable: persist gave up, the sweep takes it from here
            if not isinstance(exc, Exception):
                raise exc
            logger.exception("job %s failed inside procgate", self.job_id, exc_info=exc)
            _discard_files(self.job)
            try:
                self.finished = self.store.finish(
                    self.job_id, Outcome(JobStatus.ERROR, error="internal error in procgate")
                )
            except Exception:
                logger.exception("job %s could not be marked as error", self.job_id)
        finally:
            self.done()

    def done(self) -> None:
        _discard_files(self.job)
        if self.finished:
            _audit_finish(self.store, self.job_id, self.final, self.job, self.ended)
        if self.finished and self.on_finish is not None:
            self.on_finish(self.job_id)


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


class Slot:
    """A place for one new job in the caller's thread, taken by ``reserve`` (see
    ``procgate.runners.InlineRunner``): ``run`` the job, created running, or ``release``."""

    def __init__(self, run: Callable[[Job, float], None], release: Callable[[], None]) -> None:
        self._run = run
        self._release = release
        self._used = False

    def run(self, job: Job, until: float) -> None:
        """Run ``job`` (stored ``running``, owned by the runner) here until ``until`` (a
        ``time.monotonic()`` time); a runner thread carries on with a child that outlives
        it."""
        self._use()
        self._run(job, until)

    def release(self) -> None:
        """Give the place back unused (no new job was stored)."""
        self._use()
        self._release()

    def _use(self) -> None:
        if self._used:
            raise RuntimeError("a Slot is used once")
        self._used = True


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

    def reserve(self) -> Slot | None:
        """Always a slot: every job runs in its caller's thread."""
        if self._store is None or self._halt.is_set():
            return None
        return Slot(self._run_reserved, lambda: None)

    def _run_reserved(self, job: Job, until: float) -> None:
        store = self._store
        if store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        self._hold(job.id)
        try:
            run_job(store, job.id, self._halt, self._on_finish, started=job)
        finally:
            self._release(job.id)

    def submit(
        self,
        job_id: str,
        *,
        inline: bool = False,
        queue: str | None = None,
        until: float | None = None,
    ) -> None:
        """Run the job to its end in this thread (``until`` is no matter: a request holds
        its thread for its job's whole life, as this runner promises)."""
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
