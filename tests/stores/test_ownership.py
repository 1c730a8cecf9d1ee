"""The JobStore contract for who holds a job: claims, process tags, requeues, repeats.

Run against every store, with the fixtures of the main contract module.
"""

from __future__ import annotations

import dataclasses

import pytest

from procgate import JobNotFound, JobStatus, JobStore
from procgate.jobs import Chunk, Outcome
from tests.stores.test_contract import new_job

TAG = "boot:123:456"


def test_claim_makes_a_queued_job_the_worker_s(store: JobStore) -> None:
    """claim() gives a queued job an owner (no start); it fails once the job started."""
    job = store.create(new_job(owner=None))
    assert store.claim(job.id, "w1") is True
    assert store.get(job.id).owner == "w1"
    assert store.get(job.id).status is JobStatus.QUEUED
    assert store.active_owners() == {"w1"}
    assert [j.id for j in store.active_jobs("w1")] == [job.id]
    started = store.start(job.id, "w2")
    assert started is not None
    assert started.owner == "w2"
    assert store.claim(job.id, "w3") is False
    assert store.get(job.id).owner == "w2"
    with pytest.raises(JobNotFound):
        store.claim("nope", "w1")


def test_active_jobs_are_an_owner_s_queued_and_running_ones(store: JobStore) -> None:
    """active_jobs(owner) lists that owner's queued and running jobs, oldest first,
    without finished jobs or other owners' jobs, and without output."""
    first = store.create(new_job(owner="a"))
    second = store.create(new_job(owner="a"))
    store.start(second.id)
    store.append_output(second.id, Chunk(1, "stdout", 0, b"out"))
    done = store.create(new_job(owner="a"))
    store.start(done.id)
    store.finish(done.id, Outcome(JobStatus.SUCCEEDED, 0))
    store.create(new_job(owner="b"))
    jobs = store.active_jobs("a")
    assert [j.id for j in jobs] == [first.id, second.id]
    assert [j.status for j in jobs] == [JobStatus.QUEUED, JobStatus.RUNNING]
    assert all(j.stdout == b"" for j in jobs)
    assert store.active_jobs("nobody") == []


def test_record_process_is_kept_while_the_job_runs(store: JobStore) -> None:
    """The process tag is stored for a running job only, and read back with the job."""
    job = store.create(new_job(owner="a"))
    store.record_process(job.id, TAG)  # queued: nothing runs yet
    assert store.get(job.id).process is None
    store.start(job.id)
    store.record_process(job.id, TAG)
    assert store.get(job.id).process == TAG
    assert store.get(job.id, output=False).process == TAG
    assert store.active_jobs("a")[0].process == TAG
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    store.record_process(job.id, "boot:1:1")  # finished: no longer changes
    assert store.get(job.id).process == TAG


def test_requeue_lost_puts_never_started_jobs_back(store: JobStore) -> None:
    """A dead owner's queued jobs always go back to the queue (they never ran), keeping
    their retry flag; its running jobs without the flag stay for mark_lost."""
    retry_spec = dataclasses.replace(new_job().spec, retry_on_worker_loss=True)
    waiting = store.create(dataclasses.replace(new_job(owner="w1"), spec=retry_spec))
    running = store.create(new_job(owner="w1"))
    store.start(running.id)
    store.record_process(running.id, TAG)
    assert store.requeue_lost("w1") == [waiting.id]
    job = store.get(waiting.id)
    assert job.status is JobStatus.QUEUED
    assert job.owner is None
    assert job.spec.retry_on_worker_loss is True  # it never ran: its one re-run is intact
    assert store.active_owners() == {"w1"}
    assert store.mark_lost("w1", "gone") == 1
    assert store.get(running.id).status is JobStatus.LOST


def test_requeue_forgets_the_process_of_the_first_run(store: JobStore) -> None:
    """A re-run job starts without the first run's process tag."""
    spec = dataclasses.replace(new_job().spec, retry_on_worker_loss=True)
    job = store.create(dataclasses.replace(new_job(owner="w1"), spec=spec))
    store.start(job.id)
    store.record_process(job.id, TAG)
    assert store.requeue_lost("w1") == [job.id]
    assert store.get(job.id).process is None


def test_a_chunk_written_twice_is_kept_once(store: JobStore) -> None:
    """append_output of a chunk index the store holds already changes nothing: a runner
    writes a chunk again when the answer to the first write was lost."""
    job = store.create(new_job())
    store.start(job.id)
    first = Chunk(1, "stdout", 0, b"once")
    store.append_output(job.id, first)
    store.append_output(job.id, first)
    store.append_output(job.id, Chunk(2, "stdout", 4, b"!"))
    store.append_output(job.id, Chunk(2, "stdout", 4, b"!"))
    assert [c.index for c in store.read_output(job.id)] == [1, 2]
    assert store.get(job.id).stdout == b"once!"
