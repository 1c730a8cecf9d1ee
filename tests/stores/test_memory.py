"""MemoryStore beyond the contract: what a retained finished job keeps."""

from __future__ import annotations

import threading

from procgate import JobStatus, MemoryStore
from procgate.jobs import Job, Outcome, Spec, new_job_id
from tests.conftest import wait_for


def test_a_finished_job_lets_go_of_its_condition() -> None:
    """Waiting makes a condition variable for the job; the finish wakes the waiters and
    drops it, so a retained job does not keep one (most of a small job's memory)."""
    store = MemoryStore()
    job = Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("/bin/true",)))
    store.create(job)
    store.start(job.id)
    results: list[JobStatus] = []
    waiters = [
        threading.Thread(target=lambda: results.append(store.wait(job.id, 10).status))
        for _ in range(3)
    ]
    for waiter in waiters:
        waiter.start()
    wait_for(lambda: store._entries[job.id].changed is not None)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, returncode=0))
    for waiter in waiters:
        waiter.join(10)
    assert results == [JobStatus.SUCCEEDED] * 3
    assert store._entries[job.id].changed is None
    assert store.wait(job.id, 10).status is JobStatus.SUCCEEDED  # finished: no waiting
    assert store._entries[job.id].changed is None
