"""The deployment recipes in examples/: the systemd unit and the container image.

Neither systemd nor a container runtime runs here. The unit goes through
``systemd-analyze verify`` (``.ci/run`` installs the ``systemd`` package); the Dockerfile is
read statically. What each recipe relies on from procgate itself (the bind address, where
the SQLite file lands, the readiness notification, the stop, the exit status of a bad
config, the health check's one-liner) is checked against a real ``procgate serve``.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procgate import JobStatus, open_store
from procgate._server import Server as GunicornServer
from tests.servers import Server, start_server

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "procgate.service"
DOCKERFILE = ROOT / "examples" / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "examples" / "procgate.toml"
VENV_PROCGATE = "/opt/procgate/venv/bin/procgate"
CONFIG_PATH = "/etc/procgate/procgate.toml"


def unit_service() -> dict[str, list[str]]:
    """The ``[Service]`` keys of the unit, each with its values in order (keys repeat)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the whole file in order, continuation lines joined and
    comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions from the last ``FROM`` on: what the published image is made of."""
    instructions = dockerfile_instructions()
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def only(stage: list[tuple[str, str]], word: str) -> str:
    """The arguments of the one ``word`` instruction of ``stage``."""
    found = [rest for w, rest in stage if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


@pytest.mark.docs("deploy-systemd.md#install-and-start-the-unit")
@pytest.mark.docs("deploy-systemd.md#the-sandbox-and-what-it-leaves-out")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit with no error and no warning.

    verify also checks that ExecStart's program exists and is executable, and there is
    no /opt/procgate/venv here, so the copy it reads runs this interpreter's
    ``-m procgate`` instead: the same program, at a path that exists. Nothing else of the
    unit changes.
    """
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(VENV_PROCGATE) == 1
    copy = tmp_path / "procgate.service"
    copy.write_text(text.replace(VENV_PROCGATE, f"{sys.executable} -m procgate"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.docs("deploy-systemd.md#install-and-start-the-unit")
@pytest.mark.docs("deploy-systemd.md#exposing-it-beyond-loopback")
def test_unit_serves_the_config_from_the_virtualenv_on_loopback() -> None:
    """ExecStart is ``procgate serve --config /etc/procgate/procgate.toml`` from the venv,
    without ``--host``: the address is the config's, loopback unless it says otherwise."""
    service = unit_service()
    assert service["ExecStart"] == [f"{VENV_PROCGATE} serve --config {CONFIG_PATH}"]
    assert "--host" not in " ".join(service["ExecStart"])
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["User"] == ["procgate"]
    assert "DynamicUser" not in service


@pytest.mark.docs("deploy-systemd.md#the-sandbox-and-what-it-leaves-out")
def test_unit_sandbox_keeps_what_running_any_command_needs() -> None:
    """The hardening the doc lists is in the unit, and what it leaves out is not."""
    service = unit_service()
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictSUIDSGID": "yes",
        "RestrictRealtime": "yes",
        "RestrictNamespaces": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "LockPersonality": "yes",
        "RemoveIPC": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "SystemCallErrorNumber": "EPERM",
        "UMask": "0027",
    }
    assert {key: service.get(key) for key in expected} == {
        key: [value] for key, value in expected.items()
    }
    left_out = ["MemoryDenyWriteExecute", "PrivateNetwork", "IPAddressDeny", "PrivateUsers"]
    assert [key for key in left_out if key in service] == []


@pytest.mark.docs("deploy-systemd.md#write-the-configuration")
@pytest.mark.docs("deploy-systemd.md#where-the-jobs-live")
@pytest.mark.docs("deploy-systemd.md#check-that-it-answers")
@pytest.mark.docs("deploy-container.md#where-the-jobs-live")
def test_example_config_keeps_jobs_under_the_working_directory(
    tmp_path: Path, servers: list[Server]
) -> None:
    """Served from the unit's (and the image's) working directory, the example config
    answers ``/health`` and keeps its jobs in ``procgate-data/jobs.db`` there."""
    service = unit_service()
    assert service["WorkingDirectory"] == ["/var/lib/procgate"]
    assert service["StateDirectory"] == ["procgate"]
    workdir = tmp_path / "var-lib-procgate"
    workdir.mkdir()
    config = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    server = start_server(workdir, config, "--workers", "1")
    servers.append(server)
    assert server.json("GET", "/health") == (200, {"status": "ok"})
    status, job = server.json("POST", "/commands/echo", {"args": ["deployed"], "wait": True})
    assert (status, job["stdout"]) == (200, "deployed\n")
    database = workdir / "procgate-data" / "jobs.db"
    store = open_store(f"sqlite:///{database}")
    try:
        assert store.get(job["id"]).status is JobStatus.SUCCEEDED
    finally:
        store.close()


@pytest.mark.docs("deploy-systemd.md#install-and-start-the-unit")
def test_serve_tells_systemd_when_it_listens(tmp_path: Path, servers: list[Server]) -> None:
    """``Type=notify`` works: ``procgate serve`` sends ``READY=1`` to ``$NOTIFY_SOCKET``."""
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(address))
        listener.settimeout(1)
        servers.append(
            start_server(tmp_path, "", "--workers", "1", env={"NOTIFY_SOCKET": str(address)})
        )
        received = b""
        deadline = time.monotonic() + 30
        while b"READY=1" not in received.split(b"\n") and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                received += listener.recv(4096) + b"\n"
    assert b"READY=1" in received.split(b"\n")


@pytest.mark.docs("deploy-systemd.md#stopping-restarting-and-upgrading")
def test_unit_does_not_restart_a_bad_config(tmp_path: Path) -> None:
    """A bad config makes ``procgate serve`` exit 2, the status the unit does not restart."""
    service = unit_service()
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]
    config = tmp_path / "bad.toml"
    config.write_text('[commands.x]\nargv = ["/nonexistent/program"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "procgate", "serve", "--config", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr


@pytest.mark.docs("deploy-systemd.md#stopping-restarting-and-upgrading")
@pytest.mark.docs("deploy-container.md#stopping-and-upgrading")
def test_sigterm_to_the_server_alone_cancels_its_jobs(
    tmp_path: Path, servers: list[Server]
) -> None:
    """What ``KillMode=mixed`` and ``docker stop`` send, SIGTERM to the main process only,
    stops the server well within ``TimeoutStopSec`` and leaves its running job
    ``cancelled`` (not ``failed``: the program did nothing wrong)."""
    service = unit_service()
    assert service["KillMode"] == ["mixed"]
    assert only(final_stage(), "STOPSIGNAL") == "SIGTERM"
    config = '[commands.sleep]\nargv = ["sleep"]\nkill_grace = 2\n'
    server = start_server(tmp_path, config, "--workers", "1")
    servers.append(server)
    status, job = server.json("POST", "/commands/sleep", {"args": ["300"]})
    assert status == 202
    deadline = time.monotonic() + 30
    while server.json("GET", f"/jobs/{job['id']}")[1]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < float(service["TimeoutStopSec"][0])
    store = open_store(f"sqlite:///{tmp_path}/procgate-data/jobs.db")
    try:
        stopped = store.get(job["id"])
    finally:
        store.close()
    assert stopped.status is JobStatus.CANCELLED
    assert stopped.error == "cancelled: the server shut down"


@pytest.mark.docs("deploy-systemd.md#stopping-restarting-and-upgrading")
def test_unit_stop_timeout_outlasts_gunicorns_graceful_stop(tmp_path: Path) -> None:
    """``TimeoutStopSec`` is above the graceful timeout ``procgate serve`` gives gunicorn,
    so systemd does not SIGKILL a server that is still stopping as documented."""
    config = tmp_path / "procgate.toml"
    config.write_text("")
    graceful = float(GunicornServer(str(config), {}).cfg.graceful_timeout)
    assert graceful == 30
    assert float(unit_service()["TimeoutStopSec"][0]) >= graceful + 10


@pytest.mark.docs("deploy-container.md#build-the-image")
def test_dockerfile_installs_procgate_with_the_server_extra_from_the_context() -> None:
    """Both stages start from a slim Python image, the build installs ``.[server]`` from
    the files it copies, and every file it copies exists in a checkout."""
    instructions = dockerfile_instructions()
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert bases == ["python:3.12-slim", "python:3.12-slim"]
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert 'pip install --no-cache-dir "/src[server]"' in runs
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from="):
            *sources, _ = shlex.split(rest)
            assert [s for s in sources if not (ROOT / s).exists()] == []


@pytest.mark.docs("deploy-container.md#run-it")
@pytest.mark.docs("deploy-container.md#exposing-it")
def test_dockerfile_serves_the_config_as_a_non_root_user() -> None:
    """The image runs ``procgate serve --config /etc/procgate/procgate.toml --host 0.0.0.0``
    under tini, as user 10001 (created in the image, not root), and exposes 8000."""
    stage = final_stage()
    everywhere = "0.0.0.0"  # noqa: S104  # the image's own network namespace, published by choice
    assert json.loads(only(stage, "CMD")) == [
        "procgate",
        "serve",
        "--config",
        CONFIG_PATH,
        "--host",
        everywhere,
    ]
    assert json.loads(only(stage, "ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    runs = " ".join(rest for word, rest in stage if word == "RUN")
    assert "install -y --no-install-recommends tini" in runs
    assert only(stage, "USER") == "10001:10001"
    assert "--uid 10001" in runs
    assert only(stage, "EXPOSE") == "8000"
    assert f"examples/procgate.toml {CONFIG_PATH}" in [rest for w, rest in stage if w == "COPY"]


@pytest.mark.docs("deploy-container.md#where-the-jobs-live")
def test_dockerfile_volume_is_the_default_stores_directory() -> None:
    """The volume is ``procgate-data`` under the working directory, owned by the user."""
    stage = final_stage()
    workdir = only(stage, "WORKDIR")
    assert only(stage, "VOLUME") == f"{workdir}/procgate-data"
    runs = " ".join(rest for word, rest in stage if word == "RUN")
    assert f"mkdir -p {workdir}/procgate-data" in runs
    assert f"chown -R procgate:procgate {workdir}" in runs


def healthcheck_argv(port: int) -> list[str]:
    """The HEALTHCHECK's exec-form command, pointed at ``port`` and this interpreter."""
    arguments = only(final_stage(), "HEALTHCHECK")
    assert arguments.startswith("--interval=30s --timeout=5s --start-period=20s --retries=3 CMD ")
    argv = json.loads(arguments.partition(" CMD ")[2])
    assert argv[0] == "python"
    assert argv[2].count("http://127.0.0.1:8000/health") == 1
    return [sys.executable, argv[1], argv[2].replace(":8000/", f":{port}/")]


@pytest.mark.docs("deploy-container.md#health-checks")
def test_healthcheck_passes_against_a_live_server_and_fails_after_it_stops(
    tmp_path: Path, servers: list[Server]
) -> None:
    """The HEALTHCHECK's Python one-liner exits 0 against a running ``procgate serve``,
    and not 0 once nothing answers."""
    server = start_server(tmp_path, "", "--workers", "1")
    servers.append(server)
    argv = healthcheck_argv(server.port)
    live = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert live.returncode == 0, live.stderr
    server.stop()
    gone = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert gone.returncode != 0
