"""The gunicorn application behind ``procgate serve`` (needs the ``server`` extra)."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import gunicorn.util  # type: ignore[import-untyped]  # no hints
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]  # no hints
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]  # no hints
from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]  # no hints

from procgate._logging import flush_logs, log_to_stderr
from procgate.app import Gate
from procgate.config import create_app


def _close_gate(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: stop the worker's jobs and children on the way out."""
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Gate):
        app.close()
    flush_logs()


#: The signals that stop a worker. One that reaches a new worker before the worker has
#: set its own handlers meets the handler it inherited from the master, which only queues
#: it in the worker's copy of the master: the worker would serve on, and a stop would take
#: the whole graceful timeout (30 s) before the master killed it.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class _Arbiter(Arbiter):  # type: ignore[misc]  # base class is untyped (Any)
    """gunicorn's master, forking each worker with the stop signals blocked (``_Worker``
    takes them once it has its handlers)."""

    def spawn_worker(self) -> Any:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().spawn_worker()
        finally:  # in the master, right after the fork; in the worker, as it exits
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's answer to a request it could not parse (a bad request line, method or
    header, a URI or headers too long), as JSON like every other procgate error rather
    than gunicorn's HTML page."""
    code = "_".join(reason.lower().replace("-", " ").split()) or "bad_request"
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin1") + body)


class _Worker(ThreadWorker):  # type: ignore[misc]  # base class is untyped (Any)
    """gunicorn's threaded worker, taking the stop signals held back since its fork as
    soon as its own handlers are set: a stop that came meanwhile stops it at once.

    It unblocks before loading the Gate, while it is the worker's only thread: threads and
    job processes started later inherit no blocked signal.
    """

    def init_signals(self) -> None:
        super().init_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # This process is procgate's own worker: its parse errors are JSON too.
        gunicorn.util.write_error = write_json_error

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop taking connections (gunicorn), and cancel this worker's jobs at
        once (the Gate), which answers the requests waiting for them; gunicorn would
        otherwise wait for those requests until its graceful timeout, then kill it all."""
        app = getattr(self, "wsgi", None)
        if isinstance(app, Gate):
            app.stop_soon()
        super().handle_exit(sig, frame)


class Server(BaseApplication):  # type: ignore[misc]  # base class is untyped (Any)
    """Each worker process builds its own Gate from the config file after the fork."""

    def __init__(self, config_path: str, settings: dict[str, Any]) -> None:
        self.config_path = config_path
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", _close_gate)
        self.cfg.set("worker_class", _Worker)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25 listens on ~/.gunicorn/gunicorn.ctl: two servers would fight
            # over that one path, and procgate has no use for it
            self.cfg.set("control_socket_disable", True)

    def run(self) -> None:
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:  # gunicorn's way of saying it could not start
            print(f"procgate: error: {exc}", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Gate:
        log_to_stderr(buffered=True)
        return create_app(self.config_path, threads=self.cfg.threads)
