"""The exception hierarchy: each class carries its HTTP status and JSON error code."""

from __future__ import annotations


class ProcgateError(Exception):
    """Base of every procgate error; ``Gate.error_response`` renders it as JSON."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(ProcgateError):
    """A command or config file is invalid: raised at startup, never during a request."""

    code = "config_error"


class InvalidRequest(ProcgateError):
    """The request body or query is malformed; the message names the offending field."""

    status = 400
    code = "invalid_request"


class Forbidden(ProcgateError):
    """The request is well formed but asks for something this Gate does not allow."""

    status = 403
    code = "forbidden"


class PayloadTooLarge(ProcgateError):
    """Part of the request is over its limit (stdin, for instance)."""

    status = 413
    code = "payload_too_large"


class UriTooLong(ProcgateError):
    """The path and query string are longer than the Gate's ``max_url``."""

    status = 414
    code = "uri_too_long"


class UnknownCommand(ProcgateError):
    """No command of that name was registered."""

    status = 404
    code = "unknown_command"


class JobNotFound(ProcgateError):
    """No job with that id is in the store (never created, deleted or evicted)."""

    status = 404
    code = "job_not_found"


class _TryLater(ProcgateError):
    """429: the client should retry after ``retry_after`` seconds (the Retry-After header)."""

    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunnerBusy(_TryLater):
    """The runner's queue is full."""

    code = "runner_busy"


class TooManyRunning(_TryLater):
    """A command (or the Gate) already has as many jobs queued or running as it allows."""

    code = "too_many_running"


class RateLimited(_TryLater):
    """A command's ``max_rate`` is used up for now."""

    code = "rate_limited"


class RunnerClosed(ProcgateError):
    """The runner is shutting down and accepts no new jobs."""

    status = 503
    code = "runner_closed"
    retry_after = 5


class StoreUnavailable(ProcgateError):
    """The job store cannot be reached or written (down, timed out, disk full, file gone).

    Nothing was acknowledged: the client may retry after ``retry_after`` seconds.
    """

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def error_headers(exc: ProcgateError) -> dict[str, str]:
    """The headers an error's answer carries: ``Retry-After`` (when to try again) and
    ``WWW-Authenticate`` (the challenge of a 401), for the errors that have them."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    challenge = getattr(exc, "challenge", None)
    if challenge is not None:
        headers["WWW-Authenticate"] = str(challenge)
    return headers
