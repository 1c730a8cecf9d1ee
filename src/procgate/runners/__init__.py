"""The Runner protocol, and the table of runner kinds a config file can name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from procgate.errors import ConfigError
from procgate.runners.process import ProcessRunner
from procgate.runners.sync import FinishHook, Slot, SyncRunner
from procgate.runners.thread import ThreadRunner
from procgate.stores import JobStore

__all__ = [
    "InlineRunner",
    "ProcessRunner",
    "Runner",
    "Slot",
    "SyncRunner",
    "ThreadRunner",
    "by_kind",
]


class Runner(Protocol):
    """Decides where and when a stored job runs. The Gate never touches a process."""

    kind: str
    owner: str  # stamped on the jobs it takes; see procgate.runners.liveness
    runs_here: bool  # jobs run on this host, so commands' programs must be found here

    def open(self, store: JobStore, on_finish: FinishHook | None = None) -> None:
        """Bind to the store the jobs live in; called once, by the Gate.

        ``on_finish(job_id)`` must be called once for each job this runner finishes, and
        for each job it was handed that was cancelled while it waited.
        """
        ...

    def submit(
        self,
        job_id: str,
        *,
        inline: bool = False,
        queue: str | None = None,
        until: float | None = None,
    ) -> None:
        """Arrange for a queued job to run.

        Cheap and non-blocking, except for SyncRunner. ``RunnerBusy`` when saturated,
        ``RunnerClosed`` after ``close``. ``inline=True`` says the caller will wait for the
        job to finish anyway, so the runner may run it in the calling thread (SyncRunner
        always does; ThreadRunner when a slot is free); a runner may ignore it. ``until``
        (a ``time.monotonic()`` time) is when the caller stops waiting: ThreadRunner then
        leaves the rest of the job to a thread of its own and returns. ``queue``: the
        command's queue, for runners that route jobs (CeleryRunner); others ignore it.
        """
        ...

    def close(self) -> None:
        """Cancel queued jobs, stop running ones, and release threads and processes."""
        ...


class InlineRunner(Runner, Protocol):
    """A runner that can run a new job in the caller's thread (SyncRunner, ThreadRunner)."""

    def reserve(self) -> Slot | None:
        """A place to run one new job in the caller's thread at once, or None when there
        is none free now (then create the job ``queued`` and ``submit`` it).

        With a slot, the caller creates the job already ``running`` (owned by this runner)
        and calls ``slot.run(job, until)``, or ``slot.release()`` if it stored no new job:
        one store write fewer than a queued job's start.
        """
        ...


_KINDS: dict[str, Callable[..., Runner]] = {
    "sync": SyncRunner,
    "thread": ThreadRunner,
    "process": ProcessRunner,
}


def by_kind(kind: str) -> Callable[..., Runner]:
    """The runner class for a config file's ``[runner] kind``."""
    if kind == "celery":  # an extra: imported only when asked for
        from procgate.runners.celery import CeleryRunner

        celery_runner: Callable[..., Runner] = CeleryRunner
        return celery_runner
    try:
        return _KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown runner kind {kind!r}: expected one of {', '.join([*_KINDS, 'celery'])}"
        ) from None
