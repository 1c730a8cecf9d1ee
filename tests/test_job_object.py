"""The job object of every JSON answer, field by field, as http-api.md's table gives it."""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import datetime, timedelta, timezone

import pytest

from procgate import JobStatus
from procgate.jobs import Job, Spec, as_text, format_time, job_to_json, new_job_id

STARTED = datetime(2026, 11, 24, 10, 58, 42, 471216, tzinfo=timezone.utc)


def job(**fields: object) -> Job:
    base = Job(id=new_job_id(), command="echo", args=("a",), spec=Spec(argv=("/bin/echo",)))
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.mark.docs("http-api.md#the-job-object")
def test_a_finished_job_has_every_field() -> None:
    """Every field, always, with RFC 3339 UTC times to the microsecond and the duration
    in seconds; the callback state is a copy, not the stored mapping."""
    callback = {"url": "http://h/x", "status": "delivered", "attempts": 1}
    done = job(
        status=JobStatus.FAILED,
        returncode=-9,
        stdout=b"out\n",
        stderr=b"err\n",
        stdout_truncated=True,
        error="killed by SIGKILL",
        created_at=STARTED - timedelta(seconds=1),
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=2, microseconds=500000),
        callback=callback,
    )
    rendered = job_to_json(done, "http://localhost/jobs/x")
    assert rendered == {
        "id": done.id,
        "url": "http://localhost/jobs/x",
        "command": "echo",
        "args": ["a"],
        "status": "failed",
        "returncode": -9,
        "stdout": "out\n",
        "stderr": "err\n",
        "stdout_truncated": True,
        "stderr_truncated": False,
        "encoding": "utf-8",
        "error": "killed by SIGKILL",
        "created_at": "2026-11-24T10:58:41.471216Z",
        "started_at": "2026-11-24T10:58:42.471216Z",
        "finished_at": "2026-11-24T10:58:44.971216Z",
        "duration": 2.5,
        "callback": callback,
    }
    assert rendered["callback"] is not callback


@pytest.mark.docs("http-api.md#the-job-object")
def test_a_queued_job_has_nulls_where_nothing_applies_yet() -> None:
    """Before the start: no returncode, start, finish, duration, error or callback."""
    rendered = job_to_json(job(command=None, args=()), "u")
    assert rendered["command"] is None
    assert rendered["args"] == []
    assert rendered["status"] == "queued"
    for name in ("returncode", "error", "started_at", "finished_at", "duration", "callback"):
        assert rendered[name] is None, name
    assert (rendered["stdout"], rendered["stderr"], rendered["encoding"]) == ("", "", "utf-8")
    assert (rendered["stdout_truncated"], rendered["stderr_truncated"]) == (False, False)


def test_times_are_utc_with_a_z_and_six_digits() -> None:
    """A time in another zone is written in UTC; whole seconds still get six digits."""
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 12, 1, 11, 0, 0, tzinfo=paris)) == (
        "2026-12-01T10:00:00.000000Z"
    )
    assert format_time(None) is None


def test_times_are_utc_whatever_the_server_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server whose local zone is not UTC still writes UTC times."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        moment = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)
        assert format_time(moment) == "2026-12-01T10:00:00.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_duration_runs_while_running_and_is_never_negative() -> None:
    """Running: seconds so far. A finish stamped before the start (a clock step) is 0."""
    running = job(status=JobStatus.RUNNING, started_at=datetime.now(timezone.utc))
    assert 0 <= job_to_json(running, "u")["duration"] < 60
    stepped = job(started_at=STARTED, finished_at=STARTED - timedelta(seconds=3))
    assert job_to_json(stepped, "u")["duration"] == 0.0


@pytest.mark.parametrize(
    ("stdout", "stderr", "encoding"),
    [
        (b"plain", b"", "utf-8"),
        ("caf\u00e9 \u2713".encode(), b"", "utf-8"),
        (b"\t\n\r" * 10, b"", "utf-8"),  # tab, newline, CR are not control characters here
        (b"\x1babc", b"", "utf-8"),  # exactly a quarter: still text
        (b"\x1b\x1babcdef", b"", "utf-8"),  # a quarter of 8
        (b"\x1b\x1b\x1babcde", b"", "base64"),  # more than a quarter
        (b"\x00\x00ab", b"", "base64"),
        (b"\xff\n", b"", "base64"),  # not UTF-8
        (b"text", b"\xff", "base64"),  # one binary stream: both are base64
    ],
    ids=["ascii", "utf8", "whitespace", "quarter", "quarter-of-8", "over", "nul", "ff", "mixed"],
)
@pytest.mark.docs("http-api.md#the-job-object")
def test_both_streams_share_one_encoding(stdout: bytes, stderr: bytes, encoding: str) -> None:
    """``utf-8`` when both streams are text (valid UTF-8, at most a quarter of the bytes
    control characters other than tab, newline and CR), else both base64."""
    rendered = job_to_json(job(stdout=stdout, stderr=stderr), "u")
    assert rendered["encoding"] == encoding
    if encoding == "utf-8":
        assert (rendered["stdout"], rendered["stderr"]) == (stdout.decode(), stderr.decode())
    else:
        assert base64.b64decode(rendered["stdout"], validate=True) == stdout
        assert base64.b64decode(rendered["stderr"], validate=True) == stderr
    assert (as_text(stdout) is not None and as_text(stderr) is not None) == (encoding == "utf-8")
