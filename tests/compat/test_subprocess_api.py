"""procgate.compat.subprocess_api: subprocess-api's protocol, mounted on a Gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from procgate import Gate, create_app
from procgate.auth import hash_token, make_token
from procgate.compat.subprocess_api import SubprocessAPI
from tests.servers import Server, start_server

PREFIX = "/subprocess-api"


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate(allow_programs=["echo", "cat", "sh"], max_stdin=1000)
    gate.register("echo", ["echo"])
    gate.mount(PREFIX, SubprocessAPI(gate))
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


def post(client: Client, body: Any, path: str = PREFIX) -> tuple[int, Any]:
    response = client.post(path, json=body)
    assert response.mimetype == "application/json"
    return response.status_code, response.json


@pytest.mark.docs("compat.md#subprocess-api")
def test_a_command_answers_its_exit_and_output(client: Client) -> None:
    """200 with exactly returncode, stdout and stderr; a non-zero exit is a 200 too, and
    a signal death a negative returncode."""
    status, body = post(client, {"args": ["echo", "hello", "world"]})
    assert (status, body) == (200, {"returncode": 0, "stdout": "hello world\n", "stderr": ""})
    script = "echo out; echo err >&2; exit 3"
    status, body = post(client, {"args": ["sh", "-c", script]})
    assert (status, body) == (200, {"returncode": 3, "stdout": "out\n", "stderr": "err\n"})
    status, body = post(client, {"args": ["sh", "-c", "kill -9 $$"]})
    assert (status, body["returncode"]) == (200, -9)


@pytest.mark.docs("compat.md#subprocess-api")
def test_args_as_a_string_is_the_program_and_stdin_is_fed(client: Client) -> None:
    """A string is the whole program name, not split; ``stdin`` goes to the child; any
    path under the prefix serves, as any path did."""
    status, body = post(client, {"args": "echo"}, path=f"{PREFIX}/any/path")
    assert (status, body["stdout"]) == (200, "\n")
    status, body = post(client, {"args": "echo hi"})
    assert status == 500
    assert "'echo hi'" in body["error"]
    status, body = post(client, {"args": ["cat"], "stdin": "fed\n"})
    assert (status, body["stdout"]) == (200, "fed\n")


@pytest.mark.docs("compat.md#subprocess-api")
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"args": ["ls"]}, "not allowed"),
        ({"args": ["echo"], "shell": True}, "allow_shell"),
        ({}, "args"),
        ({"args": []}, "args"),
        ({"args": [1]}, "args"),
        ({"args": ["echo"], "shell": "yes"}, "shell"),
        ({"args": ["cat"], "stdin": 5}, "stdin"),
        ({"args": ["cat"], "stdin": "x" * 2000}, "stdin"),
        ([1, 2], "object"),
    ],
)
def test_failures_are_500_with_a_message(client: Client, body: Any, says: str) -> None:
    status, answer = post(client, body)
    assert status == 500
    assert set(answer) == {"error"}
    assert says in answer["error"]
    assert "Traceback" not in answer["error"]


def test_the_body_is_pythons_json_and_a_newline(client: Client) -> None:
    answer = client.post(PREFIX, data=b'{"args": ["echo", "hi"]}')
    assert answer.data == b'{"returncode": 0, "stdout": "hi\\n", "stderr": ""}\n'


def test_a_body_that_is_not_json_and_other_methods(client: Client) -> None:
    bad = client.post(PREFIX, data=b"{nope", content_type="application/json")
    assert bad.status_code == 500
    assert bad.json["error"].startswith("the body is not JSON")
    other = client.get(PREFIX)
    assert (other.status_code, other.json) == (501, {"error": "Unsupported method ('GET')"})
    assert client.get("/health").status_code == 200  # the Gate beside it


def test_a_shell_when_the_gate_allows_one() -> None:
    gate = Gate(allow_shell=True)
    gate.mount(PREFIX, SubprocessAPI(gate))
    try:
        status, body = post(Client(gate), {"args": "echo $((6 * 7))", "shell": True})
        assert (status, body["stdout"]) == (200, "42\n")
        # A list: the script, then $0, $1... as Python's subprocess with shell=True does.
        status, body = post(Client(gate), {"args": ["echo $0-$1", "a", "b"], "shell": True})
        assert (status, body["stdout"]) == (200, "a-b\n")
    finally:
        gate.close()


@pytest.mark.docs("compat.md#subprocess-api")
def test_the_gates_tokens_guard_it() -> None:
    """With tokens, an admin token runs programs (as on POST /run), another gets 403 and
    none 401; the job is the Gate's, with its token."""
    tokens = [
        make_token("ops", hash_token("ops-secret"), admin=True),
        make_token("ci", hash_token("ci-secret")),
    ]
    gate = Gate(allow_programs=["echo"], tokens=tokens)
    gate.mount(PREFIX, SubprocessAPI(gate))
    client = Client(gate)
    try:
        assert client.post(PREFIX, json={"args": ["echo"]}).status_code == 401
        forbidden = client.post(
            PREFIX, json={"args": ["echo"]}, headers={"Authorization": "Bearer ci-secret"}
        )
        assert forbidden.status_code == 403
        ran = client.post(
            PREFIX, json={"args": ["echo", "x"]}, headers={"Authorization": "Bearer ops-secret"}
        )
        assert (ran.status_code, ran.json["stdout"]) == (200, "x\n")
        (job,) = gate.store.list().jobs
        assert (job.token_id, job.command, job.args) == ("ops", None, ("echo", "x"))
    finally:
        gate.close()


def test_a_mounted_app_sees_its_prefix_as_script_name(gate: Gate) -> None:
    """``Gate.mount``: the longest prefix wins, SCRIPT_NAME gains it and PATH_INFO
    loses it; other paths stay the Gate's."""

    def where(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()]

    gate.mount("/a", where)
    gate.mount("/a/b", lambda e, s: where({**e, "SCRIPT_NAME": "b:" + e["SCRIPT_NAME"]}, s))
    client = Client(gate)
    assert client.get("/a/x/y").text == "/a|/x/y"
    assert client.get("/a").text == "/a|"
    assert client.get("/a/b/z").text == "b:/a/b|/z"
    assert client.get("/ab").status_code == 404  # not under /a: the Gate's, unknown


def test_mount_prefixes_are_checked(gate: Gate) -> None:
    from procgate import ConfigError

    for bad in ("nope", "/trailing/", PREFIX):
        with pytest.raises(ConfigError):
            gate.mount(bad, SubprocessAPI(gate))


@pytest.mark.docs("configuration.md#compatsubprocess_api")
def test_the_config_section_mounts_it(tmp_path: Path) -> None:
    config = tmp_path / "procgate.toml"
    config.write_text(
        '[store]\nurl = "memory://"\n[run]\nallow_programs = ["echo"]\n'
        '[compat.subprocess_api]\nprefix = "/subprocess-api"\n'
    )
    gate = create_app(str(config))
    try:
        status, body = post(Client(gate), {"args": ["echo", "via config"]})
        assert (status, body["stdout"]) == (200, "via config\n")
    finally:
        gate.close()


@pytest.mark.docs("configuration.md#compatsubprocess_api", "compat.md#subprocess-api")
def test_procgate_serve_serves_it(tmp_path: Path) -> None:
    """Under ``procgate serve`` (granian, 2 workers, SQLite), beside the Gate's API."""
    config = (
        '[run]\nallow_programs = ["echo"]\n[compat.subprocess_api]\nprefix = "/subprocess-api"\n'
    )
    server: Server = start_server(tmp_path, config, "--workers", "2")
    try:
        for number in range(6):
            status, body = server.json("POST", f"{PREFIX}/run", {"args": ["echo", str(number)]})
            assert (status, body) == (200, {"returncode": 0, "stdout": f"{number}\n", "stderr": ""})
        status, body = server.json("GET", "/jobs")
        assert status == 200
        assert len(body["jobs"]) == 6
    finally:
        server.stop()


def test_the_example_config() -> None:
    """examples/subprocess_api.toml: its curl line's request, answered."""
    path = Path(__file__).resolve().parent.parent.parent / "examples" / "subprocess_api.toml"
    gate = create_app(str(path))
    try:
        answer = Client(gate).post(PREFIX, data=b'{"args": ["echo", "hi"]}')
        assert (answer.status_code, answer.json["stdout"]) == (200, "hi\n")
    finally:
        gate.close()
