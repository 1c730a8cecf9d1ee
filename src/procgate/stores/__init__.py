"""The JobStore protocol, and ``open_store(url)`` to pick an implementation by URL."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

from procgate.errors import ConfigError
from procgate.jobs import Job, JobPage, JobStatus, Outcome
from procgate.stores.memory import MemoryStore

__all__ = ["JobPage", "JobStore", "MemoryStore", "open_store"]


class JobStore(Protocol):
    """Where jobs live: the only state shared between the Gate and the runners.

    Every method must be safe to call from many threads at once. Stores hand out values
    (frozen ``Job`` records), never live objects. Status changes are compare-and-set: a job
    starts once, finishes once, and a finished job never changes again.
    """

    def create(self, job: Job) -> Job:
        """Store a new ``queued`` job; it exists before anything runs."""
        ...

    def get(self, job_id: str) -> Job:
        """The job with its output so far; ``JobNotFound`` if absent."""
        ...

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered; ``InvalidRequest`` for a cursor it did not issue."""
        ...

    def start(self, job_id: str) -> Job | None:
        """``queued`` -> ``running``; None when the job is no longer queued (cancelled)."""
        ...

    def append_output(self, job_id: str, stream: str, data: bytes) -> None:
        """Append bytes to ``"stdout"`` or ``"stderr"`` of a running job."""
        ...

    def finish(self, job_id: str, outcome: Outcome) -> Job | None:
        """``running`` -> the outcome's status; None when the job had already finished."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Ask for a job to stop.

        A queued job becomes ``cancelled`` at once; a running one is flagged, and its runner
        notices through ``cancel_requested``; a finished one is returned unchanged.
        """
        ...

    def cancel_requested(self, job_id: str) -> bool:
        """Whether ``cancel`` was called for a job; cheap, runners ask it often."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove a finished job; False if it is still queued or running."""
        ...

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block up to ``timeout`` seconds for the job to finish; return it either way."""
        ...

    def close(self) -> None:
        """Release connections and wake every waiter."""
        ...


def open_store(url: str, **options: Any) -> JobStore:
    """The store a URL names: ``memory://``; keyword options go to its constructor."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(**options)
    raise ConfigError(f"unknown store URL {url!r}: expected memory://")
