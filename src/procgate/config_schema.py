"""What a config file may hold: every section, key, type, range and allowed value, once.

``validate(data)`` checks a parsed TOML document against it in one pass and returns every
problem, each as one line naming the key's full path (``[server] port``), what it got and
what it takes; ``json_schema()`` is the same description as a JSON Schema (for editors and
the docs). A new section or key is added here, and nowhere else is a type checked.
Constructors still check their own arguments for Python callers; a file never gets that
far with a wrong type.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from procgate.config_kinds import (
    AnyTable,
    Boolean,
    Integer,
    Key,
    ListOf,
    Number,
    OneOf,
    Problem,
    Section,
    String,
    TableOf,
    TableRule,
    shown,
)

# -- the sections ------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_SECONDS = Number(above=0)
_BYTES = Integer(minimum=0, unit="bytes")
_CIDRS = ListOf(String(), what="CIDR strings")
_NAMES = ListOf(String(), what="non-empty strings")
_RLIMITS = ("as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "rss", "stack")


def _not_both(first: str, second: str) -> TableRule:
    def rule(table: Mapping[str, Any], where: str) -> list[Problem]:
        if first in table and second in table:
            return [f"{where} {second}: give {first} or {second}, not both"]
        return []

    return rule


def _runner_rule(table: Mapping[str, Any], where: str) -> list[Problem]:
    kind = table.get("kind", "thread")
    problems = []
    own = {
        "sync": {"heartbeat", "stale_after"},
        "thread": {"max_workers", "max_queue", "heartbeat", "stale_after"},
        "process": {"max_workers", "max_queue", "heartbeat", "stale_after"},
        "celery": {"broker", "queue", "concurrency", "heartbeat", "stale_after"},
    }[kind]
    for name in table:
        if name != "kind" and name not in own:
            problems.append(f'{where} {name}: not a key of kind = "{kind}"')
    if kind == "celery" and "broker" not in table:
        problems.append(f'{where} broker: missing; kind = "celery" needs the broker URL')
    heartbeat = table.get("heartbeat", 5.0)
    stale_after = table.get("stale_after", 30.0)
    if stale_after <= heartbeat:
        problems.append(
            f"{where} stale_after: got {shown(stale_after)}; takes a number of seconds "
            f"above heartbeat ({heartbeat:g})"
        )
    return problems


def _store_rule(table: Mapping[str, Any], where: str) -> list[Problem]:
    url = table.get("url", "sqlite:")
    if "prefix" in table and not url.startswith(("redis:", "rediss:", "unix:")):
        return [f"{where} prefix: only a Redis store (redis://, rediss://, unix://) takes it"]
    return []


def _command_rule(table: Mapping[str, Any], where: str) -> list[Problem]:
    problems = _not_both("hmac_secret", "hmac_secret_env")(table, where)
    argv = table.get("argv")
    if table.get("shell", False):
        if not isinstance(argv, str) or not argv.strip():
            problems.append(
                f"{where} argv: got {shown(argv)}; with shell = true it takes the script "
                "as one string"
            )
    elif not isinstance(argv, list):
        problems.append(
            f"{where} argv: got {shown(argv)}; takes a non-empty list of strings "
            "(a script string needs shell = true)"
        )
    if table.get("webhook", False) and not ({"hmac_secret", "hmac_secret_env"} & set(table)):
        problems.append(f"{where} webhook: a webhook command needs hmac_secret or hmac_secret_env")
    return problems


SERVER = Section(
    {
        "host": Key(String(), "address to bind"),
        "port": Key(Integer(minimum=1, maximum=65535), "port to bind"),
        "threads": Key(Integer(minimum=1), "threads per worker process"),
        "workers": Key(Integer(minimum=1), "worker processes"),
        "engine": Key(String(choices=("granian", "gunicorn")), "the HTTP server"),
        "backlog": Key(Integer(minimum=1), "connections queued before they are accepted"),
    },
    help="How procgate serve listens; its flags override these keys.",
)
RUNNER = Section(
    {
        "kind": Key(String(choices=("sync", "thread", "process", "celery")), "the runner"),
        "max_workers": Key(Integer(minimum=1), "jobs running at once"),
        "max_queue": Key(Integer(minimum=1), "jobs waiting beyond those"),
        "heartbeat": Key(_SECONDS, "seconds between heartbeats and sweeps"),
        "stale_after": Key(_SECONDS, "seconds without a heartbeat before a runner is dead"),
        "broker": Key(String(), "celery: the broker URL"),
        "queue": Key(
            String(pattern=_NAME, described="1-64 letters, digits, '_', '.' or '-'"),
            "celery: the default queue",
        ),
        "concurrency": Key(Integer(minimum=1), "celery: jobs at once per procgate worker"),
    },
    rules=(_runner_rule,),
)
STORE = Section(
    {
        "url": Key(
            String(
                pattern=r"(memory|sqlite|redis|rediss|unix):.*",
                described="a store URL: memory://, sqlite:///path.db or redis://host:port/db",
            ),
            "which store",
        ),
        "max_jobs": Key(Integer(minimum=1), "finished jobs kept"),
        "ttl": Key(_SECONDS, "seconds a finished job is kept"),
        "prefix": Key(String(), "Redis: the start of every key"),
    },
    rules=(_store_rule,),
)
TOKEN = Section(
    {
        "id": Key(String(), "the token's name"),
        "sha256": Key(
            String(pattern="[0-9a-fA-F]{64}", described="64 hex digits (procgate token)"),
            "the SHA-256 of the token",
        ),
        "commands": Key(_NAMES, "the commands it may run and see"),
        "read_only": Key(Boolean(), "may read only"),
        "admin": Key(Boolean(), "sees every job and may use POST /run"),
    },
    required=("id", "sha256"),
)
AUTH = Section(
    {
        "tokens": Key(ListOf(AnyTable(), what="tables: [[auth.tokens]]"), "bearer tokens"),
        "allow_ips": Key(_CIDRS, "client networks that may call"),
        "trusted_proxies": Key(_CIDRS, "proxies whose X-Forwarded-For is believed"),
    }
)
GATE = Section(
    {
        "max_body": Key(Integer(minimum=1, unit="bytes"), "largest JSON request body"),
        "max_wait": Key(Number(minimum=0), "longest wait a request may ask for"),
        "max_waiting": Key(Integer(minimum=1), "requests waiting for jobs at once"),
        "max_body_readers": Key(Integer(minimum=1), "requests reading their bodies at once"),
        "max_url": Key(Integer(minimum=1, unit="characters"), "characters of path and query"),
        "max_upload": Key(Integer(minimum=1, unit="bytes"), "largest multipart request"),
        "max_files": Key(Integer(minimum=0), "file parts per request"),
        "max_args": Key(Integer(minimum=0), "args per request"),
        "max_arg_length": Key(Integer(minimum=1, unit="characters"), "characters per arg"),
        "max_stdin": Key(_BYTES, "bytes of stdin"),
        "max_running": Key(Integer(minimum=1), "jobs queued or running at once"),
        "callback_allow": Key(ListOf(String(), what="URL prefixes"), "where callbacks may go"),
        "callback_secret": Key(String(), "signs callbacks"),
        "callback_secret_env": Key(String(), "environment variable holding callback_secret"),
        "callback_attempts": Key(Integer(minimum=1), "attempts per callback"),
        "callback_backoff": Key(_SECONDS, "seconds before the first retry"),
        "callback_timeout": Key(_SECONDS, "seconds per attempt"),
        "trusted_hosts": Key(ListOf(String(), what="host names", nonempty=True), "Host names"),
    },
    rules=(_not_both("callback_secret", "callback_secret_env"),),
)
RUN = Section(
    {
        "allow_programs": Key(_NAMES, "programs POST /run may start"),
        "allow_any_program": Key(Boolean(), "POST /run may start any program"),
        "allow_shell": Key(Boolean(), 'POST /run accepts "shell": true'),
        "timeout": Key(_SECONDS, "timeout of /run jobs"),
        "max_output": Key(_BYTES, "bytes kept per stream"),
    }
)
COMMAND = Section(
    {
        "argv": Key(
            OneOf((ListOf(String(empty=True), what="strings", nonempty=True), String())),
            "the program and its fixed arguments, or a script with shell = true",
        ),
        "timeout": Key(_SECONDS, "seconds a job may run"),
        "max_output": Key(_BYTES, "bytes kept per stream"),
        "env": Key(TableOf(String(empty=True), what="a table of strings"), "environment"),
        "allow_env": Key(_NAMES, "environment keys a request may set"),
        "cwd": Key(String(), "working directory"),
        "shell": Key(Boolean(), "argv is a /bin/sh -c script"),
        "description": Key(String(empty=True), "shown by GET /commands"),
        "kill_grace": Key(_SECONDS, "seconds between SIGTERM and SIGKILL"),
        "args": Key(
            OneOf((String(choices=("any", "none")), ListOf(AnyTable(), what="rule tables"))),
            "the argument policy",
        ),
        "options": Key(_NAMES, "options a request may pass"),
        "dashdash": Key(Boolean(), 'put "--" before the positionals'),
        "allow_ips": Key(_CIDRS, "client networks that may run it"),
        "hmac_secret": Key(String(), "requests must be signed with it"),
        "hmac_secret_env": Key(String(), "environment variable holding hmac_secret"),
        "webhook": Key(Boolean(), "the raw body is the job's stdin"),
        "max_running": Key(Integer(minimum=1), "jobs of this command at once"),
        "max_rate": Key(
            String(
                pattern=r"[1-9][0-9]*/(second|minute|hour|day)",
                described='"N/second", "N/minute", "N/hour" or "N/day", N >= 1',
            ),
            "jobs per period",
        ),
        "limits": Key(
            TableOf(
                Integer(minimum=0),
                keys=_RLIMITS,
                what=f"a table of rlimit = whole number >= 0 ({', '.join(_RLIMITS)})",
            ),
            "rlimits",
        ),
        "user": Key(String(), "run as this user"),
        "group": Key(String(), "run as this group"),
        "queue": Key(
            String(pattern=_NAME, described="1-64 letters, digits, '_', '.' or '-'"),
            "celery: the queue of this command's jobs",
        ),
        "retry_on_worker_loss": Key(Boolean(), "run once more if the runner dies"),
    },
    required=("argv",),
    rules=(_command_rule,),
)

#: The top-level tables; ``[commands.NAME]`` and ``[[auth.tokens]]`` are checked apart.
_PREFIX = Key(String(), "the URL prefix it is served at, such as /subprocess-api")
#: ``[compat.NAME]``: the drop-in apps ``procgate serve`` mounts beside the Gate.
COMPAT: dict[str, Section] = {
    "http_runner": Section(
        {
            "prefix": _PREFIX,
            "allow": Key(
                ListOf(String(), what="command names", nonempty=True),
                "the commands a request may name (http-runner's -w whitelist)",
            ),
        }
    ),
    "subprocess_api": Section({"prefix": _PREFIX}),
}
#: The keys each ``[compat.NAME]`` must have.
_REQUIRED = {"http_runner": {"prefix", "allow"}, "subprocess_api": {"prefix"}}

SECTIONS: dict[str, Section] = {
    "server": SERVER,
    "runner": RUNNER,
    "store": STORE,
    "auth": AUTH,
    "gate": GATE,
    "run": RUN,
}
_COMMAND_NAME = re.compile(_NAME)
_MOUNT = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def validate(data: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a parsed config file, in file order; empty when it is well formed."""
    problems: list[Problem] = []
    for name, table in data.items():
        if name == "commands":
            problems.extend(_commands(table))
        elif name == "compat":
            problems.extend(_compat(table))
        elif name not in SECTIONS:
            close = difflib.get_close_matches(name, [*SECTIONS, "commands", "compat"], n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            every = [*SECTIONS, "commands.NAME", *(f"compat.{app}" for app in COMPAT)]
            allowed = ", ".join(f"[{s}]" for s in sorted(every))
            problems.append(f"[{name}]: unknown section{hint}; allowed: {allowed}")
        elif not isinstance(table, dict):
            problems.append(f"{name}: got {shown(table)}; takes a table: [{name}]")
        else:
            problems.extend(SECTIONS[name].check(table, f"[{name}]"))
            if name == "auth" and AUTH.keys["tokens"].kind.accepts(table.get("tokens", [])):
                for number, token in enumerate(table.get("tokens", []), 1):
                    problems.extend(TOKEN.check(token, f"[[auth.tokens]] #{number}"))
    return problems


def _compat(table: object) -> list[Problem]:
    if not isinstance(table, dict):
        return [f"compat: got {shown(table)}; takes tables: [compat.NAME]"]
    problems = []
    for name, app in table.items():
        where = f"[compat.{name}]"
        if name not in COMPAT:
            allowed = ", ".join(f"[compat.{known}]" for known in COMPAT)
            problems.append(f"{where}: unknown drop-in; allowed: {allowed}")
        elif not isinstance(app, dict):
            problems.append(f"{where}: got {shown(app)}; takes a table: {where}")
        else:
            problems.extend(COMPAT[name].check(app, where))
            prefix = app.get("prefix")
            if "allow" in _REQUIRED[name] and "allow" not in app:
                problems.append(f"{where} allow: missing; takes the commands a request may name")
            if "prefix" not in app:
                problems.append(f"{where} prefix: missing; takes a URL prefix such as /{name}")
            elif isinstance(prefix, str) and not _MOUNT.fullmatch(prefix):
                example = "/" + name.replace("_", "-")
                problems.append(
                    f"{where} prefix: got {prefix!r}; takes a path such as {example}"
                    " (a leading /, no trailing /)"
                )
    return problems


def _commands(table: object) -> list[Problem]:
    if not isinstance(table, dict):
        return [f"commands: got {shown(table)}; takes tables: [commands.NAME]"]
    problems = []
    for name, command in table.items():
        where = f"[commands.{name}]"
        if not _COMMAND_NAME.fullmatch(name):
            problems.append(
                f"{where}: a command name is 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        elif not isinstance(command, dict):
            problems.append(f"{where}: got {shown(command)}; takes a table of the command's keys")
        else:
            problems.extend(COMMAND.check(command, where))
    return problems


def json_schema() -> dict[str, Any]:
    """The config file format as a JSON Schema (draft 2020-12), from the same sections."""
    properties: dict[str, Any] = {name: section.schema() for name, section in SECTIONS.items()}
    properties["auth"]["properties"]["tokens"] = {
        "type": "array",
        "items": TOKEN.schema(),
        "description": "bearer tokens: [[auth.tokens]]",
    }
    properties["commands"] = {
        "type": "object",
        "description": "one table per command: [commands.NAME]",
        "propertyNames": {"pattern": f"^{_NAME}$"},
        "additionalProperties": COMMAND.schema(),
    }
    compat: dict[str, Any] = {}
    for name, section in COMPAT.items():
        table = section.schema()
        table["required"] = sorted(_REQUIRED[name])
        table["properties"]["prefix"]["pattern"] = f"^{_MOUNT.pattern}$"
        compat[name] = table
    properties["compat"] = {
        "type": "object",
        "description": "drop-ins for other tools, mounted beside the Gate: [compat.NAME]",
        "properties": compat,
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "procgate configuration file",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
