"""SwiftRiver's Subprocess_API on a Gate: ``POST`` a command, get its exit and output.

A WSGI app (``SubprocessAPI(gate)``), mounted under ``procgate serve`` by
``[compat.subprocess_api] prefix = "/subprocess-api"``. Any path takes a ``POST`` of
``{"args": str | [str, ...], "stdin"?: str, "shell"?: bool}`` and answers, once the
command has ended, ``200 {"returncode", "stdout", "stderr"}`` (a non-zero exit too). Every
failure is ``500 {"error": "<message>"}``, as the original's, with a message where the
original sent a traceback. The programs are the Gate's ``[run]`` ones (``allow_programs``,
``allow_any_program``), a shell needs ``[run] allow_shell``, and the job is an ordinary
``/run`` job of the Gate: its store, runner, tokens, limits and audit trail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from procgate.app import Gate
from procgate.commands import SHELL
from procgate.compat._caller import caller
from procgate.errors import Forbidden, ProcgateError, error_headers
from procgate.jobs import Job, JobStatus, new_job_id
from procgate.launch import check_capacity, launch

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: What the statuses of procgate's own faults stay: the store or the runner, not the request.
_FAULTS = (429, 503)


class _Refused(Exception):
    """A request the original would have failed on: 500 with this message."""


class SubprocessAPI:
    """The WSGI app; see the module's docstring."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._answer(request)
        finally:
            request.close()
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        if request.method != "POST":
            return _json({"error": f"Unsupported method ({request.method!r})"}, 501)
        try:
            token_id, client = self._caller(request)
            job = self._job(request, token_id, client)
            return self._run(job)
        except _Refused as exc:
            return _json({"error": str(exc)}, 500)
        except ProcgateError as exc:
            status = exc.status if exc.status in _FAULTS or exc.status in (401, 403) else 500
            response = _json({"error": exc.message}, status)
            response.headers.extend(error_headers(exc))
            return response
        except HTTPException as exc:  # werkzeug's: a body over its limit
            return _json({"error": exc.description or exc.name}, 500)

    def _caller(self, request: Request) -> tuple[str | None, str]:
        """The Gate's checks of the caller: ``allow_ips``, and with tokens an admin one
        (the command is the caller's to choose, as on ``POST /run``)."""
        token, client = caller(self.gate, request)
        if token is None:
            return None, client
        if token.read_only or not token.admin:
            raise Forbidden(f"token {token.id!r} may not run programs here (admin only)")
        return token.id, client

    def _job(self, request: Request, token_id: str | None, client: str) -> Job:
        gate = self.gate
        request.max_content_length = gate.max_body
        try:
            body = json.loads(request.get_data())
        except ValueError as exc:
            raise _Refused(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Refused("the body must be a JSON object")
        if "args" not in body:
            raise _Refused('"args" is required: a string or a list of strings')
        args, stdin, shell = body["args"], body.get("stdin"), body.get("shell", False)
        if not isinstance(shell, bool):
            raise _Refused('"shell" must be true or false')
        if stdin is not None and not isinstance(stdin, str):
            raise _Refused('"stdin" must be a string')
        if isinstance(args, str):
            args = [args]  # the whole string is the program (or the script), as in Python
        if not args or not all(isinstance(arg, str) for arg in args):
            raise _Refused('"args" must be a string or a non-empty list of strings')
        if shell:
            if not gate.allow_shell:
                raise _Refused("shell commands are off on this server ([run] allow_shell)")
            argv = (SHELL, "-c", *args)
        else:
            try:
                argv = (gate.allowed_program(args[0]), *args[1:])
            except ProcgateError as exc:  # not allowed, not found: the request's failure
                raise _Refused(exc.message) from None
        spec = gate.run_spec(argv, stdin=(stdin or "").encode("utf-8"))  # 413: past max_stdin
        check_capacity(gate.store, gate.max_running, None)
        return Job(
            id=new_job_id(), command=None, args=tuple(args), spec=spec, token_id=token_id,
            client=client or None,
            owner=gate.runner.owner if gate.runner.runs_here else None,
        )  # fmt: skip

    def _run(self, job: Job) -> Response:
        """Run the job in this request (the Gate's waited-for path), answer its end."""
        gate = self.gate
        until = time.monotonic() + gate.max_wait
        stored, _ = launch(
            gate.store, gate.runner, getattr(gate.runner, "reserve", None), job, until
        )
        done = gate.store.wait(stored.id, max(0.0, until - time.monotonic()))
        if not done.status.finished:
            raise _Refused(
                f"the command did not end within {gate.max_wait:g} s ([gate] max_wait); "
                f"it goes on as job {done.id}"
            )
        if done.returncode is None or done.status in (JobStatus.ERROR, JobStatus.LOST):
            raise _Refused(done.error or f"the command ended {done.status.value}")
        return _json(
            {
                "returncode": done.returncode,
                "stdout": done.stdout.decode("utf-8", errors="replace"),
                "stderr": done.stderr.decode("utf-8", errors="replace"),
            },
            200,
        )


def _json(payload: Any, status: int) -> Response:
    """JSON as the original writes it: Python's ``json.dumps``, then a newline."""
    return Response(json.dumps(payload) + "\n", status=status, mimetype="application/json")
