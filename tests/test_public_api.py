"""The public API is an explicit, sorted list; a change to it is deliberate."""

from __future__ import annotations

import pytest

import procgate


@pytest.mark.docs("python-api.md#errors")
def test_all_is_pinned() -> None:
    """procgate.__all__ lists exactly the public names, sorted, all importable."""
    assert procgate.__all__ == [
        "Command",
        "ConfigError",
        "Forbidden",
        "Gate",
        "InvalidRequest",
        "Job",
        "JobNotFound",
        "JobPage",
        "JobStatus",
        "JobStore",
        "MemoryStore",
        "Outcome",
        "ProcessRunner",
        "ProcgateError",
        "Runner",
        "RunnerBusy",
        "RunnerClosed",
        "SQLiteStore",
        "Spec",
        "SyncRunner",
        "ThreadRunner",
        "UnknownCommand",
        "create_app",
        "open_store",
    ]
    assert procgate.__all__ == sorted(procgate.__all__, key=str)
    for name in procgate.__all__:
        assert getattr(procgate, name) is not None


@pytest.mark.docs("http-api.md#statuses")
@pytest.mark.docs("python-api.md#records")
def test_statuses_are_the_documented_words() -> None:
    """Job statuses serialise to the words of the HTTP contract."""
    assert [s.value for s in procgate.JobStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "error",
        "lost",
    ]
