"""Jobs through store faults and runner deaths: retried finishes, stranded jobs, leftovers.

The store faults are real: a SQLite file made immutable (``chattr +i``: even root cannot
write it), so every write fails with an I/O error until it is made writable again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from procgate import JobStatus, ThreadRunner
from procgate.commands import child_env
from procgate.jobs import Job, Spec, new_job_id
from procgate.process import kill_tagged, process_tag
from procgate.stores.sqlite import SQLiteStore
from tests.conftest import live_pids_in_group, wait_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    yield store
    store.close()


@contextlib.contextmanager
def unwritable(store: SQLiteStore) -> Iterator[None]:
    """The database and its log immutable while inside (not the mapped -shm index)."""
    files = [store.path, store.path + "-wal"]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def job(*argv: str, owner: str | None = None) -> Job:
    return Job(
        id=new_job_id(),
        command="t",
        args=(),
        spec=Spec(argv=argv, env=child_env(), timeout=30, kill_grace=0.5),
        owner=owner,
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process group of its own that would run for 300 s: a job's orphaned child."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    cheap = process_tag(proc.pid, just_started=True)
    assert cheap is not None
    exact = process_tag(proc.pid)
    assert exact is not None
    assert abs(int(cheap.split(":")[2]) - int(exact.split(":")[2])) <= os.sysconf("SC_CLK_TCK")
    yield proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.parametrize(
    ("after", "output"),
    [("echo after", b"before\nafter\n"), ("true", b"before\n")],
    ids=["output-and-finish", "finish-only"],
)
@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_finish_the_store_refuses_is_recorded_once_it_can_be(
    store: SQLiteStore, tmp_path: Path, after: str, output: bytes
) -> None:
    """The store refuses writes while the child runs and ends: the runner keeps its
    output and retries the finish with backoff, so when the file is writable again the
    job ends succeeded with all of its output, instead of staying running for ever."""
    go = tmp_path / "go"  # the child ends only once the store is unwritable (or after 60 s)
    script = f"echo before; i=0; while [ ! -e {go} ] && [ $i -lt 1200 ]; do sleep 0.05; "
    script += f"i=$((i+1)); done; {after}"
    runner = ThreadRunner(max_workers=2)
    runner.open(store)
    try:
        started = store.create(job("sh", "-c", script))
        runner.submit(started.id)
        wait_for(lambda: store.get(started.id).stdout == b"before\n", timeout=30)
        tag = store.get(started.id).process
        assert tag is not None
        group = int(tag.split(":")[1])
        with unwritable(store):
            go.touch()
            wait_for(lambda: not live_pids_in_group(group), timeout=30)  # it ended
            assert store.get(started.id).status is JobStatus.RUNNING  # it cannot say yet
            assert started.id in runner.holding()  # still in hand: retrying
        done = store.wait(started.id, 30)
        assert done.status is JobStatus.SUCCEEDED
        assert done.stdout == output
        wait_for(lambda: runner.holding() == set(), timeout=30)  # let go after the finish
    finally:
        runner.close()


def test_a_queued_job_its_runner_let_go_of_is_submitted_again(store: SQLiteStore) -> None:
    """A job stored with this runner as owner that the runner does not hold (its start
    could not be recorded) is found by the sweep, after a second look, and run."""
    runner = ThreadRunner(heartbeat=0.2, stale_after=5)
    loose = store.create(job("echo", "found", owner=runner.owner))
    runner.open(store)
    try:
        done = store.wait(loose.id, 30)
        assert done.status is JobStatus.SUCCEEDED
        assert done.stdout == b"found\n"
    finally:
        runner.close()


def test_a_running_job_its_runner_let_go_of_becomes_lost_and_is_killed(
    store: SQLiteStore, sleeper: subprocess.Popen[bytes]
) -> None:
    """A running job of a live runner that it no longer holds (its finish could not be
    recorded for too long) becomes lost, and what is left of its group is killed."""
    runner = ThreadRunner(heartbeat=0.2, stale_after=5)
    loose = store.create(job("sleep", "300", owner=runner.owner))
    store.start(loose.id)
    tag = process_tag(sleeper.pid)
    assert tag is not None
    store.record_process(loose.id, tag)
    runner.open(store)
    try:
        lost = store.wait(loose.id, 30)
        assert lost.status is JobStatus.LOST
        assert "could not record how it ended" in (lost.error or "")
        assert "killed" in (lost.error or "")
        wait_for(lambda: not live_pids_in_group(sleeper.pid), timeout=30)
    finally:
        runner.close()


@pytest.mark.docs("security.md#failure-modes", "stores.md#restart-recovery-and-the-lost-status")
def test_a_dead_runner_s_children_on_this_host_are_killed(
    store: SQLiteStore, sleeper: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep that finds a runner of this host dead (its pid is gone) kills what is
    left of its running jobs' process groups before marking them lost."""
    dead = f"{socket.gethostname()}:{_free_pid()}:gone"
    orphan = store.create(job("sleep", "300", owner=dead))
    store.start(orphan.id)
    tag = process_tag(sleeper.pid)
    assert tag is not None
    store.record_process(orphan.id, tag)
    runner = ThreadRunner(heartbeat=0.2)
    with caplog.at_level("WARNING", logger="procgate"):
        runner.open(store)  # the first sweep runs now
    try:
        lost = store.get(orphan.id)
        assert lost.status is JobStatus.LOST
        assert "what was left of its process group was killed" in (lost.error or "")
        assert f"killed what was left of job {orphan.id}'s processes" in caplog.messages
        wait_for(lambda: not live_pids_in_group(sleeper.pid), timeout=30)
    finally:
        runner.close()


@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_a_dead_runner_s_queued_jobs_run_here(store: SQLiteStore) -> None:
    """Jobs a dead runner had queued but never started are not lost: they run here."""
    dead = f"{socket.gethostname()}:{_free_pid()}:gone"
    waiting = store.create(job("echo", "late", owner=dead))
    runner = ThreadRunner(heartbeat=0.2)
    runner.open(store)
    try:
        done = store.wait(waiting.id, 30)
        assert done.status is JobStatus.SUCCEEDED
        assert done.stdout == b"late\n"
        assert done.owner == runner.owner
    finally:
        runner.close()


@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_kill_tagged_spares_a_process_that_reused_the_pid(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """A tag whose start time is not the live process's (by more than START_TOLERANCE)
    names another process: nothing is signalled. A tag made the cheap way, from the boot
    clock as the process starts, names it; the tag kills the whole group."""
    tag = process_tag(sleeper.pid)
    assert tag is not None
    boot, pid, start = tag.split(":")
    ticks = os.sysconf("SC_CLK_TCK")
    assert kill_tagged(f"{boot}:{pid}:{int(start) - 2 * ticks}") is False
    assert kill_tagged(f"{boot}:{pid}:{int(start) + 2 * ticks}") is False
    assert kill_tagged(f"not-this-boot:{pid}:{start}") is False
    assert live_pids_in_group(sleeper.pid)
    assert kill_tagged(tag) is True
    wait_for(lambda: not live_pids_in_group(sleeper.pid), timeout=30)


def _free_pid() -> int:
    """A pid no process has now (a runner's pid after it died)."""
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid
