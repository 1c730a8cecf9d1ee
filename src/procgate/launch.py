"""A new job's way in: the capacity checks, its one write to the store, and the runner.

The Gate turns a request into a ``Job`` and its HTTP answer; what lies between (how many
jobs may be active, whether an idempotency key was used before, where the job runs, and
what is undone when it cannot run) is here, apart from HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable

from procgate import audit
from procgate.commands import Command
from procgate.errors import ProcgateError, RateLimited, RunnerBusy, RunnerClosed, TooManyRunning
from procgate.jobs import Job, JobStatus, utcnow
from procgate.runners import Runner, Slot
from procgate.stores import JobStore

logger = logging.getLogger("procgate")

#: A runner's ``reserve`` (``procgate.runners.InlineRunner``).
Reserve = Callable[[], "Slot | None"]


def check_capacity(store: JobStore, max_running: int | None, command: Command | None) -> None:
    """429 when the Gate (``max_running``) or the command has its ``max_running`` or
    ``max_rate`` reached.

    Counted in the store, so the limits hold across worker processes and hosts, to within
    the requests that race past the count together.
    """
    if max_running is not None and store.count(active=True) >= max_running:
        raise TooManyRunning(f"{max_running} jobs are already queued or running")
    if command is None:
        return
    if (
        command.max_running is not None
        and store.count(command=command.name, active=True) >= command.max_running
    ):
        raise TooManyRunning(
            f"command {command.name!r} already has {command.max_running} jobs queued or running"
        )
    rate = command.max_rate
    if rate is not None:
        since = time.time() - rate.window
        if store.count(command=command.name, since=since) >= rate.count:
            raise RateLimited(
                f"command {command.name!r} is limited to {rate.text}",
                retry_after=max(1, math.ceil(rate.window / rate.count)),
            )


def launch(
    store: JobStore, runner: Runner, reserve: Reserve | None, job: Job, until: float | None
) -> tuple[Job, bool]:
    """Store ``job`` and have ``runner`` run it; the stored job, and whether it is an
    earlier one answered again (True: the caller's idempotency key was used before, and
    nothing new runs).

    ``until`` (a ``time.monotonic()`` time; None when the caller does not wait): the
    caller waits for the job until then, so it may run in the caller's thread. When the
    runner has a slot free now (``reserve``), the job is stored ``running`` and run here:
    one store write fewer than queued and then started. A job that cannot run
    (``RunnerBusy``, ``RunnerClosed``) leaves no trace. Whatever fails, the job's upload
    directory is removed unless the stored job owns it.
    """
    files_dir = job.spec.files_dir
    slot: Slot | None = None
    try:
        slot = reserve() if until is not None and reserve is not None else None
        if slot is not None:
            job = dataclasses.replace(job, status=JobStatus.RUNNING, started_at=utcnow())
        stored = store.create(job)
    except BaseException:
        if slot is not None:
            slot.release()
        if files_dir is not None:
            shutil.rmtree(files_dir, ignore_errors=True)
        raise
    replayed = stored.id != job.id
    if replayed:
        if slot is not None:
            slot.release()
        if files_dir is not None:
            shutil.rmtree(files_dir, ignore_errors=True)  # the stored job has its own files
        if stored.idempotency_scope != job.idempotency_scope:
            # A store that matched the key alone (a JobStore written for the old contract)
            # would hand this caller someone else's job: answer nothing of it.
            logger.error(
                "store %s answered job %s for another caller's idempotency key",
                type(store).__name__,
                stored.id,
            )
            raise ProcgateError("internal server error")
        return stored, True
    audit.record("queued", stored)
    if slot is not None and until is not None:
        slot.run(stored, until)
        return stored, False
    # A job the caller waits for may still run in its thread (ThreadRunner waits for a
    # slot until ``until``); a runner thread supervises the rest of one that outlives it.
    try:
        runner.submit(job.id, inline=until is not None, queue=job.spec.queue, until=until)
    except (RunnerBusy, RunnerClosed):
        store.cancel(job.id)  # never ran: leave no trace of it
        store.delete(job.id)
        if files_dir is not None:
            shutil.rmtree(files_dir, ignore_errors=True)
        raise
    return stored, False
