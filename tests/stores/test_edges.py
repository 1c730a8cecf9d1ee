"""JobStore contract edges that mutation testing found unchecked (tests/mutation/run.py):
list's default page size and last page, count(since=) at its boundary, and the error a
job cancelled while queued carries. Run against every store.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from procgate import JobStatus, JobStore
from tests.stores.test_contract import new_job


@pytest.mark.docs("stores.md#writing-your-own-store")
def test_list_pages_by_100_and_the_last_page_has_no_cursor(store: JobStore) -> None:
    """Without a limit a page holds 100 jobs and a cursor; the page that ends the list,
    even one exactly full, has ``next`` None."""
    ids = [store.create(new_job()).id for _ in range(101)]
    page = store.list()
    assert len(page.jobs) == 100
    assert page.next is not None
    rest = store.list(cursor=page.next)
    assert [j.id for j in rest.jobs] == [ids[0]]
    assert rest.next is None
    exact = store.list(limit=101)
    assert len(exact.jobs) == 101
    assert exact.next is None


@pytest.mark.docs("stores.md#writing-your-own-store")
def test_count_since_includes_a_job_created_at_that_instant(store: JobStore) -> None:
    """count(since=t) counts jobs created at t itself, not only after it: a rate limit's
    window is closed at its start."""
    moment = datetime.now(timezone.utc).replace(microsecond=0)
    store.create(dataclasses.replace(new_job("edge"), created_at=moment))
    assert store.count(command="edge", since=moment.timestamp()) == 1
    assert store.count(command="edge", since=moment.timestamp() + 0.001) == 0


@pytest.mark.docs("http-api.md#the-job-object")
def test_a_job_cancelled_while_queued_says_so(store: JobStore) -> None:
    """A queued job that is cancelled ends ``cancelled`` with the documented error text,
    never started, with its finish time set."""
    job = store.create(new_job())
    cancelled = store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error == "cancelled before it started"
    assert cancelled.started_at is None
    assert cancelled.finished_at is not None
    assert store.get(job.id).error == "cancelled before it started"
