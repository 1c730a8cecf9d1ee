"""http-runner (npm 0.0.5) on a Gate: ``POST /`` a whitelisted command, ``GET /<id>`` it.

A WSGI app (``HTTPRunner(gate, allow)``), mounted under ``procgate serve`` by
``[compat.http_runner] prefix = "/http-runner"`` and ``allow = ["echo", ...]`` (the tool's
``-w`` whitelist). The wire protocol is the tool's:

* ``POST /`` with ``{"command": str, "args": "space separated", "callback"?: url}``: 202
  with the job, ``{"stderr": "", "stdout": "", "id": <40 hex>, "code": null, "command",
  "arguments": [...], "callback"?}``; 400 ``{"message": "Bad Request", "error"}``.
* ``GET /<id>``: 200 with the job as it stands, output growing while it runs; once it
  ended, ``code`` (null when a signal ended it) and ``err`` (null, or why it failed).
  404 ``{"message": "Not Found"}`` for an unknown id.
* anything else: 501 ``{"message": "Not Implemented"}``.

The job is one of the Gate's ``/run`` jobs (its store, runner, limits, audit trail); a
``callback`` goes through the Gate's callbacks (``[gate] callback_allow``, retries) with
the tool's body and ``X-Notify-Timestamp`` header.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from procgate.app import Gate
from procgate.callback_url import check_callback_url
from procgate.callbacks import Delivery
from procgate.commands import child_env, resolve_program
from procgate.compat._caller import caller
from procgate.errors import ConfigError, Forbidden, JobNotFound, ProcgateError, error_headers
from procgate.jobs import Job, JobStatus
from procgate.launch import check_capacity, launch

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: The callback body format these jobs' callbacks are sent in (``Notifier.formats``).
FORMAT = "http-runner"

_ID = re.compile(r"/([0-9a-f]{40})/?")
_SPACES = re.compile(r"\s+")

#: Statuses of procgate's own faults, kept: the store or the runner, not the request.
_FAULTS = (401, 403, 429, 503)


class _BadRequest(Exception):
    """400 ``{"message": "Bad Request", "error": <this>}``."""


class HTTPRunner:
    """The WSGI app; see the module's docstring. ``allow``: the commands a request may
    name (exact names, found on the server's ``PATH`` now)."""

    def __init__(self, gate: Gate, allow: Iterable[str]) -> None:
        self.gate = gate
        path = child_env()["PATH"]
        self.allow: dict[str, str] = {}
        for name in allow:
            found = resolve_program(name, path) if "/" not in name else name
            if found is None:
                raise ConfigError(f"[compat.http_runner] allow: program {name!r} not found")
            self.allow[name] = found
        gate.notifier.formats[FORMAT] = render_callback

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._answer(request)
        finally:
            request.close()
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        try:
            # "/": the mount's prefix itself too (``POST http://host/http-runner``), as
            # the tool's own root took its README's ``curl -d ... http://localhost:9000``.
            if request.method == "POST" and request.path in ("/", ""):
                token_id, client = self._caller(request)
                return self._post(request, token_id, client)
            found = _ID.fullmatch(request.path)
            if request.method == "GET" and found is not None:
                token_id, _ = self._caller(request)
                return self._get(found.group(1), token_id)
            return _json({"message": "Not Implemented"}, 501)
        except _BadRequest as exc:
            return _json({"message": "Bad Request", "error": str(exc)}, 400)
        except JobNotFound:
            return _json({"message": "Not Found"}, 404)
        except ProcgateError as exc:
            if exc.status not in _FAULTS:
                return _json({"message": "Bad Request", "error": exc.message}, 400)
            response = _json({"message": exc.message}, exc.status)
            response.headers.extend(error_headers(exc))
            return response
        except HTTPException as exc:  # werkzeug's: a body over the Gate's max_body
            return _json({"message": "Bad Request", "error": exc.description or exc.name}, 400)

    def _caller(self, request: Request) -> tuple[str | None, str]:
        """The Gate's checks of the caller: ``allow_ips``; with tokens, one that may run
        (each sees only its own jobs, as on the Gate's API)."""
        token, client = caller(self.gate, request)
        if token is None:
            return None, client
        if request.method == "POST" and token.read_only:
            raise Forbidden(f"token {token.id!r} is read-only")
        return token.id, client

    def _post(self, request: Request, token_id: str | None, client: str) -> Response:
        gate = self.gate
        request.max_content_length = gate.max_body
        try:
            body = json.loads(request.get_data())
        except ValueError as exc:
            raise _BadRequest(f"Unexpected token in JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        command, args, callback = body.get("command"), body.get("args"), body.get("callback")
        if not isinstance(command, str) or command not in self.allow:
            raise _BadRequest(f"Command not allowed: {command}")
        if not isinstance(args, str):
            raise _BadRequest("args must be a string")
        if callback is not None and not isinstance(callback, str):
            raise _BadRequest("callback must be a string")
        arguments = _split(args)
        if callback is not None:
            callback = check_callback_url(callback, gate.callback_allow)
        check_capacity(gate.store, gate.max_running, None)
        context: dict[str, Any] = {FORMAT: {"command": command, "arguments": arguments}}
        if callback is not None:
            context[FORMAT]["callback"] = body["callback"]
        job = Job(
            id=secrets.token_hex(20),  # the tool's ids: 40 hex digits
            command=None,
            args=(command, *arguments),
            spec=gate.run_spec((self.allow[command], *arguments)),
            token_id=token_id,
            client=client or None,
            owner=gate.runner.owner if gate.runner.runs_here else None,
            callback_url=callback,
            callback_context=context,
            callback=Delivery(callback, format=FORMAT).to_json() if callback else None,
        )
        stored, _ = launch(gate.store, gate.runner, None, job, None)
        return _json(_shape(stored), 202)

    def _get(self, job_id: str, token_id: str | None) -> Response:
        job = self.gate.store.get(job_id)
        if not isinstance(job.callback_context, dict) or FORMAT not in job.callback_context:
            raise JobNotFound(job_id)  # not one of this app's jobs
        if self.gate.tokens is not None and job.token_id != token_id:
            raise JobNotFound(job_id)
        return _json(_shape(job), 200)


def _split(args: str) -> list[str]:
    """The tool's split: runs of whitespace become one space, then split on spaces (no
    quoting; an empty string is one empty argument, a leading space an empty first one)."""
    return _SPACES.sub(" ", args).split(" ")


def _shape(job: Job) -> dict[str, Any]:
    """The job as http-runner shows it."""
    meta = job.callback_context[FORMAT] if isinstance(job.callback_context, dict) else {}
    shape: dict[str, Any] = {
        "stderr": job.stderr.decode("utf-8", errors="replace"),
        "stdout": job.stdout.decode("utf-8", errors="replace"),
        "id": job.id,
        "code": None,
        "command": meta.get("command", job.args[0] if job.args else ""),
        "arguments": meta.get("arguments", list(job.args[1:])),
    }
    if "callback" in meta:
        shape["callback"] = meta["callback"]
    if job.status.finished:
        signalled = job.returncode is None or job.returncode < 0
        shape["code"] = None if signalled else job.returncode
        ended_itself = job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        shape["err"] = None if ended_itself else job.error
    return shape


def render_callback(job: Job) -> tuple[bytes, dict[str, str]]:
    """The tool's callback: the finished job's JSON, with ``Accept`` and
    ``X-Notify-Timestamp`` (milliseconds since the epoch, when sent)."""
    headers = {"Accept": "application/json", "X-Notify-Timestamp": str(int(time.time() * 1000))}
    return json.dumps(_shape(job), separators=(",", ":"), ensure_ascii=False).encode(), headers


def _json(payload: Any, status: int) -> Response:
    """JSON as the tool writes it (``JSON.stringify``: no spaces)."""
    return Response(
        json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
        status=status,
        mimetype="application/json",
    )
