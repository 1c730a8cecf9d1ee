"""Writing a job's progress to the store, through the store's faults.

A store may be unavailable for a moment: Redis restarting, a full disk, a file made
read-only. The child must not notice, and the job must not stay ``running`` once it ended.
So output that cannot be written yet is kept (the job's ``max_output`` caps it already)
and written with the next chunk or before the finish; a cancel check that fails counts as
"no cancel"; and the start and the finish are tried again with backoff (``persist``) for
up to ``RETRY_FOR`` seconds. A runner that gives up no longer holds the job, and its
heartbeat's sweep deals with it (``procgate.runners.liveness``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from procgate.errors import StoreUnavailable
from procgate.jobs import Chunk
from procgate.process import CancelCheck
from procgate.stores import JobStore

logger = logging.getLogger("procgate")

_T = TypeVar("_T")

#: Seconds a runner keeps trying to record a job's start, output or end.
RETRY_FOR = 600.0

#: Seconds it keeps trying once its runner is shutting down.
RETRY_WHILE_CLOSING = 5.0

#: Seconds of a job's first output kept back, to be written with its finish if it ends by
#: then (``OutputWriter``): live output of a job's first moments is that much later.
HOLD = 0.05

#: The first and the longest pause (seconds) between two tries.
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 2.0


def persist(
    call: Callable[[], _T], halt: threading.Event, what: str, retry_for: float = RETRY_FOR
) -> _T:
    """``call()``, tried again with exponential backoff while it raises StoreUnavailable.

    The last ``StoreUnavailable`` is raised once ``retry_for`` seconds have passed, or
    ``RETRY_WHILE_CLOSING`` seconds after ``halt`` was set.
    """
    deadline = time.monotonic() + retry_for
    pause = FIRST_PAUSE
    tries = 0
    while True:
        try:
            result = call()
        except StoreUnavailable as exc:
            now = time.monotonic()
            if halt.is_set():
                deadline = min(deadline, now + RETRY_WHILE_CLOSING)
            if now >= deadline:
                logger.error("%s: giving up after %d tries: %s", what, tries + 1, exc.message)
                raise
            if tries == 0:
                logger.warning("%s: %s; trying again", what, exc.message)
            tries += 1
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, LONGEST_PAUSE)
        else:
            if tries:
                logger.warning("%s: done after %d tries", what, tries + 1)
            return result


class OutputWriter:
    """The one writer of a job's output: numbers chunks from 1, keeps stream offsets.

    The output of a job's first ``hold`` seconds is kept back: most jobs of a job API
    are short, and their output then goes to the store with their finish, in one write
    instead of two (``JobStore.finish(..., output=)``). Past that, each chunk is written
    as it comes, and ``tick`` (called at every cancel check) writes what was held.

    A chunk the store cannot take now is kept, in order, and written before the next one
    (``flush``). Writing a chunk again after a write whose answer was lost is harmless:
    the stores ignore a chunk index they already hold.
    """

    def __init__(self, store: JobStore, job_id: str, hold: float = HOLD) -> None:
        self.store = store
        self.job_id = job_id
        self.index = 0
        self.offsets = {"stdout": 0, "stderr": 0}
        self.pending: deque[Chunk] = deque()
        self.hold_until = time.monotonic() + hold

    def __call__(self, stream: str, data: bytes) -> None:
        self.index += 1
        self.pending.append(Chunk(self.index, stream, self.offsets[stream], data))
        self.offsets[stream] += len(data)
        self.tick()

    def tick(self) -> None:
        """Write the kept chunks, once the hold is over; a store that refuses keeps them."""
        if self.pending and time.monotonic() >= self.hold_until:
            with contextlib.suppress(StoreUnavailable):  # kept: the next write, or the finish
                self.flush()

    def flush(self) -> None:
        """Write every kept chunk; ``StoreUnavailable`` when the store still refuses."""
        while self.pending:
            self.store.append_output(self.job_id, self.pending[0])
            self.pending.popleft()


def cancel_check(
    store: JobStore, job_id: str, halt: threading.Event, writer: OutputWriter | None = None
) -> CancelCheck:
    """Whether the job should stop: its runner halts, or someone asked to cancel it.

    A store that cannot answer now means "not cancelled": the child goes on, and the next
    check (50 ms later) asks again. Each check first ``tick``s the job's ``writer``.
    """
    warned = False

    def cancelled() -> bool:
        nonlocal warned
        if writer is not None:
            writer.tick()
        if halt.is_set():
            return True
        try:
            return store.cancel_requested(job_id)
        except StoreUnavailable as exc:
            if not warned:
                logger.warning("job %s: cannot check for a cancel: %s", job_id, exc.message)
                warned = True
            return False

    return cancelled
