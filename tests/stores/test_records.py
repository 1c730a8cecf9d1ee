"""Every field of a job survives the stores: the flat record and each store, field by field.

A field dropped or misspelt on the way into a record comes back as its default, so each
field here is set to a value no default has.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from procgate import JobStatus, JobStore
from procgate.errors import InvalidRequest
from procgate.jobs import (
    MAX_CURSOR,
    Job,
    Outcome,
    Spec,
    job_from_record,
    job_to_record,
    new_job_id,
    parse_cursor,
)

CREATED = datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=timezone.utc)

SPEC = Spec(
    argv=("/bin/echo", "fixed"),
    env={"LANG": "C.UTF-8", "X": "1"},
    cwd="/srv/work",
    stdin=b"\x00\xffbytes",
    timeout=12.5,
    max_output=4096,
    kill_grace=0.75,
    stdin_path="/srv/work/in",
    files_dir="/srv/work/files",
    user="nobody",
    group="nogroup",
    queue="fast",
    retry_on_worker_loss=True,
)


def full_job(**changes: object) -> Job:
    """A job with every field set to something other than its default."""
    job = Job(
        id=new_job_id(),
        command="echo",
        args=("a", "b c"),
        spec=SPEC,
        status=JobStatus.FAILED,
        returncode=3,
        stdout_truncated=True,
        stderr_truncated=True,
        error="exit 3",
        created_at=CREATED,
        started_at=CREATED + timedelta(seconds=1),
        finished_at=CREATED + timedelta(seconds=2.5),
        owner="host:12:cafe",
        idempotency_key="key-1",
        link="http://localhost/jobs/x",
        callback_url="http://127.0.0.1:9/hook",
        callback_context={"ticket": [1, "two"]},
        callback={"url": "http://127.0.0.1:9/hook", "status": "pending", "attempts": 0},
        token_id="ci",
        client="10.0.0.7",
        process="boot:123:456",
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def as_redis_hash(record: dict[str, object]) -> dict[str, str]:
    """The record as Redis hands it back: every value a string, None as ""."""
    return {key: "" if value is None else str(value) for key, value in record.items()}


def test_every_field_survives_the_record() -> None:
    """job_from_record(job_to_record(job)) is the job, output given back separately, both
    from plain values (SQLite) and from strings (Redis)."""
    job = full_job()
    record = job_to_record(job)
    expected = dataclasses.replace(job, stdout=b"out", stderr=b"err")
    assert job_from_record(record, b"out", b"err") == expected
    assert job_from_record(as_redis_hash(record), b"out", b"err") == expected


def test_defaults_survive_the_record() -> None:
    """A job of defaults (no returncode, no times, no callback) comes back as it was."""
    job = Job(id=new_job_id(), command=None, args=(), spec=Spec(argv=("/bin/true",)))
    assert job_from_record(job_to_record(job)) == job
    assert job_from_record(as_redis_hash(job_to_record(job))) == job


def test_a_record_from_before_retry_on_worker_loss_reads_as_false() -> None:
    """Records written before the key existed (older files, older hashes) do not retry."""
    job = Job(id=new_job_id(), command=None, args=(), spec=Spec(argv=("/bin/true",)))
    record = job_to_record(job)
    spec = json.loads(str(record["spec"]))
    del spec["retry_on_worker_loss"]
    record["spec"] = json.dumps(spec)
    assert job_from_record(record).spec.retry_on_worker_loss is False


def test_finished_with_takes_every_field_of_the_outcome() -> None:
    """A finish records the outcome's status, returncode, error and both truncation flags."""
    job = full_job(status=JobStatus.RUNNING, returncode=None, error=None, finished_at=None)
    job = dataclasses.replace(job, stdout_truncated=False, stderr_truncated=False)
    done = job.finished_with(Outcome(JobStatus.TIMED_OUT, -15, "timed out", True, True))
    assert (done.status, done.returncode, done.error) == (JobStatus.TIMED_OUT, -15, "timed out")
    assert (done.stdout_truncated, done.stderr_truncated) == (True, True)
    assert done.finished_at is not None
    only_err = job.finished_with(Outcome(JobStatus.SUCCEEDED, 0, stderr_truncated=True))
    assert (only_err.stdout_truncated, only_err.stderr_truncated) == (False, True)


@pytest.mark.docs("python-api.md#records")
def test_every_field_survives_each_store(store: JobStore) -> None:
    """Created, started and finished through a store, a job reads back with its spec and
    every field it was given: the store keeps them all, not only what it queries."""
    job = full_job(
        status=JobStatus.QUEUED,
        returncode=None,
        error=None,
        stdout_truncated=False,
        stderr_truncated=False,
        started_at=None,
        finished_at=None,
        process=None,
    )
    store.create(job)
    got = store.get(job.id)
    assert got.spec == SPEC
    assert dataclasses.replace(got, created_at=job.created_at) == job
    assert abs((got.created_at - job.created_at).total_seconds()) < 0.001
    store.start(job.id, job.owner)
    store.finish(job.id, Outcome(JobStatus.FAILED, 3, "exit 3", True, True))
    done = store.get(job.id)
    assert (done.status, done.returncode, done.error) == (JobStatus.FAILED, 3, "exit 3")
    assert (done.stdout_truncated, done.stderr_truncated) == (True, True)
    assert done.spec == SPEC
    assert (done.callback_context, done.token_id, done.client) == (
        {"ticket": [1, "two"]},
        "ci",
        "10.0.0.7",
    )


@pytest.mark.docs("http-api.md#get-jobs")
def test_cursor_is_a_sequence_number_up_to_2_63_minus_1() -> None:
    """The largest cursor SQLite can hold is accepted; one more, a sign, non-ASCII digits
    or anything else is invalid_cursor (400), naming the cursor."""
    assert parse_cursor(None) is None
    assert parse_cursor("0") == 0
    assert parse_cursor(str(MAX_CURSOR)) == MAX_CURSOR
    assert MAX_CURSOR == 2**63 - 1
    for bad in (str(MAX_CURSOR + 1), "-1", "+1", "1.0", "", "٣", "abc"):
        with pytest.raises(InvalidRequest) as info:
            parse_cursor(bad)
        assert (info.value.code, info.value.status) == ("invalid_cursor", 400)
        assert repr(bad) in info.value.message
