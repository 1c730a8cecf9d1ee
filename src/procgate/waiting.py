"""Budgets for the slow things a request may do while it holds a server thread.

A WSGI server has a fixed number of threads. A request that waits for a job (a long-poll,
``"wait"``, a follow, an event stream) or that reads a body the client sends slowly holds
one the whole time; enough of them and ``/health`` queues behind them. Each kind gets a
``Budget``: a count of threads that may be doing it at once, taken without waiting. A
request that finds its budget spent does not queue: it gets its answer at once (the job as
it stands, with ``Retry-After``) or an error saying when to try again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from procgate.errors import ProcgateError


def thread_budgets(threads: int) -> dict[str, int]:
    """The Gate's budgets for a server with ``threads`` threads per process: half may wait
    for jobs, a quarter read bodies, and the rest (a quarter at least) stay free for
    everything else, ``/health`` included."""
    return {"max_waiting": max(1, threads // 2), "max_body_readers": max(1, threads // 4)}


#: Seconds a body read waits for a share: long enough for the reads of a burst of fast
#: clients, which hold theirs for microseconds (or a few GIL switches, 5 ms each), short
#: enough that a flood of slow bodies holding every share costs each refused request's
#: thread no more than this (at 0.25 s, 100 at once kept /health waiting a second; at
#: 0.02 s, a burst of fast clients on a loaded machine met 503 once in a full test run).
BODY_READ_PATIENCE = 0.06


class Budget:
    """At most ``limit`` holders at once; ``take`` waits at most its ``patience``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)

    @property
    def held(self) -> int:
        """How many hold a share now."""
        return self._held

    def take(self, patience: float = 0.0) -> bool:
        """Take a share if one is left, or comes back within ``patience`` seconds."""
        with self._lock:
            if self._held >= self.limit and not (
                patience > 0 and self._freed.wait_for(lambda: self._held < self.limit, patience)
            ):
                return False
            self._held += 1
            return True

    @contextlib.contextmanager
    def share(self, patience: float = 0.0) -> Iterator[bool]:
        """``take`` for the ``with`` block, which is told whether it got the share; one
        taken is given back as the block ends."""
        taken = self.take(patience)
        try:
            yield taken
        finally:
            if taken:
                self.give()

    def give(self) -> None:
        """Give back a share taken with ``take``."""
        with self._lock:
            self._held -= 1
            self._freed.notify()

    def hold_while(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, holding a share (already taken) until they end or are closed,
        even if never iterated (a HEAD request's body is closed unread)."""
        return _Holding(chunks, self)


class _Holding:
    """An iterator that gives its budget share back once: at its end, or on ``close``."""

    def __init__(self, chunks: Iterator[bytes], budget: Budget) -> None:
        self._chunks = chunks
        self._budget: Budget | None = budget

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:  # the end, or a failure: either way, done with the share
            self.close()
            raise

    def close(self) -> None:
        budget, self._budget = self._budget, None
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if budget is not None:
                budget.give()


class ServerBusy(ProcgateError):
    """503: too many requests are already sending their bodies (slowly); try again."""

    status = 503
    code = "server_busy"
    retry_after = 1


class GuardedInput:
    """A request body stream whose reads each hold a share of ``budget``.

    A read that finds no share left within ``BODY_READ_PATIENCE`` raises ``ServerBusy``
    instead of blocking a thread on a client that may trickle its body for minutes.
    """

    def __init__(self, stream: Any, budget: Budget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._guarded(self._stream.read, size)
        return data

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._guarded(self._stream.readline, size)
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._guarded(self._stream.readlines, hint)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def _guarded(self, read: Any, size: int) -> Any:
        with self._budget.share(BODY_READ_PATIENCE) as taken:
            if not taken:
                raise ServerBusy(
                    f"{self._budget.limit} requests are already sending their bodies: "
                    "try again in a moment"
                )
            return read(size) if size is not None and size >= 0 else read()


class TooManyWaiting(ProcgateError):
    """429: the Gate's budget of waiting requests is spent; follow again later."""

    status = 429
    code = "too_many_waiting"
    retry_after = 1
