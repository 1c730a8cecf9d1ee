"""The HTTP contract, through werkzeug's test Client, once per runner kind."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client
from werkzeug.wrappers import Response

from procgate import Gate, JobStore, MemoryStore, ThreadRunner
from tests.conftest import (
    STORE_KINDS,
    live_pids_in_group,
    make_runner,
    refused,
    register_defaults,
    wait_for,
)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The HTTP contract holds on every store: each test here runs on each, with each
    runner (the ``gate`` fixture of tests/conftest.py)."""
    return str(request.param)


JOB_KEYS = {
    "id",
    "url",
    "command",
    "args",
    "status",
    "returncode",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "encoding",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
    "callback",
}


def run(client: Client, name: str, **body: Any) -> Any:
    """POST a job with wait=true and return the finished job."""
    response = client.post(f"/commands/{name}", json={"wait": True, **body})
    assert response.status_code == 200, response.json
    return response.json


def error_code(response: Any) -> str:
    assert response.mimetype == "application/json"
    return str(response.json["error"]["code"])


def start_background(client: Client, runner_kind: str, name: str, **body: Any) -> str:
    """Start a long job and return its id, once it is running, for any runner kind.

    A SyncRunner runs the job inside the POST, so the POST goes to a thread of its own.
    """
    if runner_kind == "sync":
        thread = threading.Thread(
            target=lambda: client.post(f"/commands/{name}", json=body), daemon=True
        )
        thread.start()
        found: list[str] = []

        def running() -> bool:
            jobs = client.get("/jobs?status=running").json["jobs"]
            found.extend(job["id"] for job in jobs)
            return bool(jobs)

        wait_for(running)
        return found[0]
    response = client.post(f"/commands/{name}", json=body)
    assert response.status_code == 202
    job_id = str(response.json["id"])
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "running")
    return job_id


# -- basics ------------------------------------------------------------------------------


@pytest.mark.docs("http-api.md#get-health")
def test_health(client: Client) -> None:
    """GET /health answers ok in JSON."""
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


@pytest.mark.docs("http-api.md#get-commands-and-get-commandsname")
def test_list_commands(client: Client) -> None:
    """GET /commands lists registered commands with resolved argv and policy."""
    commands = {c["name"]: c for c in client.get("/commands").json["commands"]}
    assert commands["echo"]["argv"][0].endswith("/echo")
    assert commands["sleep"]["timeout"] == 60
    assert commands["env"]["allow_env"] == ["FOO"]
    assert "CONFIGURED" not in json.dumps(commands["env"])  # env values may be secrets
    assert client.get("/commands/echo").json["name"] == "echo"


@pytest.mark.docs("http-api.md#conventions")
def test_get_and_head_on_a_command_run_nothing(client: Client) -> None:
    """GET and HEAD describe a command; only POST starts a job."""
    assert client.get("/commands/echo").status_code == 200
    assert client.head("/commands/echo").status_code == 200
    assert client.get("/jobs").json["jobs"] == []


@pytest.mark.docs("http-api.md#post-commandsname", "http-api.md#the-job-object")
def test_sync_echo(client: Client) -> None:
    """wait=true returns 200 with the finished job and every field present."""
    job = run(client, "echo", args=["hello"])
    assert set(job) == JOB_KEYS
    assert job["status"] == "succeeded"
    assert job["returncode"] == 0
    assert job["stdout"] == "hello\n"
    assert job["stderr"] == ""
    assert job["encoding"] == "utf-8"
    assert job["command"] == "echo"
    assert job["args"] == ["hello"]
    assert job["error"] is None
    assert job["stdout_truncated"] is False
    assert job["created_at"].endswith("Z")
    assert job["finished_at"].endswith("Z")
    assert isinstance(job["duration"], float)
    assert job["url"] == f"http://localhost/jobs/{job['id']}"


@pytest.mark.docs("http-api.md#waiting")
def test_wait_in_query_string(client: Client) -> None:
    """?wait=true on the POST works like the body field."""
    response = client.post("/commands/echo?wait=true", json={"args": ["q"]})
    assert response.status_code == 200
    assert response.json["stdout"] == "q\n"


@pytest.mark.docs("http-api.md#conventions")
def test_empty_body_runs_the_bare_command(client: Client) -> None:
    """A POST with no body runs the command with no args."""
    response = client.post("/commands/echo?wait=true")  # up to max_wait, not 1 s
    assert response.status_code == 200
    assert response.json["stdout"] == "\n"


@pytest.mark.docs("http-api.md#post-commandsname", "http-api.md#get-jobsid")
def test_async_job_then_poll(client: Client, runner_kind: str) -> None:
    """Without wait: 202, a Location header, then GET ?wait= returns the finished job."""
    response = client.post("/commands/echo", json={"args": ["later"]})
    assert response.status_code == 202
    job = response.json
    assert set(job) == JOB_KEYS
    assert response.headers["Location"] == job["url"]
    expected = {"succeeded"} if runner_kind == "sync" else {"queued", "running", "succeeded"}
    assert job["status"] in expected
    polled = client.get(f"/jobs/{job['id']}?wait=10")
    assert polled.status_code == 200
    assert polled.json["status"] == "succeeded"
    assert polled.json["stdout"] == "later\n"


@pytest.mark.docs("http-api.md#waiting")
def test_wait_seconds_returns_202_when_not_done(client: Client, runner_kind: str) -> None:
    """wait=N that runs out answers 202 with the job still running."""
    if runner_kind == "sync":  # a SyncRunner finishes inside the POST: nothing to time out
        response = client.post("/commands/sleep", json={"args": ["0.2"], "wait": 0.05})
        assert response.json["status"] == "succeeded"
        return
    response = client.post("/commands/sleep", json={"args": ["5"], "wait": 0.2})
    assert response.status_code == 202
    assert response.json["status"] in ("queued", "running")
    assert "Location" in response.headers
    assert client.delete(f"/jobs/{response.json['id']}?wait=10").json["status"] == "cancelled"


@pytest.mark.docs("http-api.md#the-job-object", "http-api.md#statuses")
def test_failed_command(client: Client) -> None:
    """A non-zero exit is status failed with its returncode."""
    job = run(client, "false")
    assert (job["status"], job["returncode"]) == ("failed", 1)


@pytest.mark.docs("http-api.md#the-job-object")
def test_binary_output_is_base64(client: Client) -> None:
    """Output that is not UTF-8 comes back base64 with encoding=base64."""
    job = run(client, "sh", args=["printf '\\377\\376'; printf ok >&2"])
    assert job["encoding"] == "base64"
    assert base64.b64decode(job["stdout"]) == b"\xff\xfe"
    assert base64.b64decode(job["stderr"]) == b"ok"


@pytest.mark.docs("http-api.md#post-commandsname")
def test_stdin_text_and_base64(client: Client) -> None:
    """stdin is fed to the child, as UTF-8 text or as base64 bytes."""
    assert run(client, "cat", stdin="héllo\n")["stdout"] == "héllo\n"
    job = run(client, "cat", stdin=base64.b64encode(b"\x00\xff").decode(), stdin_encoding="base64")
    assert base64.b64decode(job["stdout"]) == b"\x00\xff"


@pytest.mark.docs("http-api.md#post-commandsname")
@pytest.mark.docs("security.md#environment")
@pytest.mark.docs("README.md#safety-defaults")
def test_env_minimal_configured_and_allowed(client: Client) -> None:
    """Children see PATH, LANG, configured env and allowed request env, nothing else."""
    job = run(client, "env", env={"FOO": "bar"})
    names = {line.split("=", 1)[0] for line in job["stdout"].splitlines()}
    assert names == {"PATH", "LANG", "CONFIGURED", "FOO"}
    assert "FOO=bar" in job["stdout"].splitlines()


@pytest.mark.docs("http-api.md#post-commandsname")
@pytest.mark.docs("security.md#environment")
def test_env_not_allowed_is_403(client: Client) -> None:
    """A request setting an env key the command does not allow is refused."""
    response = client.post("/commands/env", json={"env": {"LD_PRELOAD": "/x.so"}})
    assert response.status_code == 403
    assert error_code(response) == "env_not_allowed"
    assert client.get("/jobs").json["jobs"] == []
    # Every refused key is named, in order, so one answer says all there is to fix.
    response = client.post("/commands/env", json={"env": {"TZ": "x", "HOME": "/", "FOO": "1"}})
    assert response.json["error"]["message"] == (
        "command 'env' does not allow setting env HOME, TZ"
    )


@pytest.mark.docs("http-api.md#post-commandsname", "http-api.md#statuses")
def test_timeout_is_timed_out(client: Client) -> None:
    """A job past its timeout is timed_out with an explanatory error."""
    job = run(client, "short", args=["30"])
    assert job["status"] == "timed_out"
    assert job["error"] == "timed out after 0.5 s"


@pytest.mark.docs("http-api.md#post-commandsname")
def test_request_timeout_shortens(client: Client) -> None:
    """A request timeout below the command's applies."""
    job = run(client, "sleep", args=["30"], timeout=0.3)
    assert job["status"] == "timed_out"


@pytest.mark.docs("http-api.md#post-commandsname")
def test_request_timeout_cannot_exceed_command(client: Client) -> None:
    """A request timeout above the command's limit is a 400, not silently clamped."""
    response = client.post("/commands/short", json={"args": ["1"], "timeout": 100})
    assert response.status_code == 400
    assert error_code(response) == "invalid_timeout"


@pytest.mark.docs("http-api.md#post-commandsname")
def test_shell_command_args_are_positional(client: Client) -> None:
    """Args of a shell command are $1..., never parsed by the shell."""
    job = run(client, "sh", args=['echo "$0"', "x"])
    assert job["status"] == "succeeded"
    injected = run(client, "echo", args=["; rm -rf /tmp/nothing", "$(id)"])
    assert injected["stdout"] == "; rm -rf /tmp/nothing $(id)\n"


# -- cancel and delete -------------------------------------------------------------------


@pytest.mark.docs("http-api.md#delete-jobsid")
@pytest.mark.docs("testing.md#choosing-a-runner")
def test_cancel_running_job_kills_tree(client: Client, runner_kind: str) -> None:
    """DELETE on a running job answers 202 and the whole process tree dies."""
    job_id = start_background(client, runner_kind, "sh", args=["echo $$; sleep 100 & sleep 100"])
    wait_for(lambda: client.get(f"/jobs/{job_id}/stdout").data)
    pgid = int(client.get(f"/jobs/{job_id}/stdout").data.split()[0])
    assert live_pids_in_group(pgid)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202
    assert response.json["id"] == job_id
    final = client.get(f"/jobs/{job_id}?wait=10").json
    assert final["status"] == "cancelled"
    wait_for(lambda: not live_pids_in_group(pgid), timeout=2)


@pytest.mark.docs("http-api.md#delete-jobsid", "http-api.md#statuses")
def test_cancel_queued_job() -> None:
    """A queued job that is cancelled never starts."""
    gate = register_defaults(Gate(runner=ThreadRunner(max_workers=1, max_queue=5)))
    client = Client(gate)
    try:
        blocker = client.post("/commands/sleep", json={"args": ["30"]}).json["id"]
        queued = client.post("/commands/echo", json={"args": ["never"]}).json["id"]
        assert client.get(f"/jobs/{queued}").json["status"] == "queued"
        response = client.delete(f"/jobs/{queued}")
        assert response.status_code == 202
        assert response.json["status"] == "cancelled"
        assert response.json["started_at"] is None
        client.delete(f"/jobs/{blocker}?wait=10")
    finally:
        gate.close()
    assert gate.store.get(queued).stdout == b""


@pytest.mark.docs("http-api.md#delete-jobsid", "http-api.md#status-codes")
def test_delete_finished_job(client: Client) -> None:
    """DELETE on a finished job removes it: 204 with no content, then 404."""
    job = run(client, "echo", args=["x"])
    response = client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert client.get(f"/jobs/{job['id']}").status_code == 404


@pytest.mark.docs("http-api.md#delete-jobsid")
def test_delete_unknown_job(client: Client) -> None:
    """DELETE on an unknown id is a JSON 404."""
    response = client.delete("/jobs/nope")
    assert response.status_code == 404
    assert error_code(response) == "job_not_found"


# -- listing and output ------------------------------------------------------------------


@pytest.mark.docs("http-api.md#get-jobs")
def test_list_jobs_newest_first_with_filters_and_cursor(client: Client) -> None:
    """GET /jobs is newest first, filters by status and command, pages with a cursor."""
    ids = [run(client, "echo", args=[str(i)])["id"] for i in range(5)]
    failed = run(client, "false")["id"]
    listed = client.get("/jobs").json
    assert [job["id"] for job in listed["jobs"]] == [failed, *reversed(ids)]
    assert listed["next"] is None
    by_status = client.get("/jobs?status=failed").json["jobs"]
    assert [job["id"] for job in by_status] == [failed]
    by_command = client.get("/jobs?command=echo").json["jobs"]
    assert len(by_command) == 5
    first = client.get("/jobs?limit=2&command=echo").json
    assert [job["id"] for job in first["jobs"]] == [ids[4], ids[3]]
    second = client.get(f"/jobs?limit=2&command=echo&cursor={first['next']}").json
    assert [job["id"] for job in second["jobs"]] == [ids[2], ids[1]]
    third = client.get(f"/jobs?limit=2&command=echo&cursor={second['next']}").json
    assert [job["id"] for job in third["jobs"]] == [ids[0]]
    assert third["next"] is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("status=bogus", "invalid_request"),
        ("limit=0", "invalid_request"),
        ("limit=abc", "invalid_request"),
        ("limit=100000", "invalid_request"),
        ("cursor=notanumber", "invalid_cursor"),
    ],
)
@pytest.mark.docs("http-api.md#get-jobs")
def test_list_jobs_bad_query(client: Client, query: str, code: str) -> None:
    """Bad list parameters get a JSON 400 naming the problem."""
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 400
    assert error_code(response) == code


@pytest.mark.docs("http-api.md#get-jobsidstdout-and-get-jobsidstderr")
def test_raw_output_endpoints(client: Client) -> None:
    """GET /jobs/<id>/stdout and /stderr return the raw bytes."""
    job = run(client, "sh", args=["printf '\\377out'; printf err >&2"])
    out = client.get(f"/jobs/{job['id']}/stdout")
    assert out.status_code == 200
    assert out.mimetype == "application/octet-stream"
    assert out.data == b"\xffout"
    assert out.headers["X-Job-Status"] == "succeeded"
    assert out.headers["X-Output-Truncated"] == "false"
    assert client.get(f"/jobs/{job['id']}/stderr").data == b"err"
    assert client.get("/jobs/nope/stdout").status_code == 404


@pytest.mark.docs("http-api.md#get-jobsid")
def test_output_so_far_while_running(client: Client, runner_kind: str) -> None:
    """A running job shows the output it has produced so far."""
    job_id = start_background(client, runner_kind, "sh", args=["echo first; sleep 100"])
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["stdout"] == "first\n")
    assert client.get(f"/jobs/{job_id}").json["status"] == "running"
    client.delete(f"/jobs/{job_id}?wait=10")


@pytest.mark.docs("http-api.md#get-jobsidstdout-and-get-jobsidstderr")
@pytest.mark.docs("live-output.md#truncation")
def test_truncation_flag() -> None:
    """Output past a command's max_output is dropped and flagged."""
    gate = Gate(runner=ThreadRunner())
    gate.register("big", ["head", "-c", "100000", "/dev/zero"], max_output=1000)
    try:
        job = Client(gate).post("/commands/big", json={"wait": True}).json
    finally:
        gate.close()
    assert job["status"] == "succeeded"
    assert job["stdout_truncated"] is True
    assert job["encoding"] == "base64"  # NUL bytes: six bytes each as JSON text
    assert base64.b64decode(job["stdout"]) == b"\0" * 1000


# -- errors ------------------------------------------------------------------------------


@pytest.mark.docs("http-api.md#get-commands-and-get-commandsname")
@pytest.mark.docs("python-api.md#errors")
def test_unknown_command_is_json_404(client: Client) -> None:
    """A name nobody registered gets a JSON 404, never an HTML page."""
    response = client.post("/commands/nope", json={})
    assert response.status_code == 404
    assert error_code(response) == "unknown_command"


@pytest.mark.docs("http-api.md#errors")
def test_unknown_route_is_json_404(client: Client) -> None:
    """werkzeug's routing 404 is rendered as JSON too."""
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


@pytest.mark.docs("http-api.md#endpoints", "http-api.md#errors")
def test_wrong_method_is_json_405_with_allow(client: Client) -> None:
    """A wrong method is a JSON 405 that keeps the Allow header, its methods in
    alphabetical order (werkzeug's own order changes from one process to the next)."""
    response = client.put("/jobs/abc")
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"
    assert response.headers["Allow"] == "DELETE, GET, HEAD"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"[" * 100000 + b"]" * 100000, "invalid_json"),
        (b'{"args": "echo"}', "invalid_request"),
        (b'{"args": [1, 2]}', "invalid_request"),
        (b'{"args": ["a\\u0000b"]}', "invalid_request"),
        (b'{"args": ["\\ud800"]}', "invalid_request"),
        (b'{"stdin": 5}', "invalid_request"),
        (b'{"stdin": "x", "stdin_encoding": "rot13"}', "invalid_request"),
        (b'{"stdin": "***", "stdin_encoding": "base64"}', "invalid_request"),
        (b'{"env": ["FOO"]}', "invalid_request"),
        (b'{"env": {"FOO": 1}}', "invalid_request"),
        (b'{"timeout": -1}', "invalid_timeout"),
        (b'{"timeout": "10"}', "invalid_timeout"),
        (b'{"timeout": true}', "invalid_timeout"),
        (b'{"timeout": 1e999}', "invalid_timeout"),
        (b'{"timeout": NaN}', "invalid_timeout"),
        (b'{"wait": "soon"}', "invalid_request"),
        (b'{"wait": -3}', "invalid_request"),
        (b'{"argz": []}', "unknown_field"),
        (b'{"stdin_file": "x"}', "unknown_field"),
        (b'{"callback_url": "http://127.0.0.1:9/x"}', "callback_not_allowed"),
        (b'{"callback_url": 7}', "invalid_request"),
    ],
)
@pytest.mark.docs("http-api.md#conventions", "http-api.md#errors")
def test_bad_bodies_are_json_400(client: Client, body: bytes, code: str) -> None:
    """Malformed JSON or fields get a 400 with a specific code; nothing is started."""
    response = client.post("/commands/echo", data=body, content_type="application/json")
    assert response.status_code == 400, response.json
    assert error_code(response) == code
    assert response.json["error"]["message"]
    assert client.get("/jobs").json["jobs"] == []


@pytest.mark.docs("http-api.md#conventions", "http-api.md#waiting")
def test_bad_wait_query_is_400(client: Client) -> None:
    """?wait= must be true, false or seconds."""
    response = client.get("/jobs/x?wait=forever")
    assert response.status_code == 400


@pytest.mark.docs("http-api.md#conventions", "http-api.md#errors")
def test_non_json_content_type_is_415(client: Client) -> None:
    """A form-encoded body (curl -d without a JSON header) is a JSON 415."""
    response = client.post("/commands/echo", data={"args": "x"})
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"


@pytest.mark.docs("http-api.md#conventions")
@pytest.mark.docs("security.md#limits")
@pytest.mark.docs("README.md#safety-defaults")
def test_body_over_limit_is_413() -> None:
    """A body over max_body is refused with a JSON 413 before it is parsed; no job."""
    gate = Gate(runner=ThreadRunner(), max_body=1000)
    gate.register("cat", ["cat"])
    try:
        refused(
            gate.store,
            413,
            "request_entity_too_large",
            lambda: Client(gate).post("/commands/cat", json={"stdin": "x" * 5000}),
        )
    finally:
        gate.close()


def post_chunked(client: Client, path: str, body: bytes) -> Any:
    """POST ``body`` as a server passes on a chunked one: no Content-Length, and
    ``wsgi.input_terminated`` (the server ends the stream)."""
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


@pytest.mark.docs("http-api.md#conventions")
@pytest.mark.docs("security.md#failure-modes")
def test_chunked_body_over_limit_is_413() -> None:
    """A chunked body (no Content-Length) one byte over max_body is a JSON 413, as with a
    Content-Length, and nothing runs; one of exactly max_body bytes is read whole."""
    gate = Gate(runner=ThreadRunner(), max_body=1000)
    gate.register("cat", ["cat"])
    client = Client(gate)
    body = json.dumps({"stdin": "x" * 100, "wait": True}).encode()
    body += b" " * (1000 - len(body))  # JSON may end in blanks
    try:
        over = post_chunked(client, "/commands/cat", body + b" ")
        assert over.status_code == 413
        assert error_code(over) == "request_entity_too_large"
        assert client.get("/jobs").json["jobs"] == []
        refused(
            gate.store,
            413,
            "request_entity_too_large",
            lambda: post_chunked(client, "/commands/cat", b"x" * 10_000),
        )
        exact = post_chunked(client, "/commands/cat", body)
        assert exact.status_code == 200, exact.json
        assert exact.json["stdout"] == "x" * 100
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#conventions")
@pytest.mark.docs("security.md#failure-modes")
def test_huge_numbers_are_400_on_every_store(job_store: JobStore) -> None:
    """A 400-digit integer in wait or timeout (commands and /run), or in limit, offset or
    Last-Event-ID, is a JSON 400 on every store: never a 500, and nothing runs."""
    gate = Gate(store=job_store, runner=ThreadRunner(), allow_programs=["echo"])
    gate.register("echo", ["echo"], timeout=None)  # no limit for a timeout to exceed
    client = Client(gate)
    huge = 10**400
    try:
        job = client.post("/commands/echo", json={"args": ["hi"], "wait": True}).json
        for field in ("wait", "timeout"):
            for value in (huge, -huge):
                for path, args in (("/commands/echo", ["hi"]), ("/run", ["echo", "hi"])):
                    response = client.post(path, json={"args": args, field: value})
                    assert response.status_code == 400, (path, field, response.json)
                    assert error_code(response) in ("invalid_request", "invalid_timeout")
        digits = "9" * 400
        for path, headers in (
            (f"/jobs/{job['id']}/events", {"Last-Event-ID": digits}),
            (f"/jobs/{job['id']}/events?last_event_id={digits}", {}),
            (f"/jobs/{job['id']}/events", {"Last-Event-ID": str(2**63)}),
            (f"/jobs/{job['id']}/output?offset={digits}", {}),
            (f"/jobs?limit={digits}", {}),
        ):
            response = client.get(path, headers=headers)
            assert response.status_code == 400, path
            assert error_code(response) == "invalid_request"
        last = client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": str(2**63 - 1)})
        assert last.status_code == 200
        assert [j["id"] for j in client.get("/jobs").json["jobs"]] == [job["id"]]
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#status-codes", "http-api.md#errors")
def test_runner_saturated_is_429_with_retry_after() -> None:
    """A full runner queue answers 429 with Retry-After, and keeps no trace of the job."""
    gate = register_defaults(Gate(runner=ThreadRunner(max_workers=1, max_queue=1)))
    client = Client(gate)
    try:
        first = client.post("/commands/sleep", json={"args": ["30"]}).json["id"]
        wait_for(lambda: client.get(f"/jobs/{first}").json["status"] == "running")
        second = client.post("/commands/sleep", json={"args": ["30"]})
        assert second.status_code == 202
        third = client.post("/commands/sleep", json={"args": ["30"]})
        assert third.status_code == 429
        assert error_code(third) == "runner_busy"
        assert int(third.headers["Retry-After"]) >= 1
        assert len(client.get("/jobs").json["jobs"]) == 2
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#status-codes")
@pytest.mark.docs("python-api.md#gate")
def test_closed_runner_is_503(runner_kind: str) -> None:
    """After close, new jobs get 503 with Retry-After, and nothing runs."""
    gate = register_defaults(Gate(runner=make_runner(runner_kind)))
    gate.runner.close()
    response = Client(gate).post("/commands/echo", json={})
    gate.close()
    assert response.status_code == 503
    assert error_code(response) == "runner_closed"
    assert "Retry-After" in response.headers
    assert Client(gate).get("/jobs").json["jobs"] == []


class BrokenStore(MemoryStore):
    """A store whose reads fail: stands in for a bug."""

    def get(self, job_id: str, *, output: bool = True) -> Any:
        raise RuntimeError("secret internals")


@pytest.mark.docs("http-api.md#status-codes", "http-api.md#errors")
@pytest.mark.docs("python-api.md#errors")
def test_bug_is_generic_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception is a generic JSON 500; the traceback goes to the log only."""
    store: JobStore = BrokenStore()
    gate = Gate(store=store, runner=ThreadRunner())
    try:
        with caplog.at_level(logging.ERROR, logger="procgate"):
            response = Client(gate).get("/jobs/abc")
    finally:
        gate.close()
    assert response.status_code == 500
    assert response.json == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }
    assert "secret internals" not in response.get_data(as_text=True)
    assert "secret internals" in caplog.text


# -- raw mode ----------------------------------------------------------------------------


@pytest.mark.docs("http-api.md#post-run-raw-mode")
@pytest.mark.docs("configuration.md#run", "README.md#safety-defaults")
def test_run_is_off_by_default(client: Client, gate: Gate) -> None:
    """POST /run is refused unless raw mode was enabled; nothing is created."""
    response = refused(
        gate.store, 403, "run_disabled", lambda: client.post("/run", json={"args": ["ls"]})
    )
    # The operator reads it in a client's report: the config keys first, Python second.
    assert response.json["error"]["message"] == (
        "raw mode is off on this server: it takes [run] allow_programs, allow_any_program "
        "or allow_shell in the config file (the Gate(...) arguments of the same names in "
        "Python) to enable POST /run"
    )


@pytest.fixture
def raw_client(runner_kind: str) -> Any:
    gate = Gate(runner=make_runner(runner_kind), allow_programs=["echo", "/bin/ls"])
    yield Client(gate)
    gate.close()


@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_allowed_program(raw_client: Client) -> None:
    """An allowed program runs with list or shlex-split string args."""
    job = raw_client.post("/run", json={"args": ["echo", "a b"], "wait": True}).json
    assert (job["status"], job["stdout"], job["command"]) == ("succeeded", "a b\n", None)
    job = raw_client.post("/run", json={"args": "echo 'x y' z", "wait": True}).json
    assert job["stdout"] == "x y z\n"
    assert job["args"] == ["echo", "x y", "z"]


@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_disallowed_program_is_403(raw_client: Client) -> None:
    """A program outside the allowlist is refused, even by absolute path."""
    store = raw_client.application.store  # the Gate the fixture made
    for args in (["cat", "/etc/passwd"], ["/usr/bin/cat"], "sh -c id"):
        refused(
            store,
            403,
            "program_not_allowed",
            lambda args=args: raw_client.post("/run", json={"args": args}),
        )


@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_allowlist_is_by_name_not_by_file(tmp_path: Path) -> None:
    """Another name for an allowed file (a multi-call binary's link) is not allowed."""
    multi = tmp_path / "multi"
    multi.write_text('#!/bin/sh\necho "ran as $(basename "$0")"\n')
    multi.chmod(0o755)
    (tmp_path / "safe").symlink_to(multi)
    (tmp_path / "danger").symlink_to(multi)
    gate = Gate(runner=ThreadRunner(), allow_programs=[str(tmp_path / "safe")])
    client = Client(gate)
    try:
        job = client.post("/run", json={"args": [str(tmp_path / "safe")], "wait": True}).json
        assert job["stdout"] == "ran as safe\n"
        for other in (tmp_path / "danger", multi):
            refused(
                gate.store,
                403,
                "program_not_allowed",
                lambda other=other: client.post("/run", json={"args": [str(other)]}),
            )
    finally:
        gate.close()


@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_shell_needs_allow_shell(raw_client: Client) -> None:
    """shell: true is refused unless the Gate allows shells; nothing is created."""
    refused(
        raw_client.application.store,  # the Gate the fixture made
        403,
        "shell_not_allowed",
        lambda: raw_client.post("/run", json={"args": "echo hi", "shell": True}),
    )


@pytest.mark.parametrize(
    "body",
    [{"args": []}, {"args": ""}, {"args": "'unclosed"}, {"args": ["echo"], "shell": "yes"}],
)
@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_bad_args_are_400(raw_client: Client, body: dict[str, Any]) -> None:
    """Empty or unparseable raw args are a 400."""
    assert raw_client.post("/run", json=body).status_code == 400


@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_shell_and_any_program() -> None:
    """With allow_shell and allow_any_program, shell strings and any program run."""
    gate = Gate(runner=ThreadRunner(), allow_shell=True, allow_any_program=True)
    client = Client(gate)
    try:
        job = client.post(
            "/run", json={"args": "echo $((1+2)) | tr 3 x", "shell": True, "wait": True}
        )
        assert job.json["stdout"] == "x\n"
        job = client.post("/run", json={"args": ["printf", "%s", "ok"], "wait": True})
        assert job.json["stdout"] == "ok"
        missing = client.post("/run", json={"args": ["no-such-program-xyz"]})
        assert missing.status_code == 400
        assert error_code(missing) == "program_not_found"
    finally:
        gate.close()


# -- mounting and isolation --------------------------------------------------------------


@pytest.mark.docs("http-api.md#conventions")
def test_urls_respect_mount_prefix(gate: Gate) -> None:
    """Mounted under a prefix, job url and Location include it."""

    def other(environ: Any, start_response: Any) -> Any:
        return Response("other")(environ, start_response)

    client = Client(DispatcherMiddleware(other, {"/api/pg": gate}))
    response = client.post("/api/pg/commands/echo", json={"args": ["hi"]})
    assert response.status_code == 202
    job_id = response.json["id"]
    assert response.headers["Location"] == f"http://localhost/api/pg/jobs/{job_id}"
    assert response.json["url"] == response.headers["Location"]
    assert client.get(f"/api/pg/jobs/{job_id}?wait=10").json["status"] == "succeeded"
    assert client.get("/").get_data(as_text=True) == "other"


@pytest.mark.docs("python-api.md#gate")
def test_two_gates_do_not_share_state() -> None:
    """Commands and jobs of one Gate are invisible to another in the same process."""
    one, two = Gate(), Gate()
    try:
        one.register("echo", ["echo"])
        job = Client(one).post("/commands/echo", json={"wait": True}).json
        assert Client(two).get("/commands").json == {"commands": []}
        assert Client(two).get(f"/jobs/{job['id']}").status_code == 404
        two.register("echo", ["echo"])  # the same name is fine in another Gate
    finally:
        one.close()
        two.close()


def test_many_concurrent_clients(gate: Gate, runner_kind: str) -> None:
    """Sixteen threads submitting at once all get their own correct results."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            client = Client(gate)
            for i in range(10):
                job = client.post("/commands/echo", json={"args": [f"{n}-{i}"], "wait": True})
                results[n * 100 + i] = job.json
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 160
    for key, job in results.items():
        assert job["status"] == "succeeded"
        assert job["stdout"] == f"{key // 100}-{key % 100}\n"
    assert len({job["id"] for job in results.values()}) == 160


@pytest.mark.docs("http-api.md#waiting")
def test_a_waiting_request_runs_its_job_in_its_own_thread() -> None:
    """wait runs the job in the request's thread whatever the command's timeout (5 s, none,
    60 s, and one longer than the wait); a job submitted without wait goes to the pool."""
    gate = Gate(runner=ThreadRunner(), max_wait=30)
    gate.register("quick", ["echo", "hi"], timeout=5, kill_grace=1)
    gate.register("unbounded", ["echo", "hi"], timeout=None)
    gate.register("long", ["echo", "hi"], timeout=60)
    threads: dict[str, int] = {}  # job id -> the thread that finished it
    gate.on_finish(lambda job, ctx: threads.setdefault(job.id, threading.get_ident()))
    client = Client(gate)
    ids: dict[str, str] = {}  # what was asked -> job id
    try:
        for name in ("quick", "unbounded", "long"):
            response = client.post(f"/commands/{name}", json={"wait": True})
            assert response.status_code == 200
            assert response.json["stdout"] == "hi\n"
            ids[name] = response.json["id"]
        response = client.post("/commands/quick", json={"wait": 2})  # 5 s + grace > 2 s
        assert response.status_code == 200
        assert response.json["stdout"] == "hi\n"
        ids["quick, wait 2"] = response.json["id"]
        response = client.post("/commands/quick", json={})
        assert response.status_code == 202
        ids["no wait"] = response.json["id"]
        wait_for(lambda: len(threads) == 5)
    finally:
        gate.close()
    here = threading.get_ident()
    assert threads[ids["quick"]] == here
    assert threads[ids["unbounded"]] == here
    assert threads[ids["long"]] == here
    assert threads[ids["quick, wait 2"]] == here
    assert threads[ids["no wait"]] != here


@pytest.mark.docs("http-api.md#the-job-object")
def test_output_full_of_control_characters_is_base64() -> None:
    """Text stays text (tabs, newlines, an ANSI colour); NUL padding is sent as base64."""
    gate = Gate(runner=ThreadRunner())
    gate.register("printf", ["printf"])
    client = Client(gate)
    try:
        colour = client.post(
            "/commands/printf", json={"args": ["\\033[31mred\\033[0m\\tok\\n"], "wait": True}
        ).json
        nuls = client.post("/commands/printf", json={"args": ["a\\0\\0\\0b"], "wait": True}).json
    finally:
        gate.close()
    assert colour["encoding"] == "utf-8"
    assert colour["stdout"] == "\x1b[31mred\x1b[0m\tok\n"
    assert nuls["encoding"] == "base64"
    assert base64.b64decode(nuls["stdout"]) == b"a\0\0\0b"
