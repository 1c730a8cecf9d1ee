"""MemoryStore: jobs in this process's memory, guarded by one lock."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from procgate.errors import ConfigError, InvalidRequest, JobNotFound
from procgate.jobs import Job, JobPage, JobStatus, Outcome, utcnow


@dataclass(slots=True)
class _Entry:
    """A job and what changes while it runs; only touched under the store's lock."""

    job: Job
    seq: int
    finished: threading.Condition  # shares the store's lock; notified when the job ends
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    cancel: bool = False


class MemoryStore:
    """Jobs in a dict: fast, and gone when the process exits.

    It lives in one process, so serve it from one worker process (with threads). When it
    holds more than ``max_jobs`` jobs, the oldest *finished* ones are evicted; queued and
    running jobs are never evicted, so the count may exceed ``max_jobs`` while they last.
    """

    def __init__(self, *, max_jobs: int = 1000) -> None:
        if max_jobs < 1:
            raise ConfigError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._seq = 0
        self._closed = False

    def create(self, job: Job) -> Job:
        with self._lock:
            self._seq += 1
            self._entries[job.id] = _Entry(job, self._seq, threading.Condition(self._lock))
            self._evict()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._snapshot(self._entry(job_id))

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        before = _parse_cursor(cursor)
        jobs: list[Job] = []
        last_seq: int | None = None
        more = False
        with self._lock:
            for entry in reversed(self._entries.values()):
                if before is not None and entry.seq >= before:
                    continue
                if status is not None and entry.job.status is not status:
                    continue
                if command is not None and entry.job.command != command:
                    continue
                if len(jobs) == limit:
                    more = True
                    break
                jobs.append(self._snapshot(entry))
                last_seq = entry.seq
        return JobPage(jobs, str(last_seq) if more and last_seq is not None else None)

    def start(self, job_id: str) -> Job | None:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status is not JobStatus.QUEUED:
                return None
            entry.job = dataclasses.replace(
                entry.job, status=JobStatus.RUNNING, started_at=utcnow()
            )
            return entry.job

    def append_output(self, job_id: str, stream: str, data: bytes) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None:  # deleted meanwhile: nobody can read it any more
                (entry.stdout if stream == "stdout" else entry.stderr).extend(data)

    def finish(self, job_id: str, outcome: Outcome) -> Job | None:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status.finished:
                return None
            entry.job = dataclasses.replace(
                entry.job,
                status=outcome.status,
                returncode=outcome.returncode,
                error=outcome.error,
                stdout_truncated=outcome.stdout_truncated,
                stderr_truncated=outcome.stderr_truncated,
                finished_at=utcnow(),
            )
            entry.finished.notify_all()
            self._evict()
            return self._snapshot(entry)

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            entry = self._entry(job_id)
            if entry.job.status is JobStatus.QUEUED:
                entry.job = dataclasses.replace(
                    entry.job,
                    status=JobStatus.CANCELLED,
                    error="cancelled before it started",
                    finished_at=utcnow(),
                )
                entry.finished.notify_all()
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
            del self._entries[job_id]
            return True

    def wait(self, job_id: str, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._entry(job_id)
                remaining = deadline - time.monotonic()
                if entry.job.status.finished or remaining <= 0 or self._closed:
                    return self._snapshot(entry)
                entry.finished.wait(remaining)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for entry in self._entries.values():
                entry.finished.notify_all()

    def _entry(self, job_id: str) -> _Entry:
        try:
            return self._entries[job_id]
        except KeyError:
            raise JobNotFound(f"no job with id {job_id!r}") from None

    @staticmethod
    def _snapshot(entry: _Entry) -> Job:
        return dataclasses.replace(
            entry.job, stdout=bytes(entry.stdout), stderr=bytes(entry.stderr)
        )

    def _evict(self) -> None:
        """Drop the oldest finished jobs while over ``max_jobs``; the lock is held."""
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
            del self._entries[job_id]


def _parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        return int(cursor)
    except ValueError:
        raise InvalidRequest(f"invalid cursor {cursor!r}", code="invalid_cursor") from None
