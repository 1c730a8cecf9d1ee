"""Runner behaviour beyond the HTTP contract: pools, queues, shutdown, worker death."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import time_machine
from werkzeug.test import Client

from procgate import (
    ConfigError,
    Gate,
    JobStatus,
    MemoryStore,
    ProcessRunner,
    SyncRunner,
    ThreadRunner,
)
from procgate.commands import child_env
from procgate.errors import RunnerBusy, RunnerClosed, StoreUnavailable
from procgate.jobs import Chunk, Job, Outcome, Spec, new_job_id, utcnow
from procgate.runners import by_kind
from procgate.runners.liveness import STALE_AFTER, owner_is_dead, sweep_lost, sweep_stranded
from tests.conftest import wait_for, zombie_children


def submit(
    store: MemoryStore,
    runner: object,
    *argv: str,
    timeout: float | None = None,
    inline: bool = False,
) -> str:
    job = Job(
        id=new_job_id(),
        command="t",
        args=(),
        spec=Spec(argv=argv, env=child_env(), timeout=timeout, kill_grace=0.5),
    )
    store.create(job)
    runner.submit(job.id, inline=inline)  # type: ignore[attr-defined]
    return job.id


@pytest.mark.docs("configuration.md#runner", "python-api.md#runners")
def test_by_kind() -> None:
    """Config kinds map to runner classes; an unknown kind is a ConfigError."""
    assert by_kind("sync") is SyncRunner
    assert by_kind("thread") is ThreadRunner
    assert by_kind("process") is ProcessRunner
    with pytest.raises(ConfigError):
        by_kind("celery-please")


def test_thread_runner_starts_threads_on_demand() -> None:
    """An idle ThreadRunner has no threads; it never grows past max_workers."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=3)
    runner.open(store)
    try:
        assert runner._threads == []
        ids = [submit(store, runner, "/bin/sleep", "0.2") for _ in range(6)]
        for job_id in ids:
            assert store.wait(job_id, 10).status is JobStatus.SUCCEEDED
        assert len(runner._threads) == 3
    finally:
        runner.close()


def test_sequential_jobs_reuse_one_thread() -> None:
    """Jobs one after another reuse an idle thread instead of starting new ones."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=8)
    runner.open(store)
    try:
        for _ in range(5):
            job_id = submit(store, runner, "/bin/true")
            assert store.wait(job_id, 10).status is JobStatus.SUCCEEDED
        assert len(runner._threads) == 1
    finally:
        runner.close()


@pytest.mark.parametrize("runner_class", [ThreadRunner, ProcessRunner])
@pytest.mark.docs("python-api.md#runners", "testing.md#always-close-the-gate")
def test_close_cancels_queued_and_stops_running(runner_class: type[ThreadRunner]) -> None:
    """close() cancels what waits and stops what runs, and leaves no children behind."""
    store, runner = MemoryStore(), runner_class(max_workers=1)
    runner.open(store)
    running = submit(store, runner, "/bin/sleep", "100")
    queued = submit(store, runner, "/bin/sleep", "100")
    wait_for(lambda: store.get(running).status is JobStatus.RUNNING)
    runner.close()
    assert store.get(queued).status is JobStatus.CANCELLED
    stopped = store.get(running)
    assert stopped.status is JobStatus.CANCELLED
    assert stopped.error == "cancelled: the server shut down"
    with pytest.raises(RunnerClosed):
        runner.submit(new_job_id())
    assert zombie_children() == []


@pytest.mark.docs("python-api.md#runners", "python-api.md#the-runner-protocol")
def test_full_queue_raises_runner_busy() -> None:
    """Beyond max_workers running and max_queue waiting, submit raises RunnerBusy."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=1, max_queue=2)
    runner.open(store)
    try:
        first = submit(store, runner, "/bin/sleep", "100")
        wait_for(lambda: store.get(first).status is JobStatus.RUNNING)
        submit(store, runner, "/bin/sleep", "100")
        submit(store, runner, "/bin/sleep", "100")
        with pytest.raises(RunnerBusy):
            submit(store, runner, "/bin/sleep", "100")
    finally:
        runner.close()


@pytest.mark.docs("python-api.md#runners")
def test_process_runner_runs_in_worker_processes() -> None:
    """ProcessRunner's children are started by a worker, not by the server process."""
    store, runner = MemoryStore(), ProcessRunner(max_workers=2)
    runner.open(store)
    try:
        job_id = submit(store, runner, "/bin/sh", "-c", "echo $PPID")
        job = store.wait(job_id, 20)
        assert job.status is JobStatus.SUCCEEDED
        assert int(job.stdout) != os.getpid()
    finally:
        runner.close()


def test_process_runner_survives_a_dead_worker() -> None:
    """A worker killed mid-job makes that job error; the next job gets a new worker."""
    store, runner = MemoryStore(), ProcessRunner(max_workers=1)
    runner.open(store)
    try:
        job_id = submit(store, runner, "/bin/sh", "-c", "echo $PPID; sleep 100")
        wait_for(lambda: store.get(job_id).stdout, timeout=20)
        worker_pid = int(store.get(job_id).stdout)
        os.kill(worker_pid, signal.SIGKILL)
        job = store.wait(job_id, 10)
        assert job.status is JobStatus.ERROR
        assert job.error == "the worker process running it died"
        again = submit(store, runner, "/bin/echo", "again")
        assert store.wait(again, 20).stdout == b"again\n"
    finally:
        runner.close()


def test_process_runner_streams_large_output() -> None:
    """Output crosses the worker boundary intact and capped."""
    store, runner = MemoryStore(), ProcessRunner(max_workers=1)
    runner.open(store)
    try:
        job_id = submit(
            store,
            runner,
            "/bin/sh",
            "-c",
            "head -c 3000000 /dev/urandom | od -An | head -c 2500000",
        )
        job = store.wait(job_id, 30)
        assert job.status is JobStatus.SUCCEEDED
        assert len(job.stdout) == 2_500_000
    finally:
        runner.close()


def test_process_runner_timeout_in_worker() -> None:
    """Timeouts are enforced inside the worker."""
    store, runner = MemoryStore(), ProcessRunner(max_workers=1)
    runner.open(store)
    try:
        job_id = submit(store, runner, "/bin/sleep", "100", timeout=0.3)
        assert store.wait(job_id, 20).status is JobStatus.TIMED_OUT
    finally:
        runner.close()


@pytest.mark.docs("python-api.md#the-runner-protocol")
def test_sync_runner_needs_open() -> None:
    """A runner used before the Gate opened it says so."""
    with pytest.raises(RuntimeError):
        SyncRunner().submit("x")


@pytest.mark.docs("configuration.md#runner")
def test_invalid_pool_sizes() -> None:
    """Pool sizes below one are configuration errors."""
    with pytest.raises(ConfigError):
        ThreadRunner(max_workers=0)
    with pytest.raises(ConfigError):
        ThreadRunner(max_queue=0)


def finishing_threads(runner: ThreadRunner, store: MemoryStore) -> list[int]:
    """Open ``runner`` on ``store``; the list fills with the thread id of each finish."""
    threads: list[int] = []
    runner.open(store, lambda job_id: threads.append(threading.get_ident()))
    return threads


@pytest.mark.docs("python-api.md#the-runner-protocol")
def test_inline_submit_runs_in_the_callers_thread() -> None:
    """submit(inline=True) with a free slot runs the job before returning, right here."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=2)
    threads = finishing_threads(runner, store)
    try:
        job_id = submit(store, runner, "/bin/echo", "hi", inline=True)
        assert store.get(job_id).status is JobStatus.SUCCEEDED  # finished on return
        assert threads == [threading.get_ident()]
        assert runner._threads == []  # the pool was not needed
        job_id = submit(store, runner, "/bin/echo", "hi")  # not inline: the pool
        assert store.wait(job_id, 10).status is JobStatus.SUCCEEDED
        wait_for(lambda: len(threads) == 2)
        assert threads[1] != threading.get_ident()
    finally:
        runner.close()


def test_inline_submit_respects_max_workers_and_the_queue() -> None:
    """With every slot taken, or jobs queued, an inline submit queues like any other."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=1)
    threads = finishing_threads(runner, store)
    try:
        busy = submit(store, runner, "/bin/sleep", "0.5")
        wait_for(lambda: store.get(busy).status is JobStatus.RUNNING)
        started = time.monotonic()
        waiting = submit(store, runner, "/bin/echo", "hi", inline=True)
        assert time.monotonic() - started < 0.3  # queued, not run here
        assert store.get(waiting).status is JobStatus.QUEUED
        assert store.wait(waiting, 10).status is JobStatus.SUCCEEDED
        wait_for(lambda: len(threads) == 2)
        assert threading.get_ident() not in threads
    finally:
        runner.close()


def test_an_inline_submit_waits_for_a_slot_until_its_deadline() -> None:
    """A caller that waits for its job anyway waits for a slot too (until its ``until``)
    and then runs the job in its own thread; past ``until`` the job is queued for the pool,
    and the caller returns."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=1)
    threads = finishing_threads(runner, store)
    try:
        busy = submit(store, runner, "/bin/sleep", "0.3")
        wait_for(lambda: store.get(busy).status is JobStatus.RUNNING)
        job = Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("/bin/echo", "hi")))
        store.create(job)
        runner.submit(job.id, inline=True, until=time.monotonic() + 30)
        assert store.get(job.id).status is JobStatus.SUCCEEDED  # finished on return
        assert threads[-1] == threading.get_ident()  # ...in this thread

        long = submit(store, runner, "/bin/sleep", "2")
        wait_for(lambda: store.get(long).status is JobStatus.RUNNING)
        late = Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("/bin/echo", "hi")))
        store.create(late)
        started = time.monotonic()
        runner.submit(late.id, inline=True, until=started + 0.2)
        assert 0.15 <= time.monotonic() - started < 1.5
        assert store.get(late.id).status is JobStatus.QUEUED
        assert store.wait(late.id, 30).status is JobStatus.SUCCEEDED
    finally:
        runner.close()


def test_close_frees_a_caller_waiting_for_a_slot() -> None:
    """A caller waiting for a slot (for up to a minute) returns soon after ``close``."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=1)
    runner.open(store)
    busy = submit(store, runner, "/bin/sleep", "30")
    wait_for(lambda: store.get(busy).status is JobStatus.RUNNING)
    job = Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("/bin/echo", "hi")))
    store.create(job)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            runner.submit(job.id, inline=True, until=time.monotonic() + 60)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    runner.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert store.get(busy).status is JobStatus.CANCELLED


@pytest.mark.docs("python-api.md#the-runner-protocol")
@pytest.mark.parametrize("kind", ["sync", "thread"])
def test_a_reserved_slot_runs_a_job_created_running(kind: str) -> None:
    """``reserve()`` gives a slot to run a new job in this thread: the job is stored
    ``running`` by the caller and not started again. ThreadRunner gives out at most
    ``max_workers`` slots; a released one can be taken again."""
    store = CountingStore()
    runner = SyncRunner() if kind == "sync" else ThreadRunner(max_workers=1)
    threads = finishing_threads(runner, store)  # type: ignore[arg-type]
    try:
        slot = runner.reserve()
        assert slot is not None
        if kind == "thread":
            assert runner.reserve() is None  # the only slot is taken
        job = Job(
            id=new_job_id(),
            command="t",
            args=(),
            spec=Spec(argv=("/bin/echo", "hi")),
            status=JobStatus.RUNNING,
            started_at=utcnow(),
            owner=runner.owner,
        )
        store.create(job)
        slot.run(job, time.monotonic() + 30)
        got = store.get(job.id)
        assert (got.status, got.stdout) == (JobStatus.SUCCEEDED, b"hi\n")
        assert threads == [threading.get_ident()]
        assert store.starts == 0
        with pytest.raises(RuntimeError):
            slot.release()  # used once
        again = runner.reserve()
        assert again is not None
        again.release()
        last = runner.reserve()
        assert last is not None
        last.release()
    finally:
        runner.close()


class CountingStore(MemoryStore):
    """A MemoryStore that counts the jobs between ``start`` and ``finish``: the peak is
    exact, where a thread sampling ``list()`` spins a core and can miss a short overlap."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._counting = threading.Lock()
        self.active = 0
        self.starts = 0
        self.peak = 0

    def start(self, job_id: str, owner: str | None = None) -> Job | None:
        self.starts += 1
        job = super().start(job_id, owner)
        if job is not None:
            with self._counting:
                self.active += 1
                self.peak = max(self.peak, self.active)
        return job

    def finish(self, job_id: str, outcome: Outcome, output: Sequence[Chunk] = ()) -> bool:
        was_running = self.get(job_id, output=False).status is JobStatus.RUNNING
        finished = super().finish(job_id, outcome, output)
        if finished and was_running:
            with self._counting:
                self.active -= 1
        return finished


def test_inline_and_pool_jobs_share_max_workers() -> None:
    """Inline jobs from many threads and pool jobs together never run more than the limit."""
    store, runner = CountingStore(max_jobs=1000), ThreadRunner(max_workers=2)
    runner.open(store)

    def client(inline: bool) -> None:
        for _ in range(4):
            job_id = submit(store, runner, "/bin/sleep", "0.05", inline=inline)
            store.wait(job_id, 30)

    clients = [threading.Thread(target=client, args=(n % 2 == 0,)) for n in range(8)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
    finally:
        runner.close()
    jobs = store.list(limit=1000).jobs
    assert len(jobs) == 32
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    assert (store.peak, store.active) == (2, 0)


def test_close_stops_inline_jobs_and_waits_for_them() -> None:
    """close() cancels a job running in a caller's thread and returns once it ended."""
    store, runner = MemoryStore(), ThreadRunner(max_workers=2)
    runner.open(store)
    ids: list[str] = []
    caller = threading.Thread(
        target=lambda: ids.append(submit(store, runner, "/bin/sleep", "30", inline=True))
    )
    caller.start()
    wait_for(lambda: store.list(status=JobStatus.RUNNING).jobs != [])
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 5
    caller.join(5)
    job = store.get(ids[0])
    assert job.status is JobStatus.CANCELLED
    assert job.error == "cancelled: the server shut down"


def test_process_runner_ignores_inline() -> None:
    """ProcessRunner keeps its jobs in its worker processes, inline or not."""
    store, runner = MemoryStore(), ProcessRunner(max_workers=1)
    threads = finishing_threads(runner, store)
    try:
        job_id = submit(store, runner, "/bin/echo", "hi", inline=True)
        assert store.wait(job_id, 30).status is JobStatus.SUCCEEDED
        wait_for(lambda: len(threads) == 1)
        assert threads[0] != threading.get_ident()
    finally:
        runner.close()


def test_a_dead_runner_s_retryable_job_runs_again_here() -> None:
    """A runner's first sweep finds a dead runner's jobs: one with retry_on_worker_loss
    runs again in this runner, once; the others become lost."""
    store = MemoryStore()
    jobs = {}
    for name, retry in (("again", True), ("plain", False)):
        job = Job(
            id=new_job_id(),
            command=name,
            args=(),
            spec=Spec(argv=("/bin/echo", name), env=child_env(), retry_on_worker_loss=retry),
        )
        store.create(job)
        store.start(job.id, "elsewhere:1:dead")  # a runner on another host, never beating
        jobs[name] = job.id
    runner = ThreadRunner()
    runner.open(store)
    try:
        again = store.wait(jobs["again"], 10)
        assert again.status is JobStatus.SUCCEEDED
        assert again.stdout == b"again\n"
        assert again.owner == runner.owner
        assert store.get(jobs["plain"]).status is JobStatus.LOST
    finally:
        runner.close()


def test_an_owner_on_another_host_is_lost_only_after_stale_after(
    time_machine: time_machine.TimeMachineFixture,
) -> None:
    """A runner on another host (its pid means nothing here) is taken for dead only when
    its last heartbeat is more than stale_after old. On a stopped clock, sweeps 0.01 s
    before that leave its running job alone, a heartbeat then starts the count again, and
    a sweep 0.01 s past stale_after makes the job lost, naming the owner."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process here, which must not matter there
    time_machine.move_to(time.time(), tick=False)
    store = MemoryStore()
    owner = f"elsewhere.invalid:{gone.pid}:cafe"
    store.heartbeat(owner)
    job = Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("true",)), owner=owner)
    store.create(job)
    store.start(job.id, owner)
    time_machine.shift(STALE_AFTER - 0.01)
    assert sweep_lost(store, "me", stale_after=STALE_AFTER) == 0
    store.heartbeat(owner)
    time_machine.shift(STALE_AFTER - 0.01)
    assert sweep_lost(store, "me", stale_after=STALE_AFTER) == 0
    assert store.get(job.id).status is JobStatus.RUNNING
    time_machine.shift(0.02)
    assert sweep_lost(store, "me", stale_after=STALE_AFTER) == 1
    lost = store.get(job.id)
    assert lost.status is JobStatus.LOST
    assert owner in (lost.error or "")


def test_an_owner_on_this_host_is_lost_once_its_pid_is_gone() -> None:
    """On this host a runner whose process is gone is dead at once, however fresh its
    heartbeat; one whose process lives is judged by its heartbeat alone."""
    me = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    beat = time.time()
    assert owner_is_dead(f"{me}:{gone.pid}:cafe", beat, beat, stale_after=STALE_AFTER)
    alive = f"{me}:{os.getpid()}:cafe"
    assert not owner_is_dead(alive, beat, beat + STALE_AFTER, stale_after=STALE_AFTER)
    assert owner_is_dead(alive, beat, beat + STALE_AFTER + 0.01, stale_after=STALE_AFTER)
    assert owner_is_dead(alive, None, beat, stale_after=STALE_AFTER)  # never beat
    # A worker that exited and is not reaped yet (a zombie) is gone too.
    zombie = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
        assert owner_is_dead(f"{me}:{zombie.pid}:cafe", beat, beat, stale_after=STALE_AFTER)
    finally:
        zombie.wait()


def test_what_the_sweep_says_of_a_dead_runners_job(caplog: pytest.LogCaptureFixture) -> None:
    """A job of a dead runner on another host is lost with "may still be running on its
    host" (nothing here can be killed); on this host, with no process left to kill, the
    same. A job the sweep cannot hand to the runner again (never started, resubmit
    refused) is lost saying so, naming the dead runner."""
    store = MemoryStore()
    gone = subprocess.Popen(["true"])
    gone.wait()
    elsewhere = f"elsewhere.invalid:{os.getpid()}:cafe"  # a live pid here: not its host
    here = f"{socket.gethostname()}:{gone.pid}:cafe"
    running: dict[str, str] = {}
    for owner in (elsewhere, here):
        job = store.create(
            Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("true",)), owner=owner)
        )
        store.start(job.id, owner)
        running[owner] = job.id
    queued = store.create(
        Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("true",)), owner=here)
    )

    def refuse(job_id: str) -> None:
        raise RunnerBusy("the queue is full")

    with caplog.at_level("WARNING", logger="procgate"):
        assert sweep_lost(store, "me", stale_after=STALE_AFTER, resubmit=refuse) == 2
    assert f"could not submit job {queued.id} again" in caplog.messages
    for owner, job_id in running.items():
        lost = store.get(job_id)
        assert lost.status is JobStatus.LOST
        assert lost.error == (
            f"lost: its runner ({owner}) stopped before the job finished; "
            "a process it started may still be running on its host"
        )
    refused = store.get(queued.id)
    assert refused.status is JobStatus.LOST
    assert refused.error == (f"lost: its runner ({here}) died, and it could not be submitted again")


def test_pid_alive_reads_the_state_after_the_last_parenthesis(tmp_path: Path) -> None:
    """A running program whose name looks like the end of a zombie's stat line
    ("x) Z y") is alive; without /proc, a pid kill() finds counts as alive."""
    from procgate.runners import liveness

    program = tmp_path / "x) Z y"
    program.write_bytes(Path("/bin/sleep").read_bytes())
    program.chmod(0o755)
    proc = subprocess.Popen([str(program), "30"])
    try:
        wait_for(lambda: b"x) Z y" in Path(f"/proc/{proc.pid}/stat").read_bytes())
        assert liveness._pid_alive(proc.pid)

        def no_proc(*args: Any, **kwargs: Any) -> Any:
            raise FileNotFoundError("no /proc here")

        liveness.open = no_proc  # type: ignore[attr-defined]
        try:
            assert liveness._pid_alive(proc.pid)
        finally:
            del liveness.open  # type: ignore[attr-defined]
        with pytest.raises(subprocess.TimeoutExpired):  # looking sent it no signal
            proc.wait(0.5)
    finally:
        proc.kill()
        proc.wait()


def test_sweep_stranded_takes_only_jobs_loose_twice(caplog: pytest.LogCaptureFixture) -> None:
    """Only a job of this runner that it does not hold, and that was already loose at the
    last sweep, is stranded: queued ones are submitted again (each of them), a running one
    becomes lost. Held jobs and jobs loose for the first time are left alone, and the
    latter are the suspects of the next sweep."""
    store = MemoryStore()
    me = "host:1:me"

    def make(running: bool) -> str:
        job = store.create(
            Job(id=new_job_id(), command="t", args=(), spec=Spec(argv=("true",)), owner=me)
        )
        if running:
            store.start(job.id, me)
        return job.id

    held, first_seen = make(False), make(False)
    queued, running, queued_too = make(False), make(True), make(False)
    resubmitted: list[str] = []
    with caplog.at_level("WARNING", logger="procgate"):
        suspects = sweep_stranded(
            store,
            me,
            holding=lambda: {held},
            suspects={held, queued, running, queued_too},
            resubmit=resubmitted.append,
        )
    assert resubmitted == [queued, queued_too]
    assert suspects == {first_seen}
    lost = store.get(running)
    assert lost.status is JobStatus.LOST
    assert lost.error == (
        "lost: its runner could not record how it ended (the store was unavailable)"
    )
    assert store.get(held).status is JobStatus.QUEUED
    assert store.get(first_seen).status is JobStatus.QUEUED
    assert f"job {queued} was left queued by its runner: submitting it again" in caplog.messages
    assert f"marked job {running} as lost: its runner let go of it" in caplog.messages


def test_a_waited_job_is_stored_running_and_its_slot_comes_back() -> None:
    """Through the Gate, a job the request waits for is created running in a slot of the
    runner (never started from ``queued``); a replayed idempotency key and a store that
    fails the create give the slot back, so the one slot serves the next request."""
    store = CountingStore()
    runner = ThreadRunner(max_workers=1)
    gate = Gate(store=store, runner=runner)
    gate.register("echo", ["/bin/echo"])
    client = Client(gate)
    try:
        body = {"args": ["hi"], "wait": True, "idempotency_key": "k"}
        first = client.post("/commands/echo", json=body)
        assert first.status_code == 200
        assert first.json["stdout"] == "hi\n"
        assert store.starts == 0
        replay = client.post("/commands/echo", json=body)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json["id"] == first.json["id"]

        def broken(job: Job) -> Job:
            raise StoreUnavailable("the store is down")

        real = store.create
        store.create = broken  # type: ignore[method-assign]
        assert client.post("/commands/echo", json={"args": ["x"], "wait": True}).status_code == 503
        store.create = real  # type: ignore[method-assign]
        started = time.monotonic()
        again = client.post("/commands/echo", json={"args": ["again"], "wait": 5})
        assert again.status_code == 200
        assert again.json["stdout"] == "again\n"
        assert time.monotonic() - started < 2  # the slot was back: no wait for one
        assert store.starts == 0
    finally:
        gate.close()
