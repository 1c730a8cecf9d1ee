"""The ``procgate`` command itself: help, version, and ``serve``'s start-up checks, each
a mistake that used to print a traceback or pages of server log."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from procgate import __version__, cli
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "procgate.toml"
# Every address: serve only probes it with bind() (no listen) before gunicorn, which the
# tests below replace.
ANY_V4 = "0.0.0.0"  # noqa: S104


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` reads as text: no reStructuredText markup, every command listed."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    for command in ("serve", "worker", "check", "schema", "token"):
        assert f"    {command} " in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"procgate {__version__}\n"


@pytest.mark.docs("configuration.md#procgate-serve")
def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Another program on the port: one line naming it and ``--port``, exit 2, at once
    (not gunicorn's five seconds of retries)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        more = ["--port", str(port), "--workers", "1"]
        done = subprocess.run(
            [sys.executable, "-m", "procgate", "serve", "--config", str(EXAMPLE), *more],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"procgate: error: port {port} on 127.0.0.1 is already in use: stop what listens "
        "there, or pick another port with --port"
    ]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """``serve`` up to the point where its engine would start; the settings it would get."""
    from procgate import _granian, _server

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(_server.Server, "run", lambda self: calls.append(self.settings))
    monkeypatch.setattr(_granian, "serve", lambda path, **settings: calls.append(settings))
    monkeypatch.chdir(tmp_path)
    return calls


def _config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "procgate.toml"
    path.write_text(f'[store]\nurl = "memory://"\n{extra}\n[commands.echo]\nargv = ["echo"]\n')
    return str(path)


@pytest.mark.parametrize("host", [ANY_V4, "::"])
@pytest.mark.docs("configuration.md#procgate-serve")
def test_an_open_bind_without_tokens_warns(
    started: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    port = free_port()
    assert (
        cli.main(["serve", "--config", _config(tmp_path), "--host", host, "--port", str(port)]) == 0
    )
    assert len(started) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"procgate: warning: serving on {host} with neither [auth] tokens nor allow_ips: "
        "anyone who reaches this port can run the configured commands; add tokens "
        "(procgate token --id NAME) or bind 127.0.0.1"
    ]


@pytest.mark.parametrize(
    ("host", "extra"),
    [
        ("127.0.0.1", ""),
        ("::1", ""),
        ("localhost", ""),
        (ANY_V4, "[auth]\ntokens = []\n"),
        (ANY_V4, '[auth]\nallow_ips = ["10.0.0.0/8"]\n'),
    ],
)
def test_no_warning_on_loopback_or_with_auth(
    started: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    host: str,
    extra: str,
) -> None:
    port = free_port()
    argv = ["serve", "--config", _config(tmp_path, extra), "--host", host, "--port", str(port)]
    assert cli.main(argv) == 0
    assert len(started) == 1
    assert capsys.readouterr().err == ""
