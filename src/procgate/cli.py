"""The ``procgate`` command: ``serve`` a config file (granian, or gunicorn), run a Celery ``worker``
for it, ``check`` it, print its ``schema``, or make a ``token``."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import os
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from procgate import __version__
from procgate.auth import hash_token
from procgate.commands import DEFAULT_KILL_GRACE
from procgate.config import Config, read_config
from procgate.config_schema import json_schema
from procgate.errors import ConfigError

#: Threads per worker process when neither the flag nor the config says: a thread is held
#: for the whole of a request that waits for its job, so there are many.
DEFAULT_THREADS = 32

#: Connections the kernel queues for a worker before the server accepts them.
DEFAULT_BACKLOG = 1024

#: Seconds a stopping worker may take beyond its longest ``kill_grace``.
STOP_MARGIN = 5

#: What ``procgate serve`` can serve with; the first is the default.
ENGINES = ("granian", "gunicorn")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="procgate",
        description="Serve configured command-line programs as an HTTP/JSON job API.",
        epilog="procgate COMMAND --help describes each command. "
        "Docs: docs/configuration.md in the source tree.",
    )
    parser.add_argument("--version", action="version", version=f"procgate {__version__}")
    commands = parser.add_subparsers(dest="action", required=True)
    serve = commands.add_parser("serve", help="serve a config file over HTTP (granian)")
    serve.add_argument("--config", required=True, help="path of the TOML config file")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to bind (default 8000)")
    serve.add_argument(
        "--threads", type=_at_least_one, help=f"threads per worker (default {DEFAULT_THREADS})"
    )
    serve.add_argument(
        "--engine",
        choices=ENGINES,
        help="the HTTP server (default granian; [server] engine in the config)",
    )
    serve.add_argument(
        "--workers",
        type=_at_least_one,
        help="worker processes (default: one per core, at least 2; 1 for the memory store)",
    )
    worker = commands.add_parser(
        "worker", help='run jobs from a Celery queue ([runner] kind = "celery")'
    )
    worker.add_argument("--config", required=True, help="path of the TOML config file")
    worker.add_argument(
        "--concurrency",
        type=_at_least_one,
        help="jobs at once (default [runner] concurrency, or 8)",
    )
    worker.add_argument(
        "--queues",
        help="comma-separated queues to take jobs from (default: [runner] queue)",
    )
    worker.add_argument("--hostname", help="the Celery node name (default procgate-<pid>@<host>)")
    check = commands.add_parser("check", help="validate a config file and list its commands")
    check.add_argument("--config", required=True, help="path of the TOML config file")
    commands.add_parser(
        "schema", help="print the config file format as a JSON Schema (for editors)"
    )
    token = commands.add_parser(
        "token", help="make a new bearer token and print it with its [[auth.tokens]] entry"
    )
    token.add_argument("--id", required=True, help="the token's id (shown in the audit log)")
    options = parser.parse_args(argv)
    if options.action == "token":
        return _token(options.id)
    if options.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        config = read_config(options.config)
        if options.action == "check":
            return _check(config)
        if options.action == "worker":
            return _worker(config, options)
        return _serve(config, options)
    except ConfigError as exc:
        for line in exc.message.splitlines():
            print(f"procgate: error: {line}", file=sys.stderr)
        return 2


def _token(token_id: str) -> int:
    secret = secrets.token_urlsafe(32)
    print(f"token: {secret}")
    print("# give the token to its user; put only this in the config file:")
    print("[[auth.tokens]]")
    print(f'id = "{token_id}"')
    print(f'sha256 = "{hash_token(secret)}"')
    return 0


def _worker(config: Config, options: argparse.Namespace) -> int:
    try:
        from procgate.worker import run_worker
    except ImportError:
        raise ConfigError("procgate worker needs Celery: pip install 'procgate[celery]'") from None
    queues = [name.strip() for name in (options.queues or "").split(",") if name.strip()]
    return run_worker(
        config, concurrency=options.concurrency, queues=queues, hostname=options.hostname
    )


def _check(config: Config) -> int:
    gate = config.build()
    try:
        print(f"{config.path}: OK, {len(gate.commands)} command(s)")
        for command in gate.commands.values():
            limit = f"{command.timeout:g} s" if command.timeout is not None else "no timeout"
            print(f"  {command.name:<20} {' '.join(command.argv)}  ({limit})")
    finally:
        gate.close()
    return 0


def _serve(config: Config, options: argparse.Namespace) -> int:
    engine = options.engine or config.server.engine
    host = options.host or config.server.host
    port = options.port if options.port is not None else config.server.port
    default_workers = max(2, os.cpu_count() or 1) if config.shared_store else 1
    workers = _first(options.workers, config.server.workers, default_workers)
    threads = _first(options.threads, config.server.threads, DEFAULT_THREADS)
    backlog = _first(config.server.backlog, DEFAULT_BACKLOG)
    if workers > 1 and not config.shared_store:
        raise ConfigError(
            "the memory store lives in one process: serve it with --workers 1 (and threads)"
        )
    gate = config.build()  # fail here, with a clear message, not in every worker
    grace = max((c.kill_grace for c in gate.commands.values()), default=DEFAULT_KILL_GRACE)
    gate.close()
    stop_timeout = math.ceil(max(grace, DEFAULT_KILL_GRACE)) + STOP_MARGIN
    _check_bind(host, port)
    if not _is_loopback(host) and "tokens" not in config.gate and not config.gate.get("allow_ips"):
        print(
            f"procgate: warning: serving on {host} with neither [auth] tokens nor allow_ips: "
            "anyone who reaches this port can run the configured commands; add tokens "
            "(procgate token --id NAME) or bind 127.0.0.1",
            file=sys.stderr,
        )
    log_level = os.environ.get("PROCGATE_LOG_LEVEL", "info")
    if engine == "granian":
        try:
            from procgate import _granian
        except ImportError:
            raise ConfigError(
                "procgate serve needs granian: pip install 'procgate[server]'"
            ) from None
        _granian.serve(
            config.path,
            host=_address(host, port),
            port=port,
            workers=workers,
            threads=threads,
            backlog=backlog,
            kill_timeout=stop_timeout,
            log_level=log_level,
        )
        return 0
    try:
        from procgate._server import Server
    except ImportError:
        raise ConfigError("procgate serve needs gunicorn: pip install gunicorn") from None
    settings: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "backlog": backlog,
        "graceful_timeout": stop_timeout,
        "errorlog": "-",
        "loglevel": log_level,
    }
    Server(config.path, settings).run()
    return 0


def _address(host: str, port: int) -> str:
    """``host`` as an IP address (granian binds addresses, not names: ``localhost``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return str(found[0][4][0])
    return host


def _check_bind(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be bound (gunicorn retries for 5 s)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}; use --host") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use: stop what listens there, "
                    "or pick another port with --port"
                ) from None
            if exc.errno == errno.EACCES:
                raise ConfigError(
                    f"port {port} on {host} needs privileges: pick a port above 1023 with --port"
                ) from None
            raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``, if given)."""
    takes = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"got {text!r}; takes a whole number {takes}")
        return value

    return parse


_at_least_one = _whole_number(1)
_port = _whole_number(1, 65535)


def _first(*values: int | None) -> int:
    """The first value that was given: a flag, then the config file, then the default."""
    return next(value for value in values if value is not None)
