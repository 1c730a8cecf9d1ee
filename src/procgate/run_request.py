"""A request to run something, read and checked: the body of ``POST /commands/<name>``
and of ``POST /run``.

The Gate's handlers receive a ``RunRequest``: every field typed and checked here, once,
so a handler deals in values, not in JSON. What depends on the Gate's configuration (the
command's policy, the allowed programs, the callback allowlist, ``max_wait``) is checked
by the Gate.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.exceptions import UnsupportedMediaType

from procgate.errors import Forbidden, InvalidRequest
from procgate.policy import check_text

#: The fields of a JSON job request; of a multipart one (with files); of ``POST /run``.
JOB_FIELDS = frozenset(
    {
        "args",
        "stdin",
        "stdin_encoding",
        "env",
        "timeout",
        "wait",
        "idempotency_key",
        "callback_url",
        "callback_context",
    }
)
UPLOAD_FIELDS = JOB_FIELDS | {"stdin_file"}
RUN_FIELDS = JOB_FIELDS | {"shell"}

#: Characters of an ``idempotency_key``.
MAX_KEY = 255


@dataclass(frozen=True, slots=True)
class Limits:
    """How many args a request may send, and how long each may be."""

    max_args: int
    max_arg_length: int


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A checked run request. ``wait`` is as sent (true, false, seconds or None: the Gate
    caps it); ``callback_url`` too (the Gate checks it against its allowlist)."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    stdin: bytes = b""
    timeout: float | None = None
    wait: Any = None
    idempotency_key: str | None = None
    callback_url: Any = None
    callback_context: Any = None
    shell: bool = False
    stdin_file: Any = None


def read_json(data: bytes, mimetype: str) -> dict[str, Any]:
    """A request body's JSON object; an empty body is ``{}``."""
    if not data.strip():
        return {}
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise UnsupportedMediaType("send a JSON body with Content-Type: application/json")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object", code="invalid_json")
    return body


def parse_job(body: Mapping[str, Any], limits: Limits, *, upload: bool = False) -> RunRequest:
    """A command's job request (``upload``: the fields of a multipart one)."""
    body = check_fields(body, UPLOAD_FIELDS if upload else JOB_FIELDS)
    return _request(body, tuple(check_args(body.get("args", []), limits)))


def parse_run(
    body: Mapping[str, Any], limits: Limits, *, allow_any_program: bool, allow_shell: bool
) -> RunRequest:
    """A ``POST /run`` request: ``args`` is a program and its args (a list, or a string
    split as a shell would, without running one), or with ``"shell": true`` a script.

    ``env`` needs ``allow_any_program`` (or a shell), and a shell ``allow_shell``: 403s,
    checked in the order a client meets them, before the script itself."""
    body = check_fields(body, RUN_FIELDS)
    shell = body.get("shell", False)
    if not isinstance(shell, bool):
        raise InvalidRequest("shell must be true or false")
    raw = body.get("args")
    env = _env(body.get("env"))
    if env and not (allow_any_program or shell):
        raise Forbidden(
            "env may be set in raw mode only when any program is allowed",
            code="env_not_allowed",
        )
    if shell:
        if not allow_shell:
            raise Forbidden("shell mode is off on this server", code="shell_not_allowed")
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidRequest("with shell, args must be a non-empty command string")
        args = check_args([raw], limits)
    else:
        args = check_args(_split(raw), limits)
    return dataclasses.replace(_request(body, tuple(args)), shell=shell)


def _request(body: Mapping[str, Any], args: tuple[str, ...]) -> RunRequest:
    return RunRequest(
        args=args,
        env=_env(body.get("env")),
        stdin=_stdin(body),
        timeout=_timeout(body.get("timeout")),
        wait=body.get("wait"),
        idempotency_key=_idempotency_key(body),
        callback_url=body.get("callback_url"),
        callback_context=body.get("callback_context"),
        stdin_file=body.get("stdin_file"),
    )


def check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """Refuse unknown fields (a typo such as ``tmeout`` must not pass silently), and drop
    the null ones: null means "not given"."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(sorted(allowed)),
            code="unknown_field",
        )
    return {key: value for key, value in body.items() if value is not None}


def check_args(value: Any, limits: Limits) -> list[str]:
    """A list of strings within ``limits``."""
    args = _string_list(value, "args")
    if len(args) > limits.max_args:
        raise InvalidRequest(f"at most {limits.max_args} args per request")
    for index, arg in enumerate(args, 1):
        if len(arg) > limits.max_arg_length:
            raise InvalidRequest(
                f"argument {index} is longer than {limits.max_arg_length} characters"
            )
    return args


def is_number(value: object) -> bool:
    """A finite double: JSON's 1e999 (inf) and a 400-digit integer are not numbers here."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a double
        return False


def _idempotency_key(body: Mapping[str, Any]) -> str | None:
    key = body.get("idempotency_key")
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
        raise InvalidRequest(f"idempotency_key must be a string of 1 to {MAX_KEY} characters")
    check_text(key, "idempotency_key")
    return key


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"{name} must be a list of strings")
    for item in value:
        check_text(item, name)
    return value


def _split(raw: Any) -> list[str]:
    if isinstance(raw, str):
        try:
            raw = shlex.split(raw)
        except ValueError as exc:
            raise InvalidRequest(f"args cannot be split: {exc}") from None
    args = _string_list(raw, "args")
    if not args:
        raise InvalidRequest("args must name a program")
    return args


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidRequest("env must be an object of strings")
    for key, item in value.items():
        if not key or "=" in key:
            raise InvalidRequest(f"invalid env key {key!r}")
        check_text(key, "env")
        check_text(item, "env")
    return value


def _stdin(body: Mapping[str, Any]) -> bytes:
    value = body.get("stdin")
    encoding = body.get("stdin_encoding", "utf-8")
    if encoding not in ("utf-8", "base64"):
        raise InvalidRequest("stdin_encoding must be 'utf-8' or 'base64'")
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidRequest("stdin must be a string")
    if encoding == "utf-8":
        check_text(value.replace("\0", ""), "stdin")  # NUL is a fine byte on stdin
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("stdin is not valid base64") from None


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if not is_number(value) or value <= 0:
        raise InvalidRequest("timeout must be a positive number of seconds", code="invalid_timeout")
    return float(value)
