"""Completion callbacks: POST a finished job to a URL, signed, retried off the request path."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from procgate.errors import ConfigError, InvalidRequest

logger = logging.getLogger("procgate")

#: The header carrying ``sha256=<hex HMAC of the body>`` when the Gate has a secret.
SIGNATURE_HEADER = "X-Procgate-Signature"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a callback stands: ``pending``, ``delivered`` or ``failed`` (gave up)."""

    url: str
    status: str = "pending"
    attempts: int = 0
    last_status: int | None = None  # the HTTP status of the last attempt, if any
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(
            url=str(data["url"]),
            status=str(data["status"]),
            attempts=int(data["attempts"]),
            last_status=data.get("last_status"),
            last_error=data.get("last_error"),
        )


def check_callback_url(url: object, allow: Iterable[str]) -> str:
    """The URL if it is http(s) and starts with an allowed prefix; else ``InvalidRequest``.

    Prefixes are compared as strings, so end them with ``/`` (``http://host:9000/``): a
    prefix without one would also admit ``http://host:90001`` or ``http://host:9000.evil``.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest("callback_url must be a URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest("callback_url must be an http or https URL")
    if not any(url.startswith(prefix) for prefix in allow):
        raise InvalidRequest(
            "callback_url is not allowed on this server (see callback_allow)",
            code="callback_not_allowed",
        )
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would lead the request past the allowlist: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(order=True)
class _Task:
    due: float
    order: int
    url: str = ""
    body: bytes = b""
    attempts: int = 0
    record: Callable[[Delivery], None] | None = None


class Notifier:
    """Delivers callbacks on background threads, retrying with exponential backoff.

    Attempt ``n`` (from 1) that fails is retried after ``backoff * 2 ** (n - 1)`` seconds,
    up to ``max_attempts`` attempts in all. A 2xx answer is a delivery; anything else
    (another status, a redirect, a network error, a timeout) is a failed attempt. Every
    attempt's result is handed to the task's ``record`` function. Pending deliveries live
    in memory: they are lost if the process dies.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,  # seconds per attempt
        workers: int = 2,
    ) -> None:
        if max_attempts < 1 or workers < 1 or backoff < 0 or timeout <= 0:
            raise ConfigError("callback retry settings must be positive")
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.workers = workers
        self._opener = urllib.request.build_opener(_NoRedirects())
        self._heap: list[_Task] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._busy = 0

    def send(
        self, url: str, payload: Mapping[str, Any], record: Callable[[Delivery], None]
    ) -> None:
        """Queue ``payload`` for delivery to ``url``; returns at once."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._cond:
            if self._closed:
                return
            heapq.heappush(
                self._heap, _Task(time.monotonic(), next(self._order), url, body, 0, record)
            )
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name="procgate-callbacks", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()

    def idle(self) -> bool:
        """True when nothing is queued, waiting for a retry, or being sent."""
        with self._cond:
            return not self._heap and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        """Stop retrying; wait up to ``timeout`` seconds for attempts under way."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def signature(self, body: bytes) -> str | None:
        """``sha256=<hex>`` of the body with the secret, or None without a secret."""
        if self.secret is None:
            return None
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0].due <= now:
                        break
                    self._cond.wait(self._heap[0].due - now if self._heap else None)
                if self._closed:
                    return
                task = heapq.heappop(self._heap)
                self._busy += 1
            try:
                self._attempt(task)
            finally:
                with self._cond:
                    self._busy -= 1

    def _attempt(self, task: _Task) -> None:
        task.attempts += 1
        status, error = self._post(task.url, task.body)
        delivered = status is not None and 200 <= status < 300
        final = delivered or task.attempts >= self.max_attempts
        state = Delivery(
            task.url,
            "delivered" if delivered else ("failed" if final else "pending"),
            task.attempts,
            status,
            None if delivered else error or f"HTTP {status}",
        )
        if task.record is not None:
            try:
                task.record(state)
            except Exception:
                logger.exception("could not record callback delivery to %s", task.url)
        if not final:
            task.due = time.monotonic() + self.backoff * 2 ** (task.attempts - 1)
            with self._cond:
                if not self._closed:
                    heapq.heappush(self._heap, task)
                    self._cond.notify()

    def _post(self, url: str, body: bytes) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json", "User-Agent": "procgate"}
        signature = self.signature(body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked against the allowlist
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"{type(exc).__name__}: {reason}"
