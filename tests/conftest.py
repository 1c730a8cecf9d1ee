"""Fixtures shared by the test suite: Gates per runner kind, and process-tree probes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from werkzeug.test import Client

from procgate import Gate, ProcessRunner, SyncRunner, ThreadRunner
from procgate.runners import Runner

RUNNER_KINDS = ["sync", "thread", "process"]


def make_runner(kind: str) -> Runner:
    """A small runner of the given kind, sized for tests."""
    if kind == "sync":
        return SyncRunner()
    if kind == "thread":
        return ThreadRunner(max_workers=4, max_queue=50)
    return ProcessRunner(max_workers=2, max_queue=50)


def register_defaults(gate: Gate) -> Gate:
    """The commands most tests use."""
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], timeout=60, kill_grace=1)
    gate.register("cat", ["cat"])
    gate.register("false", ["false"])
    gate.register("sh", 'eval "$1"', shell=True, timeout=30, kill_grace=1, allow_env=["FOO"])
    gate.register("env", ["env"], env={"CONFIGURED": "yes"}, allow_env=["FOO"])
    gate.register("short", ["sleep"], timeout=0.5, kill_grace=0.5)
    return gate


@pytest.fixture(params=RUNNER_KINDS)
def runner_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gate(runner_kind: str) -> Iterator[Gate]:
    gate = register_defaults(Gate(runner=make_runner(runner_kind), max_wait=20))
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgid) of every process, read from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        yield int(entry), fields[0], int(fields[1]), int(fields[2])


def live_pids_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies count as gone)."""
    return [pid for pid, state, _, group in _processes() if group == pgid and state not in "ZX"]


def zombie_children() -> list[int]:
    """Direct children of this process that exited but were never reaped."""
    me = os.getpid()
    return [pid for pid, state, ppid, _ in _processes() if state == "Z" and ppid == me]
