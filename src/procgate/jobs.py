"""Job records, their statuses, and the one function that renders a job as JSON."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    """Where a job is in its life; the value is the word clients see in JSON."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"

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
    pid: int | None = None

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


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``JobStore.list``: newest first, and the cursor of the next page."""

    jobs: list[Job]
    next: str | None


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
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_to_json(job: Job, url: str) -> dict[str, Any]:
    """Render every field, always: clients never have to test for a missing key.

    Both streams share one ``encoding``: ``utf-8`` when both decode, otherwise both are
    base64, so a client decodes them the same way.
    """
    try:
        stdout, stderr = job.stdout.decode("utf-8"), job.stderr.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
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
    }
