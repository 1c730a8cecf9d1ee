"""Completion callbacks: signed POSTs of finished jobs, delivered from the store's outbox
and retried, by any process that shares the store."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from procgate._http import Connection
from procgate.callback_url import check_callback_url
from procgate.errors import ConfigError, InvalidRequest, ProcgateError
from procgate.jobs import Job, job_to_json

if TYPE_CHECKING:
    from procgate.stores import JobStore

logger = logging.getLogger("procgate")

#: The header carrying ``sha256=<hex HMAC of the body>`` when the Gate has a secret.
SIGNATURE_HEADER = "X-Procgate-Signature"
#: The header carrying the delivery id, the same on every attempt of one callback: the
#: job's id (a job has one callback), for the receiver to ignore repeats.
DELIVERY_HEADER = "X-Procgate-Delivery"

#: Threads per Gate making attempts: as many slow receivers can hang at once (each for
#: ``callback_timeout`` at most) before other callbacks wait.
WORKERS = 8
#: Seconds between claims from the outbox: how soon a retry recorded by another process,
#: or a callback left by a dead one, is picked up.
POLL_INTERVAL = 1.0
#: The longest wait between claims while the store fails, in seconds.
MAX_POLL_BACKOFF = 30.0
#: Seconds a claim holds a callback beyond the attempt's deadline, to record its result;
#: after that another process may try it (its claimer died).
LEASE_MARGIN = 10.0
#: Characters of an error kept in the job's ``callback.last_error``.
MAX_ERROR = 300


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a callback stands: ``pending``, ``delivered`` or ``failed`` (gave up)."""

    url: str
    status: str = "pending"
    attempts: int = 0  # attempts made (counted when claimed, so one under way too)
    last_status: int | None = None  # the HTTP status of the last attempt, if any
    last_error: str | None = None
    format: str | None = None  # the body's format: procgate's, or a compat app's

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }
        if self.format is not None:
            shown["format"] = self.format
        return shown

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(
            url=str(data["url"]),
            status=str(data.get("status", "pending")),
            attempts=int(data.get("attempts", 0)),
            last_status=data.get("last_status"),
            last_error=data.get("last_error"),
            format=data.get("format"),
        )


class Notifier:
    """Delivers the callbacks in the store's outbox, on background threads.

    A store queues a job's callback in the same step that finishes the job (see
    ``JobStore.claim_callbacks``), so a callback is never lost with a process: every
    process whose Gate has ``allow`` prefixes delivers from the outbox, after a restart or
    a crash too. ``start`` starts a poller thread that claims due callbacks every
    ``poll_interval`` seconds, at once when ``wake`` says this process finished a job,
    and when a retry it recorded falls due. It claims only as many as it has idle workers
    (up to ``workers`` threads): one slow receiver holds one thread while the other
    callbacks go on.

    An attempt is one POST to the job's ``callback_url`` (checked again against ``allow``)
    that must end, connect, send, status, headers and body, within ``timeout`` seconds. A
    2xx answer is a delivery; anything else (another status, a redirect, a network error,
    the deadline, an answer that is not HTTP, any exception) is a failed attempt,
    recorded with its error and retried ``backoff * 2 ** (n - 1)`` seconds after failed
    attempt ``n``, up to ``max_attempts`` attempts. A claim holds a callback for
    ``timeout + lease_margin`` seconds: if its process dies, another tries it again after
    that. Delivery is at least once: the ``X-Procgate-Delivery`` header (the job id) is the
    same on every attempt, for the receiver to ignore repeats.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        allow: Iterable[str] = (),
        secret: str | bytes | None = None,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,  # seconds per attempt, all of it
        workers: int = WORKERS,
        poll_interval: float = POLL_INTERVAL,
        lease_margin: float = LEASE_MARGIN,
    ) -> None:
        if (
            max_attempts < 1
            or workers < 1
            or backoff < 0
            or timeout <= 0
            or poll_interval <= 0
            or lease_margin < 0
        ):
            raise ConfigError("callback retry settings must be positive")
        self.store = store
        self.allow = tuple(allow)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.workers = workers
        self.poll_interval = poll_interval
        self.lease_margin = lease_margin
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()  # claimed, waiting for a worker
        self._busy = 0  # claimed and not yet recorded: queued or under way
        self._threads: list[threading.Thread] = []
        self._poller: threading.Thread | None = None
        self._next_poll = 0.0  # time.monotonic() of the next claim
        self._woken = False  # claim as soon as a worker is idle
        self._failing = False  # the store failed: wait for the backoff, whatever wakes us
        self._connections: set[Connection] = set()
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        #: Callback formats of the compat apps: ``render(job) -> (body, extra headers)``
        #: for a ``Delivery`` whose ``format`` names one.
        self.formats: dict[str, Callable[[Job], tuple[bytes, dict[str, str]]]] = {}

    def start(self) -> None:
        """Start polling the outbox (once; never after ``close``)."""
        with self._cond:
            if self._poller is not None or self._closed:
                return
            self._poller = threading.Thread(
                target=self._poll, name="procgate-callbacks", daemon=True
            )
            self._poller.start()

    def wake(self) -> None:
        """A job with a callback finished here: claim at once rather than at the next poll."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop: attempts under way are cut short, and they and claimed callbacks not yet
        tried go back to the outbox, due at once and not counted as attempts. Waits up to
        ``timeout`` seconds for the threads."""
        with self._cond:
            self._closed = True
            connections = list(self._connections)
            threads = [*self._threads, *([self._poller] if self._poller else [])]
            self._cond.notify_all()
        for connection in connections:
            connection.abort()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def signature(self, body: bytes) -> str | None:
        """``sha256=<hex>`` of the body with the secret, or None without a secret."""
        if self.secret is None:
            return None
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def body(self, job: Job) -> bytes:
        """The finished job as ``GET /jobs/<id>`` shows it, plus ``context``.

        Its ``callback`` field is the state the job finished with (``pending``, no
        attempts), so every attempt sends the same bytes with the same signature.
        """
        as_finished = replace(job, callback=Delivery(job.callback_url or "").to_json())
        payload = job_to_json(as_finished, job.link or "")
        payload["context"] = job.callback_context
        return json.dumps(payload, separators=(",", ":")).encode()

    # -- the poller ---------------------------------------------------------------------

    def _poll(self) -> None:
        failures = 0
        while True:
            with self._cond:
                free = self._turn()
                if not free:
                    return  # closed
            try:
                jobs = self.store.claim_callbacks(
                    time.time(), self.timeout + self.lease_margin, free
                )
            except Exception as exc:  # the store is down: log, back off, keep going
                failures += 1
                delay = min(self.poll_interval * 2**failures, MAX_POLL_BACKOFF)
                if isinstance(exc, ProcgateError):
                    logger.warning("cannot claim callbacks (%s); again in %.1f s", exc, delay)
                else:
                    logger.exception("cannot claim callbacks; again in %.1f s", delay)
                with self._cond:
                    self._failing = True
                    self._next_poll = time.monotonic() + delay
                continue
            failures = 0
            if self._closed:  # closed while claiming: hand them straight back
                for job in jobs:
                    self._release(job, Delivery.from_json(job.callback or {"url": ""}))
                return
            with self._cond:
                self._failing = False
                self._next_poll = time.monotonic() + self.poll_interval
                self._woken = self._woken or len(jobs) >= free  # more may be due
                self._queue.extend(jobs)
                self._busy += len(jobs)
                while len(self._threads) < min(self.workers, self._busy):
                    thread = threading.Thread(
                        target=self._work,
                        name=f"procgate-callbacks-{len(self._threads)}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()
                self._cond.notify_all()

    def _turn(self) -> int:
        """Wait (the lock held) until it is time to claim and a worker is idle; how many
        workers are, or 0 once closed. Every wait has a deadline."""
        while not self._closed:
            now = time.monotonic()
            free = self.workers - self._busy
            if free > 0 and (now >= self._next_poll or (self._woken and not self._failing)):
                self._woken = False
                return free
            wait = self._next_poll - now if free > 0 else self.poll_interval
            self._cond.wait(max(0.001, wait))
        return 0

    # -- the workers --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(self.poll_interval)
                if not self._queue:
                    return  # closed, nothing left to hand back
                job = self._queue.popleft()
            try:
                self._deliver(job)
            except Exception:  # a bug of ours: the thread goes on, the lease retries it
                logger.exception("callback of job %s failed inside procgate", job.id)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _deliver(self, job: Job) -> None:
        """Make the attempt that the claim of ``job`` counted, and record its result."""
        claimed = Delivery.from_json(job.callback or {"url": job.callback_url or ""})
        attempt = claimed.attempts
        if self._closed:
            self._release(job, claimed)
            return
        if attempt > self.max_attempts:  # the last one's process died before it recorded
            why = claimed.last_error or "the last attempt did not end"
            self._record(job, replace(claimed, status="failed", last_error=why), None)
            return
        url = job.callback_url or ""
        status: int | None = None
        error: str | None = None
        hopeless = False  # no point trying again
        try:
            url = check_callback_url(url, self.allow)
            render = self.formats.get(claimed.format or "")
            body, extra = render(job) if render is not None else (self.body(job), {})
            status = self._post(url, body, job.id, extra)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except InvalidRequest as exc:  # stored by an older version, or another allowlist
            error, hopeless = f"callback_url refused here: {exc}", True
        except TimeoutError:
            error = f"timed out: no whole answer within callback_timeout ({self.timeout:g} s)"
        except Exception as exc:  # refused, reset, not HTTP, TLS, ...: a failed attempt
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        if error is not None and self._closed:
            self._release(job, claimed)  # cut short by close: not the receiver's failure
            return
        final = error is None or hopeless or attempt >= self.max_attempts
        state = Delivery(
            url,
            "delivered" if error is None else ("failed" if final else "pending"),
            attempt,
            status,
            error,
            claimed.format,
        )
        retry_at = None if final else time.time() + self.backoff * 2 ** (attempt - 1)
        self._record(job, state, retry_at)

    def _record(self, job: Job, state: Delivery, retry_at: float | None) -> None:
        try:
            self.store.set_callback(
                job.id, state.to_json(), attempt=state.attempts, retry_at=retry_at
            )
        except Exception as exc:  # its lease runs out, and it is tried again: at least once
            logger.warning("could not record the callback of job %s (%s)", job.id, exc)
            return
        if retry_at is not None:
            with self._cond:
                if not self._failing:
                    due = time.monotonic() + max(0.0, retry_at - time.time())
                    self._next_poll = min(self._next_poll, due)
                    self._cond.notify_all()

    def _release(self, job: Job, claimed: Delivery) -> None:
        """Hand a claim back untried: due at once, its attempt not counted."""
        try:
            self.store.set_callback(
                job.id,
                replace(claimed, attempts=claimed.attempts - 1).to_json(),
                attempt=claimed.attempts,
                retry_at=time.time(),
            )
        except Exception as exc:  # then its lease runs out
            logger.warning("could not hand back the callback of job %s (%s)", job.id, exc)

    def _post(
        self, url: str, body: bytes, delivery: str, extra: Mapping[str, str] | None = None
    ) -> int:
        """One attempt: POST ``body`` to ``url`` within ``timeout``; the answer's status.
        Raises on any failure, ``TimeoutError`` at the deadline."""
        parts = urlsplit(url)
        tls = self._context() if parts.scheme == "https" else None
        port = parts.port or (443 if tls is not None else 80)
        deadline = time.monotonic() + self.timeout
        connection = Connection(parts.hostname or "", port, deadline, tls)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "procgate",
            "Connection": "close",
            DELIVERY_HEADER: delivery,
            **(extra or {}),
        }
        signature = self.signature(body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        with self._cond:
            if self._closed:
                raise ConnectionAbortedError("the server is closing")
            self._connections.add(connection)
        try:
            return connection.post(
                parts.path + (f"?{parts.query}" if parts.query else ""), body, headers
            )
        finally:
            with self._cond:
                self._connections.discard(connection)

    def _context(self) -> ssl.SSLContext:
        with self._cond:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls
