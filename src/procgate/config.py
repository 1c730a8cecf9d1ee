"""TOML config file -> ``Gate(...)`` and ``register(...)`` arguments, and nothing else."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from procgate.app import Gate
from procgate.auth import Token, make_token
from procgate.errors import ConfigError
from procgate.runners import Runner, by_kind
from procgate.stores import open_store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_SECTIONS = {
    "server": {"host", "port", "threads", "workers"},
    "runner": {
        "kind",
        "max_workers",
        "max_queue",
        "heartbeat",
        "stale_after",
        "broker",  # celery
        "queue",  # celery
        "concurrency",  # celery: procgate worker's threads
    },
    "store": {"url", "max_jobs", "ttl", "prefix"},
    "auth": {"tokens", "allow_ips", "trusted_proxies"},
    "gate": {
        "max_args",
        "max_arg_length",
        "max_stdin",
        "max_running",
        "callback_secret_env",
        "max_body",
        "max_wait",
        "max_upload",
        "max_files",
        "callback_allow",
        "callback_secret",
        "callback_attempts",
        "callback_backoff",
        "callback_timeout",
        "trusted_hosts",
    },
    "run": {"allow_programs", "allow_any_program", "allow_shell", "timeout", "max_output"},
    "commands": None,  # one table per command, checked below
}
#: The store of a config file without ``[store] url``: persistent, shared by workers.
DEFAULT_STORE_URL = "sqlite:///procgate-data/jobs.db"

_COMMAND_KEYS = {
    "argv",
    "timeout",
    "max_output",
    "env",
    "allow_env",
    "cwd",
    "shell",
    "description",
    "kill_grace",
    "args",
    "options",
    "dashdash",
    "allow_ips",
    "hmac_secret",
    "hmac_secret_env",
    "webhook",
    "max_running",
    "max_rate",
    "limits",
    "user",
    "group",
    "queue",
    "retry_on_worker_loss",
}
_TOKEN_KEYS = {"id", "sha256", "commands", "read_only", "admin"}


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """The ``[server]`` table: how ``procgate serve`` listens (CLI flags override it)."""

    host: str = "127.0.0.1"  # loopback: exposing the gate is a decision, not a default
    port: int = 8000
    threads: int | None = None
    workers: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A parsed, validated config file; ``build()`` makes the Gate."""

    path: str
    server: ServerOptions
    runner: Mapping[str, Any] = field(default_factory=dict)
    store: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    commands: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def store_url(self) -> str:
        """``[store] url``; by default a SQLite file under ``./procgate-data``."""
        return str(self.store.get("url", DEFAULT_STORE_URL))

    @property
    def shared_store(self) -> bool:
        """Whether several processes can share the store (all but ``memory://``)."""
        return not self.store_url.startswith("memory:")

    def build(self) -> Gate:
        """A new Gate with its own store and runner; ``ConfigError`` if anything is off."""
        options = dict(self.runner)
        kind = options.pop("kind", "thread")
        if kind == "celery":
            options["app_or_broker_url"] = options.pop("broker", None)
            options.pop("concurrency", None)  # procgate worker's, not the runner's
        runner_class = by_kind(kind)
        try:
            runner: Runner = runner_class(**options)
        except TypeError as exc:
            raise ConfigError(f"[runner]: {exc}") from None
        store_options = {k: v for k, v in self.store.items() if k != "url"}
        try:
            store = open_store(self.store_url, **store_options)
        except TypeError as exc:
            raise ConfigError(f"[store]: {exc}") from None
        try:
            gate = Gate(store=store, runner=runner, **self.gate)
        except TypeError as exc:
            raise ConfigError(f"[gate]/[run]: {exc}") from None
        try:
            self._register(gate)
        except BaseException:
            gate.close()
            raise
        return gate

    def _register(self, gate: Gate) -> None:
        base = os.path.dirname(os.path.abspath(self.path))
        for name, table in self.commands.items():
            options = dict(table)
            if "argv" not in options:
                raise ConfigError(f"[commands.{name}] needs argv")
            argv = options.pop("argv")
            if "hmac_secret_env" in options:
                if "hmac_secret" in options:
                    raise ConfigError(
                        f"[commands.{name}]: hmac_secret or hmac_secret_env, not both"
                    )
                options["hmac_secret"] = _from_env(
                    options.pop("hmac_secret_env"), f"[commands.{name}] hmac_secret_env"
                )
            if not options.get("shell") and isinstance(argv, list) and argv:
                argv = [_relative_to(base, argv[0]), *argv[1:]]
            if isinstance(options.get("cwd"), str):
                options["cwd"] = os.path.join(base, options["cwd"])
            if isinstance(options.get("args"), list):  # path rules' bases too
                options["args"] = [
                    {**rule, "base": os.path.join(base, rule["base"])}
                    if isinstance(rule, dict) and isinstance(rule.get("base"), str)
                    else rule
                    for rule in options["args"]
                ]
            try:
                gate.register(name, argv, **options)
            except TypeError as exc:
                raise ConfigError(f"[commands.{name}]: {exc}") from None


def read_config(path: str) -> Config:
    """Parse and check a config file; ``ConfigError`` names the first problem found."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for section, keys in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        if keys is not None:
            _check_keys(table, keys, f"[{section}]")
    commands = data.get("commands", {})
    for name, table in commands.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [commands.{name}] must be a table")
        _check_keys(table, _COMMAND_KEYS, f"[commands.{name}]")
    server = data.get("server", {})
    gate = dict(data.get("gate", {}))
    if "callback_secret_env" in gate:
        if "callback_secret" in gate:
            raise ConfigError("[gate]: callback_secret or callback_secret_env, not both")
        gate["callback_secret"] = _from_env(
            gate.pop("callback_secret_env"), "[gate] callback_secret_env"
        )
    auth = data.get("auth", {})
    if "tokens" in auth:
        gate["tokens"] = _tokens(auth["tokens"])
    for key in ("allow_ips", "trusted_proxies"):
        if key in auth:
            gate[key] = auth[key]
    run = data.get("run", {})
    renamed = {"timeout": "run_timeout", "max_output": "run_max_output"}
    gate.update({renamed.get(key, key): value for key, value in run.items()})
    try:
        options = ServerOptions(**server)
    except TypeError as exc:
        raise ConfigError(f"[server]: {exc}") from None
    return Config(
        path=path,
        server=options,
        runner=data.get("runner", {}),
        store=data.get("store", {}),
        gate=gate,
        commands=commands,
    )


def create_app(config_path: str) -> Gate:
    """A Gate built from a TOML config file: ``gunicorn 'procgate:create_app("x.toml")'``."""
    return read_config(config_path).build()


def _tokens(tables: Any) -> list[Token]:
    """``[[auth.tokens]]``: id, sha256, and optional commands, read_only, admin."""
    if not isinstance(tables, list):
        raise ConfigError("[auth] tokens must be an array of tables: [[auth.tokens]]")
    tokens = []
    for table in tables:
        if not isinstance(table, dict):
            raise ConfigError("[[auth.tokens]] entries must be tables")
        _check_keys(table, _TOKEN_KEYS, "[[auth.tokens]]")
        if "id" not in table or "sha256" not in table:
            raise ConfigError("[[auth.tokens]] needs id and sha256")
        tokens.append(
            make_token(
                table["id"],
                table["sha256"],
                commands=table.get("commands"),
                read_only=table.get("read_only", False),
                admin=table.get("admin", False),
            )
        )
    return tokens


def _from_env(name: Any, where: str) -> str:
    """A secret kept out of the config file, in the server's environment."""
    value = os.environ.get(str(name))
    if not value:
        raise ConfigError(f"{where}: environment variable {name!r} is not set")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _relative_to(base: str, program: str) -> str:
    """A program path with a slash is relative to the config file, not the working dir."""
    if "/" in program and not os.path.isabs(program):
        return os.path.join(base, program)
    return program
