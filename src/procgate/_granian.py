"""granian behind ``procgate serve`` (the default engine; needs the ``server`` extra).

granian's HTTP side is Rust: it parses requests, holds slow and idle connections, and
hands complete request heads to a pool of Python threads in each worker process. Each
worker builds its own Gate from the config file.

A stop (SIGTERM or SIGINT to the main process, which passes it on to the workers) is
graceful: each worker stops taking connections, cancels its jobs at once (SIGTERM to each
process group, ``kill_grace``, SIGKILL) and records them ``cancelled``, which answers every
request still waiting for one of them with the job as it ended; then it closes the Gate.
granian offers no hook for a worker's stop (the callbacks of its stop signal run once the
requests have drained, which the waiting ones would not), so the worker function wraps
granian's own (``MPServer._spawn_wsgi_worker``) and the signal handlers it sets up.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import granian._signals  # the worker's stop signal
from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.mp import MPServer, WorkerProcess

from procgate._logging import flush_logs, log_to_stderr
from procgate.app import Gate
from procgate.config import create_app

#: Milliseconds a client may take to send a request's head (the line and headers).
HEADER_TIMEOUT_MS = 10_000


def _load(config_path: str, threads: int) -> Gate:
    log_to_stderr(buffered=True)
    return create_app(config_path, threads=threads)


#: The signals granian stops a worker with.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stopping(gate: Gate, handler: Callable[..., Any], *args: Any) -> None:
    """A stop signal: the Gate's stop, in a thread (it takes up to the longest
    ``kill_grace``; requests waiting for the jobs it cancels are answered), and
    granian's own handler."""
    gate.stop_soon()
    handler(*args)


def _worker(worker_id: int, gate: Gate, *args: Any) -> None:
    """One worker process: granian's WSGI worker, and a graceful stop of the Gate."""
    inner = MPServer._spawn_wsgi_worker.__wrapped__
    set_signals: Callable[[], Any] = granian._signals.set_sync_signals

    def set_sync_signals() -> Any:
        event = set_signals()  # its handlers tell the Rust side to stop, once it drained
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                signal.signal(signum, functools.partial(_stopping, gate, handler))
        return event

    granian._signals.set_sync_signals = set_sync_signals
    try:
        inner(worker_id, gate, *args)
    finally:
        gate.close()  # once the stop the signal began has ended
        flush_logs()


_worker = WorkerProcess.wrap_target(_worker)  # type: ignore[no-untyped-call]


def _many_threads(record: logging.LogRecord) -> bool:
    """Leave out granian's warning that many threads are many for the cores: procgate's
    threads mostly wait, for children and for jobs, rather than run Python."""
    return not record.getMessage().startswith("Configuration allows spawning up to")


def _notify_systemd(state: bytes) -> None:
    """Tell systemd (``Type=notify``) our state, when it gave us ``$NOTIFY_SOCKET``."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state, address)
        except OSError as exc:
            logging.getLogger("procgate").warning("cannot notify systemd: %s", exc)


def serve(
    config_path: str,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    backlog: int,
    kill_timeout: int,
    log_level: str,
) -> None:
    """Serve the config file until stopped; workers get ``kill_timeout`` s to stop."""
    server = MPServer(
        "procgate",  # the target's name, for granian's log lines: the loader builds it
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        websockets=False,
        workers=workers,
        blocking_threads=threads,
        backlog=backlog,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_TIMEOUT_MS),
        log_level=LogLevels(log_level.lower()),
        workers_kill_timeout=kill_timeout,
        # Mounted under a prefix, as gunicorn does it: the environment's SCRIPT_NAME.
        url_path_prefix=os.environ.get("SCRIPT_NAME") or None,
    )
    logging.getLogger("_granian").addFilter(_many_threads)
    server.on_startup(lambda: _notify_systemd(b"READY=1"))  # the socket listens by now
    server.on_shutdown(lambda: _notify_systemd(b"STOPPING=1"))
    server.serve(
        spawn_target=_worker,
        target_loader=functools.partial(_load, config_path, threads),
        wrap_loader=False,
    )
