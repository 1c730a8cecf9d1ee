"""procgate.compat.http_runner: http-runner 0.0.5's protocol, mounted on a Gate."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from procgate import ConfigError, Gate, JobStatus, SQLiteStore, create_app
from procgate.auth import hash_token, make_token
from procgate.compat.http_runner import HTTPRunner
from tests.conftest import wait_for
from tests.servers import Server, start_server
from tests.test_callbacks import Receiver, receiver  # noqa: F401 - a fixture

PREFIX = "/http-runner"
SHAPE = ["stderr", "stdout", "id", "code", "command", "arguments"]


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    gate.mount(PREFIX, HTTPRunner(gate, ["echo", "sh", "sleep"]))
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


def post(client: Client, body: Any) -> tuple[int, Any]:
    response = client.post(f"{PREFIX}/", data=json.dumps(body).encode())
    return response.status_code, json.loads(response.data)


def ended(client: Client, job_id: str) -> Any:
    """GET the job until its ``err`` key says it ended."""
    found: list[Any] = []

    def done() -> bool:
        found[:] = [client.get(f"{PREFIX}/{job_id}").json]
        return "err" in found[0]

    wait_for(done, timeout=30)
    return found[0]


@pytest.mark.docs("compat.md#http-runner")
def test_a_job_is_posted_then_read(client: Client) -> None:
    """202 with the tool's job shape (40 hex id, no ``err`` yet), then 200 with the
    output and ``code``, and ``err`` null once it ended."""
    status, job = post(client, {"command": "echo", "args": "hello   big\tworld"})
    assert status == 202
    assert list(job) == SHAPE
    assert re.fullmatch(r"[0-9a-f]{40}", job["id"])
    assert (job["command"], job["arguments"], job["code"]) == (
        "echo",
        ["hello", "big", "world"],
        None,
    )
    done = ended(client, job["id"])
    assert list(done) == [*SHAPE, "err"]
    assert (done["stdout"], done["stderr"], done["code"], done["err"]) == (
        "hello big world\n",
        "",
        0,
        None,
    )
    slash = client.get(f"{PREFIX}/{job['id']}/")
    assert slash.json == done  # a trailing slash is the same job


@pytest.mark.docs("compat.md#http-runner")
def test_output_grows_while_it_runs_and_a_signal_leaves_code_null(client: Client) -> None:
    _, job = post(client, {"command": "sh", "args": "-c echo;sleep${IFS}30"})
    assert job["arguments"] == ["-c", "echo;sleep${IFS}30"]
    wait_for(lambda: client.get(f"{PREFIX}/{job['id']}").json["stdout"] == "\n", timeout=10)
    running = client.get(f"{PREFIX}/{job['id']}").json
    assert (running["code"], "err" in running) == (None, False)
    _, killed = post(client, {"command": "sh", "args": "-c kill${IFS}-9${IFS}$$"})
    done = ended(client, killed["id"])
    assert (done["code"], done["err"]) == (None, None)
    _, failed = post(client, {"command": "sh", "args": "-c exit${IFS}4"})
    assert ended(client, failed["id"])["code"] == 4


@pytest.mark.docs("compat.md#http-runner")
def test_the_tools_argument_splitting(client: Client) -> None:
    for args, expected in (
        ("", [""]),
        (" a", ["", "a"]),
        ("a ", ["a", ""]),
        ("a\n\nb", ["a", "b"]),
    ):
        assert post(client, {"command": "echo", "args": args})[1]["arguments"] == expected


@pytest.mark.docs("compat.md#http-runner")
@pytest.mark.parametrize(
    "body",
    [
        {"command": "ls", "args": ""},
        {"command": "echo"},
        {"command": "echo", "args": ["a"]},
        {"args": "a"},
        [1],
        {"command": "echo", "args": "a", "callback": "http://127.0.0.1:9/x"},
    ],
)
def test_bad_requests_are_400(client: Client, body: Any) -> None:
    status, answer = post(client, body)
    assert status == 400
    assert answer["message"] == "Bad Request"
    assert isinstance(answer["error"], str)


@pytest.mark.docs("compat.md#http-runner")
def test_unknown_ids_and_other_routes(client: Client) -> None:
    missing = client.get(f"{PREFIX}/{'a' * 40}")
    assert (missing.status_code, missing.json) == (404, {"message": "Not Found"})
    for method, path in (("GET", "/"), ("DELETE", f"/{'a' * 40}"), ("GET", "/xyz"), ("POST", "/x")):
        other = client.open(f"{PREFIX}{path}", method=method)
        assert (other.status_code, other.json) == (501, {"message": "Not Implemented"})
    not_json = client.post(f"{PREFIX}/", data=b"{nope")
    assert (not_json.status_code, not_json.json["message"]) == (400, "Bad Request")


@pytest.mark.docs("compat.md#http-runner")
def test_a_callback_is_the_tools(receiver: Receiver) -> None:  # noqa: F811
    """The callback: the ended job's JSON, with Accept and X-Notify-Timestamp (ms), sent
    by the Gate's callbacks (its allowlist, its retries: a 500 is tried again)."""
    gate = Gate(callback_allow=[receiver.base], callback_backoff=0.05)
    gate.mount(PREFIX, HTTPRunner(gate, ["echo"]))
    receiver.codes = [500]
    try:
        before = time.time() * 1000
        status, job = post(
            Client(gate), {"command": "echo", "args": "hi", "callback": receiver.url}
        )
        assert status == 202
        assert job["callback"] == receiver.url
        wait_for(lambda: len(receiver.received) == 2, timeout=30)
        path, headers, body = receiver.received[-1]
        sent = json.loads(body)
        assert (path, sent["id"], sent["stdout"], sent["code"], sent["err"]) == (
            "/hook",
            job["id"],
            "hi\n",
            0,
            None,
        )
        assert sent["callback"] == receiver.url
        assert headers["Content-Type"] == "application/json"
        assert headers["Accept"] == "application/json"
        assert before <= int(headers["X-Notify-Timestamp"]) <= time.time() * 1000
        wait_for(lambda: gate.store.get(job["id"]).callback["status"] == "delivered")
    finally:
        gate.close()


def test_allow_names_programs_that_exist(gate: Gate) -> None:
    with pytest.raises(ConfigError):
        HTTPRunner(gate, ["no-such-program-here"])


@pytest.mark.docs("configuration.md#compathttp_runner", "compat.md#http-runner")
def test_procgate_serve_serves_it(tmp_path: Path) -> None:
    """Under ``procgate serve`` (granian, 2 workers, SQLite): a job POSTed is read from
    either worker, each request on a connection of its own, and after a restart."""
    config = '[compat.http_runner]\nprefix = "/http-runner"\nallow = ["echo"]\n'
    server: Server = start_server(tmp_path, config, "--workers", "2")
    try:
        for number in range(6):
            status, job = server.json(
                "POST", f"{PREFIX}/", {"command": "echo", "args": str(number)}
            )
            assert status == 202

            def read(job_id: str = job["id"]) -> Any:
                return server.json("GET", f"{PREFIX}/{job_id}")[1]

            wait_for(lambda: "err" in read(), timeout=30)
            assert (read()["stdout"], read()["code"]) == (f"{number}\n", 0)
        kept = job["id"]
    finally:
        server.stop()
    # A restart on the same data: the job is still there, ended, with its output.
    server = start_server(tmp_path, config, "--workers", "2")
    try:
        status, again = server.json("GET", f"{PREFIX}/{kept}")
        assert (status, again["stdout"], again["code"]) == (200, "5\n", 0)
    finally:
        server.stop()
    store = SQLiteStore(str(tmp_path / "procgate-data" / "jobs.db"))
    try:
        assert {j.status for j in store.list().jobs} == {JobStatus.SUCCEEDED}
    finally:
        store.close()


@pytest.mark.docs("compat.md#http-runner")
def test_with_tokens_a_caller_sees_only_its_own_jobs() -> None:
    tokens = [make_token("a", hash_token("a-secret")), make_token("b", hash_token("b-secret"))]
    gate = Gate(tokens=tokens)
    gate.mount(PREFIX, HTTPRunner(gate, ["echo"]))
    client = Client(gate)
    try:
        body = json.dumps({"command": "echo", "args": "x"}).encode()
        assert client.post(f"{PREFIX}/", data=body).status_code == 401
        posted = client.post(f"{PREFIX}/", data=body, headers={"Authorization": "Bearer a-secret"})
        assert posted.status_code == 202
        url = f"{PREFIX}/{posted.json['id']}"
        assert client.get(url, headers={"Authorization": "Bearer a-secret"}).status_code == 200
        assert client.get(url, headers={"Authorization": "Bearer b-secret"}).status_code == 404
    finally:
        gate.close()


def test_the_example_config() -> None:
    """examples/http_runner.toml: its first curl line's request, then the job."""
    path = Path(__file__).resolve().parent.parent.parent / "examples" / "http_runner.toml"
    gate = create_app(str(path))
    try:
        client = Client(gate)
        status, job = post(client, {"command": "echo", "args": "hello world"})
        assert status == 202
        assert ended(client, job["id"])["stdout"] == "hello world\n"
    finally:
        gate.close()


@pytest.mark.docs("compat.md#http-runner")
def test_the_tools_readme_exchange_byte_for_byte(client: Client) -> None:
    """Its README's curl (a form content type, no trailing slash), and the JSON it shows:
    the same bytes but for the id."""
    created = client.post(
        PREFIX,
        data=b'{"command":"echo", "args":"foo"}',
        content_type="application/x-www-form-urlencoded",
    )
    job_id = created.json["id"]
    assert created.status_code == 202
    assert created.data == (
        b'{"stderr":"","stdout":"","id":"%s","code":null,"command":"echo","arguments":["foo"]}'
        % job_id.encode()
    )
    ended(client, job_id)
    assert client.get(f"{PREFIX}/{job_id}").data == (
        b'{"stderr":"","stdout":"foo\\n","id":"%s","code":0,"command":"echo",'
        b'"arguments":["foo"],"err":null}' % job_id.encode()
    )
