"""TOML config file -> ``Gate(...)`` and ``register(...)`` arguments, and nothing else."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from procgate.app import Gate
from procgate.auth import make_token
from procgate.config_schema import validate
from procgate.errors import ConfigError
from procgate.runners import Runner, by_kind
from procgate.stores import open_store
from procgate.waiting import thread_budgets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: The store of a config file without ``[store] url``: persistent, shared by workers.
DEFAULT_STORE_URL = "sqlite:///procgate-data/jobs.db"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """The ``[server]`` table: how ``procgate serve`` listens (CLI flags override it)."""

    host: str = "127.0.0.1"  # loopback: exposing the gate is a decision, not a default
    port: int = 8000
    threads: int | None = None
    workers: int | None = None
    engine: str = "granian"  # or "gunicorn"
    backlog: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A parsed, validated config file; ``build()`` makes the Gate."""

    path: str
    server: ServerOptions
    runner: Mapping[str, Any] = field(default_factory=dict)
    store: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    commands: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    compat: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def store_url(self) -> str:
        """``[store] url``; by default a SQLite file under ``./procgate-data``."""
        return str(self.store.get("url", DEFAULT_STORE_URL))

    @property
    def shared_store(self) -> bool:
        """Whether several processes can share the store (all but ``memory://``)."""
        return not self.store_url.startswith("memory:")

    def build(self, **defaults: Any) -> Gate:
        """A new Gate with its own store and runner; ``ConfigError`` if anything is off.

        ``defaults``: Gate options for what ``[gate]`` leaves unsaid (a server's budgets).
        """
        options = dict(self.runner)
        kind = options.pop("kind", "thread")
        if kind == "celery":
            options["app_or_broker_url"] = options.pop("broker", None)
            options.pop("concurrency", None)  # procgate worker's, not the runner's
        runner_class = by_kind(kind)
        # A Gate that is never built has not taken the runner and store: close them here,
        # or a refused [gate] leaves the SQLite file open until the garbage collector.
        with contextlib.ExitStack() as undo:
            try:
                runner: Runner = runner_class(**options)
            except TypeError as exc:
                raise ConfigError(f"[runner]: {exc}") from None
            undo.callback(runner.close)
            store_options = {k: v for k, v in self.store.items() if k != "url"}
            try:
                store = open_store(self.store_url, **store_options)
            except TypeError as exc:
                raise ConfigError(f"[store]: {exc}") from None
            undo.callback(store.close)
            try:
                gate = Gate(store=store, runner=runner, **{**defaults, **self.gate})
            except TypeError as exc:
                raise ConfigError(f"[gate]/[run]: {exc}") from None
            undo.pop_all()  # the Gate owns them now: gate.close() closes both
        try:
            self._register(gate)
            self._mount(gate)
        except BaseException:
            gate.close()
            raise
        return gate

    def _mount(self, gate: Gate) -> None:
        """Mount the ``[compat.NAME]`` drop-ins at their prefixes."""
        for name, table in self.compat.items():
            if name == "subprocess_api":
                from procgate.compat.subprocess_api import SubprocessAPI

                gate.mount(str(table["prefix"]), SubprocessAPI(gate))
            elif name == "http_runner":
                from procgate.compat.http_runner import HTTPRunner

                gate.mount(str(table["prefix"]), HTTPRunner(gate, table["allow"]))

    def _register(self, gate: Gate) -> None:
        """Register every command; ``ConfigError`` lists every command that failed."""
        base = os.path.dirname(os.path.abspath(self.path))
        problems = []
        for name, table in self.commands.items():
            try:
                self._register_one(gate, base, name, table)
            except ConfigError as exc:
                message = exc.message.removeprefix(f"command {name!r}: ")
                problems.append(f"{self.path}: [commands.{name}] {message}")
        if problems:
            raise ConfigError("\n".join(problems))

    @staticmethod
    def _register_one(gate: Gate, base: str, name: str, table: Mapping[str, Any]) -> None:
        options = dict(table)
        argv = options.pop("argv")
        if "hmac_secret_env" in options:
            options["hmac_secret"] = _from_env(options.pop("hmac_secret_env"), "hmac_secret_env")
        if not options.get("shell"):
            argv = [_relative_to(base, argv[0]), *argv[1:]]
        if "cwd" in options:
            options["cwd"] = os.path.normpath(os.path.join(base, options["cwd"]))
        if isinstance(options.get("args"), list):  # path rules' bases too
            options["args"] = [
                {**rule, "base": os.path.join(base, rule["base"])}
                if isinstance(rule.get("base"), str)
                else rule
                for rule in options["args"]
            ]
        gate.register(name, argv, **options)


def read_config(path: str) -> Config:
    """Parse and check a config file; ``ConfigError`` lists every problem, one per line.

    Each line names the file and the key (``procgate.toml: [server] port: got 70000 (a
    whole number); takes a whole number from 1 to 65535``). The types, ranges and allowed
    values are ``procgate.config_schema``'s; what only the running system can tell (a
    program on the PATH, a store to open) is checked by ``Config.build()``.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    problems = validate(data)
    gate = dict(data.get("gate", {}))
    auth = data.get("auth", {})
    commands = data.get("commands", {})
    if not problems:
        problems = _secrets(gate, commands)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    if "tokens" in auth:
        gate["tokens"] = [
            make_token(
                table["id"],
                table["sha256"],
                commands=table.get("commands"),
                read_only=table.get("read_only", False),
                admin=table.get("admin", False),
            )
            for table in auth["tokens"]
        ]
    for key in ("allow_ips", "trusted_proxies"):
        if key in auth:
            gate[key] = auth[key]
    run = data.get("run", {})
    renamed = {"timeout": "run_timeout", "max_output": "run_max_output"}
    gate.update({renamed.get(key, key): value for key, value in run.items()})
    return Config(
        path=path,
        server=ServerOptions(**data.get("server", {})),
        runner=data.get("runner", {}),
        store=data.get("store", {}),
        gate=gate,
        commands=commands,
        compat=data.get("compat", {}),
    )


def _secrets(gate: dict[str, Any], commands: Mapping[str, Any]) -> list[str]:
    """Replace ``*_env`` keys by the secret their variable holds; the problems, if unset."""
    problems = []
    if "callback_secret_env" in gate:
        try:
            gate["callback_secret"] = _from_env(gate.pop("callback_secret_env"), "")
        except ConfigError as exc:
            problems.append(f"[gate] callback_secret_env: {exc.message}")
    for name, table in commands.items():
        if "hmac_secret_env" in table:
            try:
                _from_env(table["hmac_secret_env"], "")
            except ConfigError as exc:
                problems.append(f"[commands.{name}] hmac_secret_env: {exc.message}")
    return problems


def create_app(config_path: str, *, threads: int | None = None) -> Gate:
    """A Gate built from a TOML config file: ``gunicorn 'procgate:create_app("x.toml")'``.

    ``threads``: the server threads of each worker process, when known; the Gate's
    budgets of waiting requests and body readers are then sized to leave some free.
    """
    defaults = thread_budgets(threads) if threads is not None else {}
    return read_config(config_path).build(**defaults)


def _from_env(name: str, where: str) -> str:
    """A secret kept out of the config file, in the server's environment."""
    value = os.environ.get(name)
    if not value:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}environment variable {name!r} is not set")
    return value


def _relative_to(base: str, program: str) -> str:
    """A program path with a slash is relative to the config file, not the working dir."""
    if "/" in program:
        return os.path.normpath(os.path.join(base, program))
    return program
