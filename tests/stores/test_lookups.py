"""More of the JobStore contract: what list, count and the per-job lookups answer at the
edges (default page size, filters that skip jobs, exact ``since``, unknown ids).

Run against every store, with the fixtures of the main contract module.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone

import pytest

from procgate import JobNotFound, JobStatus, JobStore
from procgate.jobs import Outcome
from tests.stores.test_contract import finished_with_callback, new_job


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_a_list_without_a_limit_gives_100_jobs(store: JobStore) -> None:
    """``limit`` defaults to 100: of 101 jobs a list gives the newest 100 and a cursor
    to the last one."""
    ids = [store.create(new_job()).id for _ in range(101)]
    page = store.list()
    assert [job.id for job in page.jobs] == ids[:0:-1]
    assert page.next is not None
    assert [job.id for job in store.list(cursor=page.next).jobs] == ids[:1]


def test_a_status_filter_looks_past_the_jobs_it_skips(store: JobStore) -> None:
    """A job of another status, newer than the matches, hides none of them."""
    older = [store.create(new_job()).id for _ in range(2)]
    newest = store.create(new_job())
    store.start(newest.id)
    page = store.list(status=JobStatus.QUEUED)
    assert [job.id for job in page.jobs] == older[::-1]
    assert page.next is None


def test_count_of_active_jobs_since_a_time(store: JobStore) -> None:
    """count(active=True, since=t) counts the queued and running jobs created at ``t``
    or later, by command if asked; finished ones and older ones are not counted."""

    def at(command: str, seconds: float) -> str:
        created = datetime.fromtimestamp(seconds, timezone.utc)
        return store.create(dataclasses.replace(new_job(command), created_at=created)).id

    at("a", 1000.0)  # too old
    at("a", 2000.0)  # exactly at since
    running = at("a", 3000.0)
    store.start(running)
    at("b", 3000.0)
    done = at("a", 3000.0)
    store.start(done)
    store.finish(done, Outcome(JobStatus.SUCCEEDED, 0))
    assert store.count(active=True, since=2000.0) == 3
    assert store.count(command="a", active=True, since=2000.0) == 2
    assert store.count(command="b", active=True, since=2000.0) == 1
    assert store.count(command="a", active=True, since=3000.5) == 0


def test_job_not_found_names_the_id(store: JobStore) -> None:
    """JobNotFound says which id it did not find (the API's 404 message shows it), from
    every per-job call, the waits included; waiting for output of an unknown id is
    JobNotFound too, not some other error."""
    for call in (
        lambda: store.get("nope-1"),
        lambda: store.start("nope-1"),
        lambda: store.finish("nope-1", Outcome(JobStatus.SUCCEEDED)),
        lambda: store.delete("nope-1"),
        lambda: store.claim("nope-1", "w1"),
        lambda: store.read_output("nope-1"),
        lambda: store.wait("nope-1", 0.01),
        lambda: store.wait_output("nope-1", 0, 0.01),
    ):
        with pytest.raises(JobNotFound, match="nope-1"):
            call()


def test_requeue_lost_looks_past_a_job_it_leaves(store: JobStore) -> None:
    """A running job without retry_on_worker_loss stays lost-to-be, and the owner's next
    job with the flag is still put back."""
    plain = store.create(new_job())
    retry_spec = dataclasses.replace(new_job().spec, retry_on_worker_loss=True)
    again = store.create(dataclasses.replace(new_job(), spec=retry_spec))
    for job_id in (plain.id, again.id):
        store.start(job_id, "w1")
    assert store.requeue_lost("w1") == [again.id]
    assert store.get(plain.id).status is JobStatus.RUNNING
    assert store.get(again.id).status is JobStatus.QUEUED


def test_a_claim_looks_past_a_dropped_callback(store: JobStore) -> None:
    """A due callback whose job was deleted is dropped, and the claim goes on to the
    callbacks due after it."""
    gone = finished_with_callback(store)
    kept = finished_with_callback(store)
    assert store.delete(gone.id) is True
    claimed = store.claim_callbacks(time.time() + 1, 60, 10)
    assert [job.id for job in claimed] == [kept.id]
