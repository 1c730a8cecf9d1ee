"""MemoryStore: jobs in this process's memory, guarded by one lock."""

from __future__ import annotations

import dataclasses
import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from procgate.errors import ConfigError, JobNotFound
from procgate.jobs import (
    ACTIVE,
    Chunk,
    Chunks,
    Job,
    JobIds,
    JobPage,
    JobStatus,
    Outcome,
    parse_cursor,
    utcnow,
)

#: Seconds of job creations kept for rate limits (``count(since=...)``): a day.
LAUNCHES_KEPT = 86400.0

# The class defines a method named ``list``; this keeps the builtin usable in annotations.
_Jobs = list[Job]


@dataclass(slots=True)
class _Entry:
    """A job and what changes while it runs; only touched under the store's lock."""

    job: Job
    seq: int
    # Shares the store's lock; notified on output and at the end. Made by the first waiter:
    # most jobs never have one, and a Condition is most of an idle entry's memory.
    changed: threading.Condition | None = None
    chunks: list[Chunk] = field(default_factory=list)
    cancel: bool = False
    process: str | None = None  # kept apart from ``job``: set once per job, read rarely


class MemoryStore:
    """Jobs in a dict: fast, and gone when the process exits.

    It lives in one process, so serve it from one worker process (with threads). When it
    holds more than ``max_jobs`` jobs, the oldest *finished* ones are evicted; finished
    jobs also expire ``ttl`` seconds after they finish. Queued and running jobs are never
    evicted, so the count may exceed ``max_jobs`` while they last.
    """

    def __init__(
        self,
        *,
        max_jobs: int = 1000,
        ttl: float | None = None,
        evict_interval: float = 1.0,  # seconds between ttl scans (they visit every job)
    ) -> None:
        if not isinstance(max_jobs, int) or max_jobs < 1:
            raise ConfigError("max_jobs must be at least 1")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
            raise ConfigError("ttl must be a positive number of seconds")
        self.max_jobs = max_jobs
        self.ttl = ttl
        self.evict_interval = evict_interval
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._scopes: dict[str, str] = {}  # idempotency scope -> job id
        self._beats: dict[str, float] = {}
        self._launches: deque[tuple[float, str | None]] = deque()  # (created, command)
        self._seq = 0
        self._closed = False
        self._next_expiry_scan = 0.0
        self._outbox: dict[str, float] = {}  # job id -> when its callback is due (Unix time)

    def create(self, job: Job) -> Job:
        scope = job.idempotency_scope
        with self._lock:
            if scope is not None and scope in self._scopes:
                return self._snapshot(self._entries[self._scopes[scope]])
            self._seq += 1
            self._entries[job.id] = _Entry(job, self._seq)
            now = job.created_at.timestamp()
            self._launches.append((now, job.command))
            while self._launches and self._launches[0][0] < now - LAUNCHES_KEPT:
                self._launches.popleft()
            if scope is not None:
                self._scopes[scope] = job.id
            self._evict()
        return job

    def get(self, job_id: str, *, output: bool = True) -> Job:
        with self._lock:
            self._evict()
            entry = self._entry(job_id)
            if output:
                return self._snapshot(entry)
            return entry.job if entry.process is None else self._with_process(entry)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        token: str | None = None,
    ) -> JobPage:
        before = parse_cursor(cursor)
        jobs: list[Job] = []
        last_seq: int | None = None
        more = False
        with self._lock:
            self._evict()
            for entry in reversed(self._entries.values()):
                if before is not None and entry.seq >= before:
                    continue
                if status is not None and entry.job.status is not status:
                    continue
                if command is not None and entry.job.command != command:
                    continue
                if token is not None and entry.job.token_id != token:
                    continue
                if len(jobs) == limit:
                    more = True
                    break
                jobs.append(self._snapshot(entry))
                last_seq = entry.seq
        return JobPage(jobs, str(last_seq) if more and last_seq is not None else None)

    def count(
        self, *, command: str | None = None, active: bool = False, since: float | None = None
    ) -> int:
        with self._lock:
            if since is not None and not active:
                return sum(
                    1
                    for at, name in self._launches
                    if at >= since and (command is None or name == command)
                )
            return sum(
                1
                for e in self._entries.values()
                if (command is None or e.job.command == command)
                and (not active or e.job.status in ACTIVE)
                and (since is None or e.job.created_at.timestamp() >= since)
            )

    def start(self, job_id: str, owner: str | None = None) -> Job | None:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status is not JobStatus.QUEUED:
                return None
            entry.job = dataclasses.replace(
                entry.job,
                status=JobStatus.RUNNING,
                started_at=utcnow(),
                owner=owner if owner is not None else entry.job.owner,
            )
            return entry.job

    def append_output(self, job_id: str, chunk: Chunk) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
            # Deleted meanwhile: nobody can read it any more. Written already: a repeat.
            if entry is not None and len(entry.chunks) < chunk.index:
                entry.chunks.append(chunk)
                self._notify(entry)

    def read_output(self, job_id: str, after: int = 0) -> Chunks:
        with self._lock:
            chunks = self._entry(job_id).chunks
            # Indexes run 1, 2, 3...: chunk n sits at position n - 1.
            return chunks[max(0, after) :]

    def wait_output(self, job_id: str, after: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._entry(job_id)
                remaining = deadline - time.monotonic()
                if (
                    len(entry.chunks) > after
                    or entry.job.status.finished
                    or remaining <= 0
                    or self._closed
                ):
                    return
                self._condition(entry).wait(remaining)

    def claim_callbacks(self, now: float, lease: float, limit: int) -> _Jobs:
        with self._lock:
            due = heapq.nsmallest(
                limit, ((at, job_id) for job_id, at in self._outbox.items() if at <= now)
            )
            claimed = []
            for _, job_id in due:
                entry = self._entries.get(job_id)
                state = entry.job.callback if entry is not None else None
                if entry is None or state is None or state.get("status") != "pending":
                    del self._outbox[job_id]  # deleted, evicted, or no callback to make
                    continue
                attempts = int(state.get("attempts", 0)) + 1
                entry.job = dataclasses.replace(entry.job, callback={**state, "attempts": attempts})
                self._outbox[job_id] = now + lease
                claimed.append(self._snapshot(entry))
            return claimed

    def set_callback(
        self,
        job_id: str,
        state: Mapping[str, Any],
        *,
        attempt: int,
        retry_at: float | None = None,
    ) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            stored = entry.job.callback if entry is not None else None
            if entry is None or stored is None or stored.get("attempts") != attempt:
                return False
            entry.job = dataclasses.replace(entry.job, callback=dict(state))
            if retry_at is None:
                self._outbox.pop(job_id, None)
            else:
                self._outbox[job_id] = retry_at
            return True

    def finish(self, job_id: str, outcome: Outcome, output: Sequence[Chunk] = ()) -> bool:
        with self._lock:
            entry = self._entry(job_id)
            for chunk in output:
                if len(entry.chunks) < chunk.index:
                    entry.chunks.append(chunk)
            if output:
                self._notify(entry)
            if entry.job.status.finished:
                return False
            self._finish(entry, outcome)
            self._evict()
            return True

    def find_key(self, scope: str) -> Job | None:
        with self._lock:
            job_id = self._scopes.get(scope)
            entry = self._entries.get(job_id) if job_id is not None else None
            if entry is None:
                return None
            return entry.job if entry.process is None else self._with_process(entry)

    def release_key(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entry(job_id)
            scope = entry.job.idempotency_scope
            if scope is None or self._scopes.get(scope) != job_id:
                return False
            del self._scopes[scope]
            return True

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status is JobStatus.QUEUED:
                self._finish(
                    entry, Outcome(JobStatus.CANCELLED, error="cancelled before it started")
                )
            elif entry.job.status is JobStatus.RUNNING:
                entry.cancel = True
            return self._snapshot(entry)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(job_id)
            return entry is not None and entry.cancel

    def delete(self, job_id: str) -> bool:
        with self._lock:
            entry = self._entry(job_id)
            if not entry.job.status.finished:
                return False
            self._drop(job_id)
            return True

    def wait(self, job_id: str, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._entry(job_id)
                remaining = deadline - time.monotonic()
                if entry.job.status.finished or remaining <= 0 or self._closed:
                    return self._snapshot(entry)
                self._condition(entry).wait(remaining)

    def heartbeat(self, owner: str) -> None:
        with self._lock:
            self._beats[owner] = time.time()

    def heartbeats(self) -> dict[str, float]:
        with self._lock:
            return dict(self._beats)

    def active_owners(self) -> set[str]:
        with self._lock:
            return {
                e.job.owner
                for e in self._entries.values()
                if e.job.status in ACTIVE and e.job.owner is not None
            }

    def mark_lost(self, owner: str, error: str) -> int:
        with self._lock:
            lost = [
                e for e in self._entries.values() if e.job.owner == owner and e.job.status in ACTIVE
            ]
            for entry in lost:
                self._finish(entry, Outcome(JobStatus.LOST, error=error))
            self._beats.pop(owner, None)
            return len(lost)

    def requeue_lost(self, owner: str) -> JobIds:
        with self._lock:
            again = [
                e
                for e in self._entries.values()
                if e.job.owner == owner
                and (
                    e.job.status is JobStatus.QUEUED
                    or (e.job.status is JobStatus.RUNNING and e.job.spec.retry_on_worker_loss)
                )
            ]
            for entry in again:
                spec = entry.job.spec
                if entry.job.status is JobStatus.RUNNING:  # the one re-run is spent
                    spec = dataclasses.replace(spec, retry_on_worker_loss=False)
                entry.job = dataclasses.replace(
                    entry.job,
                    status=JobStatus.QUEUED,
                    owner=None,
                    started_at=None,
                    spec=spec,
                )
                entry.process = None
                entry.chunks = []
                entry.cancel = False
                self._notify(entry)
            return [entry.job.id for entry in again]

    def active_jobs(self, owner: str) -> _Jobs:
        with self._lock:
            return [
                self._with_process(e)  # without output, as the other stores give them
                for e in self._entries.values()
                if e.job.owner == owner and e.job.status in ACTIVE
            ]

    def claim(self, job_id: str, owner: str) -> bool:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status is not JobStatus.QUEUED:
                return False
            entry.job = dataclasses.replace(entry.job, owner=owner)
            return True

    def record_process(self, job_id: str, tag: str) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry.job.status is JobStatus.RUNNING:
                entry.process = tag

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for entry in self._entries.values():
                self._notify(entry)

    def _condition(self, entry: _Entry) -> threading.Condition:
        """The entry's condition variable, made on first use; the lock is held."""
        if entry.changed is None:
            entry.changed = threading.Condition(self._lock)
        return entry.changed

    @staticmethod
    def _notify(entry: _Entry) -> None:
        """Wake the entry's waiters, if it has any; the lock is held."""
        if entry.changed is not None:
            entry.changed.notify_all()

    def _entry(self, job_id: str) -> _Entry:
        try:
            return self._entries[job_id]
        except KeyError:
            raise JobNotFound(f"no job with id {job_id!r}") from None

    @staticmethod
    def _with_process(entry: _Entry) -> Job:
        return dataclasses.replace(entry.job, process=entry.process)

    @staticmethod
    def _snapshot(entry: _Entry) -> Job:
        return dataclasses.replace(
            entry.job,
            stdout=b"".join(c.data for c in entry.chunks if c.stream == "stdout"),
            stderr=b"".join(c.data for c in entry.chunks if c.stream == "stderr"),
            process=entry.process,
        )

    def _finish(self, entry: _Entry, outcome: Outcome) -> None:
        """Record the outcome, queue the job's callback if it has one, and wake the job's
        waiters; the lock is held."""
        entry.job = entry.job.finished_with(outcome)
        if entry.job.callback_url is not None:
            self._outbox[entry.job.id] = time.time()
        MemoryStore._notify(entry)
        # A finished job changes no more: its waiters hold the condition they wait on,
        # and a retained job should not (it is most of a small job's memory).
        entry.changed = None

    def _drop(self, job_id: str) -> None:
        entry = self._entries.pop(job_id)
        scope = entry.job.idempotency_scope
        if scope is not None and self._scopes.get(scope) == job_id:
            del self._scopes[scope]

    def _evict(self) -> None:
        """Drop expired jobs, then the oldest finished ones while over ``max_jobs``.

        The lock is held. Expiry visits every job, so it runs once per ``evict_interval``.
        """
        now = time.monotonic()
        if self.ttl is not None and now >= self._next_expiry_scan:
            self._next_expiry_scan = now + self.evict_interval
            cutoff = utcnow().timestamp() - self.ttl
            for job_id in [
                job_id
                for job_id, e in self._entries.items()
                if e.job.finished_at is not None and e.job.finished_at.timestamp() < cutoff
            ]:
                self._drop(job_id)
        excess = len(self._entries) - self.max_jobs
        if excess <= 0:
            return
        doomed = []
        for job_id, entry in self._entries.items():
            if entry.job.status.finished:
                doomed.append(job_id)
                if len(doomed) == excess:
                    break
        for job_id in doomed:
            self._drop(job_id)
