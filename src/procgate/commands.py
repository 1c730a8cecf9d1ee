"""Command records: what may run, under which policy, and how a request becomes argv."""

from __future__ import annotations

import grp
import math
import os
import pwd
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from procgate.auth import IPNetwork, parse_networks
from procgate.errors import ConfigError, Forbidden, InvalidRequest
from procgate.jobs import Spec
from procgate.policy import ArgPolicy, parse_policy

#: Output kept per stream unless a command says otherwise: 10 MiB.
DEFAULT_MAX_OUTPUT = 10 << 20

#: Seconds a command may run unless it says otherwise; ``None`` means no limit.
DEFAULT_TIMEOUT: float | None = 600.0

#: Seconds between SIGTERM and SIGKILL when a job times out or is cancelled.
DEFAULT_KILL_GRACE = 5.0

#: Where children look for programs when the server has no PATH of its own.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: The shell used by commands configured with ``shell=True`` and by ``/run`` with shell.
SHELL = "/bin/sh"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Command:
    """A registered command and its policy; build one with ``Gate.register``.

    ``argv`` is the base argv with ``argv[0]`` resolved to an absolute path; request args
    are appended to it. For a ``shell`` command, argv is ``[SHELL, "-c", script, name]`` and
    request args become the script's ``$1``, ``$2``... so they are never parsed as shell.
    """

    name: str
    argv: tuple[str, ...]
    timeout: float | None = DEFAULT_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT
    env: Mapping[str, str] = field(default_factory=dict)
    allow_env: frozenset[str] = frozenset()
    cwd: str | None = None
    shell: bool = False
    description: str = ""
    kill_grace: float = DEFAULT_KILL_GRACE
    args: ArgPolicy = field(default_factory=ArgPolicy)
    allow_ips: tuple[IPNetwork, ...] = ()
    hmac_secret: bytes | None = field(default=None, repr=False)
    webhook: bool = False
    max_running: int | None = None
    max_rate: Rate | None = None
    rlimits: Mapping[str, int] = field(default_factory=dict)
    user: str | None = None
    group: str | None = None
    queue: str | None = None
    retry_on_worker_loss: bool = False
    # The child's environment without request env: made once, shared by the jobs' Specs.
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def spec(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: bytes,
        timeout: float | None,
    ) -> Spec:
        """The Spec for one request; ``Forbidden`` for an env key the command does not allow.

        The request ``timeout`` may shorten the command's but never lengthen it.
        """
        refused = sorted(set(env) - self.allow_env)
        if refused:
            raise Forbidden(
                f"command {self.name!r} does not allow setting env {', '.join(refused)}",
                code="env_not_allowed",
            )
        if timeout is not None and self.timeout is not None and timeout > self.timeout:
            raise InvalidRequest(
                f"timeout {timeout:g} exceeds the command's limit of {self.timeout:g} s",
                code="invalid_timeout",
            )
        argv = (*self.argv, *self.args.check(args))
        if self.rlimits:
            limits = [f"--{name}={value}" for name, value in self.rlimits.items()]
            argv = (self._prlimit(), *limits, "--", *argv)
        return Spec(
            argv=argv,
            env={**self.base_env, **env} if env else self.base_env,
            cwd=self.cwd,
            stdin=stdin,
            timeout=timeout if timeout is not None else self.timeout,
            max_output=self.max_output,
            kill_grace=self.kill_grace,
            user=self.user,
            group=self.group,
            queue=self.queue,
            retry_on_worker_loss=self.retry_on_worker_loss,
        )

    @staticmethod
    def _prlimit() -> str:
        found = resolve_program("prlimit", child_env()["PATH"])
        if found is None:  # checked at registration; gone since
            raise ConfigError("prlimit (util-linux) is needed for rlimits")
        return found

    def to_json(self) -> dict[str, Any]:
        """What ``GET /commands`` shows: configured env values are left out (secrets)."""
        return {
            "name": self.name,
            "argv": list(self.argv),
            "timeout": self.timeout,
            "max_output": self.max_output,
            "shell": self.shell,
            "allow_env": sorted(self.allow_env),
            "cwd": self.cwd,
            "description": self.description,
            "args": self.args.to_json(),
            "signed": self.hmac_secret is not None,
            "webhook": self.webhook,
            "max_running": self.max_running,
            "max_rate": self.max_rate.text if self.max_rate is not None else None,
            "limits": dict(self.rlimits),
            "user": self.user,
            "group": self.group,
            "queue": self.queue,
            "retry_on_worker_loss": self.retry_on_worker_loss,
        }


def make_command(
    name: str,
    argv: Sequence[str] | str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_output: int = DEFAULT_MAX_OUTPUT,
    env: Mapping[str, str] | None = None,
    allow_env: Iterable[str] = (),
    cwd: str | None = None,
    shell: bool = False,
    description: str = "",
    kill_grace: float = DEFAULT_KILL_GRACE,
    args: Any = "any",
    options: Iterable[str] | None = None,
    dashdash: bool = False,
    allow_ips: Iterable[str] = (),
    hmac_secret: str | bytes | None = None,
    webhook: bool = False,
    max_running: int | None = None,
    max_rate: str | None = None,
    limits: Mapping[str, int] | None = None,
    user: str | None = None,
    group: str | None = None,
    queue: str | None = None,
    retry_on_worker_loss: bool = False,
    require_program: bool = True,
) -> Command:
    """Validate a command's policy and resolve its program now: a bad one fails at startup.

    ``args`` is the argument policy (``"any"``, ``"none"`` or a list of rules, see
    ``procgate.policy``) with ``options`` and ``dashdash``. ``allow_ips``: CIDRs that may
    call it. ``hmac_secret``: requests must be signed like GitHub/GitLab webhooks (then no
    bearer token is needed); with ``webhook``, the raw body goes to stdin. ``max_running``
    jobs at once and ``max_rate`` (``"10/minute"``) per command, across processes sharing
    the store. ``limits``: rlimits (``cpu``, ``as``, ``nofile``, ``fsize``, ``nproc``...,
    applied by util-linux ``prlimit``). ``user``/``group``: run as them (needs root).
    ``queue``: the queue a distributed runner sends its jobs to; ``retry_on_worker_loss``:
    a job whose runner died while it ran is run once more instead of becoming ``lost``.
    ``require_program=False`` (the API side of a distributed runner) keeps a program that
    is not found here as it is written: the worker resolves it on its own host.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"command name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    env = dict(env or {})
    _check_env(env, f"command {name!r}")
    if shell:
        if not isinstance(argv, str) or not argv.strip():
            raise ConfigError(f"command {name!r}: a shell command takes a script string")
        base: tuple[str, ...] = (SHELL, "-c", argv, name)
    else:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"command {name!r}: argv must be a non-empty list of strings")
        program = resolve_program(argv[0], child_env(env, {})["PATH"])
        if program is None and not require_program:
            program = argv[0]
        if program is None:
            raise ConfigError(f"command {name!r}: {_not_runnable(argv[0])}")
        base = (program, *argv[1:])
    if any("\0" in part for part in base):
        raise ConfigError(f"command {name!r}: argv contains a NUL byte")
    if timeout is not None and not (_positive(timeout)):
        raise ConfigError(f"command {name!r}: timeout must be a positive number of seconds")
    if not isinstance(max_output, int) or max_output < 0:
        raise ConfigError(f"command {name!r}: max_output must be a byte count >= 0")
    if not _positive(kill_grace):
        raise ConfigError(f"command {name!r}: kill_grace must be a positive number of seconds")
    if cwd is not None and require_program and not os.path.isdir(cwd):
        raise ConfigError(f"command {name!r}: cwd {cwd!r} is not a directory")
    where = f"command {name!r}"
    policy = parse_policy(args, options=options, dashdash=dashdash, where=where)
    secret = hmac_secret.encode() if isinstance(hmac_secret, str) else hmac_secret
    if secret is not None and not secret:
        raise ConfigError(f"{where}: hmac_secret must not be empty")
    if webhook and secret is None:
        raise ConfigError(f"{where}: a webhook command needs an hmac_secret")
    if max_running is not None and (not isinstance(max_running, int) or max_running < 1):
        raise ConfigError(f"{where}: max_running must be a whole number >= 1")
    if queue is not None and (not isinstance(queue, str) or not _NAME.fullmatch(queue)):
        raise ConfigError(f"{where}: queue must be 1-64 letters, digits, '_', '.' or '-'")
    if not isinstance(retry_on_worker_loss, bool):
        raise ConfigError(f"{where}: retry_on_worker_loss must be true or false")
    rlimits = _rlimits(limits or {}, where)
    _check_identity(user, group, where)
    if user is not None and group is None:  # else the child would keep root's group
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    return Command(
        name=name,
        argv=base,
        timeout=float(timeout) if timeout is not None else None,
        max_output=max_output,
        env=env,
        allow_env=frozenset(allow_env),
        cwd=cwd,
        shell=shell,
        description=description,
        kill_grace=float(kill_grace),
        args=policy,
        allow_ips=parse_networks(allow_ips, f"{where}: allow_ips"),
        hmac_secret=secret,
        webhook=bool(webhook),
        max_running=max_running,
        max_rate=Rate.parse(max_rate, where) if max_rate is not None else None,
        rlimits=rlimits,
        user=user,
        group=group,
        queue=queue,
        retry_on_worker_loss=retry_on_worker_loss,
        base_env=child_env(env),
    )


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` jobs per ``window`` seconds, from text such as ``"10/minute"``."""

    count: int
    window: float
    text: str

    @classmethod
    def parse(cls, text: object, where: str) -> Rate:
        spec = text.strip() if isinstance(text, str) else ""
        match = _RATE.fullmatch(spec)
        if match is None:
            raise ConfigError(
                f"{where}: max_rate must look like '10/minute' (second|minute|hour|day)"
            )
        count = int(match.group(1))
        if count < 1:
            raise ConfigError(f"{where}: max_rate must allow at least one job")
        return cls(count, _WINDOWS[match.group(2)], spec)


_RATE = re.compile(r"([0-9]+)\s*/\s*(second|minute|hour|day)")
_WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}

#: rlimits a command may set: prlimit's long option for each.
RLIMITS = frozenset(
    {"as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "rss", "stack"}
)


def _rlimits(limits: Mapping[str, int], where: str) -> dict[str, int]:
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where}: limits must be a table of rlimit = number")
    for key, value in limits.items():
        if key not in RLIMITS:
            raise ConfigError(
                f"{where}: unknown limit {key!r}; known: {', '.join(sorted(RLIMITS))}"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: limit {key} must be a whole number >= 0")
    if limits and resolve_program("prlimit", child_env()["PATH"]) is None:
        raise ConfigError(f"{where}: limits need prlimit (util-linux) on the PATH")
    return dict(limits)


def _check_identity(user: str | None, group: str | None, where: str) -> None:
    """A user or group to run as must exist, and only root can switch to them."""
    if user is None and group is None:
        return
    if os.geteuid() != 0:
        raise ConfigError(f"{where}: user/group need procgate to run as root")
    try:
        if user is not None:
            pwd.getpwnam(user)
        if group is not None:
            grp.getgrnam(group)
    except KeyError as exc:
        raise ConfigError(f"{where}: no such user or group: {exc}") from None


def child_env(*layers: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment: PATH and LANG from the server, then each layer on top."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    for layer in layers:
        env.update(layer)
    return env


def resolve_program(program: str, path: str) -> str | None:
    """The absolute path of a program name or path; None if it is not an executable file.

    Symlinks are kept: multi-call programs (busybox, python3) look at the name they were
    started by.
    """
    found = shutil.which(program, path=path)
    return os.path.abspath(found) if found is not None else None


def _not_runnable(program: str) -> str:
    """Why a program did not resolve: a path that is there but cannot run, or not found."""
    if "/" in program and os.path.isdir(program):
        return f"program {program!r} is a directory"
    if "/" in program and os.path.exists(program):
        return f"program {program!r} is not executable (chmod +x it, or check its mount)"
    return f"program {program!r} not found"


def _check_env(env: Mapping[str, str], where: str) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"{where}: env keys and values must be strings")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ConfigError(f"{where}: invalid env entry {key!r}")


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
