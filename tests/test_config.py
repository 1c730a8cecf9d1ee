"""Config files: parsing, validation, and the Gate they build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from werkzeug.test import Client

from procgate import ConfigError, Gate, ProcessRunner, create_app
from procgate.commands import make_command
from procgate.config import read_config
from tests.conftest import open_files

EXAMPLE = Path(__file__).parent.parent / "examples" / "procgate.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "procgate.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.docs(
    "configuration.md#a-complete-file",
    "configuration.md#store",
    "python-api.md#create_app",
)
def test_example_config_builds_a_working_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped example config loads, its SQLite store is created, its commands run."""
    monkeypatch.chdir(tmp_path)
    gate = create_app(str(EXAMPLE))
    try:
        assert isinstance(gate, Gate)
        assert set(gate.commands) >= {"echo", "sleep"}
        client = Client(gate)
        job = client.post("/commands/echo", json={"args": ["hello"], "wait": True}).json
        assert (job["status"], job["stdout"]) == ("succeeded", "hello\n")
        greet = client.post("/commands/greet", json={"args": ["ann"], "wait": True}).json
        assert (greet["stdout"], greet["stderr"]) == ("hello, ann\n", "greeted ann\n")
    finally:
        gate.close()
    assert (tmp_path / "procgate-data" / "jobs.db").is_file()


@pytest.mark.docs("stores.md#options")
@pytest.mark.docs(
    "configuration.md#a-complete-file",
    "configuration.md#server",
    "configuration.md#runner",
    "configuration.md#store",
    "configuration.md#run",
    "configuration.md#commandsname",
)
def test_full_config(tmp_path: Path) -> None:
    """Every section maps onto Gate, runner, store and command options."""
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "hello.sh"
    script.write_text('#!/bin/sh\necho "hi from $(pwd)"\n')
    script.chmod(0o755)
    (tmp_path / "work").mkdir()
    path = write(
        tmp_path,
        """
[server]
host = "127.0.0.1"
port = 9999
threads = 4
[runner]
kind = "process"
max_workers = 1
max_queue = 3
[store]
url = "memory://"
max_jobs = 7
[gate]
max_body = 2048
max_wait = 5
[run]
allow_programs = ["echo"]
timeout = 9
[commands.hello]
argv = ["bin/hello.sh"]
cwd = "work"
timeout = 3
max_output = 100
kill_grace = 0.5
description = "relative paths"
""",
    )
    config = read_config(path)
    assert (config.server.port, config.server.threads) == (9999, 4)
    gate = config.build()
    try:
        assert isinstance(gate.runner, ProcessRunner)
        assert gate.runner.max_queue == 3
        assert gate.max_body == 2048
        assert gate.max_wait == 5
        assert gate.run_timeout == 9
        hello = gate.commands["hello"]
        assert hello.argv == (str(script),)
        assert (hello.timeout, hello.max_output, hello.kill_grace) == (3, 100, 0.5)
        job = Client(gate).post("/commands/hello", json={"wait": True}).json
        assert job["stdout"] == f"hi from {tmp_path / 'work'}\n"
    finally:
        gate.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", "invalid TOML"),
        ("[nonsense]\n", "unknown section"),
        (
            "[server]\nhots = 1\n",
            "[server] hots: unknown key (did you mean host?); allowed: backlog, engine, host,"
            " port, threads, workers",
        ),
        ("[commands.x]\nargz = ['echo']\n", "[commands.x] argz: unknown key (did you mean argv?)"),
        ("[commands.x]\ntimeout = 1\n", "[commands.x] argv: missing; it is required"),
        ("[commands.x]\nargv = ['no-such-program-xyz']\n", "not found"),
        ("[commands.x]\nargv = []\n", "non-empty list"),
        ("[commands.x]\nargv = ['echo']\ntimeout = -1\n", "timeout"),
        ("[commands.x]\nargv = ['echo']\ncwd = '/no/such/dir'\n", "not a directory"),
        ("[commands.'bad name']\nargv = ['echo']\n", "command name"),
        (
            "[runner]\nkind = 'magic'\n",
            '[runner] kind: got "magic" (a string); takes one of "sync", "thread", "process",'
            ' "celery"',
        ),
        ("[runner]\nkind = 'sync'\nmax_workers = 3\n", "[runner]"),
        (
            "[store]\nurl = 'postgres://x'\n",
            '[store] url: got "postgres://x" (a string); takes a store URL',
        ),
        ("[store]\nurl = 'sqlite:///x.db'\nprefix = 'p:'\n", "[store]"),
        ("[store]\nurl = 'memory://'\nttl = -5\n", "ttl"),
        ("[run]\nallow_programs = ['no-such-program-xyz']\n", "allow_programs"),
        ("commands = 3\n", "commands: got 3 (a whole number); takes tables: [commands.NAME]"),
        (
            "[gate]\ntrusted_hosts = 'jobs.example.com'\n",
            '[gate] trusted_hosts: got "jobs.example.com" (a string); takes a non-empty list'
            " of host names",
        ),
        ("[gate]\ntrusted_hosts = ['jobs.example.com:443']\n", "not a host name"),
    ],
)
@pytest.mark.docs("configuration.md#commandsname", "testing.md#testing-a-configuration-file")
def test_config_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    """A bad config fails at load with a ConfigError that says what is wrong."""
    with pytest.raises(ConfigError) as info:
        read_config(write(tmp_path, text)).build().close()
    assert message in info.value.message


def test_a_refused_gate_leaves_no_store_open(tmp_path: Path) -> None:
    """A [gate] that Gate refuses after the store was opened closes that store: its SQLite
    file (the default, under the working directory) is not left open."""
    path = write(tmp_path, "[gate]\ntrusted_hosts = ['jobs.example.com:443']\n")
    with pytest.raises(ConfigError, match="not a host name"):
        read_config(path).build()
    assert (tmp_path / "procgate-data").is_dir()  # the store was opened, then closed
    assert open_files(tmp_path) == []


@pytest.mark.docs("python-api.md#create_app")
def test_missing_config_file() -> None:
    """A config path that does not exist is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read config"):
        read_config("/no/such/procgate.toml")


@pytest.mark.docs("configuration.md#commandsname", "python-api.md#gateregister")
def test_duplicate_registration_is_an_error() -> None:
    """Registering the same command name twice is refused."""
    gate = Gate()
    try:
        gate.register("echo", ["echo"])
        with pytest.raises(ConfigError, match="already registered"):
            gate.register("echo", ["echo"])
    finally:
        gate.close()


@pytest.mark.docs("callbacks.md#configuration")
@pytest.mark.docs("configuration.md#gate")
def test_gate_section_sets_uploads_and_callbacks(tmp_path: Path) -> None:
    """[gate] carries the upload limits, the callback settings and trusted_hosts."""
    path = write(
        tmp_path,
        """
[store]
url = "memory://"
[gate]
max_upload = 5000
max_files = 2
callback_allow = ["http://127.0.0.1:9000/"]
callback_secret = "s"
callback_attempts = 7
callback_backoff = 0.5
callback_timeout = 3
trusted_hosts = ["jobs.example.com"]
""",
    )
    gate = read_config(path).build()
    try:
        assert gate.trusted_hosts == ["jobs.example.com"]
        assert Client(gate).get("/jobs", headers={"Host": "evil.example"}).status_code == 400
        assert (gate.max_upload, gate.max_files) == (5000, 2)
        assert gate.callback_allow == ("http://127.0.0.1:9000/",)
        assert gate.notifier.secret == b"s"
        assert (gate.notifier.max_attempts, gate.notifier.backoff) == (7, 0.5)
        assert gate.notifier.timeout == 3
    finally:
        gate.close()


@pytest.mark.docs("configuration.md#auth")
def test_auth_section(tmp_path: Path) -> None:
    """[[auth.tokens]], allow_ips and trusted_proxies, and per-command security keys."""
    from procgate.auth import hash_token

    path = write(
        tmp_path,
        f"""
[store]
url = "memory://"
[auth]
allow_ips = ["127.0.0.0/8"]
trusted_proxies = ["127.0.0.1/32"]
[[auth.tokens]]
id = "ci"
sha256 = "{hash_token("s3")}"
commands = ["echo"]
[[auth.tokens]]
id = "root"
sha256 = "{hash_token("r00t")}"
admin = true
[commands.echo]
argv = ["echo"]
args = [{{ name = "word", pattern = "[a-z]+" }}]
max_rate = "5/second"
max_running = 2
[commands.hook]
argv = ["cat"]
webhook = true
hmac_secret_env = "PROCGATE_TEST_SECRET"
""",
    )
    os.environ["PROCGATE_TEST_SECRET"] = "from-env"
    try:
        gate = read_config(path).build()
    finally:
        del os.environ["PROCGATE_TEST_SECRET"]
    try:
        assert gate.tokens is not None
        assert [t.id for t in gate.tokens.tokens] == ["ci", "root"]
        assert gate.commands["hook"].hmac_secret == b"from-env"
        client = Client(gate)
        local = {"REMOTE_ADDR": "127.0.0.1"}
        ok = client.post(
            "/commands/echo",
            json={"args": ["hi"], "wait": True},
            headers={"Authorization": "Bearer s3"},
            environ_base=local,
        )
        assert ok.status_code == 200, ok.json
        assert ok.json["stdout"] == "hi\n"
        bad = client.post(
            "/commands/echo",
            json={"args": ["HI"]},
            headers={"Authorization": "Bearer s3"},
            environ_base=local,
        )
        assert bad.status_code == 400
        assert bad.json["error"]["code"] == "invalid_argument"
    finally:
        gate.close()


@pytest.mark.docs("security.md#signed-requests-and-webhooks")
def test_missing_secret_env_is_a_config_error(tmp_path: Path) -> None:
    """A secret named by *_env that the environment lacks stops the startup."""
    path = write(tmp_path, "[commands.h]\nargv = ['cat']\nhmac_secret_env = 'PROCGATE_NOT_SET_X'\n")
    with pytest.raises(ConfigError, match="PROCGATE_NOT_SET_X"):
        read_config(path).build()


@pytest.mark.docs("security.md#signed-requests-and-webhooks")
def test_secret_and_secret_env_together_are_refused(tmp_path: Path) -> None:
    """Giving a secret both inline and through the environment is a mistake, not a choice."""
    path = write(
        tmp_path,
        "[commands.h]\nargv = ['cat']\nhmac_secret = 'a'\nhmac_secret_env = 'HOME'\n",
    )
    with pytest.raises(ConfigError, match="not both"):
        read_config(path).build()


@pytest.mark.docs("configuration.md#commandsname")
def test_path_rule_base_is_relative_to_the_config(tmp_path: Path) -> None:
    """A path rule's relative base is taken from the config file's directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("A")
    path = write(
        tmp_path,
        """
[store]
url = "memory://"
[commands.show]
argv = ["cat"]
args = [{ name = "file", type = "path", base = "data" }]
""",
    )
    gate = read_config(path).build()
    try:
        job = Client(gate).post("/commands/show", json={"args": ["a.txt"], "wait": True}).json
    finally:
        gate.close()
    assert job["stdout"] == "A"


@pytest.mark.docs("configuration.md#commandsname")
def test_a_program_that_cannot_run_is_named_for_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program path that is a directory, or a file without the execute bit, says so (its
    path as given); a bare name that is not on PATH is "not found", even where a
    directory of that name sits in the working directory."""
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    cases = {
        str(script): f"program '{script}' is not executable (chmod +x it, or check its mount)",
        str(tmp_path / "adir"): f"program '{tmp_path / 'adir'}' is a directory",
        "adir": "program 'adir' not found",
        str(tmp_path / "gone.sh"): f"program '{tmp_path / 'gone.sh'}' not found",
    }
    for program, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            make_command("x", [program])
        assert caught.value.message == f"command 'x': {message}"
