"""A command as ``GET /commands/<name>`` shows it, and the Spec each request gets from it.

Every field of the command object, exactly, for a plain command and for one that sets
every option: clients and dashboards read these fields, and a field renamed or dropped
breaks them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from werkzeug.test import Client

from procgate import Gate, MemoryStore, ThreadRunner
from procgate.commands import Rate, make_command
from procgate.errors import ConfigError, InvalidRequest


@pytest.mark.docs("http-api.md#get-commands-and-get-commandsname")
def test_a_plain_command_shows_every_field_with_its_default() -> None:
    gate = Gate(store=MemoryStore(), runner=ThreadRunner())
    gate.register("echo", ["echo", "-n"])
    try:
        shown = Client(gate).get("/commands/echo").json
    finally:
        gate.close()
    assert shown == {
        "name": "echo",
        "argv": [shutil.which("echo"), "-n"],
        "timeout": 600,
        "max_output": 10 << 20,
        "shell": False,
        "allow_env": [],
        "cwd": None,
        "description": "",
        "args": {"mode": "any", "options": [], "dashdash": False, "rules": []},
        "signed": False,
        "webhook": False,
        "max_running": None,
        "max_rate": None,
        "limits": {},
        "user": None,
        "group": None,
        "queue": None,
        "retry_on_worker_loss": False,
    }


@pytest.mark.docs("http-api.md#get-commands-and-get-commandsname")
def test_every_option_shows_in_its_field(tmp_path: Path) -> None:
    command = make_command(
        "report",
        ["echo"],
        timeout=30,
        max_output=1000,
        env={"SECRET": "never shown"},
        allow_env=["B", "A"],
        cwd=str(tmp_path),
        description="Build the report.",
        hmac_secret="s3cret",
        webhook=True,
        max_running=2,
        max_rate="10/minute",
        limits={"nofile": 64},
        user="nobody",
        group="nogroup",
        queue="reports",
        retry_on_worker_loss=True,
    )
    shown = command.to_json()
    assert "never shown" not in str(shown)
    assert shown == {
        "name": "report",
        "argv": [shutil.which("echo")],
        "timeout": 30,
        "max_output": 1000,
        "shell": False,
        "allow_env": ["A", "B"],
        "cwd": str(tmp_path),
        "description": "Build the report.",
        "args": {"mode": "any", "options": [], "dashdash": False, "rules": []},
        "signed": True,
        "webhook": True,
        "max_running": 2,
        "max_rate": "10/minute",
        "limits": {"nofile": 64},
        "user": "nobody",
        "group": "nogroup",
        "queue": "reports",
        "retry_on_worker_loss": True,
    }
    spec = command.spec([], env={}, stdin=b"", timeout=None)
    assert (spec.cwd, spec.kill_grace, spec.queue, spec.retry_on_worker_loss) == (
        str(tmp_path),
        5,
        "reports",
        True,
    )
    assert (spec.user, spec.group, spec.timeout, spec.max_output) == ("nobody", "nogroup", 30, 1000)


@pytest.mark.docs("http-api.md#post-commandsname")
def test_a_request_may_ask_for_up_to_the_commands_timeout() -> None:
    command = make_command("slow", ["sleep"], timeout=30)
    assert command.spec([], env={}, stdin=b"", timeout=30).timeout == 30
    assert command.spec([], env={}, stdin=b"", timeout=5).timeout == 5
    with pytest.raises(InvalidRequest) as caught:
        command.spec([], env={}, stdin=b"", timeout=30.5)
    assert caught.value.code == "invalid_timeout"
    assert caught.value.message == "timeout 30.5 exceeds the command's limit of 30 s"


@pytest.mark.docs("configuration.md#commandsname")
def test_max_rate_allows_one_job_or_more() -> None:
    assert Rate.parse(" 1/minute ", "x").text == "1/minute"
    assert (Rate.parse("2 / hour", "x").count, Rate.parse("2 / hour", "x").window) == (2, 3600)
    with pytest.raises(ConfigError) as caught:
        Rate.parse("0/minute", "[commands.x]")
    assert caught.value.message == "[commands.x]: max_rate must allow at least one job"
    with pytest.raises(ConfigError) as caught:
        Rate.parse(10, "[commands.x]")
    assert caught.value.message == (
        "[commands.x]: max_rate must look like '10/minute' (second|minute|hour|day)"
    )
