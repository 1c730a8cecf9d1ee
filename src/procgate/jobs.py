"""Job records, their statuses, and the one function that renders a job as JSON."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from procgate.errors import InvalidRequest


class JobStatus(str, Enum):
    """Where a job is in its life; the value is the word clients see in JSON."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"
    LOST = "lost"  # its runner died (killed server, dead worker) before it finished

    @property
    def finished(self) -> bool:
        """A finished job never changes status again."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


#: Statuses from which a job may still change.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class Spec:
    """Everything needed to start the process, so a job id is all that crosses a boundary.

    ``argv[0]`` is an absolute path resolved when the command was registered. ``timeout``
    and ``kill_grace`` are seconds; ``max_output`` is bytes kept per stream.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes = b""
    timeout: float | None = None
    max_output: int = 10 << 20
    kill_grace: float = 5.0
    stdin_path: str | None = None  # a file to read stdin from, instead of ``stdin``
    files_dir: str | None = None  # the job's private upload directory, removed at the end
    user: str | None = None  # run as this user (the server must be root)
    group: str | None = None
    queue: str | None = None  # where a distributed runner sends it (None: its default)
    retry_on_worker_loss: bool = False  # re-run once if its runner dies while it runs


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the store holds it; change it with ``dataclasses.replace``."""

    id: str
    command: str | None
    args: tuple[str, ...]
    spec: Spec
    status: JobStatus = JobStatus.QUEUED
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: utcnow())
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None  # the runner that took the job (see runners.liveness)
    idempotency_key: str | None = None
    link: str | None = None  # the job's URL as its submitter saw it (for callbacks)
    callback_url: str | None = None
    callback_context: Any = None  # any JSON value, POSTed back with the job
    callback: Mapping[str, Any] | None = None  # delivery state (procgate.callbacks.Delivery)
    token_id: str | None = None  # the id of the bearer token that created it
    client: str | None = None  # the client address it came from
    process: str | None = None  # the running child's ``process.process_tag``, internal

    @property
    def idempotency_scope(self) -> str | None:
        """What must be unique among stored jobs: the key, per caller and per command.

        The caller is the token that sent the job, or without one its client address: one
        caller's key never answers another caller's request. ``/run`` jobs (command None)
        have a key space of their own per caller. JSON keeps the parts apart whatever
        characters they hold, and never equals the older ``command + "\\n" + key`` form.
        """
        if self.idempotency_key is None:
            return None
        caller = ["token", self.token_id] if self.token_id is not None else ["client", self.client]
        return json.dumps([*caller, self.command, self.idempotency_key], separators=(",", ":"))

    def finished_with(self, outcome: Outcome) -> Job:
        """This job as ``outcome`` finishes it, now."""
        return replace(
            self,
            status=outcome.status,
            returncode=outcome.returncode,
            error=outcome.error,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            finished_at=utcnow(),
        )

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or so far while running; None before it starts."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else utcnow()
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a process ended: the fields ``process.execute`` hands the store at the finish."""

    status: JobStatus
    returncode: int | None = None
    error: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


#: Job ids (an alias the stores use: they have a method named ``list``).
JobIds = list[str]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of output as it was read, numbered in arrival order across both streams.

    ``index`` counts from 1 per job; ``offset`` is where ``data`` starts in its stream.
    The index orders stdout and stderr against each other (SSE event ids); the offset
    serves byte-offset polling.
    """

    index: int
    stream: str
    offset: int
    data: bytes


#: What ``read_output`` returns. (Stores have a method named ``list``, which hides the
#: builtin in their class bodies' annotations.)
Chunks = list[Chunk]


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``JobStore.list``: newest first, and the cursor of the next page."""

    jobs: list[Job]
    next: str | None


#: Cursors are sequence numbers below this (SQLite's INTEGER is 64-bit).
MAX_CURSOR = 2**63 - 1


def parse_cursor(cursor: str | None) -> int | None:
    """A ``list`` cursor as its sequence number; ``InvalidRequest`` for anything else."""
    if cursor is None:
        return None
    if not cursor.isdigit() or not cursor.isascii() or int(cursor) > MAX_CURSOR:
        raise InvalidRequest(f"invalid cursor {cursor!r}", code="invalid_cursor")
    return int(cursor)


def new_job_id() -> str:
    """A random, unguessable id: 32 hex digits."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, microsecond precision."""
    if moment is None:
        return None
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    # isoformat is several times faster than strftime, and three of these go in each job
    return f"{moment.replace(tzinfo=None).isoformat(timespec='microseconds')}Z"


#: Bytes JSON escapes as ``\\u00XX``: the C0 controls but tab, newline and carriage return.
_CONTROLS = bytes(c for c in range(0x20) if c not in b"\t\n\r")


def as_text(data: bytes) -> str | None:
    """``data`` decoded, if it is UTF-8 and text: at most a quarter control characters.

    JSON writes a control character as ``\\u00XX``, six bytes for one; base64 costs a
    third more than the bytes. So NUL padding, or binary that happens to decode, goes out
    as base64, while text with colours (ESC) or the odd form feed stays readable.
    """
    controls = len(data) - len(data.translate(None, _CONTROLS))
    if 4 * controls > len(data):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def job_to_json(job: Job, url: str) -> dict[str, Any]:
    """Render every field, always: clients never have to test for a missing key.

    Both streams share one ``encoding``, so a client decodes them the same way: ``utf-8``
    when both are text (see ``as_text``), otherwise both are base64.
    """
    stdout, stderr = as_text(job.stdout), as_text(job.stderr)
    encoding = "utf-8"
    if stdout is None or stderr is None:
        stdout = base64.b64encode(job.stdout).decode("ascii")
        stderr = base64.b64encode(job.stderr).decode("ascii")
        encoding = "base64"
    return {
        "id": job.id,
        "url": url,
        "command": job.command,
        "args": list(job.args),
        "status": job.status.value,
        "returncode": job.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": job.stdout_truncated,
        "stderr_truncated": job.stderr_truncated,
        "encoding": encoding,
        "error": job.error,
        "created_at": format_time(job.created_at),
        "started_at": format_time(job.started_at),
        "finished_at": format_time(job.finished_at),
        "duration": job.duration,
        "callback": dict(job.callback) if job.callback is not None else None,
    }


def job_to_record(job: Job) -> dict[str, Any]:
    """The job without its output as flat, storable values: what SQLite and Redis keep.

    Times are Unix seconds; ``args`` and ``spec`` are JSON (stdin as base64); booleans are
    0/1; absent values are None.
    """
    spec = job.spec
    return {
        "id": job.id,
        "command": job.command,
        "args": json.dumps(list(job.args)),
        "spec": json.dumps(
            {
                "argv": list(spec.argv),
                "env": dict(spec.env),
                "cwd": spec.cwd,
                "stdin": base64.b64encode(spec.stdin).decode("ascii"),
                "timeout": spec.timeout,
                "max_output": spec.max_output,
                "kill_grace": spec.kill_grace,
                "stdin_path": spec.stdin_path,
                "files_dir": spec.files_dir,
                "user": spec.user,
                "group": spec.group,
                "queue": spec.queue,
                "retry_on_worker_loss": spec.retry_on_worker_loss,
            }
        ),
        "status": job.status.value,
        "returncode": job.returncode,
        "error": job.error,
        "stdout_truncated": int(job.stdout_truncated),
        "stderr_truncated": int(job.stderr_truncated),
        "created_at": _timestamp(job.created_at),
        "started_at": _timestamp(job.started_at),
        "finished_at": _timestamp(job.finished_at),
        "owner": job.owner,
        "idempotency_key": job.idempotency_key,
        "link": job.link,
        "callback_url": job.callback_url,
        "callback_context": (
            json.dumps(job.callback_context) if job.callback_context is not None else None
        ),
        "callback": json.dumps(job.callback) if job.callback is not None else None,
        "token_id": job.token_id,
        "client": job.client,
        "process": job.process,
    }


def job_from_record(record: Mapping[str, Any], stdout: bytes = b"", stderr: bytes = b"") -> Job:
    """The inverse of ``job_to_record``; values may come back as strings (Redis)."""
    spec = json.loads(record["spec"])
    returncode = record.get("returncode")
    return Job(
        id=str(record["id"]),
        command=_optional_str(record.get("command")),
        args=tuple(json.loads(record["args"])),
        spec=Spec(
            argv=tuple(spec["argv"]),
            env=spec["env"],
            cwd=spec["cwd"],
            stdin=base64.b64decode(spec["stdin"]),
            timeout=spec["timeout"],
            max_output=spec["max_output"],
            kill_grace=spec["kill_grace"],
            stdin_path=spec.get("stdin_path"),
            files_dir=spec.get("files_dir"),
            user=spec.get("user"),
            group=spec.get("group"),
            queue=spec.get("queue"),
            retry_on_worker_loss=bool(spec.get("retry_on_worker_loss", False)),
        ),
        status=JobStatus(record["status"]),
        returncode=int(returncode) if returncode not in (None, "") else None,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=bool(int(record.get("stdout_truncated") or 0)),
        stderr_truncated=bool(int(record.get("stderr_truncated") or 0)),
        error=_optional_str(record.get("error")),
        created_at=_datetime(record["created_at"]) or utcnow(),
        started_at=_datetime(record.get("started_at")),
        finished_at=_datetime(record.get("finished_at")),
        owner=_optional_str(record.get("owner")),
        idempotency_key=_optional_str(record.get("idempotency_key")),
        link=_optional_str(record.get("link")),
        callback_url=_optional_str(record.get("callback_url")),
        callback_context=_optional_json(record.get("callback_context")),
        callback=_optional_json(record.get("callback")),
        token_id=_optional_str(record.get("token_id")),
        client=_optional_str(record.get("client")),
        process=_optional_str(record.get("process")),
    )


def _timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(float(value), timezone.utc)


def _optional_json(value: Any) -> Any:
    return None if value is None or value == "" else json.loads(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
