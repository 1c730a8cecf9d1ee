"""The JobStore protocol, and ``open_store(url)`` to pick an implementation by URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from procgate.errors import ConfigError
from procgate.jobs import Chunk, Chunks, Job, JobIds, JobPage, JobStatus, Outcome
from procgate.stores.memory import MemoryStore
from procgate.stores.sqlite import SQLiteStore

# The protocol has a method named ``list``; this keeps the builtin usable in annotations.
_Jobs = list[Job]

__all__ = ["JobPage", "JobStore", "MemoryStore", "SQLiteStore", "open_store"]


class JobStore(Protocol):
    """Where jobs live: the only state shared between the Gate and the runners.

    Every method must be safe to call from many threads at once. Stores hand out values
    (frozen ``Job`` records), never live objects. Status changes are compare-and-set: a job
    starts once, finishes once, and a finished job never changes again.
    """

    def create(self, job: Job) -> Job:
        """Store a new ``queued`` job; it exists before anything runs.

        When the job has an ``idempotency_key`` and a stored job has the same
        ``Job.idempotency_scope`` (the same caller, command and key), nothing is stored and
        that job is returned instead (its id differs from ``job.id``). Compare the whole
        scope, never the key alone: the Gate refuses to answer another caller's job. This
        is atomic across threads, processes and hosts.
        """
        ...

    def get(self, job_id: str, *, output: bool = True) -> Job:
        """The job with its output so far (empty with ``output=False``, which is cheaper).

        ``JobNotFound`` if absent.
        """
        ...

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        token: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered (``token``: created by that token id);
        ``InvalidRequest`` for a cursor it did not issue."""
        ...

    def count(
        self, *, command: str | None = None, active: bool = False, since: float | None = None
    ) -> int:
        """How many jobs (of a command): only queued and running ones with ``active``.

        With ``since`` (Unix time, at most a day ago), how many were *created* since then,
        deleted and evicted ones included: what a rate limit counts.
        """
        ...

    def start(self, job_id: str, owner: str | None = None) -> Job | None:
        """``queued`` -> ``running``; None when the job is no longer queued (cancelled).

        ``owner``: the runner that takes the job, when it is not the one stamped at
        ``create`` (a distributed runner's worker); the job is then that owner's.
        """
        ...

    def append_output(self, job_id: str, chunk: Chunk) -> None:
        """Store the next chunk of a running job's output.

        A job has one writer (the runner that started it), which numbers chunks from 1
        and keeps each stream's offsets.
        """
        ...

    def read_output(self, job_id: str, after: int = 0) -> Chunks:
        """The job's chunks with ``index > after``, in order; ``JobNotFound`` if absent."""
        ...

    def wait_output(self, job_id: str, after: int, timeout: float) -> None:
        """Block until a chunk past ``after`` exists, the job finishes, or the timeout."""
        ...

    def claim_callbacks(self, now: float, lease: float, limit: int) -> _Jobs:
        """Lease up to ``limit`` callbacks due at ``now`` (Unix time), the longest due first.

        The outbox: a job with a ``callback_url`` enters it in the same atomic step that
        finishes it (``finish``, a cancel while queued, ``mark_lost``), due at once; after a
        failed attempt it is due again at the ``retry_at`` that ``set_callback`` recorded.
        A claim counts the attempt (the job's ``callback["attempts"]`` goes up by one) and
        makes the callback due again only at ``now + lease``, atomically: no other claim, in
        any process, returns it before then, and if its claimer dies another retries it
        then. Returns the jobs with their output. A job deleted or evicted (or without
        ``pending`` callback state) leaves the outbox here, its callback dropped.
        """
        ...

    def set_callback(
        self,
        job_id: str,
        state: Mapping[str, Any],
        *,
        attempt: int,
        retry_at: float | None = None,
    ) -> bool:
        """Record the result of the claimed attempt number ``attempt``: ``state`` becomes
        the job's ``callback`` (the one change a finished job still takes).

        With ``retry_at`` (Unix time) the callback is due again then; without, it leaves
        the outbox (delivered, or given up). Atomic, and only while the stored attempt
        count is still ``attempt``: False, changing nothing, when another claim took the
        callback since (this one's lease ran out) or the job is gone.
        """
        ...

    def finish(self, job_id: str, outcome: Outcome, output: Sequence[Chunk] = ()) -> bool:
        """``running`` -> the outcome's status; False when the job had already finished.

        Only the one call that finishes a job gets True: act on the finish (hooks,
        callbacks) only then. It returns no job: read it with ``get`` if needed.
        ``output``: the job's last chunks, not written yet, written as ``append_output``
        would (whether or not this call finishes the job) in the same atomic step, so a
        reader that sees the job finished sees all of its output: one write, not two.
        """
        ...

    def find_key(self, scope: str) -> Job | None:
        """The stored job holding the idempotency ``scope`` (``Job.idempotency_scope``),
        without output; None when no job holds it (never used, released, or its job gone).
        """
        ...

    def release_key(self, job_id: str) -> bool:
        """Let the job's idempotency key go: the job stays as it is, and the next job
        created with its scope is a new job. True when the job held its key.

        The compat layers use it to end a key's life when its result is read, as the tools
        they stand in for do.
        """
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

    def heartbeat(self, owner: str) -> None:
        """Record that the runner ``owner`` is alive now."""
        ...

    def heartbeats(self) -> dict[str, float]:
        """The last heartbeat (Unix time) of every owner that sent one."""
        ...

    def active_owners(self) -> set[str]:
        """The owners of all queued and running jobs."""
        ...

    def mark_lost(self, owner: str, error: str) -> int:
        """Finish every queued or running job of a dead owner as ``lost``; return how many.

        The owner's heartbeat is forgotten too.
        """
        ...

    def requeue_lost(self, owner: str) -> JobIds:
        """Put back in the queue the active jobs of a dead owner that may run (again).

        A queued job never ran, so it always may. A running one may once, when its spec has
        ``retry_on_worker_loss``; the flag is cleared, so it is re-run at most once. Their
        status goes back to ``queued``, without owner, start time, process, output or
        cancel request. Returns their ids, for the caller to submit again.
        """
        ...

    def active_jobs(self, owner: str) -> _Jobs:
        """The owner's queued and running jobs, oldest first, without output."""
        ...

    def claim(self, job_id: str, owner: str) -> bool:
        """Make a queued job ``owner``'s before it starts (a worker that took its message).

        False when the job is no longer queued; ``JobNotFound`` if absent. If the owner
        dies before starting it, ``requeue_lost`` puts it back for another runner.
        """
        ...

    def record_process(self, job_id: str, tag: str) -> None:
        """Record the running job's child (``procgate.process.process_tag``), so that a
        sweep can kill what is left of it after its runner died."""
        ...

    def close(self) -> None:
        """Release connections and wake every waiter."""
        ...


def open_store(url: str, **options: Any) -> JobStore:
    """The store a URL names; keyword options go to its constructor.

    ``memory://``, ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, and
    ``redis://host:port/db`` (with the ``redis`` extra).
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryStore(**options)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigError(
                f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        return SQLiteStore(path, **options)
    if parts.scheme in ("redis", "rediss", "unix"):
        from procgate.stores.redis import RedisStore  # the redis extra is optional

        return RedisStore(url, **options)
    raise ConfigError(
        f"unknown store URL {url!r}: expected memory://, sqlite:///path or redis://host:port"
    )
