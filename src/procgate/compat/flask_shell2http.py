"""Flask-Shell2HTTP (1.9.1) on procgate: change the import, keep the app and its clients.

``from procgate.compat.flask_shell2http import Shell2HTTP`` in place of
``from flask_shell2http import Shell2HTTP``: the same constructor and methods, the same
URLs, request bodies, keys, answers and error messages, and ``callback_fn(context,
future)`` called as before. Underneath, the jobs are procgate's: they run on a Gate's
runner and live in its store (shared by a server's workers, kept across restarts), a
``DELETE`` kills the process tree, output is capped, and a wait is bounded. The
differences are listed in docs/compat.md.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.utils import secure_filename

from procgate.app import Gate
from procgate.commands import Command, make_command
from procgate.config import create_app
from procgate.errors import ProcgateError
from procgate.jobs import Job, JobStatus, Spec, new_job_id
from procgate.launch import launch
from procgate.stores.sqlite import SQLiteStore

logger = logging.getLogger("flask_shell2http")

#: The timeout (seconds) of a job whose request names none, as in the original.
DEFAULT_TIMEOUT = 3600

#: Flask config keys: a ready ``Gate``, or the path of a procgate config file to build one.
GATE_CONFIG_KEY = "PROCGATE_GATE"
CONFIG_FILE_KEY = "PROCGATE_CONFIG"

#: The default store's file, in the Flask app's instance folder.
STORE_FILE = "procgate-shell2http.db"

#: Seconds a report read waits for the callbacks of a job this process just finished.
CALLBACKS_WAIT = 10.0

#: Seconds the end of the process waits for the jobs it started (see ``init_app``).
EXIT_WAIT = 60.0

#: What the original reports for a job it killed at its timeout (``proc.kill()``).
KILLED_RETURNCODE = -9

#: What it reports for a job that failed in another way.
FAILED_RETURNCODE = -1

#: How a job that could not start begins its error (``procgate.process.start``).
_NOT_STARTED = "could not start "

#: Finished jobs' futures kept for reads in this process; past it, the oldest go (their
#: reports stay readable from the store).
MAX_KEPT = 1000

_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

#: ``callback_fn(callback_context, future)``.
CallbackFn = Callable[[Any, "Future[dict[str, Any]]"], Any]


class _RequestError(Exception):
    """A request the original answers with 400 and this message."""


class _NotFound(Exception):
    """A key the original answers with 404 and this message."""


@dataclass
class _Pending:
    """A job this process started, until its result is read: the future its callback
    gets, as the original's executor kept it."""

    future: Future[dict[str, Any]]
    context: Any
    callback: CallbackFn | None
    ready: threading.Event = field(default_factory=threading.Event)  # callbacks done
    deleted: bool = False  # its key was deleted: forget it once its callback ran


@dataclass(frozen=True)
class _Endpoint:
    uri: str
    command_name: str
    command: Command
    callback: CallbackFn | None


class Shell2HTTP:
    """Flask-Shell2HTTP's entry point: map shell commands to endpoints of a Flask app.

    ``executor`` (a Flask-Executor) is accepted and not used: jobs run on ``gate``, or the
    Gate in ``app.config["PROCGATE_GATE"]``, or one built from the procgate config file
    named by ``app.config["PROCGATE_CONFIG"]``, or else a Gate of its own whose SQLite
    store lives in the app's instance folder (shared by all of a server's workers).
    """

    def __init__(
        self,
        app: Flask | None = None,
        executor: Any = None,
        base_url_prefix: str = "/",
        *,
        gate: Gate | None = None,
    ) -> None:
        self._prefix = base_url_prefix
        self._given_gate = gate
        self._commands: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._space = "shell2http"  # the jobs' command name: see init_app
        self.gate: Gate | None = None
        self.app: Flask | None = None
        if app is not None:
            self.init_app(app, executor)

    def init_app(self, app: Flask, executor: Any = None) -> None:
        """Bind to ``app`` (Flask's application-factory pattern)."""
        self.app = app
        gate = self._given_gate or app.config.get(GATE_CONFIG_KEY)
        if gate is None and app.config.get(CONFIG_FILE_KEY):
            gate = create_app(str(app.config[CONFIG_FILE_KEY]))
        own = gate is None
        if gate is None:
            os.makedirs(app.instance_path, exist_ok=True)
            gate = Gate(store=SQLiteStore(os.path.join(app.instance_path, STORE_FILE)))
        self.gate = gate
        # A script that POSTs and ends still sees its jobs through, callbacks included, as
        # the original's executor did (within EXIT_WAIT); a Gate made here is then closed.
        atexit.register(self._at_exit, gate if own else None)
        # One key space per Flask app, shared by its endpoints (a result is read from any
        # of them, as from the original's executor) and by all of its server's workers.
        self._space = _command_name(f"shell2http.{app.name}")
        gate.on_finish(self._finished)
        if not hasattr(app, "extensions"):
            app.extensions = {}
        app.extensions["shell2http"] = self

    def register_command(
        self,
        endpoint: str,
        command_name: str,
        callback_fn: CallbackFn | None = None,
        decorators: Sequence[Callable[..., Any]] = (),
    ) -> None:
        """Serve ``command_name`` (split on spaces) plus each request's args at
        ``base_url_prefix + endpoint``; an endpoint registered already is logged and left."""
        uri = self._prefix + endpoint
        known = self._commands.get(uri)
        if known:
            logger.error(
                "Failed to register since given endpoint: '%s' already maps to command: '%s'.",
                endpoint,
                known,
            )
            return None
        command = make_command(
            _command_name(endpoint),
            command_name.split(" "),
            timeout=None,  # each request says, as in the original (default 3600 s)
            require_program=False,  # a missing program fails its jobs, as in the original
        )
        spot = _Endpoint(uri, command_name, command, callback_fn)

        def view() -> ResponseReturnValue:
            return self._dispatch(spot)

        view.__name__ = endpoint
        view.methods = ["GET", "POST", "DELETE"]  # type: ignore[attr-defined]
        for decorator in decorators:
            view = decorator(view)
        self._flask().add_url_rule(uri, view_func=view)
        self._commands[uri] = command_name
        logger.info("New endpoint: '%s' registered for command: '%s'.", uri, command_name)
        return None

    def get_registered_commands(self) -> OrderedDict[str, str]:
        """The registered URLs and their commands."""
        return self._commands

    # -- the view -----------------------------------------------------------------------

    def _dispatch(self, spot: _Endpoint) -> ResponseReturnValue:
        try:
            if request.method == "POST":
                return self._post(spot)
            if request.method == "DELETE":
                return self._delete(spot)
            return self._get(spot)
        except ProcgateError as exc:  # the store or the runner: 503, 429...
            logger.error("%s", exc.message)
            status = exc.status if exc.status >= 429 else 400
            response = make_response(jsonify(error=exc.message), status)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
            return response

    def _post(self, spot: _Endpoint) -> ResponseReturnValue:
        key = ""
        files_dir: str | None = None
        try:
            args, timeout, context, unique, files_dir = _parse(request)
            line = [*spot.command_name.split(" "), *args]
            key = str(uuid.uuid4())[:8] if unique else _line_key(line)
            job = self._job(spot, args, timeout, context, key, files_dir)
        except Exception as exc:
            if files_dir is not None:
                shutil.rmtree(files_dir, ignore_errors=True)
            logger.error("%s", exc)
            body: dict[str, Any] = {"error": str(exc)}
            if key:
                body.update(key=key, result_url=_result_url(key))
            return make_response(jsonify(body), 400)
        gate = self._gate()
        with self._lock:  # before the job can finish, so its callback finds this
            self._pending[job.id] = _Pending(Future(), context, spot.callback)
        try:
            stored, replayed = launch(gate.store, gate.runner, None, job, None)
        except BaseException:
            self._forget(job.id)
            raise
        if replayed:
            self._forget(job.id)
            logger.error("future_key %s already exists", key)
            return make_response(
                jsonify(
                    error=f"future_key {key} already exists", key=key, result_url=_result_url(key)
                ),
                400,
            )
        logger.info("Job: '%s' --> added to queue for command: %s", key, list(stored.spec.argv))
        return make_response(
            jsonify(status="running", key=key, result_url=_result_url(key)), 202
        )

    def _get(self, spot: _Endpoint) -> ResponseReturnValue:
        key = request.args.get("key")
        wait = request.args.get("wait", "").lower() == "true"
        try:
            if not key:
                raise _RequestError("No key provided in arguments.")
            gate = self._gate()
            job = gate.store.find_key(_scope(self._space, key))
            if job is None:
                raise _NotFound(f"No report exists for key: '{key}'.")
            if not job.status.finished and wait:
                with gate.waiting.share() as waiting:
                    if waiting:
                        job = gate.store.wait(job.id, gate.max_wait)
            if not job.status.finished:
                return make_response(
                    jsonify(status="running", key=key, result_url=_result_url(key)), 200
                )
            report = self._report(job)
            if not report:
                raise _NotFound(f"Job: '{key}' --> No report exists.")
            return jsonify(report)
        except _NotFound as exc:
            logger.error("%s", exc)
            return make_response(jsonify(error=str(exc)), 404)
        except _RequestError as exc:
            logger.error("%s", exc)
            return make_response(jsonify(error=str(exc)), 400)

    def _delete(self, spot: _Endpoint) -> ResponseReturnValue:
        key = request.args.get("key")
        if not key:
            return make_response(jsonify(error="No key provided in arguments."), 400)
        gate = self._gate()
        job = gate.store.find_key(_scope(self._space, key))
        if job is None:
            message = f"No job exists for key: '{key}'."
            logger.error("%s", message)
            return make_response(jsonify(error=message), 404)
        with self._lock:
            pending = self._pending.get(job.id)
            if pending is not None:
                pending.deleted = True  # its callback still runs, as in the original
        gate.store.cancel(job.id)  # a running job's whole process tree is stopped
        gate.store.release_key(job.id)
        if pending is not None and pending.ready.is_set():
            self._trim(pending)
        return make_response({}, 204)

    # -- jobs and reports ---------------------------------------------------------------

    def _job(
        self,
        spot: _Endpoint,
        args: list[str],
        timeout: Any,
        context: Any,
        key: str,
        files_dir: str | None,
    ) -> Job:
        seconds = _seconds(timeout)
        spec = spot.command.spec(args, env={}, stdin=b"", timeout=seconds)
        if files_dir is not None:
            spec = dataclasses.replace(spec, files_dir=files_dir)
        return Job(
            id=new_job_id(),
            command=self._space,
            args=tuple(args),
            spec=spec,
            idempotency_key=key,
            # Not the client's: a key is the server's, whoever asks, as in the original.
            client=None,
            owner=self._gate().runner.owner if self._gate().runner.runs_here else None,
            callback_context={"shell2http": {"key": key, "timeout": timeout, "url": spot.uri}},
        )

    def _report(self, job: Job) -> dict[str, Any]:
        """The job's report, once finished; reading it frees its key, as in the original
        (the job itself stays in the store). A job that could not start is a 400."""
        gate = self._gate()
        gate.store.release_key(job.id)
        with self._lock:
            pending = self._pending.pop(job.id, None)
        if pending is not None and pending.ready.wait(CALLBACKS_WAIT):
            if pending.future.exception() is not None:
                raise _RequestError(str(pending.future.exception()))
            return pending.future.result()  # what a callback may have replaced
        report = _report_of(gate.store.get(job.id))
        if isinstance(report, Exception):
            raise _RequestError(str(report))
        return report

    def _finished(self, job: Job, context: Any) -> None:
        """Gate hook: a job of this process ended; give its future its result and call its
        endpoint's ``callback_fn``."""
        with self._lock:
            pending = self._pending.get(job.id)
        if pending is None:
            return
        try:
            report = _report_of(job)
            if isinstance(report, Exception):
                pending.future.set_exception(report)
            else:
                pending.future.set_result(report)
            if pending.callback is not None:
                with self._flask().app_context():
                    pending.callback(pending.context, pending.future)
        except Exception:
            logger.exception("callback of job %s failed", job.id)
        finally:
            pending.ready.set()
            self._trim(pending if pending.deleted else None)

    def _trim(self, done: _Pending | None) -> None:
        """Forget ``done``, and the oldest finished futures past ``MAX_KEPT``."""
        with self._lock:
            if done is not None:
                self._pending = {k: p for k, p in self._pending.items() if p is not done}
            excess = len(self._pending) - MAX_KEPT
            if excess > 0:
                old = [k for k, p in self._pending.items() if p.ready.is_set()][:excess]
                for job_id in old:
                    del self._pending[job_id]

    def _at_exit(self, own: Gate | None) -> None:
        deadline = time.monotonic() + EXIT_WAIT
        with self._lock:
            pending = [p for p in self._pending.values() if not p.deleted]
        for each in pending:
            each.ready.wait(max(0.0, deadline - time.monotonic()))
        if own is not None:
            own.close()

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._pending.pop(job_id, None)

    def _flask(self) -> Flask:
        if self.app is None:
            raise RuntimeError("Shell2HTTP.init_app(app) was not called")
        return self.app

    def _gate(self) -> Gate:
        if self.gate is None:
            raise RuntimeError("Shell2HTTP.init_app(app) was not called")
        return self.gate


def _parse(req: Any) -> tuple[list[str], Any, Any, bool, str | None]:
    """args, timeout, callback_context, force_unique_key and the upload directory of a
    POST, read as the original reads them."""
    files_dir: str | None = None
    data: Any = {}
    if req.is_json:
        data = req.json
    elif req.files:
        data = json.loads(req.form.get("request_json", "{}"))
    args = data.get("args", [])
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    context = data.get("callback_context", {})
    unique = data.get("force_unique_key", False)
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise ValueError("args must be a list of strings")
    if not req.is_json and req.files:
        args, files_dir = _save_files(args, req.files)
    return args, timeout, context, bool(unique), files_dir


def _save_files(args: list[str], files: Any) -> tuple[list[str], str]:
    """Each ``@name`` arg becomes the path of the uploaded file part ``name``."""
    names = [arg.strip("@") for arg in args if arg.startswith("@")]
    if not names:
        raise ValueError(
            "No filename(s) specified.Please prefix file argument(s) with @ character."
        )
    directory = tempfile.mkdtemp(prefix="procgate-shell2http-")
    try:
        for name in names:
            if name not in files:
                raise ValueError(f"No File part with filename: {name} in request.")
            upload = files.get(name)
            path = os.path.join(
                directory, secure_filename(upload.filename or "") or secure_filename(name) or "file"
            )
            upload.save(path)
            args = [path if arg == "@" + name else arg for arg in args]
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return args, directory


def _seconds(timeout: Any) -> float:
    """The original's ``int(timeout)`` seconds (at least a millisecond: 0 times out at
    once)."""
    if isinstance(timeout, bool):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    return float(max(int(timeout), 0)) or 0.001


def _line_key(line: list[str]) -> str:
    """The first 8 hex digits of the command line's SHA-1: the same line, the same key."""
    return hashlib.sha1(" ".join(line).encode("utf-8"), usedforsecurity=False).hexdigest()[:8]


def _command_name(text: str) -> str:
    """A procgate command name made of ``text`` (``echo/signal`` -> ``echo-signal``)."""
    return _NOT_A_NAME.sub("-", text).strip("-._")[:64] or "shell2http"


def _scope(space: str, key: str) -> str:
    """The store's idempotency scope of ``key`` among the jobs of command ``space``."""
    probe = Job(id="", command=space, args=(), spec=Spec(argv=("-",)), idempotency_key=key)
    scope = probe.idempotency_scope
    assert scope is not None  # noqa: S101 - the probe has a key
    return scope


def _result_url(key: str) -> str:
    return f"{request.base_url}?key={key}&wait=false"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _report_of(job: Job) -> dict[str, Any] | Exception:
    """The original's report of a finished job: ``report`` (stdout), ``error`` (stderr,
    or why it failed), ``returncode`` and the times; an exception for a job that could not
    start, which the original answers with a 400."""
    meta = (job.callback_context or {}).get("shell2http", {})
    key = meta.get("key", job.idempotency_key)
    start = (job.started_at or job.created_at).timestamp()
    end = job.finished_at.timestamp() if job.finished_at is not None else start
    report: Any = _text(job.stdout)
    returncode = job.returncode
    if job.status is JobStatus.TIMED_OUT:
        error = f"command timedout after {meta.get('timeout', DEFAULT_TIMEOUT)} seconds."
        returncode = KILLED_RETURNCODE
    elif job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        error = _text(job.stderr)
    elif job.status is JobStatus.ERROR and (job.error or "").startswith(_NOT_STARTED):
        return OSError(_start_failure(job.error or ""))
    else:  # cancelled, lost, or failed inside procgate
        error = job.error or _text(job.stderr)
        report = report or None
        returncode = FAILED_RETURNCODE if returncode is None else returncode
    return {
        "key": key,
        "report": report,
        "error": error,
        "returncode": returncode,
        "start_time": start,
        "end_time": end,
        "process_time": end - start,
    }


def _start_failure(error: str) -> str:
    """``could not start prog: [Errno 2] ...`` -> ``[Errno 2] ...``: the original's
    message is Popen's own."""
    _, _, reason = error.partition(": ")
    return reason or error
