"""ThreadRunner: a fixed pool of threads behind a bounded queue."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from queue import Empty, Full, Queue

from procgate.errors import ConfigError, RunnerBusy, RunnerClosed
from procgate.jobs import Job
from procgate.runners.liveness import HEARTBEAT_INTERVAL, STALE_AFTER
from procgate.runners.sync import Slot, SyncRunner, execute_here, execute_until, run_job
from procgate.stores import JobStore

#: Seconds ``close`` waits for running jobs to stop before giving up on them.
CLOSE_TIMEOUT = 30.0

#: Seconds between two looks at the halt while a caller waits for a slot of its own.
SLOT_POLL = 0.1

#: What ``until=None`` leaves to wait for a slot: nothing, only a free one is taken.
INLINE_NEVER = 0.0


class ThreadRunner(SyncRunner):
    """Runs jobs on ``max_workers`` threads; up to ``max_queue`` more wait their turn.

    A full queue makes ``submit`` raise ``RunnerBusy`` (HTTP 429 with Retry-After) instead
    of letting a flood of requests pile up without bound. A thread mostly waits on its
    child's pipes, so a pool larger than the core count is fine.

    ``submit(job_id, inline=True, until=t)``, from a caller that will wait for the job
    anyway (a request with ``"wait": true``), runs the job in the caller's thread once one
    of the ``max_workers`` slots is free: two thread hand-offs fewer per job, and the same
    limit on jobs running at once. The caller waits for a slot (it would wait for its job
    anyway) until ``t``; only then is the job queued, to run when a pool thread takes it.
    """

    kind = "thread"
    #: Whether ``submit(..., inline=True)`` may run a job in the caller's thread.
    runs_inline = True

    def __init__(
        self,
        *,
        max_workers: int = 8,
        max_queue: int = 1000,
        heartbeat: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        if max_workers < 1 or max_queue < 1:
            raise ConfigError("max_workers and max_queue must be at least 1")
        super().__init__(heartbeat=heartbeat, stale_after=stale_after)
        self.max_workers = max_workers
        self.max_queue = max_queue
        self._queue: Queue[str | None] = Queue(maxsize=max_queue)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = threading.Semaphore(0)
        self._slots = threading.Semaphore(max_workers)  # one per job running, anywhere
        self._inline = 0  # jobs running in callers' threads
        self._inline_done = threading.Condition(self._lock)

    def submit(
        self,
        job_id: str,
        *,
        inline: bool = False,
        queue: str | None = None,
        until: float | None = None,
    ) -> None:
        store = self._store
        if store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        if self._halt.is_set():
            raise RunnerClosed("the runner is shutting down")
        self._hold(job_id)
        if inline and self._take_inline_slot(until):
            self._run_inline(store, job_id, until)
            return
        try:
            self._queue.put_nowait(job_id)
        except Full:
            self._release(job_id)
            raise RunnerBusy(
                f"all {self.max_workers} workers are busy and {self.max_queue} jobs wait"
            ) from None
        self._grow()

    def reserve(self) -> Slot | None:
        """A slot when one of the ``max_workers`` is free now and no job is queued."""
        if self._store is None or self._halt.is_set() or not self._take_inline_slot(None):
            return None
        return Slot(self._run_reserved, self._give_slot)

    def _run_reserved(self, job: Job, until: float) -> None:
        store = self._store
        if store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        self._hold(job.id)
        self._run_inline(store, job.id, until, started=job)

    def _give_slot(self) -> None:
        """Give back a slot of ``_take_inline_slot``."""
        self._slots.release()
        with self._lock:
            self._inline -= 1
            self._inline_done.notify_all()

    def _run_inline(
        self, store: JobStore, job_id: str, until: float | None, started: Job | None = None
    ) -> None:
        """Run a job in the caller's thread, until ``until``; a child that outlives it is
        supervised on by a thread of its own, which holds the slot until the job ends."""
        handed = False

        def done() -> None:
            self._release(job_id)
            self._give_slot()

        def hand_off(rest: Callable[[], None]) -> None:
            nonlocal handed

            def finish() -> None:
                try:
                    rest()
                finally:
                    done()

            thread = threading.Thread(target=finish, name=f"procgate-job-{job_id}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: finish it here, late as it is
                rest()
                return
            handed = True

        try:
            run_job(
                store,
                job_id,
                self._halt,
                self._on_finish,
                execute=execute_here if until is None else execute_until(until),
                owner=self.owner,
                hand_off=hand_off,
                started=started,
            )
        finally:
            if not handed:
                done()

    def _resubmit(self, job_id: str) -> None:
        self.submit(job_id)

    def _take_inline_slot(self, until: float | None) -> bool:
        """A slot for a job in the caller's thread, waited for until ``until`` (a
        ``time.monotonic()`` time; None: only a free one), or until the runner closes."""
        if not self.runs_inline:
            return False
        while not self._slots.acquire(blocking=False):
            left = INLINE_NEVER if until is None else until - time.monotonic()
            if left <= 0 or self._halt.is_set():
                return False
            # A released slot wakes this at once; the halt is noticed within SLOT_POLL.
            if self._slots.acquire(timeout=min(left, SLOT_POLL)):
                break
        with self._lock:
            self._inline += 1
        return True

    def close(self) -> None:
        """Cancel queued jobs, stop running ones (SIGTERM, grace, SIGKILL), join threads."""
        super().close()
        store = self._store
        while True:
            try:
                job_id = self._queue.get_nowait()
            except Empty:
                break
            if job_id is not None and store is not None:
                with contextlib.suppress(Exception):
                    store.cancel(job_id)
                # now cancelled, it only has its upload files removed and hooks called
                run_job(store, job_id, self._halt, self._on_finish)
            if job_id is not None:
                self._release(job_id)
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(CLOSE_TIMEOUT)
        with self._lock:  # jobs in callers' threads saw the halt: let them finish
            self._inline_done.wait_for(lambda: self._inline == 0, CLOSE_TIMEOUT)

    def _grow(self) -> None:
        """Start threads on demand, up to ``max_workers``: an idle Gate costs nothing.

        Each idle thread holds one count of ``_idle`` (the scheme of the standard
        library's ThreadPoolExecutor): a new job takes one, or starts a thread.
        """
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if len(self._threads) < self.max_workers and not self._halt.is_set():
                thread = threading.Thread(
                    target=self._work, name=f"procgate-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        store = self._store
        if store is None:
            raise RuntimeError(f"{type(self).__name__}.open(store) was not called")
        with self._slot() as execute:
            while True:
                job_id = self._queue.get()
                if job_id is None:
                    return
                try:
                    with self._slots:
                        execute(store, job_id)
                finally:
                    self._release(job_id)
                self._idle.release()

    @contextlib.contextmanager
    def _slot(self) -> Iterator[Callable[[JobStore, str], None]]:
        """What one pool thread runs its jobs with, for as long as the thread lives."""
        yield lambda store, job_id: run_job(
            store, job_id, self._halt, self._on_finish, owner=self.owner
        )
