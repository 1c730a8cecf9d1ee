"""RedisStore: jobs in Redis, shared by every process on every host (``procgate[redis]``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from procgate.errors import ConfigError, JobNotFound, StoreUnavailable
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
)
from procgate.stores import _redis_scripts as scripts
from procgate.stores._faults import translate_faults

try:
    import redis
except ImportError:  # pragma: no cover - depends on the installed extras
    redis = None  # type: ignore[assignment]  # checked in RedisStore.__init__

#: Separates the owner and the command in the values of the active-jobs hash.
_SEP = "\x1f"

# The class defines a method named ``list``; these keep the builtin usable in annotations.
_Jobs = list[Job]
_Values = list[Any]

#: Heartbeats older than this (seconds) are forgotten: their owners are long gone.
FORGET_OWNERS_AFTER = 86400.0

#: Jobs read per round trip while a filtered list looks for matches.
LIST_BATCH = 200

#: Error replies that mean the server cannot take writes now, not a bug of ours: out of
#: memory under ``maxmemory``, a failed background save, a read-only replica, a replica
#: still loading or cut off from its master. redis-py raises most as classes of their own
#: (below), without the code; the rest as ResponseError with it, after "caused error: "
#: when the command was part of a pipeline.
_UNAVAILABLE_REPLIES = ("OOM ", "MISCONF ", "READONLY ", "LOADING ", "MASTERDOWN ")


def _fault(exc: BaseException) -> str | None:
    """Why Redis is unavailable, if ``exc`` says it is (see ``translate_faults``)."""
    if redis is None:  # pragma: no cover - RedisStore refuses to exist without redis-py
        return None
    unavailable = (
        redis.ConnectionError,  # BusyLoadingError (LOADING) among them
        redis.TimeoutError,
        redis.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.MasterDownError,
        OSError,
    )
    if isinstance(exc, unavailable):
        return f"{type(exc).__name__}: {exc}"
    reply = str(exc).rpartition("caused error: ")[2]
    if isinstance(exc, redis.ResponseError) and reply.startswith(_UNAVAILABLE_REPLIES):
        return str(exc)
    return None


@translate_faults("Redis", _fault)
class RedisStore:
    """Jobs in Redis: for several API processes and hosts sharing one job table.

    Every key starts with ``prefix``, so several deployments can share a database. Each
    state change is one Lua script, atomic on the server; ``wait`` blocks on a per-job
    stream instead of polling. Output is appended to one string per stream. Retention as
    in the other stores (``max_jobs``, ``ttl``), applied at most every
    ``evict_interval`` seconds by each store object.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "procgate:",
        max_jobs: int = 10_000,
        ttl: float | None = None,
        evict_interval: float = 1.0,  # seconds between retention passes
        client: Any = None,  # a ready redis.Redis, instead of connecting to ``url``
    ) -> None:
        if redis is None:
            raise ConfigError("RedisStore needs redis-py: pip install 'procgate[redis]'")
        if not isinstance(max_jobs, int) or max_jobs < 1:
            raise ConfigError("max_jobs must be at least 1")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
            raise ConfigError("ttl must be a positive number of seconds")
        self.prefix = prefix
        self.max_jobs = max_jobs
        self.ttl = ttl
        self.evict_interval = evict_interval
        try:
            self.redis: Any = client if client is not None else redis.Redis.from_url(url)
            self.redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise ConfigError(f"cannot use Redis store {url!r}: {exc}") from None
        self._create = self.redis.register_script(scripts.CREATE_SCRIPT)
        self._start = self.redis.register_script(scripts.START_SCRIPT)
        self._requeue = self.redis.register_script(scripts.REQUEUE_SCRIPT)
        self._finish = self.redis.register_script(scripts.FINISH_SCRIPT)
        self._cancel = self.redis.register_script(scripts.CANCEL_SCRIPT)
        self._delete = self.redis.register_script(scripts.DELETE_SCRIPT)
        self._release_key = self.redis.register_script(scripts.RELEASE_KEY_SCRIPT)
        self._claim_callbacks = self.redis.register_script(scripts.CLAIM_CALLBACKS_SCRIPT)
        self._set_callback = self.redis.register_script(scripts.SET_CALLBACK_SCRIPT)
        self._claim = self.redis.register_script(scripts.CLAIM_SCRIPT)
        self._record_process = self.redis.register_script(scripts.RECORD_PROCESS_SCRIPT)
        self._lock = threading.Lock()
        self._next_evict = 0.0
        self._closed = False
        # The longest one blocking read may take: half the client's socket timeout.
        socket_timeout = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_limit: float | None = (
            max(0.005, float(socket_timeout) / 2) if socket_timeout else None
        )

    # -- keys ---------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    def _finish_keys(self, job_id: str) -> list[str]:
        return [
            self._job_key(job_id),
            self._key("active"),
            self._key("done"),
            self._key("finished"),
            self._key("end", job_id),
            self._key("callbacks"),
        ]

    # -- the JobStore protocol ----------------------------------------------------------

    def create(self, job: Job) -> Job:
        record = job_to_record(job)
        scope = job.idempotency_scope
        if scope is not None:
            record["scope"] = scope
        fields: list[Any] = []
        for name, value in record.items():
            if value is not None:
                fields += [name, value]
        stored = self._create(
            keys=[
                self._job_key(job.id),
                self._key("jobs"),
                self._key("active"),
                self._key("seq"),
                self._key("idem", scope) if scope is not None else "",
                self._key("created"),
                self._key("created", job.command or ""),
            ],
            args=[
                job.id,
                f"{job.owner or ''}{_SEP}{job.command or ''}",
                self._key("job", ""),
                record["created_at"],
                *fields,
            ],
        )
        stored_id = stored.decode() if isinstance(stored, bytes) else str(stored)
        if stored_id != job.id:
            return self.get(stored_id)
        self._evict()
        return job

    def get(self, job_id: str, *, output: bool = True) -> Job:
        self._evict()
        jobs = self._read([job_id], output=output)
        if not jobs:
            raise JobNotFound(f"no job with id {job_id!r}")
        return jobs[0]

    def list(
        self,
        *,
        status: JobStatus | None = None,
        command: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        token: str | None = None,
    ) -> JobPage:
        self._evict()
        before = parse_cursor(cursor)
        upper = f"({before}" if before is not None else "+inf"
        found: list[tuple[str, int]] = []
        while len(found) <= limit:
            batch = self.redis.zrevrangebyscore(
                self._key("jobs"), upper, "-inf", start=0, num=LIST_BATCH, withscores=True
            )
            if not batch:
                break
            ids = [member.decode() for member, _ in batch]
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self._job_key(job_id), "status", "command", "token_id")
                heads = pipe.execute()
            for (job_id, (_, seq)), (job_status, job_command, job_token) in zip(
                zip(ids, batch, strict=True), heads, strict=True
            ):
                if job_status is None:  # deleted between the two reads
                    continue
                if status is not None and job_status.decode() != status.value:
                    continue
                if command is not None and (job_command or b"").decode() != command:
                    continue
                if token is not None and (job_token or b"").decode() != token:
                    continue
                found.append((job_id, int(seq)))
            upper = f"({int(batch[-1][1])}"
        more = len(found) > limit
        found = found[:limit]
        jobs = self._read([job_id for job_id, _ in found])
        return JobPage(jobs, str(found[-1][1]) if more else None)

    def start(self, job_id: str, owner: str | None = None) -> Job | None:
        fields = self._start(
            keys=[self._job_key(job_id), self._key("active")],
            args=[time.time(), job_id, owner or ""],
        )
        if not fields:
            self._require(job_id)
            return None
        # The script answers with the started job: one round trip. No output yet.
        names, values = fields[0::2], fields[1::2]
        return job_from_record(
            {name.decode(): value.decode() for name, value in zip(names, values, strict=True)}
        )

    def append_output(self, job_id: str, chunk: Chunk) -> None:
        # Explicit entry ids ``<index>-1``: a reader resumes after any chunk by its index.
        try:
            self.redis.xadd(
                self._key("out", job_id),
                {"s": chunk.stream, "o": chunk.offset, "d": chunk.data},
                id=f"{chunk.index}-1",
            )
        except redis.ResponseError as exc:
            if "equal or smaller" not in str(exc):
                raise
            # written already: a write again after one whose answer was lost

    def read_output(self, job_id: str, after: int = 0) -> Chunks:
        entries = self.redis.xrange(self._key("out", job_id), f"{after + 1}-0", "+")
        if not entries:
            self._require(job_id)
        return [_chunk(entry_id, fields) for entry_id, fields in entries]

    def wait_output(self, job_id: str, after: int, timeout: float) -> None:
        """Block on the job's output and end streams: no polling."""
        head = self.redis.hget(self._job_key(job_id), "status")
        if head is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        if JobStatus(head.decode()).finished or timeout <= 0 or self._closed:
            return
        self._block(
            {self._key("out", job_id): f"{after}-1", self._key("end", job_id): "0-0"}, timeout
        )

    def claim_callbacks(self, now: float, lease: float, limit: int) -> _Jobs:
        claimed = self._claim_callbacks(
            keys=[self._key("callbacks")], args=[now, now + lease, limit, self._key("job", "")]
        )
        return self._read([job_id.decode() for job_id in claimed])

    def set_callback(
        self,
        job_id: str,
        state: Mapping[str, Any],
        *,
        attempt: int,
        retry_at: float | None = None,
    ) -> bool:
        return bool(
            self._set_callback(
                keys=[self._job_key(job_id), self._key("callbacks")],
                args=[
                    job_id,
                    json.dumps(dict(state)),
                    attempt,
                    "" if retry_at is None else retry_at,
                ],
            )
        )

    def finish(self, job_id: str, outcome: Outcome, output: Sequence[Chunk] = ()) -> bool:
        for chunk in output:  # before the finish: a reader that sees it sees them
            self.append_output(job_id, chunk)
        if not self._finish_job(job_id, outcome):
            self._require(job_id)
            return False
        self._evict()
        return True

    def find_key(self, scope: str) -> Job | None:
        held = self.redis.get(self._key("idem", scope))
        if held is None:
            return None
        jobs = self._read([held.decode()], output=False)
        return jobs[0] if jobs else None

    def release_key(self, job_id: str) -> bool:
        if self._release_key(keys=[self._job_key(job_id)], args=[job_id, self._key("idem", "")]):
            return True
        self._require(job_id)
        return False

    def cancel(self, job_id: str) -> Job:
        self._cancel(
            keys=self._finish_keys(job_id),
            args=self._finish_args(
                job_id, Outcome(JobStatus.CANCELLED, error="cancelled before it started")
            ),
        )
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.hget(self._job_key(job_id), "cancel") == b"1")

    def delete(self, job_id: str) -> bool:
        if self._remove(job_id):
            return True
        self._require(job_id)
        return False

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block on the job's end stream: the finishing script writes to it."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while not job.status.finished and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._block({self._key("end", job_id): "0-0"}, remaining):
                return job  # closed under us: answer as we can
            try:
                job = self.get(job_id)
            except StoreUnavailable:
                if self._closed:  # closed between the block and the read
                    return job
                raise
        return job

    def _block(self, streams: Mapping[str, str], timeout: float) -> bool:
        """XREAD ``streams`` until an entry arrives or ``timeout`` seconds pass.

        One blocking call may not outlast the client's ``socket_timeout`` (a URL option,
        ``?socket_timeout=5``): redis-py would take the silence for a dead server. So the
        wait is cut into blocks shorter than it. False when ``close`` interrupted it.
        """
        deadline = time.monotonic() + timeout
        while not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            step = remaining if self._block_limit is None else min(remaining, self._block_limit)
            try:
                # BLOCK 0 would mean forever: never ask for less than a millisecond.
                if self.redis.xread(streams, count=1, block=max(1, int(step * 1000))):
                    return True
            except (redis.RedisError, OSError, ValueError):
                if self._closed:  # close() cut the connection under us
                    return False
                raise
        return False

    def heartbeat(self, owner: str) -> None:
        now = time.time()
        self.redis.hset(self._key("owners"), owner, now)
        stale = [
            name
            for name, beat in self.redis.hgetall(self._key("owners")).items()
            if float(beat) < now - FORGET_OWNERS_AFTER
        ]
        if stale:
            self.redis.hdel(self._key("owners"), *stale)

    def heartbeats(self) -> dict[str, float]:
        beats = self.redis.hgetall(self._key("owners"))
        return {owner.decode(): float(beat) for owner, beat in beats.items()}

    def active_owners(self) -> set[str]:
        entries = self.redis.hvals(self._key("active"))
        return {owner for owner, _ in map(_active_entry, entries) if owner}

    def count(
        self, *, command: str | None = None, active: bool = False, since: float | None = None
    ) -> int:
        if active:  # (creation counts, for rate limits, come from the created zsets)
            entries = self.redis.hgetall(self._key("active"))
            ids = [
                job_id
                for job_id, entry in entries.items()
                if command is None or _active_entry(entry)[1] == command
            ]
            if since is None:
                return len(ids)
            key = self._key("created") if command is None else self._key("created", command)
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.zscore(key, job_id)
                scores = pipe.execute()
            return sum(1 for score in scores if score is not None and score >= since)
        if since is not None:  # creations, deleted jobs included: what rate limits count
            key = self._key("created") if command is None else self._key("created", command)
            return int(self.redis.zcount(key, since, "+inf"))
        if command is None:
            return int(self.redis.zcard(self._key("jobs")))
        ids = self.redis.zrange(self._key("jobs"), 0, -1)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._job_key(job_id.decode()), "command")
            commands = pipe.execute()
        return sum(1 for name in commands if name is not None and name.decode() == command)

    def mark_lost(self, owner: str, error: str) -> int:
        active = self.redis.hgetall(self._key("active"))
        lost = 0
        for job_id, entry in active.items():
            if _active_entry(entry)[0] == owner and self._finish_job(
                job_id.decode(), Outcome(JobStatus.LOST, error=error)
            ):
                lost += 1
        self.redis.hdel(self._key("owners"), owner)
        return lost

    def requeue_lost(self, owner: str) -> JobIds:
        again: JobIds = []
        for raw_id, entry in self.redis.hgetall(self._key("active")).items():
            job_id = raw_id.decode()
            if _active_entry(entry)[0] != owner:
                continue
            status, spec_json = self.redis.hmget(self._job_key(job_id), "status", "spec")
            spec = json.loads(spec_json) if spec_json is not None else {}
            if status == b"running":  # it ran: again only once, with the flag
                if not spec.get("retry_on_worker_loss"):
                    continue
                spec["retry_on_worker_loss"] = False
            if self._requeue(
                keys=[self._job_key(job_id), self._key("active"), self._key("out", job_id)],
                args=[job_id, owner, json.dumps(spec)],
            ):
                again.append(job_id)
        return again

    def active_jobs(self, owner: str) -> _Jobs:
        active = self.redis.hgetall(self._key("active"))
        ids = [key.decode() for key, entry in active.items() if _active_entry(entry)[0] == owner]
        return [job for job in self._read(ids, output=False) if not job.status.finished]

    def claim(self, job_id: str, owner: str) -> bool:
        if self._claim(keys=[self._job_key(job_id), self._key("active")], args=[job_id, owner]):
            return True
        self._require(job_id)
        return False

    def record_process(self, job_id: str, tag: str) -> None:
        self._record_process(keys=[self._job_key(job_id)], args=[tag])

    def close(self) -> None:
        self._closed = True
        self.redis.close()

    # -- helpers ------------------------------------------------------------------------

    def _read(self, ids: Iterable[str], *, output: bool = True) -> _Jobs:
        """Jobs with their output, each read atomically; absent ids are skipped."""
        ids = list(ids)
        with self.redis.pipeline(transaction=True) as pipe:
            for job_id in ids:
                pipe.hgetall(self._job_key(job_id))
                if output:
                    pipe.xrange(self._key("out", job_id), "-", "+")
            replies = pipe.execute()
        step = 2 if output else 1
        jobs = []
        for index in range(0, len(replies), step):
            fields = replies[index]
            if not fields:
                continue
            record = {key.decode(): value.decode() for key, value in fields.items()}
            streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
            for entry_id, entry in replies[index + 1] if output else ():
                chunk = _chunk(entry_id, entry)
                streams[chunk.stream].append(chunk.data)
            jobs.append(
                job_from_record(record, b"".join(streams["stdout"]), b"".join(streams["stderr"]))
            )
        return jobs

    def _require(self, job_id: str) -> None:
        if not self.redis.exists(self._job_key(job_id)):
            raise JobNotFound(f"no job with id {job_id!r}")

    def _finish_args(self, job_id: str, outcome: Outcome) -> _Values:
        return [
            job_id,
            outcome.status.value,
            "" if outcome.returncode is None else outcome.returncode,
            outcome.error or "",
            int(outcome.stdout_truncated),
            int(outcome.stderr_truncated),
            time.time(),
        ]

    def _finish_job(self, job_id: str, outcome: Outcome) -> bool:
        return bool(
            self._finish(
                keys=self._finish_keys(job_id),
                args=[*self._finish_args(job_id, outcome), "active"],
            )
        )

    def _remove(self, job_id: str, client: Any = None) -> bool:
        """Run the delete script; with a pipeline as ``client``, only queue it."""
        return bool(
            self._delete(
                keys=[
                    self._job_key(job_id),
                    self._key("jobs"),
                    self._key("done"),
                    self._key("finished"),
                    self._key("out", job_id),
                    self._key("end", job_id),
                ],
                args=[
                    job_id,
                    self._key("idem", ""),
                    self._key("created"),
                    self._key("created", ""),
                ],
                client=client,
            )
        )

    def _remove_many(self, ids: Iterable[bytes]) -> None:
        """Delete finished jobs in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                self._remove(job_id.decode(), client=pipe)
            pipe.execute()

    def _evict(self) -> None:
        """Expire finished jobs past ``ttl``, then trim to ``max_jobs``."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_evict:
                return
            self._next_evict = now + self.evict_interval
        if self.ttl is not None:
            expired = self.redis.zrangebyscore(
                self._key("finished"), "-inf", time.time() - self.ttl
            )
            self._remove_many(expired)
        excess = self.redis.zcard(self._key("jobs")) - self.max_jobs
        if excess > 0:
            self._remove_many(self.redis.zrange(self._key("done"), 0, excess - 1))


def _active_entry(entry: bytes) -> tuple[str, str]:
    """(owner, command) of an entry of the active hash."""
    owner, _, command = entry.decode().partition(_SEP)
    return owner, command


def _chunk(entry_id: bytes, fields: Mapping[bytes, bytes]) -> Chunk:
    return Chunk(
        index=int(entry_id.split(b"-")[0]),
        stream=fields[b"s"].decode(),
        offset=int(fields[b"o"]),
        data=fields[b"d"],
    )
