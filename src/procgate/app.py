"""Gate: the WSGI application, its URL map, its handlers and its one error renderer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    RequestEntityTooLarge,
)
from werkzeug.routing import Map, MapAdapter, Rule
from werkzeug.wrappers import Request, Response

from procgate import audit, streaming
from procgate.auth import (
    Token,
    Tokens,
    check_signature,
    client_address,
    parse_networks,
    require_address,
)
from procgate.callback_url import check_callback_url
from procgate.callbacks import Delivery, Notifier
from procgate.commands import (
    DEFAULT_KILL_GRACE,
    DEFAULT_MAX_OUTPUT,
    SHELL,
    Command,
    child_env,
    make_command,
    resolve_program,
)
from procgate.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    ProcgateError,
    UnknownCommand,
    UriTooLong,
    error_headers,
)
from procgate.hosts import check_host, names, trusted_hosts_of
from procgate.jobs import MAX_CURSOR, Job, JobStatus, Spec, job_to_json, new_job_id
from procgate.launch import Reserve, check_capacity, launch
from procgate.openapi import openapi
from procgate.policy import check_text
from procgate.run_request import Limits, RunRequest, is_number, parse_job, parse_run, read_json
from procgate.runners import Runner, ThreadRunner
from procgate.stores import JobStore, MemoryStore
from procgate.uploads import FormParser, save_upload
from procgate.waiting import Budget, GuardedInput, TooManyWaiting

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("procgate")

#: ``hook(job, callback_context)``: see ``Gate.on_finish``.
FinishCallback = Callable[[Job, Any], None]

_MAX_LIST = 1000
#: ``?wait=`` values: true, false (or empty), or seconds.
_WAIT_QUERY = re.compile(r"|true|false|[0-9]{1,9}(\.[0-9]{1,9})?")
_METHOD = re.compile(r"[A-Z]{1,20}")
_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}


class _Request(Request):
    """A request, with who sent it: the client address and the bearer token, if any."""

    form_data_parser_class = FormParser
    client: str = ""
    token: Token | None = None
    body_limit: int = 0  # bytes: max_body, or max_upload for multipart

    def body(self, *, cache: bool = True) -> bytes:
        """The whole body; 413 past ``body_limit``, for a chunked one (no Content-Length)
        too, which werkzeug cuts at ``max_content_length`` without a word."""
        data = self.get_data(cache=cache)
        if len(data) > self.body_limit:
            raise RequestEntityTooLarge()
        return data


class Gate:
    """A WSGI application that runs registered commands as jobs.

    Everything lives on the instance (commands, store, runner, URL map), so two Gates in one
    process never see each other. Options are keyword-only; each default is the safe one.
    """

    def __init__(
        self,
        *,
        store: JobStore | None = None,
        runner: Runner | None = None,
        max_body: int = 1 << 20,  # 1 MiB: a job request is small; uploads come later
        max_wait: float = 300.0,  # longest a request may hold a server thread waiting
        allow_programs: Iterable[str] = (),  # /run stays off unless given programs...
        allow_any_program: bool = False,  # ...or told to run anything (trusted callers only)
        allow_shell: bool = False,  # /run with "shell": true also needs this
        run_timeout: float | None = 600.0,  # seconds a /run job may take
        run_max_output: int = DEFAULT_MAX_OUTPUT,
        max_upload: int = 100 << 20,  # bytes of a multipart request with files
        max_files: int = 10,  # file parts per request
        callback_allow: Iterable[str] = (),  # URL prefixes callbacks may go to: none by default
        callback_secret: str | bytes | None = None,  # signs callbacks (X-Procgate-Signature)
        callback_attempts: int = 5,  # tries per callback before it is marked failed
        callback_backoff: float = 1.0,  # seconds before the first retry; doubles each time
        callback_timeout: float = 10.0,  # seconds per attempt, all of it (connect to body)
        tokens: Iterable[Token] | None = None,  # bearer tokens; None: no authentication
        allow_ips: Iterable[str] = (),  # CIDRs that may call at all; empty: any
        trusted_proxies: Iterable[str] = (),  # CIDRs whose X-Forwarded-For is believed
        max_args: int = 1000,  # args per request
        max_arg_length: int = 1 << 16,  # characters per arg
        max_stdin: int | None = None,  # bytes of stdin (text, base64 or stdin_file)
        max_running: int | None = None,  # jobs queued or running at once, all commands
        trusted_hosts: Iterable[str] | None = None,  # Host names to answer; None: any
        max_waiting: int = 16,  # requests waiting for jobs at once (long-polls, follows, SSE)
        max_body_readers: int = 8,  # requests reading their bodies at once
        max_url: int = 8192,  # characters of path and query string
    ) -> None:
        if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
            raise ConfigError("max_body must be a positive number of bytes")
        if not is_number(max_wait) or max_wait < 0:
            raise ConfigError("max_wait must be a number of seconds >= 0")
        if run_timeout is not None and (not is_number(run_timeout) or run_timeout <= 0):
            raise ConfigError("run_timeout must be a positive number of seconds")
        self.store: JobStore = store if store is not None else MemoryStore()
        self.runner: Runner = runner if runner is not None else ThreadRunner()
        #: The runner's ``reserve`` (``InlineRunner``), when it can run a job in a request's
        #: thread.
        self._reserve: Reserve | None = getattr(self.runner, "reserve", None)
        for name, value in (
            ("max_waiting", max_waiting),
            ("max_body_readers", max_body_readers),
            ("max_url", max_url),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1")
        self.max_body = max_body
        self.max_wait = max_wait
        self.waiting = Budget(max_waiting)
        self.body_readers = Budget(max_body_readers)
        self.max_url = max_url
        self.commands: dict[str, Command] = {}
        path = child_env()["PATH"]
        self.allowed_programs: set[str] = set()
        for program in names(allow_programs, "allow_programs"):
            found = resolve_program(program, path)
            if found is None:
                raise ConfigError(f"allow_programs: program {program!r} not found")
            self.allowed_programs.add(_canonical(found))
        self.allow_any_program = allow_any_program
        self.allow_shell = allow_shell
        self.run_timeout = run_timeout
        self.run_max_output = run_max_output
        if not isinstance(max_upload, int) or max_upload < 1 or max_files < 0:
            raise ConfigError("max_upload must be a positive byte count, max_files >= 0")
        self.max_upload = max_upload
        self.max_files = max_files
        self.callback_allow = names(callback_allow, "callback_allow")
        self.notifier = Notifier(
            self.store,
            allow=self.callback_allow,
            secret=callback_secret,
            max_attempts=callback_attempts,
            backoff=callback_backoff,
            timeout=callback_timeout,
        )
        self.tokens = Tokens(tokens) if tokens is not None else None
        self.allow_ips = parse_networks(allow_ips, "allow_ips")
        self.trusted_proxies = parse_networks(trusted_proxies, "trusted_proxies")
        self.max_args = max_args
        self.max_arg_length = max_arg_length
        self.limits = Limits(max_args, max_arg_length)
        self.max_stdin = max_stdin
        self.max_running = max_running
        self.trusted_hosts = trusted_hosts_of(trusted_hosts) if trusted_hosts is not None else None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._finish_hooks: list[FinishCallback] = []
        self._mounts: list[tuple[str, WSGIApplication]] = []
        self._command_hooks: dict[str, FinishCallback] = {}
        self.url_map = Map(
            [
                Rule("/health", endpoint="health", methods=["GET"]),
                Rule("/commands", endpoint="commands", methods=["GET"]),
                Rule("/commands/<name>", endpoint="command", methods=["GET", "POST"]),
                Rule("/run", endpoint="run", methods=["POST"]),
                Rule("/jobs", endpoint="jobs", methods=["GET"]),
                Rule("/jobs/<job_id>", endpoint="job", methods=["GET", "DELETE"]),
                Rule(
                    "/jobs/<job_id>/<any(stdout, stderr):stream>",
                    endpoint="output",
                    methods=["GET"],
                ),
                Rule("/jobs/<job_id>/output", endpoint="output_from", methods=["GET"]),
                Rule("/jobs/<job_id>/events", endpoint="events", methods=["GET"]),
                Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
            ]
        )
        self.runner.open(self.store, self._job_finished)
        if self.callback_allow:  # delivers the store's outbox: what other processes left too
            self.notifier.start()

    def register(
        self,
        name: str,
        argv: Sequence[str] | str,
        *,
        on_finish: FinishCallback | None = None,
        **policy: Any,
    ) -> Command:
        """Make ``POST /commands/<name>`` run ``argv`` plus the request's args.

        The program is resolved now: a missing one raises ``ConfigError`` at startup, not a
        500 later. ``policy`` is the command's policy, as ``procgate.commands.make_command``
        takes it: ``timeout`` (seconds, None for none; the most a request may ask for),
        ``max_output`` (bytes kept per stream), ``env`` and ``allow_env``, ``cwd``,
        ``shell`` (``argv`` is then a script whose ``$1``... are the request args),
        ``kill_grace``, ``args``/``options``/``dashdash`` (the argument policy),
        ``allow_ips``, ``hmac_secret``/``webhook``, ``max_running``, ``max_rate``,
        ``limits`` (rlimits), ``user``/``group``. ``on_finish(job, callback_context)`` is
        called once for each finished job of this command, like ``Gate.on_finish`` hooks.
        """
        if name in self.commands:
            raise ConfigError(f"command {name!r} is already registered")
        command = make_command(name, argv, require_program=self.runner.runs_here, **policy)
        self.commands[name] = command
        if on_finish is not None:
            self._command_hooks[name] = on_finish
        return command

    def on_finish(self, hook: FinishCallback) -> FinishCallback:
        """Call ``hook(job, callback_context)`` once for every job that finishes.

        It runs on the thread that finished the job, in the process that ran it (or, for a
        job cancelled while queued, the one that would have): keep it quick. An exception
        in a hook is logged and changes nothing else. Usable as a decorator.
        """
        self._finish_hooks.append(hook)
        return hook

    def stop(self) -> None:
        """Take no new job, and cancel this process's: queued ones at once, running ones
        with SIGTERM, ``kill_grace`` and SIGKILL to each tree, each recorded
        ``cancelled`` (which answers the requests waiting for them). What a server's
        graceful stop calls first; ``close`` comes after. Once only: a second call, from
        any thread, returns when the first is done."""
        with self._stop_lock:
            if not self._stopped:
                self.runner.close()
                self._stopped = True

    def stop_soon(self) -> None:
        """``stop`` in a thread of its own, returning at once: what a server's stop-signal
        handler calls. ``close`` waits for that stop to end."""
        threading.Thread(target=self.stop, name="procgate-stop", daemon=True).start()

    def close(self) -> None:
        """Stop the runner (cancelling its jobs), callbacks, then the store."""
        self.stop()
        self.notifier.close()
        self.store.close()

    # -- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._mounts:
            mounted = self._mounted(environ)
            if mounted is not None:
                return mounted(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def mount(self, prefix: str, app: WSGIApplication) -> None:
        """Serve ``app`` (a compat app over this Gate, say) at ``prefix`` and below, with
        the Gate's body-reading budget; ``SCRIPT_NAME`` and ``PATH_INFO`` are shifted."""
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ConfigError(f"mount prefix {prefix!r}: must start with '/', not end with one")
        if any(prefix == known for known, _ in self._mounts):
            raise ConfigError(f"mount prefix {prefix!r}: already mounted")
        self._mounts.append((prefix, app))
        self._mounts.sort(key=lambda mount: -len(mount[0]))  # the longest prefix first

    def _mounted(self, environ: WSGIEnvironment) -> WSGIApplication | None:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix) :]
                if environ.get("CONTENT_LENGTH") not in (None, "", "0") or environ.get(
                    "HTTP_TRANSFER_ENCODING"
                ):
                    environ["wsgi.input"] = GuardedInput(environ["wsgi.input"], self.body_readers)
                return app
        return None

    def run_spec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        timeout: float | None = None,
    ) -> Spec:
        """The Spec of a raw (``/run``) job: ``[run]``'s timeout (unless a shorter one is
        given) and output cap, the child environment; 413 for stdin past ``max_stdin``."""
        spec = Spec(
            argv=tuple(argv),
            env=child_env(dict(env or {})),
            stdin=stdin,
            timeout=timeout if timeout is not None else self.run_timeout,
            max_output=self.run_max_output,
            kill_grace=DEFAULT_KILL_GRACE,
        )
        self._check_stdin(spec)
        return spec

    def allowed_program(self, program: str) -> str:
        """The path ``program`` runs as under ``[run]``'s rules (``allow_programs``,
        ``allow_any_program``): ``Forbidden`` for one not allowed, ``InvalidRequest`` for
        one not found."""
        return self._allowed_program(program)

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("CONTENT_LENGTH") not in (None, "", "0") or environ.get(
            "HTTP_TRANSFER_ENCODING"
        ):
            environ["wsgi.input"] = GuardedInput(environ["wsgi.input"], self.body_readers)
        request = _Request(environ)
        url = len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
        refused: ProcgateError | None = None
        if url > self.max_url:
            refused = UriTooLong(
                f"the path and query string are limited to {self.max_url} characters"
            )
        elif not _METHOD.fullmatch(environ.get("REQUEST_METHOD", "")):
            # Methods are case-sensitive: "get" is not GET, whatever werkzeug would match.
            refused = InvalidRequest(
                "the method must be an upper-case token, such as GET", code="invalid_method"
            )
        if refused is not None:
            return self.error_response(refused, request)(environ, start_response)
        request.trusted_hosts = self.trusted_hosts
        uploading = request.mimetype == "multipart/form-data"
        request.body_limit = self.max_upload if uploading else self.max_body
        # A body without Content-Length (chunked) is cut silently at this limit when read
        # whole: one byte more tells a body at the limit from one over it (_Request.body).
        streamed = request.content_length is None
        request.max_content_length = request.body_limit + (1 if streamed else 0)
        request.max_form_memory_size = self.max_body  # the non-file parts
        request.max_form_parts = self.max_files + 20
        try:
            response = self.dispatch(request)
        finally:
            request.close()  # spooled upload files: saved to the job's directory by now
        app_iter, status, headers = response.get_wsgi_response(environ)
        start_response(status, headers)
        if response.is_streamed:  # followers, event streams: chunk by chunk
            return app_iter
        # A body in one piece: a server can send it with one write (granian does, for a
        # list) instead of asking the iterator for each chunk.
        try:
            return [b"".join(app_iter)]
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()

    def dispatch(self, request: _Request) -> Response:
        """Route a request to its ``on_<endpoint>`` handler; every error becomes JSON.

        Before the handler: the ``Host`` header is checked against ``trusted_hosts`` (job
        URLs, ``Location`` and callbacks are built from it, routing redirects too), the
        client address is worked out (``trusted_proxies``), checked against ``allow_ips``,
        and the bearer token identified. ``GET /health`` is open to all, whatever their
        address or ``Host`` (load balancers probe by IP), and builds no URL.
        """
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            if self.trusted_hosts is not None and request.path != "/health":
                check_host(request)
            endpoint, values = adapter.match()
            request.client = client_address(
                request.remote_addr, request.headers.get("X-Forwarded-For"), self.trusted_proxies
            )
            if endpoint != "health":
                require_address(request.client, self.allow_ips, "this server")
                request.token = self._authenticate(request, endpoint, values)
            handler = getattr(self, f"on_{endpoint}")
            response: Response = handler(request, adapter, **values)
        except (HTTPException, ProcgateError) as exc:
            response = self.error_response(exc, request)
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, request.path)
            response = self.error_response(ProcgateError("internal server error"), request)
        return response

    def error_response(self, exc: HTTPException | ProcgateError, request: Request) -> Response:
        """The one place error bodies are made: ``{"error": {"code", "message"}}``.

        werkzeug's own HTTP errors keep their headers (``Allow``, in alphabetical order,
        ``Location``, ``Retry-After``); only the HTML body is replaced.
        """
        if isinstance(exc, ProcgateError):
            response = _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)
            response.headers.extend(error_headers(exc))
            return response
        original = exc.get_response(request.environ)
        code = _snake((exc.name or "error").lower())
        response = _json(
            {"error": {"code": code, "message": exc.description or exc.name}},
            original.status_code,
        )
        for key, value in original.headers.items():
            if key.lower() not in ("content-type", "content-length"):
                response.headers[key] = value
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # werkzeug collects them in a set, whose order changes with the hash seed.
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    # -- handlers -----------------------------------------------------------------------

    def on_health(self, request: Request, adapter: MapAdapter) -> Response:
        return _json({"status": "ok"})

    def on_openapi(self, request: _Request, adapter: MapAdapter) -> Response:
        """The OpenAPI 3.1 document, with the commands this client may see."""
        visible = [c for c in self.commands.values() if self._shows(request, c.name)]
        server = request.host_url.rstrip("/") + request.script_root
        return _json(openapi(self, server, visible))

    def on_commands(self, request: _Request, adapter: MapAdapter) -> Response:
        visible = [c for c in self.commands.values() if self._shows(request, c.name)]
        return _json({"commands": [c.to_json() for c in visible]})

    def on_command(self, request: _Request, adapter: MapAdapter, name: str) -> Response:
        command = self.commands.get(name)
        if command is None or (request.method != "POST" and not self._shows(request, name)):
            raise UnknownCommand(f"no command named {name!r}")
        if request.method != "POST":  # GET, and the HEAD werkzeug adds to it
            return _json(command.to_json())
        require_address(request.client, command.allow_ips, f"command {name!r}")
        if command.hmac_secret is not None:
            check_signature(command.hmac_secret, request.body(), request.headers)
        else:
            self._may_run(request, name)
        if command.webhook:
            return self._webhook(command, request, adapter)
        upload = None
        if request.mimetype == "multipart/form-data":
            upload = save_upload(request.form, request.files, self.max_files)
            body = upload.body
        else:
            body = read_json(request.body(cache=False), request.mimetype)
        try:
            if upload is not None and command.user is not None:
                upload.give_to(command.user, command.group)  # the child must read its files
            run = parse_job(body, self.limits, upload=upload is not None)
            args = list(run.args)
            spec = command.spec(
                upload.substitute(args) if upload is not None else args,
                env=dict(run.env or {}),
                stdin=run.stdin,
                timeout=run.timeout,
            )
            if upload is not None:
                stdin_path = upload.stdin_path(run.stdin_file)
                if stdin_path is not None and spec.stdin:
                    raise InvalidRequest("send stdin or stdin_file, not both")
                spec = dataclasses.replace(spec, stdin_path=stdin_path, files_dir=upload.directory)
            self._check_stdin(spec)
            job = Job(id=new_job_id(), command=name, args=tuple(args), spec=spec)
        except BaseException:
            if upload is not None:
                upload.discard()
            raise
        return self._launch(job, run, request, adapter, command)

    def on_run(self, request: _Request, adapter: MapAdapter) -> Response:
        self._may_run(request, None)
        if not (self.allowed_programs or self.allow_any_program or self.allow_shell):
            raise Forbidden(
                "raw mode is off on this server: it takes [run] allow_programs, "
                "allow_any_program or allow_shell in the config file (the Gate(...) "
                "arguments of the same names in Python) to enable POST /run",
                code="run_disabled",
            )
        run = parse_run(
            read_json(request.body(cache=False), request.mimetype),
            self.limits,
            allow_any_program=self.allow_any_program,
            allow_shell=self.allow_shell,
        )
        if run.shell:
            argv: tuple[str, ...] = (SHELL, "-c", run.args[0])
        else:
            argv = (self._allowed_program(run.args[0]), *run.args[1:])
        timeout = run.timeout
        if timeout is not None and self.run_timeout is not None and timeout > self.run_timeout:
            raise InvalidRequest(
                f"timeout {timeout:g} exceeds the limit of {self.run_timeout:g} s",
                code="invalid_timeout",
            )
        spec = self.run_spec(argv, env=run.env, stdin=run.stdin, timeout=timeout)
        job = Job(id=new_job_id(), command=None, args=run.args, spec=spec)
        return self._launch(job, run, request, adapter, None)

    def on_jobs(self, request: _Request, adapter: MapAdapter) -> Response:
        status = request.args.get("status") or None
        try:
            wanted = JobStatus(status) if status is not None else None
        except ValueError:
            raise InvalidRequest(
                f"unknown status {status!r}: expected one of "
                + ", ".join(s.value for s in JobStatus)
            ) from None
        limit = _int_arg(request, "limit", 100, 1, _MAX_LIST)
        token = request.token
        page = self.store.list(
            status=wanted,
            command=request.args.get("command") or None,
            limit=limit,
            cursor=request.args.get("cursor") or None,
            token=None if token is None or token.admin else token.id,
        )
        return _json(
            {"jobs": [self._job_json(job, adapter) for job in page.jobs], "next": page.next}
        )

    def on_job(self, request: _Request, adapter: MapAdapter, job_id: str) -> Response:
        wait = self._wait(request)
        # One read when the answer is this job as it is now; else the output comes later.
        reply_now = request.method != "DELETE" and not wait
        job = self._visible(request, job_id, output=reply_now)
        if request.method == "DELETE":
            if request.token is not None and request.token.read_only:
                raise Forbidden(f"token {request.token.id!r} is read-only")
            by = {
                "by_token": request.token.id if request.token is not None else None,
                "by_client": request.client or None,
            }
            if job.status.finished and self.store.delete(job_id):
                audit.record("deleted", job, **by)
                if job.spec.files_dir is not None:  # cancelled before a runner cleaned up
                    shutil.rmtree(job.spec.files_dir, ignore_errors=True)
                response = Response(status=204)
                del response.headers["Content-Type"]  # there is no content
                return response
            job = self.store.cancel(job_id)
            audit.record("cancel_requested", job, **by)
            waited = True
            if wait:
                job, waited = self._wait_job(job_id, wait)
            return _waited(_json(self._job_json(job, adapter), 202), job, waited)
        waited = True
        if wait:
            job, waited = self._wait_job(job_id, wait)
        return _waited(_json(self._job_json(job, adapter)), job, waited)

    def on_output(
        self, request: _Request, adapter: MapAdapter, job_id: str, stream: str
    ) -> Response:
        follow = _flag(request, "follow")
        job = self._visible(request, job_id, output=not follow)  # a 404 now, if any
        if follow:
            return Response(
                self._waiting(streaming.follow(self.store, job_id, stream)),
                mimetype="application/octet-stream",
                direct_passthrough=True,
            )
        truncated = job.stdout_truncated if stream == "stdout" else job.stderr_truncated
        response = Response(
            job.stdout if stream == "stdout" else job.stderr,
            mimetype="application/octet-stream",
        )
        response.headers["X-Job-Status"] = job.status.value
        response.headers["X-Output-Truncated"] = "true" if truncated else "false"
        return response

    def on_output_from(self, request: _Request, adapter: MapAdapter, job_id: str) -> Response:
        """Polling by byte offset, like Jenkins' progressive log and Rundeck's output API."""
        self._visible(request, job_id)
        stream = request.args.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidRequest("stream must be stdout or stderr")
        offset = _int_arg(request, "offset", 0, 0, 1 << 62)
        wait = self._wait(request)
        with self.waiting.share() if wait else contextlib.nullcontext(True) as waited:
            part = streaming.read_from(self.store, job_id, stream, offset, wait if waited else 0)
        response = Response(part.data, mimetype="application/octet-stream")
        if not waited and not part.data and not part.complete:
            response.headers["Retry-After"] = "1"
        response.headers["X-Output-Offset"] = str(part.next_offset)
        response.headers["X-Output-Complete"] = "true" if part.complete else "false"
        response.headers["X-Job-Status"] = part.job.status.value
        return response

    def on_events(self, request: _Request, adapter: MapAdapter, job_id: str) -> Response:
        """Server-Sent Events; ``Last-Event-ID`` (or ``?last_event_id=``) resumes."""
        text = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
        try:
            last = int(text)
        except ValueError:
            last = MAX_CURSOR + 1
        if last > MAX_CURSOR:  # the stores keep ids as 64-bit integers
            raise InvalidRequest("Last-Event-ID must be an event id from this stream")
        self._visible(request, job_id)  # a 404 now, not an empty stream
        response = Response(
            self._waiting(
                streaming.events(
                    self.store, job_id, lambda job: self._job_json(job, adapter), max(0, last)
                )
            ),
            mimetype="text/event-stream",
            direct_passthrough=True,
        )
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
        return response

    # -- helpers ------------------------------------------------------------------------

    def _authenticate(
        self, request: _Request, endpoint: str, values: Mapping[str, Any]
    ) -> Token | None:
        """The request's token; None when auth is off or a signature stands in for it."""
        if self.tokens is None:
            return None
        if endpoint == "command" and request.method == "POST":
            command = self.commands.get(str(values.get("name")))
            if command is not None and command.hmac_secret is not None:
                return None  # on_command checks the signature
        return self.tokens.identify(request.headers.get("Authorization"))

    def _shows(self, request: _Request, name: str) -> bool:
        """Whether the request's token may see a command (all, without auth)."""
        token = request.token
        if token is None or token.admin or token.read_only or token.commands is None:
            return True
        return name in token.commands

    def _may_run(self, request: _Request, name: str | None) -> None:
        """``Forbidden`` unless the token may run the command (``None``: raw mode)."""
        token = request.token
        if self.tokens is None or token is None:
            return
        if token.read_only:
            raise Forbidden(f"token {token.id!r} is read-only")
        if name is None and not token.admin:
            raise Forbidden(f"token {token.id!r} may not use POST /run (admin only)")
        if name is not None and not token.may_run(name):
            raise Forbidden(f"token {token.id!r} may not run {name!r}")

    def _visible(self, request: _Request, job_id: str, *, output: bool = False) -> Job:
        """The job (with its output if asked), if the token may see it: its own, or any for
        admins (404 otherwise)."""
        job = self.store.get(job_id, output=output)
        token = request.token
        if self.tokens is not None and not (
            token is not None and (token.admin or job.token_id == token.id)
        ):
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def _check_stdin(self, spec: Spec) -> None:
        if self.max_stdin is None:
            return
        size = len(spec.stdin)
        if spec.stdin_path is not None:
            size = os.path.getsize(spec.stdin_path)
        if size > self.max_stdin:
            raise PayloadTooLarge(f"stdin is limited to {self.max_stdin} bytes")

    def _webhook(self, command: Command, request: _Request, adapter: MapAdapter) -> Response:
        """A signed webhook: its raw body (any format) is the job's stdin, no args.

        The event's name and delivery id (GitHub, Gitea, GitLab headers) are passed as
        ``PROCGATE_EVENT`` and ``PROCGATE_DELIVERY``.
        """
        env = {}
        for header in ("X-GitHub-Event", "X-Gitea-Event", "X-Gitlab-Event"):
            if header in request.headers:
                env["PROCGATE_EVENT"] = request.headers[header]
        for header in ("X-GitHub-Delivery", "X-Gitea-Delivery", "X-Gitlab-Event-UUID"):
            if header in request.headers:
                env["PROCGATE_DELIVERY"] = request.headers[header]
        for key, value in env.items():
            check_text(value, key)
        spec = command.spec([], env={}, stdin=request.body(), timeout=None)
        spec = dataclasses.replace(spec, env={**spec.env, **env})
        self._check_stdin(spec)
        job = Job(id=new_job_id(), command=command.name, args=(), spec=spec)
        return self._launch(job, RunRequest(), request, adapter, command)

    def _job_finished(self, job_id: str) -> None:
        """A job finished: run the Python hooks, then hurry its HTTP callback along.

        The store queued the callback as the job finished; the notifier would find it at
        its next poll anyway (and does, for jobs that finished elsewhere or were swept).
        """
        if not self._finish_hooks and not self._command_hooks and not self.callback_allow:
            return  # no hook to run, and no job here can have a callback: skip the read
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return
        hooks = [*self._finish_hooks]
        if job.command is not None and job.command in self._command_hooks:
            hooks.append(self._command_hooks[job.command])
        for hook in hooks:
            try:
                hook(job, job.callback_context)
            except Exception:
                logger.exception("on_finish hook %r failed for job %s", hook, job_id)
        if job.callback_url is not None:
            self.notifier.wake()

    def _launch(
        self,
        job: Job,
        run: RunRequest,
        request: _Request,
        adapter: MapAdapter,
        command: Command | None,
    ) -> Response:
        """Store the job, hand it to the runner, and answer 200 (finished) or 202.

        With an ``idempotency_key`` this caller already used for the command, the stored
        job is answered instead (``Idempotent-Replayed: true``) and nothing new runs.
        """
        try:
            wait = self._wait(request, run.wait)
            until = time.monotonic() + wait
            callback_url = run.callback_url
            if callback_url is not None:
                callback_url = check_callback_url(callback_url, self.callback_allow)
            check_capacity(self.store, self.max_running, command)
            job = dataclasses.replace(
                job,
                token_id=request.token.id if request.token is not None else None,
                client=request.client or None,
                # a distributed runner's worker claims the job when it starts it
                owner=self.runner.owner if self.runner.runs_here else None,
                idempotency_key=run.idempotency_key,
                link=self._job_url(job.id, adapter) if callback_url else None,
                callback_url=callback_url,
                callback_context=run.callback_context,
                callback=Delivery(callback_url).to_json() if callback_url else None,
            )
        except BaseException:
            if job.spec.files_dir is not None:
                shutil.rmtree(job.spec.files_dir, ignore_errors=True)
            raise
        stored, replayed = launch(
            self.store, self.runner, self._reserve, job, until if wait else None
        )
        waited = True
        if wait:
            current, waited = self._wait_job(stored.id, until - time.monotonic())
        else:
            current = self.store.get(stored.id)
        finished = bool(wait) and current.status.finished
        response = _waited(
            _json(self._job_json(current, adapter), 200 if finished else 202), current, waited
        )
        if not finished:
            response.headers["Location"] = self._job_url(stored.id, adapter)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    def _wait(self, request: Request, asked: Any = None) -> float:
        """Seconds to wait from the body's ``wait`` (``asked``) or the query's, capped by
        ``max_wait``."""
        value: Any = None
        if "wait" in request.args:  # checked even when the body's wait wins
            text = request.args["wait"]
            if not _WAIT_QUERY.fullmatch(text):
                raise InvalidRequest("wait must be true, false or a number of seconds")
            value = {"true": True, "false": False, "": False}.get(text)
            if value is None:
                value = float(text)
        if asked is not None:
            value = asked
        if value is None:
            return 0.0
        if isinstance(value, bool):
            return self.max_wait if value else 0.0
        if not is_number(value) or value < 0:
            raise InvalidRequest("wait must be true, false or a number of seconds >= 0")
        return min(float(value), self.max_wait)

    def _wait_job(self, job_id: str, wait: float) -> tuple[Job, bool]:
        """The job after waiting up to ``wait`` seconds for it to finish, and True; the job
        as it stands and False when ``max_waiting`` requests wait already."""
        if wait <= 0:  # the wait was spent already (running the job in this thread)
            return self.store.get(job_id), True
        with self.waiting.share() as waited:
            return (self.store.wait(job_id, wait) if waited else self.store.get(job_id)), waited

    def _waiting(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """A follow or an event stream, holding a share of the waiting budget as it runs;
        429 at once when none is left."""
        if not self.waiting.take():
            raise TooManyWaiting(
                f"{self.waiting.limit} requests are waiting for jobs already: "
                "try again in a moment, or poll"
            )
        return self.waiting.hold_while(chunks)

    def _allowed_program(self, program: str) -> str:
        path = child_env()["PATH"]
        found = resolve_program(program, path)
        if self.allow_any_program:
            if found is None:
                raise InvalidRequest(f"program {program!r} not found", code="program_not_found")
            return found
        if found is None or _canonical(found) not in self.allowed_programs:
            raise Forbidden(f"program {program!r} is not allowed", code="program_not_allowed")
        return found

    def _job_url(self, job_id: str, adapter: MapAdapter) -> str:
        return adapter.build("job", {"job_id": job_id}, force_external=True)

    def _job_json(self, job: Job, adapter: MapAdapter) -> dict[str, Any]:
        return job_to_json(job, self._job_url(job.id, adapter))


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )


def _waited(response: Response, job: Job, waited: bool) -> Response:
    """``response``, with ``Retry-After`` when it could not wait for a job still running
    (the waiting budget was spent): the client should ask again in a second."""
    if not waited and not job.status.finished:
        response.headers["Retry-After"] = "1"
    return response


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter: 1/true or 0/false (or absent); anything else is a 400."""
    text = request.args.get(name, "")
    if text not in _FLAGS:
        raise InvalidRequest(f"{name} must be 1, 0, true or false")
    return _FLAGS[text]


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


def _canonical(path: str) -> str:
    """A program's path with its directory's symlinks resolved, but not its own name.

    ``/bin/ls`` and ``/usr/bin/ls`` are the same program on a merged-/usr system; but two
    names linked to one multi-call binary (busybox) are different programs.
    """
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(directory), name)


def _snake(text: str) -> str:
    return "_".join(text.replace("-", " ").split())
