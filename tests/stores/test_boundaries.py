"""The edges of the store contract, on every store: page sizes and cursors, the exact
moment a rate window or a retry begins, and what a cancel before the start records."""

from __future__ import annotations

import dataclasses
import time

import pytest
import time_machine

from procgate import JobStatus, JobStore, MemoryStore
from procgate.errors import ConfigError
from procgate.jobs import Chunk, Outcome
from tests.stores.test_contract import MakeStore, new_job


@pytest.mark.docs("http-api.md#get-jobs")
def test_list_pages_hold_100_by_default_and_the_last_has_no_cursor(store: JobStore) -> None:
    """Without ``limit`` a page holds 100 jobs, newest first, and a ``next`` cursor when
    more are left; the page that holds the last job has none, also when it is exactly
    full."""
    ids = [store.create(new_job()).id for _ in range(101)]
    first = store.list()
    assert [job.id for job in first.jobs] == ids[:0:-1]  # the 100 newest
    assert first.next is not None
    rest = store.list(cursor=first.next)
    assert [job.id for job in rest.jobs] == [ids[0]]
    assert rest.next is None
    exact = store.list(limit=101)
    assert len(exact.jobs) == 101
    assert exact.next is None


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_count_since_includes_a_job_created_at_that_very_moment(
    store: JobStore, time_machine: time_machine.TimeMachineFixture
) -> None:
    """``count(since=t)`` counts the jobs created at ``t`` or later, on a stopped clock:
    the one created at ``t`` counts, the one a second before does not."""
    start = time.time()
    time_machine.move_to(start, tick=False)
    store.create(new_job())
    time_machine.shift(1)
    moment = store.create(new_job()).created_at.timestamp()
    assert store.count(since=moment) == 1
    assert store.count(since=moment - 1) == 2
    assert store.count(since=moment + 0.001) == 0


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_a_callback_record_without_counters_is_claimed_as_its_first_attempt(
    store: JobStore,
) -> None:
    """A callback record with no ``attempts`` (as an older procgate wrote it) is due once
    its job finishes, and the claim counts it as attempt 1."""
    url = "http://127.0.0.1:9/hook"
    job = store.create(
        dataclasses.replace(new_job(), callback_url=url, callback={"url": url, "status": "pending"})
    )
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    [claimed] = store.claim_callbacks(time.time(), 30, 10)
    assert claimed.id == job.id
    assert (claimed.callback or {})["attempts"] == 1
    assert (store.get(job.id).callback or {})["attempts"] == 1


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_a_callback_is_due_at_its_retry_time_not_before(store: JobStore) -> None:
    """After a failed attempt recorded with ``retry_at``, a claim at ``retry_at`` takes the
    callback; one a millisecond earlier does not. The claim counts the attempt."""
    job = new_job()
    url = "http://127.0.0.1:9/hook"
    pending = {"url": url, "status": "pending", "attempts": 0, "last_status": None}
    job = store.create(dataclasses.replace(job, callback_url=url, callback=pending))
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    now = time.time()
    [claimed] = store.claim_callbacks(now, 30, 10)
    assert (claimed.callback or {})["attempts"] == 1
    retry_at = now + 100
    failed = {**pending, "attempts": 1, "last_status": 500, "last_error": "HTTP 500"}
    assert store.set_callback(job.id, failed, attempt=1, retry_at=retry_at) is True
    assert store.claim_callbacks(retry_at - 0.001, 30, 10) == []
    [again] = store.claim_callbacks(retry_at, 30, 10)
    assert again.id == job.id
    assert (again.callback or {})["attempts"] == 2


@pytest.mark.docs("http-api.md#the-job-object")
def test_a_job_cancelled_while_queued_says_so(store: JobStore) -> None:
    """Cancelling a queued job finishes it at once: cancelled, no returncode, never
    started, with the error "cancelled before it started"; it cannot start after."""
    job = store.create(new_job())
    store.cancel(job.id)
    cancelled = store.get(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error == "cancelled before it started"
    assert (cancelled.returncode, cancelled.started_at) == (None, None)
    assert cancelled.finished_at is not None
    assert store.start(job.id) is None


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_count_of_active_jobs_since_includes_that_very_moment(
    store: JobStore, time_machine: time_machine.TimeMachineFixture
) -> None:
    """``count(active=True, since=t)`` (the queue check) counts active jobs created at
    ``t`` or later, on a stopped clock."""
    time_machine.move_to(time.time(), tick=False)
    store.create(new_job())
    time_machine.shift(1)
    moment = store.create(new_job()).created_at.timestamp()
    assert store.count(active=True, since=moment) == 1
    assert store.count(active=True, since=moment - 1) == 2


@pytest.mark.docs("http-api.md#get-jobs")
def test_list_filters_skip_newer_jobs_that_do_not_match(store: JobStore) -> None:
    """A filter passes over every newer job it does not match, not just the first."""
    done = store.create(new_job(command="build"))
    store.start(done.id)
    store.finish(done.id, Outcome(JobStatus.SUCCEEDED, 0))
    older_tokened = store.create(dataclasses.replace(new_job(command="build"), token_id="ci"))
    store.create(new_job(command="echo"))
    store.create(new_job(command="echo"))
    assert [j.id for j in store.list(status=JobStatus.SUCCEEDED).jobs] == [done.id]
    assert [j.id for j in store.list(command="build").jobs] == [older_tokened.id, done.id]
    assert [j.id for j in store.list(token="ci").jobs] == [older_tokened.id]


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_set_callback_of_a_job_without_one_does_nothing(store: JobStore) -> None:
    """A job that has no callback records no callback result: False, nothing stored."""
    job = store.create(new_job())
    state = {"url": "http://127.0.0.1:9/", "status": "delivered", "attempts": 1}
    assert store.set_callback(job.id, state, attempt=1) is False
    assert store.get(job.id).callback is None
    assert store.set_callback("no-such-job", state, attempt=1) is False


@pytest.mark.docs("stores.md#retention")
def test_retention_drops_every_finished_job_over_max_jobs_at_once(make_store: MakeStore) -> None:
    """Jobs a dead runner left (marked lost together) are all over ``max_jobs`` at the
    next write, and all go then, oldest first, not one per write."""
    store = make_store(max_jobs=1)
    held = [store.create(new_job(owner="gone")) for _ in range(3)]
    for job in held:
        store.start(job.id, "gone")
    assert store.mark_lost("gone", "lost: its runner died") == 3
    newest = store.create(new_job())
    assert [j.id for j in store.list().jobs] == [newest.id]


def test_a_memory_store_applies_its_ttl_at_most_once_per_evict_interval(
    time_machine: time_machine.TimeMachineFixture,
) -> None:
    """Between two retention passes an expired job stays: the pass that found it not yet
    expired is the last for ``evict_interval`` seconds of the store's own clock."""
    time_machine.move_to(time.time(), tick=False)
    store = MemoryStore(ttl=60, evict_interval=3600)
    job = store.create(new_job())
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    time_machine.shift(61)  # the wall clock moves; the store's monotonic clock barely
    assert store.get(job.id).status is JobStatus.SUCCEEDED


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_a_claim_passes_over_a_dropped_callback_to_the_next(
    store: JobStore, time_machine: time_machine.TimeMachineFixture
) -> None:
    """A callback whose job was deleted is dropped from the outbox, and the same claim
    goes on to the callbacks due after it."""
    url = "http://127.0.0.1:9/hook"
    state = {"url": url, "status": "pending", "attempts": 0, "last_status": None}
    ids = []
    time_machine.move_to(time.time(), tick=False)
    for _ in range(2):
        job = store.create(dataclasses.replace(new_job(), callback_url=url, callback=state))
        store.start(job.id)
        store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
        ids.append(job.id)
        time_machine.shift(1)  # due one after the other
    assert store.delete(ids[0]) is True
    claimed = store.claim_callbacks(time.time(), 30, 10)
    assert [job.id for job in claimed] == [ids[1]]


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_a_stream_written_in_chunks_reads_back_whole(store: JobStore) -> None:
    """Each stream is the concatenation of its chunks, whatever the other stream did."""
    job = store.create(new_job())
    store.start(job.id)
    offsets = {"stdout": 0, "stderr": 0}
    for index, (stream, data) in enumerate(
        [("stderr", b"a"), ("stdout", b"1"), ("stderr", b"bc"), ("stdout", b"23")], 1
    ):
        store.append_output(job.id, Chunk(index, stream, offsets[stream], data))
        offsets[stream] += len(data)
    got = store.get(job.id)
    assert (got.stdout, got.stderr) == (b"123", b"abc")


def test_a_memory_store_keeps_1000_jobs_by_default_and_checks_ttl() -> None:
    """The defaults docs/configuration.md gives, and ttl's range: a number above 0."""
    assert MemoryStore().max_jobs == 1000
    MemoryStore(ttl=1)
    MemoryStore(ttl=0.5)
    for bad in (0, -1, "5"):
        with pytest.raises(ConfigError) as caught:
            MemoryStore(ttl=bad)  # type: ignore[arg-type]
        assert caught.value.message == "ttl must be a positive number of seconds"
    with pytest.raises(ConfigError) as caught:
        MemoryStore(max_jobs=0)
    assert caught.value.message == "max_jobs must be at least 1"
