"""The JobStore contract: every store implementation must pass this module."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from procgate import JobNotFound, JobStatus, JobStore, MemoryStore, open_store
from procgate.errors import ConfigError, InvalidRequest
from procgate.jobs import Job, Outcome, Spec, new_job_id

STORE_KINDS = ["memory"]


def make_store(kind: str, max_jobs: int = 1000) -> JobStore:
    """A fresh, empty store of the given kind."""
    if kind == "memory":
        return MemoryStore(max_jobs=max_jobs)
    raise AssertionError(kind)


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str) -> Iterator[JobStore]:
    store = make_store(kind)
    yield store
    store.close()


def new_job(command: str = "echo") -> Job:
    return Job(id=new_job_id(), command=command, args=("a",), spec=Spec(argv=("/bin/echo", "a")))


def finished(
    store: JobStore, status: JobStatus = JobStatus.SUCCEEDED, command: str = "echo"
) -> Job:
    job = store.create(new_job(command))
    store.start(job.id)
    result = store.finish(job.id, Outcome(status, returncode=0))
    assert result is not None
    return result


def test_create_then_get(store: JobStore) -> None:
    """A created job is queued and readable, with its spec intact."""
    job = store.create(new_job())
    got = store.get(job.id)
    assert got.status is JobStatus.QUEUED
    assert got.spec == job.spec
    assert (got.stdout, got.stderr, got.returncode) == (b"", b"", None)


def test_missing_ids_raise_job_not_found(store: JobStore) -> None:
    """Every per-job read or change of an unknown id raises JobNotFound."""
    for call in (
        lambda: store.get("nope"),
        lambda: store.start("nope"),
        lambda: store.finish("nope", Outcome(JobStatus.SUCCEEDED)),
        lambda: store.cancel("nope"),
        lambda: store.delete("nope"),
        lambda: store.wait("nope", 0.01),
    ):
        with pytest.raises(JobNotFound):
            call()
    assert store.cancel_requested("nope") is False


def test_start_is_compare_and_set(store: JobStore) -> None:
    """Only one of many concurrent starts wins."""
    job = store.create(new_job())
    wins: list[Job] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        started = store.start(job.id)
        if started is not None:
            wins.append(started)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert wins[0].status is JobStatus.RUNNING
    assert wins[0].started_at is not None


def test_finish_once(store: JobStore) -> None:
    """A job finishes once; a finished job never changes again."""
    job = store.create(new_job())
    store.start(job.id)
    done = store.finish(job.id, Outcome(JobStatus.FAILED, returncode=2, error=None))
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert done.returncode == 2
    assert done.finished_at is not None
    assert store.finish(job.id, Outcome(JobStatus.SUCCEEDED, returncode=0)) is None
    assert store.cancel(job.id).status is JobStatus.FAILED
    assert store.get(job.id).status is JobStatus.FAILED


def test_truncation_flags_are_stored(store: JobStore) -> None:
    """The outcome's truncation flags are kept with the job."""
    job = store.create(new_job())
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0, None, True, False))
    got = store.get(job.id)
    assert (got.stdout_truncated, got.stderr_truncated) == (True, False)


def test_output_appends_in_order_per_stream(store: JobStore) -> None:
    """Chunks append per stream, bytes exact, binary and large alike."""
    job = store.create(new_job())
    store.start(job.id)
    big = bytes(range(256)) * 8192  # 2 MiB of every byte value
    store.append_output(job.id, "stdout", b"\xff\x00")
    store.append_output(job.id, "stderr", b"err")
    store.append_output(job.id, "stdout", big)
    got = store.get(job.id)
    assert got.stdout == b"\xff\x00" + big
    assert got.stderr == b"err"


def test_cancel_queued_job_finishes_it(store: JobStore) -> None:
    """Cancelling a queued job makes it cancelled at once; it can no longer start."""
    job = store.create(new_job())
    cancelled = store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.started_at is None
    assert store.start(job.id) is None


def test_cancel_running_job_sets_a_flag(store: JobStore) -> None:
    """Cancelling a running job flags it for its runner; the runner finishes it."""
    job = store.create(new_job())
    store.start(job.id)
    assert store.cancel_requested(job.id) is False
    assert store.cancel(job.id).status is JobStatus.RUNNING
    assert store.cancel_requested(job.id) is True
    store.finish(job.id, Outcome(JobStatus.CANCELLED, returncode=-15, error="cancelled"))
    assert store.get(job.id).status is JobStatus.CANCELLED


def test_delete_only_finished(store: JobStore) -> None:
    """Only finished jobs can be deleted."""
    job = store.create(new_job())
    assert store.delete(job.id) is False
    store.start(job.id)
    assert store.delete(job.id) is False
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    assert store.delete(job.id) is True
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_wait_times_out_and_wakes(store: JobStore) -> None:
    """wait returns the unfinished job at the deadline, and wakes as soon as it finishes."""
    job = store.create(new_job())
    store.start(job.id)
    assert store.wait(job.id, 0.05).status is JobStatus.RUNNING
    timer = threading.Timer(0.1, store.finish, (job.id, Outcome(JobStatus.SUCCEEDED, 0)))
    timer.start()
    assert store.wait(job.id, 10).status is JobStatus.SUCCEEDED
    timer.join()


def test_list_filters_and_pages(store: JobStore) -> None:
    """list is newest first, filtered, and the cursor pages without gaps or repeats."""
    jobs = [finished(store, command="a" if i % 2 else "b") for i in range(7)]
    running = store.create(new_job("a"))
    store.start(running.id)
    page = store.list()
    assert [j.id for j in page.jobs] == [running.id, *(j.id for j in reversed(jobs))]
    assert [j.id for j in store.list(status=JobStatus.RUNNING).jobs] == [running.id]
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(command="a", limit=2, cursor=cursor)
        seen.extend(j.id for j in page.jobs)
        cursor = page.next
        if cursor is None:
            break
    assert seen == [running.id, *(j.id for j in reversed(jobs) if j.command == "a")]
    with pytest.raises(InvalidRequest):
        store.list(cursor="garbage")


def test_eviction_drops_oldest_finished_never_active(kind: str) -> None:
    """Over max_jobs the oldest finished jobs go; queued and running jobs stay."""
    store = make_store(kind, max_jobs=3)
    try:
        queued = store.create(new_job())
        running = store.create(new_job())
        store.start(running.id)
        old = finished(store)
        newer = [finished(store) for _ in range(3)]
        ids = {j.id for j in store.list(limit=100).jobs}
        assert queued.id in ids
        assert running.id in ids
        assert old.id not in ids
        assert newer[-1].id in ids
        assert len(ids) == 3
    finally:
        store.close()


def test_concurrent_writers(store: JobStore) -> None:
    """Many threads creating, appending and finishing jobs lose nothing."""
    errors: list[BaseException] = []
    made: list[str] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                job = store.create(new_job())
                made.append(job.id)
                store.start(job.id)
                for k in range(5):
                    store.append_output(job.id, "stdout", f"{n}:{i}:{k};".encode())
                store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(made) == 160
    for job_id in made:
        job = store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED
        parts = job.stdout.decode().rstrip(";").split(";")
        assert [p.rsplit(":", 1)[1] for p in parts] == ["0", "1", "2", "3", "4"]


def test_open_store_by_url() -> None:
    """open_store picks the implementation from the URL scheme."""
    store = open_store("memory://", max_jobs=5)
    assert isinstance(store, MemoryStore)
    assert store.max_jobs == 5
    with pytest.raises(ConfigError):
        open_store("nosuch://x")
    with pytest.raises(ConfigError):
        MemoryStore(max_jobs=0)
