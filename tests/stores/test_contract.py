"""The JobStore contract: every store implementation must pass this module."""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine

from procgate import JobNotFound, JobStatus, JobStore, MemoryStore, open_store
from procgate.errors import ConfigError, InvalidRequest
from procgate.jobs import Chunk, Job, Outcome, Spec, new_job_id
from procgate.runners.sync import OutputWriter
from procgate.stores.redis import RedisStore
from procgate.stores.sqlite import SQLiteStore
from tests.conftest import wait_for

STORE_KINDS = ["memory", "sqlite", "redis"]

MakeStore = Callable[..., JobStore]


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Make stores of this kind; each call with the same ``name`` opens the same data.

    Retention passes run on every call here (``evict_interval=0``) so tests see them at
    once; in production they run at most once a second.
    """
    made: list[JobStore] = []
    prefix = f"test-{uuid.uuid4().hex}:"

    def make(name: str = "jobs", **options: Any) -> JobStore:
        store: JobStore
        if kind == "memory":
            store = MemoryStore(evict_interval=0, **options)
        elif kind == "sqlite":
            store = SQLiteStore(str(tmp_path / f"{name}.db"), evict_interval=0, **options)
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, prefix=f"{prefix}{name}:", evict_interval=0, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> JobStore:
    return make_store()


def new_job(command: str = "echo", key: str | None = None, owner: str | None = None) -> Job:
    return Job(
        id=new_job_id(),
        command=command,
        args=("a",),
        spec=Spec(
            argv=("/bin/echo", "a"),
            env={"PATH": "/bin"},
            stdin=b"\x00in",
            timeout=5.0,
            max_output=100,
            kill_grace=0.5,
        ),
        idempotency_key=key,
        owner=owner,
    )


#: Longest a waiter may sleep through the news it waits for. The promise is "at once" in
#: one process and ``poll_interval`` (50 ms) for SQLite store objects that do not share a
#: notifier. Measured on 2 cores loaded by two busy loops, 10 runs of every wake-up test
#: below: worst 0.046 s (SQLite, two store objects), 0.018 s for any other. But in the
#: loaded-suite series (bench/loaded_suite.py beside three mutmut runs, load average 11
#: to 12) a Redis waiter once woke 0.139 s late (two store objects, run 8 of 10), which
#: failed the 0.1 s this was; the same tests alone under that load: 0.048 s worst of 110.
#: Twice 0.139 s, rounded up: still far below the 10 s waits that a lost wake-up runs to.
WAKE_BOUND = 0.3
#: Longest ``close()`` may take to release a blocked waiter. Worst of 10 runs on 2 cores
#: loaded by two busy loops: 0.021 s (SQLite); but 0.148 s in the loaded-suite series
#: (bench/loaded_suite.py, load average 10-13), which failed the 0.05 s this was: twice
#: that, rounded up. Still far below the 30 s wait it cuts short, and within the promise
#: ("wake every waiter"), which sets no time.
CLOSE_BOUND = 0.3


def woken_after(
    news: Callable[[], object], wait: Callable[[], object], after: float = 0.1
) -> float:
    """Seconds ``wait()`` (here) went on after ``news()`` (another thread, ``after`` s
    after the wait began) returned: how long a waiter sleeps through its news. A wait that
    returned before the news was even sent fails here, so the bound cannot pass by not
    waiting."""
    sent: list[float] = []

    def send() -> None:
        sent.append(time.monotonic())  # before news(): the wait may end inside it
        news()
        sent.append(time.monotonic())

    timer = threading.Timer(after, send)
    timer.start()
    try:
        wait()
        returned = time.monotonic()
    finally:
        timer.join()
    assert returned >= sent[0], "the wait returned before there was any news"
    return returned - sent[1]


def blocked_in_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked waiting inside a store's ``wait`` (in a condition, a
    socket read), not reading the job: the state a ``close()`` must wake it from."""
    frame = sys._current_frames().get(thread.ident or 0)
    stack = []  # innermost first
    while frame is not None:
        stack.append(frame.f_code)
        frame = frame.f_back
    for depth, code in enumerate(stack):
        if code.co_name == "wait" and "/procgate/stores/" in code.co_filename:
            below = stack[:depth]
            return (
                bool(below)
                and "/procgate/" not in below[0].co_filename
                and not any(
                    c.co_name in ("get", "_read") and "/procgate/" in c.co_filename for c in below
                )
            )
    return False


def finished(
    store: JobStore, status: JobStatus = JobStatus.SUCCEEDED, command: str = "echo"
) -> Job:
    job = store.create(new_job(command))
    store.start(job.id)
    assert store.finish(job.id, Outcome(status, returncode=0)) is True
    return store.get(job.id)


@pytest.mark.docs("python-api.md#records")
def test_create_then_get(store: JobStore) -> None:
    """A created job is queued and readable, every field intact."""
    job = store.create(new_job(owner="host:1:ab", key="k1"))
    got = store.get(job.id)
    assert got.status is JobStatus.QUEUED
    assert got.spec == job.spec
    assert (got.command, got.args, got.owner, got.idempotency_key) == (
        "echo",
        ("a",),
        "host:1:ab",
        "k1",
    )
    assert abs((got.created_at - job.created_at).total_seconds()) < 0.001
    assert (got.stdout, got.stderr, got.returncode) == (b"", b"", None)


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
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


@pytest.mark.docs("stores.md#writing-your-own-store")
@pytest.mark.docs("python-api.md#the-jobstore-protocol")
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


@pytest.mark.docs("http-api.md#statuses")
@pytest.mark.docs("stores.md#writing-your-own-store")
@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_finish_once(store: JobStore) -> None:
    """A job finishes once; a finished job never changes again."""
    job = store.create(new_job())
    store.start(job.id)
    assert store.finish(job.id, Outcome(JobStatus.FAILED, returncode=2, error=None)) is True
    done = store.get(job.id)
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert done.returncode == 2
    assert done.finished_at is not None
    assert store.finish(job.id, Outcome(JobStatus.SUCCEEDED, returncode=0)) is False
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
    write = OutputWriter(store, job.id, hold=0)
    write("stdout", b"\xff\x00")
    write("stderr", b"err")
    write("stdout", big)
    got = store.get(job.id)
    assert got.stdout == b"\xff\x00" + big
    assert got.stderr == b"err"


def test_finish_writes_the_last_output_with_it(store: JobStore) -> None:
    """``finish(..., output=)`` stores the chunks and the finish together: the finished
    job has them all; a chunk it holds already is not doubled; chunks sent with a finish
    that comes too late (the job had finished) are still kept, as ``append_output``
    would."""
    job = store.create(new_job())
    store.start(job.id)
    store.append_output(job.id, Chunk(1, "stdout", 0, b"ab"))
    last = (Chunk(1, "stdout", 0, b"ab"), Chunk(2, "stderr", 0, b"e"), Chunk(3, "stdout", 2, b"c"))
    assert store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0), last)
    got = store.get(job.id)
    assert (got.status, got.stdout, got.stderr) == (JobStatus.SUCCEEDED, b"abc", b"e")
    assert [c.index for c in store.read_output(job.id)] == [1, 2, 3]

    late = store.create(new_job())
    store.start(late.id)
    store.finish(late.id, Outcome(JobStatus.CANCELLED, error="stop"))
    kept = (Chunk(1, "stdout", 0, b"x"),)
    assert not store.finish(late.id, Outcome(JobStatus.SUCCEEDED, 0), kept)
    got = store.get(late.id)
    assert (got.status, got.stdout) == (JobStatus.CANCELLED, b"x")


def test_a_job_created_running_is_running(store: JobStore) -> None:
    """A runner's caller may create a job already ``running`` (a ``Slot``): it counts as
    active, cannot be started again, finishes, and is lost with its owner."""
    job = store.create(
        dataclasses.replace(
            new_job(owner="runner-a"),
            status=JobStatus.RUNNING,
            started_at=datetime.now(timezone.utc),
        )
    )
    got = store.get(job.id)
    assert got.status is JobStatus.RUNNING
    assert got.started_at is not None
    assert got.owner == "runner-a"
    assert store.count(active=True) == 1
    assert store.active_owners() == {"runner-a"}
    assert store.start(job.id) is None
    assert store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0), (Chunk(1, "stdout", 0, b"a"),))
    assert store.get(job.id).stdout == b"a"
    assert store.count(active=True) == 0

    lost = store.create(
        dataclasses.replace(
            new_job(owner="runner-b"),
            status=JobStatus.RUNNING,
            started_at=datetime.now(timezone.utc),
        )
    )
    assert store.mark_lost("runner-b", "its runner died") == 1
    assert store.get(lost.id).status is JobStatus.LOST


def test_a_released_key_frees_its_scope_and_keeps_the_job(store: JobStore) -> None:
    """``find_key`` finds the job holding a scope (None for a free one); after
    ``release_key`` the job stays, the scope is free, and the next create with it is a new
    job, which deleting the old one does not disturb."""
    first = store.create(new_job(key="k"))
    scope = first.idempotency_scope
    assert scope is not None
    found = store.find_key(scope)
    assert found is not None
    assert found.id == first.id
    assert store.find_key(scope + "x") is None
    store.start(first.id)
    store.finish(first.id, Outcome(JobStatus.SUCCEEDED, 0))
    assert store.release_key(first.id)
    assert not store.release_key(first.id)  # released once
    assert store.find_key(scope) is None
    assert store.get(first.id).status is JobStatus.SUCCEEDED  # the job stays
    second = store.create(new_job(key="k"))
    assert second.id != first.id
    assert store.create(new_job(key="k")).id == second.id  # the new holder answers
    assert store.delete(first.id)
    found = store.find_key(scope)
    assert found is not None
    assert found.id == second.id
    with pytest.raises(JobNotFound):
        store.release_key(new_job_id())
    assert not store.release_key(store.create(new_job()).id)  # no key to let go


def test_cancel_queued_job_finishes_it(store: JobStore) -> None:
    """Cancelling a queued job makes it cancelled at once; it can no longer start."""
    job = store.create(new_job())
    cancelled = store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.started_at is None
    assert store.start(job.id) is None


@pytest.mark.docs("stores.md#cancelling-across-processes")
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


@pytest.mark.docs("python-api.md#the-jobstore-protocol")
def test_wait_times_out_and_wakes(store: JobStore) -> None:
    """wait returns the unfinished job at the deadline, and wakes as soon as it finishes."""
    job = store.create(new_job())
    store.start(job.id)
    started = time.monotonic()
    assert store.wait(job.id, 0.05).status is JobStatus.RUNNING
    assert time.monotonic() - started >= 0.05
    seen: list[Job] = []
    late = woken_after(
        lambda: store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0)),
        lambda: seen.append(store.wait(job.id, 10)),
    )
    assert seen[0].status is JobStatus.SUCCEEDED
    assert late < WAKE_BOUND


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


@pytest.mark.docs("stores.md#options", "stores.md#retention")
def test_eviction_drops_oldest_finished_never_active(make_store: MakeStore) -> None:
    """Over max_jobs the oldest finished jobs go; queued and running jobs stay."""
    store = make_store(max_jobs=3)
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


@pytest.mark.docs("stores.md#writing-your-own-store")
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
                write = OutputWriter(store, job.id, hold=0)
                for k in range(5):
                    write("stdout", f"{n}:{i}:{k};".encode())
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


@pytest.mark.docs("stores.md#urls")
@pytest.mark.docs("python-api.md#stores")
def test_open_store_by_url() -> None:
    """open_store picks the implementation from the URL scheme."""
    store = open_store("memory://", max_jobs=5)
    assert isinstance(store, MemoryStore)
    assert store.max_jobs == 5
    with pytest.raises(ConfigError):
        open_store("nosuch://x")
    with pytest.raises(ConfigError):
        MemoryStore(max_jobs=0)


@pytest.mark.docs("stores.md#idempotency")
def test_idempotency_returns_the_existing_job(store: JobStore) -> None:
    """A second create with the same command and key returns the first job."""
    first = store.create(new_job(key="deploy-42"))
    second = store.create(new_job(key="deploy-42"))
    assert second.id == first.id
    other_command = store.create(new_job(command="other", key="deploy-42"))
    assert other_command.id != first.id
    no_key = store.create(new_job())
    assert no_key.id != first.id
    assert len(store.list().jobs) == 3


@pytest.mark.docs("stores.md#idempotency", "stores.md#writing-your-own-store")
def test_idempotency_under_concurrency(store: JobStore) -> None:
    """Sixteen threads racing with one key create exactly one job."""
    barrier = threading.Barrier(16)
    ids: list[str] = []

    def create() -> None:
        barrier.wait()
        ids.append(store.create(new_job(key="race")).id)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert len(store.list(command="echo").jobs) == 1


@pytest.mark.docs("stores.md#idempotency")
def test_idempotency_key_is_free_after_delete(store: JobStore) -> None:
    """Once its job is deleted, a key starts a new job."""
    first = store.create(new_job(key="again"))
    store.start(first.id)
    store.finish(first.id, Outcome(JobStatus.SUCCEEDED, 0))
    assert store.delete(first.id)
    assert store.create(new_job(key="again")).id != first.id


@pytest.mark.docs("stores.md#options", "stores.md#retention")
def test_ttl_expires_finished_jobs_only(
    make_store: MakeStore, time_machine: time_machine.TimeMachineFixture
) -> None:
    """Finished jobs disappear ttl seconds after they finish; active ones stay.

    On a stopped clock (every store reads its ttl clock in this process): the job is
    there just before ttl has passed and gone just after, with no real waiting.
    """
    time_machine.move_to(time.time(), tick=False)
    store = make_store(ttl=60)
    running = store.create(new_job())
    store.start(running.id)
    done = finished(store)
    time_machine.shift(60 - 0.01)
    assert store.get(done.id).status is JobStatus.SUCCEEDED
    time_machine.shift(0.02)
    with pytest.raises(JobNotFound):
        store.get(done.id)
    time_machine.shift(3600)
    assert store.get(running.id).status is JobStatus.RUNNING
    assert [j.id for j in store.list().jobs] == [running.id]


@pytest.mark.docs("http-api.md#statuses")
@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_heartbeats_and_lost_jobs(store: JobStore) -> None:
    """Owners heartbeat; mark_lost finishes a dead owner's active jobs only."""
    store.heartbeat("a")
    store.heartbeat("b")
    assert set(store.heartbeats()) == {"a", "b"}
    assert abs(store.heartbeats()["a"] - time.time()) < 5
    queued = store.create(new_job(owner="a"))
    running = store.create(new_job(owner="a"))
    store.start(running.id)
    done = store.create(new_job(owner="a"))
    store.start(done.id)
    store.finish(done.id, Outcome(JobStatus.SUCCEEDED, 0))
    other = store.create(new_job(owner="b"))
    assert store.active_owners() == {"a", "b"}
    assert store.mark_lost("a", "runner a died") == 2
    for job_id in (queued.id, running.id):
        job = store.get(job_id)
        assert job.status is JobStatus.LOST
        assert job.error == "runner a died"
        assert job.finished_at is not None
    assert store.get(done.id).status is JobStatus.SUCCEEDED
    assert store.get(other.id).status is JobStatus.QUEUED
    assert store.active_owners() == {"b"}
    assert "a" not in store.heartbeats()
    assert store.finish(running.id, Outcome(JobStatus.SUCCEEDED, 0)) is False


def test_start_claims_the_job_for_its_runner(store: JobStore) -> None:
    """start(owner=...) makes the job that runner's (a distributed runner's worker)."""
    job = store.create(new_job(owner=None))
    assert store.active_owners() == set()
    started = store.start(job.id, "worker-1")
    assert started is not None
    assert started.owner == "worker-1"
    assert store.get(job.id).owner == "worker-1"
    assert store.active_owners() == {"worker-1"}
    assert store.start(job.id, "worker-2") is None  # one runner only
    assert store.mark_lost("worker-1", "gone") == 1
    assert store.get(job.id).status is JobStatus.LOST


@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_requeue_lost_puts_retryable_jobs_back_once(store: JobStore) -> None:
    """A dead owner's jobs with retry_on_worker_loss go back to queued, without owner,
    start time, output or cancel request, and with the flag cleared; the others stay."""
    retry_spec = dataclasses.replace(new_job().spec, retry_on_worker_loss=True)
    again = store.create(dataclasses.replace(new_job(), spec=retry_spec))
    plain = store.create(new_job())
    other = store.create(dataclasses.replace(new_job(), id=new_job_id(), spec=retry_spec))
    for job_id, owner in ((again.id, "w1"), (plain.id, "w1"), (other.id, "w2")):
        store.start(job_id, owner)
    store.append_output(again.id, Chunk(1, "stdout", 0, b"half"))
    store.cancel(again.id)  # a cancel request of the first run does not carry over
    assert store.requeue_lost("w1") == [again.id]
    job = store.get(again.id)
    assert job.status is JobStatus.QUEUED
    assert job.owner is None
    assert job.started_at is None
    assert job.stdout == b""
    assert store.read_output(again.id) == []
    assert job.spec.retry_on_worker_loss is False
    assert job.spec.argv == retry_spec.argv
    assert store.cancel_requested(again.id) is False
    assert store.get(plain.id).status is JobStatus.RUNNING
    assert store.active_owners() == {"w1", "w2"}
    assert store.mark_lost("w1", "gone") == 1  # the plain job only
    assert store.get(again.id).status is JobStatus.QUEUED
    restarted = store.start(again.id, "w3")
    assert restarted is not None
    assert restarted.owner == "w3"
    assert store.requeue_lost("w3") == []  # once only: the flag is spent
    assert store.requeue_lost("w2") == [other.id]


def test_wait_wakes_on_cancel_of_queued_job(store: JobStore) -> None:
    """A waiter wakes when a queued job is cancelled, not only when one finishes."""
    job = store.create(new_job())
    seen: list[Job] = []
    late = woken_after(lambda: store.cancel(job.id), lambda: seen.append(store.wait(job.id, 10)))
    assert seen[0].status is JobStatus.CANCELLED
    assert late < WAKE_BOUND


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.docs("stores.md#durability")
def test_jobs_survive_reopening(make_store: MakeStore) -> None:
    """A persistent store opened again sees every job, output and status."""
    first = make_store("shared")
    job = first.create(new_job())
    first.start(job.id)
    OutputWriter(first, job.id, hold=0)("stdout", b"kept\xff")
    first.finish(job.id, Outcome(JobStatus.FAILED, 3, "boom", True, False))
    first.close()
    again = make_store("shared").get(job.id)
    assert (again.status, again.returncode, again.error) == (JobStatus.FAILED, 3, "boom")
    assert again.stdout == b"kept\xff"
    assert again.stdout_truncated is True


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.docs("stores.md#cancelling-across-processes")
def test_two_store_objects_share_state(make_store: MakeStore) -> None:
    """Two store objects on the same data see each other's jobs and cancel requests; a
    waiter on one wakes promptly for a finish through the other."""
    one, two = make_store("shared"), make_store("shared")
    job = one.create(new_job())
    assert two.start(job.id) is not None
    assert one.start(job.id) is None
    OutputWriter(two, job.id, hold=0)("stderr", b"x")
    one.cancel(job.id)
    assert two.cancel_requested(job.id)
    seen: list[Job] = []
    late = woken_after(
        lambda: two.finish(job.id, Outcome(JobStatus.CANCELLED, -15)),
        lambda: seen.append(one.wait(job.id, 10)),
        after=0.5,  # long enough for SQLite's backoff to reach poll_interval
    )
    assert seen[0].status is JobStatus.CANCELLED
    assert late < WAKE_BOUND
    assert one.get(job.id).stderr == b"x"


@pytest.mark.docs("stores.md#options")
def test_sqlite_wait_polls_from_1_ms_growing_to_poll_interval(tmp_path: Path) -> None:
    """A SQLite wait for a job another process may finish sleeps 1 ms, then 1.5 times
    longer each time, never longer than ``poll_interval`` (50 ms by default), which it
    reaches within a 1 s wait. Every sleep asked for is recorded: on a slow machine a
    sleep can only be asked shorter than its step, never longer."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    assert store.poll_interval == 0.05
    asked: list[float] = []

    class Recording(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None  # every wait has a deadline
            asked.append(timeout)
            return super().wait(timeout)

    store._changed = Recording()
    try:
        job = store.create(new_job())
        store.start(job.id)
        assert store.wait(job.id, 1.0).status is JobStatus.RUNNING
    finally:
        store.close()
    steps = [min(0.001 * 1.5**n, 0.05) for n in range(len(asked))]
    assert all(sleep <= step + 1e-9 for sleep, step in zip(asked, steps, strict=True))
    assert max(asked) > 0.04  # grew to poll_interval
    assert len(asked) > 20  # and kept checking at that pace until the deadline


@pytest.mark.docs("stores.md#urls")
@pytest.mark.docs("python-api.md#stores")
def test_open_store_urls(tmp_path: Path, redis_url: str) -> None:
    """open_store reads sqlite and redis URLs, and refuses what it cannot open."""
    store = open_store(f"sqlite:///{tmp_path}/a/b.db", max_jobs=3)
    assert isinstance(store, SQLiteStore)
    assert store.path == f"{tmp_path}/a/b.db"
    store.close()
    store = open_store(redis_url, prefix="x:")
    assert isinstance(store, RedisStore)
    store.close()
    with pytest.raises(ConfigError):
        open_store("sqlite://")
    with pytest.raises(ConfigError):
        open_store("redis://127.0.0.1:1/0")


def test_close_wakes_waiters(store: JobStore) -> None:
    """close() makes a blocked wait return the job instead of hanging or raising."""
    job = store.create(new_job())
    store.start(job.id)
    results: list[Any] = []

    def wait() -> None:
        try:
            results.append(store.wait(job.id, 30))
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_for(lambda: blocked_in_wait(thread))
    started = time.monotonic()
    store.close()
    thread.join(10)
    assert time.monotonic() - started < CLOSE_BOUND
    assert len(results) == 1
    assert isinstance(results[0], Job)
    assert results[0].id == job.id


@pytest.mark.parametrize("kind", ["sqlite"])
@pytest.mark.docs("stores.md#urls")
def test_sqlite_path_is_fixed_at_open(
    make_store: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite path stays the same file after the process changes directory."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    store = SQLiteStore("jobs.db", evict_interval=0)
    try:
        job = store.create(new_job())
        monkeypatch.chdir(tmp_path / "two")
        errors: list[BaseException] = []

        def read() -> None:
            try:
                assert store.get(job.id).id == job.id
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert not (tmp_path / "two" / "jobs.db").exists()
    finally:
        store.close()


@pytest.mark.docs("live-output.md#ordering-across-streams")
def test_read_output_by_index(store: JobStore) -> None:
    """Chunks come back in order, with indexes, streams and offsets, from any point."""
    job = store.create(new_job())
    store.start(job.id)
    write = OutputWriter(store, job.id, hold=0)
    write("stdout", b"a")
    write("stderr", b"\xffE")
    write("stdout", b"bc")
    assert store.read_output(job.id) == [
        Chunk(1, "stdout", 0, b"a"),
        Chunk(2, "stderr", 0, b"\xffE"),
        Chunk(3, "stdout", 1, b"bc"),
    ]
    assert store.read_output(job.id, after=2) == [Chunk(3, "stdout", 1, b"bc")]
    assert store.read_output(job.id, after=3) == []
    with pytest.raises(JobNotFound):
        store.read_output("nope")


def test_get_without_output(store: JobStore) -> None:
    """get(output=False) has everything but the output."""
    job = store.create(new_job())
    store.start(job.id)
    OutputWriter(store, job.id, hold=0)("stdout", b"lots")
    light = store.get(job.id, output=False)
    assert light.status is JobStatus.RUNNING
    assert light.stdout == b""
    assert store.get(job.id).stdout == b"lots"


def test_wait_output_wakes_on_output_and_on_finish(store: JobStore) -> None:
    """wait_output returns when a chunk past ``after`` arrives, or when the job ends."""
    job = store.create(new_job())
    store.start(job.id)
    write = OutputWriter(store, job.id, hold=0)
    started = time.monotonic()
    store.wait_output(job.id, 0, 0.1)
    assert time.monotonic() - started >= 0.09
    late = woken_after(lambda: write("stdout", b"x"), lambda: store.wait_output(job.id, 0, 10))
    assert late < WAKE_BOUND
    started = time.monotonic()
    store.wait_output(job.id, 0, 10)  # chunk 1 exists: at once
    assert time.monotonic() - started < WAKE_BOUND
    late = woken_after(
        lambda: store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0)),
        lambda: store.wait_output(job.id, 1, 10),
    )
    assert late < WAKE_BOUND


def with_callback(job: Job, url: str = "http://cb.example/hook") -> Job:
    """``job`` with a callback, as the Gate creates it: pending, no attempts yet."""
    state = {"url": url, "status": "pending", "attempts": 0, "last_status": None}
    return dataclasses.replace(job, callback_url=url, callback={**state, "last_error": None})


def finished_with_callback(store: JobStore, command: str = "echo") -> Job:
    """A job with a callback that ran, wrote ``out`` and succeeded."""
    job = store.create(with_callback(new_job(command)))
    store.start(job.id)
    OutputWriter(store, job.id, hold=0)("stdout", b"out")
    assert store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0)) is True
    return job


def pending(attempts: int, error: str | None = None, code: int | None = None) -> dict[str, Any]:
    return {
        "url": "http://cb.example/hook",
        "status": "pending",
        "attempts": attempts,
        "last_status": code,
        "last_error": error,
    }


def test_finish_queues_the_callback(store: JobStore) -> None:
    """Finishing a job with a callback_url puts its callback in the outbox, due at once;
    a claim counts the attempt and hands the job out with its output."""
    plain = finished(store)
    job = store.create(with_callback(new_job()))
    store.start(job.id)
    assert store.claim_callbacks(time.time() + 1, 60, 10) == []  # not finished yet
    OutputWriter(store, job.id, hold=0)("stdout", b"out")
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    [claimed] = store.claim_callbacks(time.time() + 0.01, 60, 10)
    assert claimed.id == job.id != plain.id
    assert (claimed.status, claimed.stdout, claimed.callback) == (
        JobStatus.SUCCEEDED,
        b"out",
        pending(1),
    )
    assert store.get(job.id).callback == pending(1)


def test_a_claim_holds_the_callback_for_its_lease(store: JobStore) -> None:
    """No claim returns a leased callback until the lease ends; then another claim takes
    it again (its claimer died), counting another attempt."""
    job = finished_with_callback(store)
    now = time.time() + 0.01
    assert [j.id for j in store.claim_callbacks(now, 60, 10)] == [job.id]
    assert store.claim_callbacks(now + 59, 60, 10) == []
    [again] = store.claim_callbacks(now + 61, 60, 10)
    assert again.callback == pending(2)


def test_set_callback_records_and_reschedules(store: JobStore) -> None:
    """A failed attempt's result is stored and the callback is due again at retry_at; a
    final one takes it out of the outbox for good."""
    job = finished_with_callback(store)
    now = time.time() + 0.01
    store.claim_callbacks(now, 60, 10)
    failed = pending(1, "HTTP 500", 500)
    assert store.set_callback(job.id, failed, attempt=1, retry_at=now + 100) is True
    assert store.get(job.id).callback == failed
    assert store.claim_callbacks(now + 99, 60, 10) == []
    [again] = store.claim_callbacks(now + 101, 60, 10)
    assert again.callback == {**failed, "attempts": 2}
    done = {**pending(2, None, 204), "status": "delivered"}
    assert store.set_callback(job.id, done, attempt=2) is True
    assert store.get(job.id).callback == done
    assert store.claim_callbacks(now + 10**6, 60, 10) == []


def test_a_stale_claim_records_nothing(store: JobStore) -> None:
    """An attempt whose lease ran out, and that another claim took over, cannot record its
    result over the newer attempt's."""
    job = finished_with_callback(store)
    now = time.time() + 0.01
    store.claim_callbacks(now, 10, 10)
    store.claim_callbacks(now + 11, 10, 10)  # the first claimer seemed dead
    late = {**pending(1), "status": "delivered", "last_status": 200}
    assert store.set_callback(job.id, late, attempt=1) is False
    assert store.get(job.id).callback == pending(2)
    assert store.set_callback(job.id, pending(2, "HTTP 502", 502), attempt=2, retry_at=now)
    assert [j.callback for j in store.claim_callbacks(now + 12, 10, 10)] == [
        pending(3, "HTTP 502", 502)
    ]


def test_cancelled_and_lost_jobs_queue_their_callbacks(store: JobStore) -> None:
    """A job cancelled while queued, and one the sweep marks lost, get their callback too:
    finishing and queueing the callback are one step on every path."""
    queued = store.create(with_callback(new_job()))
    store.cancel(queued.id)
    running = store.create(with_callback(new_job(owner="host:1:dead")))
    store.start(running.id)
    assert store.mark_lost("host:1:dead", "lost: gone") == 1
    claimed = store.claim_callbacks(time.time() + 0.01, 60, 10)
    assert {(j.id, j.status) for j in claimed} == {
        (queued.id, JobStatus.CANCELLED),
        (running.id, JobStatus.LOST),
    }


@pytest.mark.docs("stores.md#retention")
def test_a_deleted_job_drops_its_callback(store: JobStore) -> None:
    """Deleting (or evicting) a job with a pending callback drops the callback."""
    job = finished_with_callback(store)
    assert store.delete(job.id) is True
    assert store.claim_callbacks(time.time() + 1, 60, 10) == []
    assert store.set_callback(job.id, pending(1), attempt=0, retry_at=time.time()) is False
    assert store.claim_callbacks(time.time() + 1, 60, 10) == []


def test_claims_take_the_longest_due_first_up_to_the_limit(store: JobStore) -> None:
    """``limit`` caps a claim; the callbacks due longest come first."""
    jobs = [finished_with_callback(store) for _ in range(3)]
    now = time.time() + 0.01
    first = store.claim_callbacks(now, 60, 2)
    assert [j.id for j in first] == [j.id for j in jobs[:2]]
    assert [j.id for j in store.claim_callbacks(now, 60, 2)] == [jobs[2].id]


@pytest.mark.docs("stores.md#writing-your-own-store")
def test_claims_are_exclusive(make_store: MakeStore, kind: str) -> None:
    """Claims racing from many threads (each with its own store object where the store is
    shared) hand every due callback out exactly once."""
    first = make_store("shared")
    jobs = {finished_with_callback(first).id for _ in range(40)}
    stores = [first] + [make_store("shared") for _ in range(3)] if kind != "memory" else [first]
    taken: list[str] = []
    lock = threading.Lock()
    now = time.time() + 0.01

    def claim(store: JobStore) -> None:
        while batch := store.claim_callbacks(now, 60, 3):
            with lock:
                taken.extend(job.id for job in batch)

    threads = [threading.Thread(target=claim, args=(stores[n % len(stores)],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(taken) == sorted(jobs)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.docs("stores.md#durability")
def test_callbacks_survive_reopening(make_store: MakeStore) -> None:
    """A persistent store opened again still holds the callbacks due, and when."""
    first = make_store("shared")
    job = finished_with_callback(first)
    now = time.time() + 0.01
    first.claim_callbacks(now, 60, 10)
    first.set_callback(job.id, pending(1, "HTTP 503", 503), attempt=1, retry_at=now + 5)
    first.close()
    again = make_store("shared")
    assert again.claim_callbacks(now + 4, 60, 10) == []
    [claimed] = again.claim_callbacks(now + 6, 60, 10)
    assert (claimed.id, claimed.callback) == (job.id, pending(2, "HTTP 503", 503))


def test_sqlite_file_without_the_outbox_gets_it(tmp_path: Path) -> None:
    """A file made before the outbox existed (same schema version) gets its table at open."""
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE callbacks")
        db.commit()
    store = SQLiteStore(path)
    try:
        job = finished_with_callback(store)
        assert [j.id for j in store.claim_callbacks(time.time() + 1, 60, 10)] == [job.id]
    finally:
        store.close()


def test_callback_fields_round_trip(store: JobStore) -> None:
    """Callback URL, context (any JSON) and the submitter's link are stored as given."""
    import dataclasses

    job = dataclasses.replace(
        new_job(),
        link="http://h/jobs/x",
        callback_url="http://cb/",
        callback_context={"n": [1, "two", None]},
        callback={
            "url": "http://cb/",
            "status": "pending",
            "attempts": 0,
            "last_status": None,
            "last_error": None,
        },
    )
    store.create(job)
    got = store.get(job.id)
    assert (got.link, got.callback_url, got.callback_context, got.callback) == (
        job.link,
        job.callback_url,
        job.callback_context,
        job.callback,
    )


def test_count(store: JobStore) -> None:
    """count() by command, active only, and since a time: what limits are built on."""
    import dataclasses

    old = dataclasses.replace(new_job("a"), created_at=datetime.fromtimestamp(1000, timezone.utc))
    store.create(old)
    finished(store, command="a")
    running = store.create(new_job("a"))
    store.start(running.id)
    store.create(new_job("b"))
    assert store.count() == 4
    assert store.count(command="a") == 3
    assert store.count(active=True) == 3
    assert store.count(command="a", active=True) == 2
    assert store.count(command="b", active=True) == 1
    assert store.count(since=time.time() - 60) == 3
    assert store.count(command="a", since=time.time() - 60) == 2
    assert store.count(command="nope") == 0


def test_list_by_token(store: JobStore) -> None:
    """list(token=...) shows only the jobs that token created."""
    import dataclasses

    mine = store.create(dataclasses.replace(new_job(), token_id="ci", client="10.0.0.1"))
    store.create(dataclasses.replace(new_job(), token_id="ops"))
    store.create(new_job())
    page = store.list(token="ci")
    assert [j.id for j in page.jobs] == [mine.id]
    assert (page.jobs[0].token_id, page.jobs[0].client) == ("ci", "10.0.0.1")
    assert len(store.list().jobs) == 3


@pytest.mark.parametrize("cursor", ["", "-1", "1.5", "x", "١٢", str(2**63), "9" * 40])
def test_bad_cursors_are_invalid_requests(store: JobStore, cursor: str) -> None:
    """A cursor the store did not issue is an InvalidRequest, never a crash."""
    with pytest.raises(InvalidRequest):
        store.list(cursor=cursor)


def test_rate_counts_survive_deletion(store: JobStore) -> None:
    """count(since=...) counts creations: deleting jobs does not free a rate limit."""
    done = finished(store, command="r")
    store.delete(done.id)
    store.create(new_job("r"))
    assert store.count(command="r", since=time.time() - 60) == 2
    assert store.count(command="r") == 1


def test_many_waiters_on_many_jobs(store: JobStore) -> None:
    """Each waiter wakes for its own job's finish, with many waiting at once."""
    jobs = [store.create(new_job()) for _ in range(8)]
    for job in jobs:
        store.start(job.id)
    results: dict[str, JobStatus] = {}

    def wait(job_id: str) -> None:
        results[job_id] = store.wait(job_id, 20).status

    threads = [threading.Thread(target=wait, args=(job.id,)) for job in jobs for _ in range(2)]
    for thread in threads:
        thread.start()
    finished = time.monotonic()
    for job in jobs:
        store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    for thread in threads:
        thread.join(30)
    # Woken by the finishes, not by the 20 s deadline (then each would still say
    # succeeded): about 0.1 s here on every store, 5 s allows a loaded machine.
    assert time.monotonic() - finished < 5
    assert results == {job.id: JobStatus.SUCCEEDED for job in jobs}
