"""SQLiteStore: jobs in one SQLite file, shared by every thread and process of a host."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from procgate.errors import ConfigError, JobNotFound
from procgate.jobs import (
    Chunk,
    Chunks,
    Job,
    JobIds,
    JobPage,
    JobStatus,
    Outcome,
    job_from_record,
    job_to_record,
    parse_cursor,
    utcnow,
)
from procgate.stores import _sqlite_file
from procgate.stores._faults import translate_faults
from procgate.stores._sqlite_pool import ConnectionPool
from procgate.stores._sqlite_schema import prepare

logger = logging.getLogger("procgate")

#: Seconds of job creations kept for rate limits (``count(since=...)``): a day.
LAUNCHES_KEPT = 86400.0

#: Heartbeats older than this (seconds) are forgotten: their owners are long gone.
FORGET_OWNERS_AFTER = 86400.0

_COLUMNS = (
    "id, command, args, spec, status, returncode, error, stdout_truncated, stderr_truncated, "
    "created_at, started_at, finished_at, owner, idempotency_key, link, callback_url, "
    "callback_context, callback, token_id, client, process"
)
_ACTIVE_SQL = "('queued', 'running')"
#: ``UPDATE ... RETURNING`` needs SQLite 3.35 (2021).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_STREAMS = {"stdout": 0, "stderr": 1}
_STREAM_NAMES = ("stdout", "stderr")

# The class defines a method named ``list``; these keep the builtin usable in annotations.
_Jobs = list[Job]
_Ids = list[str]


def _fault(exc: BaseException) -> str | None:
    """Why the file cannot be used now (full, read-only, gone, locked too long), if
    ``exc`` says so; constraint and API errors are bugs, not faults (``translate_faults``)."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return None
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)):
        return str(exc)
    return None


@translate_faults("SQLite", _fault)
class SQLiteStore:
    """Jobs in a SQLite database file: persistent, and safe for many processes at once.

    The file is opened in WAL mode (readers never block the writer) with a busy timeout,
    and every write is one short statement or transaction, so several gunicorn workers on
    one host can share it. ``synchronous=NORMAL``: a committed job survives a crash of the
    server, though not necessarily a power cut. Retention works as in MemoryStore:
    ``max_jobs`` evicts the oldest finished jobs, ``ttl`` expires finished ones, checked at
    most every ``evict_interval`` seconds (a pass counts rows), so a job may outlive them
    by that long.
    """

    def __init__(
        self,
        path: str,
        *,
        max_jobs: int = 10_000,
        ttl: float | None = None,
        busy_timeout: float = 10.0,  # seconds a write waits for another writer's lock
        reserve: int = _sqlite_file.RESERVE,  # bytes held back on the disk for deletes
        poll_interval: float = 0.05,  # longest sleep between checks in wait()
        evict_interval: float = 1.0,  # seconds between retention passes (they count rows)
    ) -> None:
        if not isinstance(max_jobs, int) or max_jobs < 1:
            raise ConfigError("max_jobs must be at least 1")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
            raise ConfigError("ttl must be a positive number of seconds")
        # Absolute: every pooled connection must open this file, whatever the cwd is then.
        self.path = os.path.abspath(path)
        self.max_jobs = max_jobs
        self.ttl = ttl
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.evict_interval = evict_interval
        self._reserve = _sqlite_file.Reserve(self.path + ".reserve", reserve)
        self._lock = threading.Lock()
        self._changed = threading.Condition()  # news for this process's waiters
        self._generation = 0  # bumped for news about every job (close, lost jobs)
        self._watched: dict[str, int] = {}  # job id -> how many threads wait for it
        self._job_news: dict[str, int] = {}  # job id -> news count, while watched
        self._pool: ConnectionPool | None = None
        self._closed = False
        self._next_evict = 0.0
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            self._pool = ConnectionPool(self.path, busy_timeout)
            with self._db() as db:  # prepare takes its own transaction
                prepare(db)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"cannot open SQLite store {path!r}: {exc}") from None
        self._reserve.refill(time.monotonic())

    # -- connections --------------------------------------------------------------------

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A pooled connection in autocommit mode, for reading."""
        if self._pool is None:
            raise sqlite3.ProgrammingError("the SQLite store is not open")
        return self._pool.db()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction, taken at once so it never fails half way on a lock."""
        if self._pool is None:
            raise sqlite3.ProgrammingError("the SQLite store is not open")
        return self._pool.transaction()

    # -- the JobStore protocol ----------------------------------------------------------

    def create(self, job: Job) -> Job:
        record = job_to_record(job)
        record["scope"] = job.idempotency_scope
        names = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self._transaction() as db:  # one commit for the job and its launch
            while True:
                inserted = db.execute(
                    f"INSERT INTO jobs ({names}) VALUES ({marks}) ON CONFLICT (scope) DO NOTHING",
                    tuple(record.values()),
                ).rowcount
                if inserted:
                    db.execute(
                        "INSERT INTO launches (command, at) VALUES (?, ?)",
                        (job.command, record["created_at"]),
                    )
                    break
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE scope = ?",
                    (record["scope"],),
                ).fetchone()
                if row is not None:  # else it was deleted meanwhile: insert again
                    return self._jobs(db, [row])[0]
        if self._evict_due():  # else no write lock taken for nothing
            with self._transaction() as db:
                self._evict(db)
        return job

    def get(self, job_id: str, *, output: bool = True) -> Job:
        with self._db() as db:
            self._evict_on_read(db)
            row = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return self._jobs(db, [row], output=output)[0]

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        token: str | None = None,
    ) -> JobPage:
        where: _Ids = ["1"]
        params: list[object] = []
        before = parse_cursor(cursor)
        if before is not None:
            params.append(before)
            where.append("seq < ?")
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if command is not None:
            where.append("command = ?")
            params.append(command)
        if token is not None:
            where.append("token_id = ?")
            params.append(token)
        params.append(limit + 1)
        with self._db() as db:
            self._evict_on_read(db)
            rows = db.execute(
                f"SELECT seq, {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
                "ORDER BY seq DESC LIMIT ?",
                params,
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = self._jobs(db, rows)
        return JobPage(jobs, str(rows[-1]["seq"]) if more else None)

    def count(
        self, *, command: str | None = None, active: bool = False, since: float | None = None
    ) -> int:
        where: _Ids = ["1"]
        params: list[object] = []
        if command is not None:
            where.append("command = ?")
            params.append(command)
        if active:
            where.append(f"status IN {_ACTIVE_SQL}")
        table = "jobs"
        if since is not None:
            where.append("created_at >= ?" if active else "at >= ?")
            params.append(since)
            if not active:  # creations, deleted and evicted jobs included
                table = "launches"
        with self._db() as db:
            (count,) = db.execute(
                f"SELECT count(*) FROM {table} WHERE {' AND '.join(where)}", params
            ).fetchone()
        return int(count)

    def start(self, job_id: str, owner: str | None = None) -> Job | None:
        update = (
            "UPDATE jobs SET status = 'running', started_at = ?, owner = coalesce(?, owner) "
            "WHERE id = ? AND status = 'queued'"
        )
        params = (time.time(), owner, job_id)
        with self._transaction() as db:
            if _RETURNING:  # one statement instead of an update and a read
                rows = db.execute(f"{update} RETURNING {_COLUMNS}", params).fetchall()
                if rows:
                    return self._jobs(db, rows, output=False)[0]  # no output yet
                started = False
            else:
                started = bool(db.execute(update, params).rowcount)
        if started:  # read once committed: another connection would not see it before
            return self.get(job_id, output=False)
        self._require(job_id)
        return None

    def append_output(self, job_id: str, chunk: Chunk) -> None:
        with self._transaction() as db:
            _insert_output(db, job_id, [chunk])
        self._notify(job_id)

    def read_output(self, job_id: str, after: int = 0) -> Chunks:
        with self._db() as db:
            rows = db.execute(
                "SELECT idx, stream, off, data FROM output WHERE job_id = ? AND idx > ? "
                "ORDER BY idx",
                (job_id, after),
            ).fetchall()
        if not rows:
            self._require(job_id)
        return [Chunk(idx, _STREAM_NAMES[stream], off, data) for idx, stream, off, data in rows]

    def wait_output(self, job_id: str, after: int, timeout: float) -> None:
        """Wake on this process's writes; poll other processes' (1 ms growing to 50 ms)."""
        self._poll(
            "SELECT (SELECT status FROM jobs WHERE id = ?1), "
            "EXISTS (SELECT 1 FROM output WHERE job_id = ?1 AND idx > ?2)",
            (job_id, after),
            job_id,
            timeout,
        )

    def claim_callbacks(self, now: float, lease: float, limit: int) -> _Jobs:
        with self._db() as db:  # most polls find nothing due: they take no write lock
            if db.execute("SELECT 1 FROM callbacks WHERE due <= ?", (now,)).fetchone() is None:
                return []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT c.job_id, j.callback FROM callbacks c LEFT JOIN jobs j ON j.id = c.job_id "
                "WHERE c.due <= ? ORDER BY c.due LIMIT ?",
                (now, limit),
            ).fetchall()
            ids: _Ids = []
            for job_id, raw in rows:
                state = json.loads(raw) if raw is not None else None
                if state is None or state.get("status") != "pending":
                    # deleted, evicted, or no callback to make: dropped
                    db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
                    continue
                state["attempts"] = int(state.get("attempts", 0)) + 1
                db.execute("UPDATE jobs SET callback = ? WHERE id = ?", (json.dumps(state), job_id))
                db.execute("UPDATE callbacks SET due = ? WHERE job_id = ?", (now + lease, job_id))
                ids.append(job_id)
            if not ids:
                return []
            marks = ", ".join("?" for _ in ids)
            found = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks})", ids)
            jobs = {job.id: job for job in self._jobs(db, found.fetchall())}
        return [jobs[job_id] for job_id in ids]

    def set_callback(
        self,
        job_id: str,
        state: Mapping[str, Any],
        *,
        attempt: int,
        retry_at: float | None = None,
    ) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT callback FROM jobs WHERE id = ?", (job_id,)).fetchone()
            stored = json.loads(row[0]) if row is not None and row[0] is not None else None
            if stored is None or stored.get("attempts") != attempt:
                return False  # gone, or claimed again since: a later attempt records
            db.execute(
                "UPDATE jobs SET callback = ? WHERE id = ?", (json.dumps(dict(state)), job_id)
            )
            if retry_at is None:
                db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
            else:
                db.execute(
                    "INSERT INTO callbacks (job_id, due) VALUES (?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET due = excluded.due",
                    (job_id, retry_at),
                )
        return True

    def finish(self, job_id: str, outcome: Outcome, output: Sequence[Chunk] = ()) -> bool:
        with self._transaction() as db:
            if output:
                _insert_output(db, job_id, output)
            changed = self._finish(db, "id = ?", (job_id,), outcome)
            if changed:
                self._evict(db)
        if changed:
            self._notify(job_id)  # once committed: a waiter woken earlier would not see it
        else:
            self._require(job_id)
        return bool(changed)

    def find_key(self, scope: str) -> Job | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE scope = ?", (scope,)).fetchone()
            return None if row is None else self._jobs(db, [row], output=False)[0]

    def release_key(self, job_id: str) -> bool:
        with self._transaction() as db:
            released = db.execute(
                "UPDATE jobs SET scope = NULL WHERE id = ? AND scope IS NOT NULL", (job_id,)
            ).rowcount
        if not released:
            self._require(job_id)
        return bool(released)

    def cancel(self, job_id: str) -> Job:
        with self._transaction() as db:
            self._finish(
                db,
                "id = ? AND status = 'queued'",
                (job_id,),
                Outcome(JobStatus.CANCELLED, error="cancelled before it started"),
            )
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND status = 'running'", (job_id,))
        self._notify(job_id)
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and bool(row[0])

    def delete(self, job_id: str) -> bool:
        """Delete a finished job; on a full disk, with the room of the reserve.

        The pages it frees are reused by the jobs that come next: after the delete the
        log is checkpointed, so new writes go to the start of the log file again.
        """
        try:
            deleted = self._delete(job_id)
        except sqlite3.OperationalError as exc:
            if not _sqlite_file.disk_full(exc) or not self._reserve.release():
                raise
            logger.warning(
                "SQLite store %s: the disk is full; deleting with the reserve", self.path
            )
            deleted = self._delete(job_id)
            with self._db() as db:  # not in a transaction: SQLite refuses one there
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if not deleted:
            self._require(job_id)
        return bool(deleted)

    def _delete(self, job_id: str) -> int:
        with self._transaction() as db:
            deleted: int = db.execute(
                f"DELETE FROM jobs WHERE id = ? AND status NOT IN {_ACTIVE_SQL}",
                (job_id,),
            ).rowcount
            if deleted:
                db.execute("DELETE FROM output WHERE job_id = ?", (job_id,))
        return deleted

    def wait(self, job_id: str, timeout: float) -> Job:
        """Wake on finishes in this process; poll for the others' with a short backoff.

        SQLite has no notifications between processes, so a job finished by another
        process is seen within ``poll_interval`` seconds; one finished by this process
        (the usual case: the worker that took the request runs the job) at once.
        """
        self._poll("SELECT status, 0 FROM jobs WHERE id = ?1", (job_id,), job_id, timeout)
        return self.get(job_id)

    def _poll(self, query: str, params: Sequence[Any], job_id: str, timeout: float) -> None:
        """Run ``query`` (giving status, and whether there is news) until done or timeout."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        with self._changed:
            self._watched[job_id] = self._watched.get(job_id, 0) + 1
        try:
            with self._db() as db:
                while True:
                    news = self._news(job_id)
                    row = db.execute(query, params).fetchone()
                    if row is None or row[0] is None:
                        raise JobNotFound(f"no job with id {job_id!r}")
                    remaining = deadline - time.monotonic()
                    if JobStatus(row[0]).finished or row[1] or remaining <= 0 or self._closed:
                        return
                    # Sleep until this job has news from this process, or the backoff ends
                    # (news from other processes only shows in the database).
                    backoff = time.monotonic() + min(delay, remaining)
                    with self._changed:
                        while self._news(job_id) == news:
                            left = backoff - time.monotonic()
                            if left <= 0:
                                break
                            self._changed.wait(left)
                    delay = min(delay * 1.5, self.poll_interval)
        finally:
            with self._changed:
                self._watched[job_id] -= 1
                if not self._watched[job_id]:
                    del self._watched[job_id]
                    self._job_news.pop(job_id, None)

    def _news(self, job_id: str) -> tuple[int, int]:
        """What has changed for a job in this process so far: compare, don't read."""
        return self._generation, self._job_news.get(job_id, 0)

    def _notify(self, job_id: str | None = None) -> None:
        """Wake this process's waiters of ``job_id`` (of every job when None).

        A woken waiter of another job finds its own news unchanged and sleeps on without
        querying the database.
        """
        with self._changed:
            if job_id is None:
                self._generation += 1
            elif job_id in self._watched:
                self._job_news[job_id] = self._job_news.get(job_id, 0) + 1
            else:
                return
            self._changed.notify_all()

    def heartbeat(self, owner: str) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO owners (owner, beat) VALUES (?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET beat = excluded.beat",
                (owner, now),
            )
            db.execute("DELETE FROM owners WHERE beat < ?", (now - FORGET_OWNERS_AFTER,))

    def heartbeats(self) -> dict[str, float]:
        with self._db() as db:
            return {row[0]: row[1] for row in db.execute("SELECT owner, beat FROM owners")}

    def active_owners(self) -> set[str]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT DISTINCT owner FROM jobs WHERE status IN {_ACTIVE_SQL} "
                "AND owner IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}

    def mark_lost(self, owner: str, error: str) -> int:
        with self._transaction() as db:
            lost = self._finish(
                db,
                f"owner = ? AND status IN {_ACTIVE_SQL}",
                (owner,),
                Outcome(JobStatus.LOST, error=error),
            )
            db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
        self._notify()
        return lost

    def requeue_lost(self, owner: str) -> JobIds:
        again: JobIds = []
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id, status, spec FROM jobs WHERE owner = ? AND status IN {_ACTIVE_SQL}",
                (owner,),
            ).fetchall()
            for job_id, status, spec_json in rows:
                spec = json.loads(spec_json)
                if status == "running":  # it ran: again only once, with the flag
                    if not spec.get("retry_on_worker_loss"):
                        continue
                    spec["retry_on_worker_loss"] = False
                db.execute(
                    "UPDATE jobs SET status = 'queued', owner = NULL, started_at = NULL, "
                    "cancel = 0, process = NULL, spec = ? WHERE id = ?",
                    (json.dumps(spec), job_id),
                )
                db.execute("DELETE FROM output WHERE job_id = ?", (job_id,))
                again.append(job_id)
        for job_id in again:
            self._notify(job_id)
        return again

    def active_jobs(self, owner: str) -> _Jobs:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE owner = ? AND status IN {_ACTIVE_SQL} "
                "ORDER BY seq",
                (owner,),
            ).fetchall()
            return self._jobs(db, rows, output=False)

    def claim(self, job_id: str, owner: str) -> bool:
        with self._transaction() as db:
            claimed = db.execute(
                "UPDATE jobs SET owner = ? WHERE id = ? AND status = 'queued'", (owner, job_id)
            ).rowcount
        if not claimed:
            self._require(job_id)
        return bool(claimed)

    def record_process(self, job_id: str, tag: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET process = ? WHERE id = ? AND status = 'running'", (tag, job_id)
            )

    def close(self) -> None:
        self._closed = True
        self._notify()
        if self._pool is not None:
            self._pool.close()

    # -- helpers ------------------------------------------------------------------------

    def _require(self, job_id: str) -> None:
        with self._db() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(f"no job with id {job_id!r}")

    @staticmethod
    def _finish(db: sqlite3.Connection, where: str, params: Sequence[Any], outcome: Outcome) -> int:
        """Finish the active jobs matching ``where``; return how many changed.

        Those with a ``callback_url`` enter the callback outbox, due now, in the same
        statement (the schema's ``callbacks_on_finish`` trigger).
        """
        return int(
            db.execute(
                "UPDATE jobs SET status = ?, returncode = ?, error = ?, stdout_truncated = ?, "
                f"stderr_truncated = ?, finished_at = ? WHERE {where} "
                f"AND status IN {_ACTIVE_SQL}",
                (
                    outcome.status.value,
                    outcome.returncode,
                    outcome.error,
                    int(outcome.stdout_truncated),
                    int(outcome.stderr_truncated),
                    utcnow().timestamp(),
                    *params,
                ),
            ).rowcount
        )

    @staticmethod
    def _jobs(db: sqlite3.Connection, rows: Sequence[sqlite3.Row], *, output: bool = True) -> _Jobs:
        """Jobs for rows, with their output, read after the rows.

        A runner writes all output before it finishes a job, so a row read as finished
        comes with all of its output.
        """
        if not rows:
            return []
        if not output:
            return [job_from_record(dict(row)) for row in rows]
        ids = [row["id"] for row in rows]
        chunks: dict[tuple[str, int], list[bytes]] = {}
        marks = ", ".join("?" for _ in ids)
        for job_id, stream, data in db.execute(
            f"SELECT job_id, stream, data FROM output WHERE job_id IN ({marks}) "
            "ORDER BY job_id, idx",
            ids,
        ):
            chunks.setdefault((job_id, stream), []).append(data)
        return [
            job_from_record(
                dict(row),
                b"".join(chunks.get((row["id"], 0), ())),
                b"".join(chunks.get((row["id"], 1), ())),
            )
            for row in rows
        ]

    def _evict_on_read(self, db: sqlite3.Connection) -> None:
        """``_evict`` on the way to a read, which must not fail because a delete could
        not be written (a read-only moment, a full disk): the next write evicts."""
        try:
            self._evict(db)
        except sqlite3.OperationalError as exc:
            logger.debug("SQLite store %s: eviction put off: %s", self.path, exc)

    def _evict_due(self) -> bool:
        """Whether ``_evict`` has work to do now (it may find the time taken meanwhile)."""
        return time.monotonic() >= self._next_evict

    def _evict(self, db: sqlite3.Connection) -> None:
        """Expire finished jobs past ``ttl``, then trim to ``max_jobs``: once a second.

        Then, if a full disk took the reserve, make it again (when there is room).
        """
        now = time.monotonic()
        with self._lock:
            if now < self._next_evict:
                return
            self._next_evict = now + self.evict_interval
        self._reserve.refill(now)
        doomed: _Ids = []
        if self.ttl is not None:
            doomed += [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE finished_at < ?", (time.time() - self.ttl,)
                )
            ]
        expired = set(doomed)
        (count,) = db.execute("SELECT count(*) FROM jobs").fetchone()
        excess = count - len(doomed) - self.max_jobs
        if excess > 0:
            doomed += [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM jobs WHERE status NOT IN {_ACTIVE_SQL} ORDER BY seq LIMIT ?",
                    (excess + len(doomed),),
                )
                if row[0] not in expired
            ][:excess]
        db.execute("DELETE FROM launches WHERE at < ?", (time.time() - LAUNCHES_KEPT,))
        if not doomed:
            return
        own = not db.in_transaction  # else the caller's transaction commits it
        if own:
            db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(doomed), 500):
                batch = doomed[start : start + 500]
                marks = ", ".join("?" for _ in batch)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", batch)
                db.execute(f"DELETE FROM output WHERE job_id IN ({marks})", batch)
            if own:
                db.execute("COMMIT")
        except BaseException:
            if own and db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


def _insert_output(db: sqlite3.Connection, job_id: str, chunks: Sequence[Chunk]) -> None:
    """Write a job's chunks, in the caller's transaction."""
    db.executemany(
        # OR IGNORE: a chunk written again, after a write whose answer was lost
        "INSERT OR IGNORE INTO output (job_id, idx, stream, off, data) VALUES (?, ?, ?, ?, ?)",
        [(job_id, c.index, _STREAMS[c.stream], c.offset, c.data) for c in chunks],
    )
