"""procgate.compat.flask_shell2http: Flask-Shell2HTTP's API and wire protocol on a Gate."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, abort
from flask.testing import FlaskClient

from procgate import Gate, JobStatus, MemoryStore, SQLiteStore
from procgate.compat.flask_shell2http import STORE_FILE, Shell2HTTP
from tests.conftest import wait_for
from tests.servers import Server, free_port

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"

REPORT_KEYS = {"key", "report", "error", "returncode", "start_time", "end_time", "process_time"}


@pytest.fixture
def made() -> Iterator[list[Gate]]:
    gates: list[Gate] = []
    yield gates
    for gate in gates:
        gate.close()


def make(
    made: list[Gate],
    *,
    gate: Gate | None = None,
    name: str = "shell_app",
    prefix: str = "/cmd/",
    register: Callable[[Shell2HTTP], None] | None = None,
) -> tuple[Flask, Shell2HTTP, FlaskClient]:
    """A Flask app with the drop-in, ``echo`` and ``sh -c`` registered."""
    app = Flask(name)
    gate = gate if gate is not None else Gate(store=MemoryStore())
    made.append(gate)
    shell2http = Shell2HTTP(app, None, base_url_prefix=prefix, gate=gate)
    shell2http.register_command(endpoint="echo", command_name="echo")
    shell2http.register_command(endpoint="sh", command_name="sh -c")
    if register is not None:
        register(shell2http)
    return app, shell2http, app.test_client()


def report(client: FlaskClient, uri: str, key: str) -> Any:
    response = client.get(f"{uri}?key={key}&wait=true")
    assert response.status_code == 200, response.json
    return response.json


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_post_then_report(made: list[Gate]) -> None:
    """POST answers 202 with the key (the command line's SHA-1, 8 hex digits) and the
    result URL; the report has the original's fields and values."""
    _, _, client = make(made)
    posted = client.post("/cmd/echo", json={"args": ["hello", "world"]})
    assert posted.status_code == 202
    key = hashlib.sha1(b"echo hello world", usedforsecurity=False).hexdigest()[:8]
    assert posted.json == {
        "key": key,
        "result_url": f"http://localhost/cmd/echo?key={key}&wait=false",
        "status": "running",
    }
    done = report(client, "/cmd/echo", key)
    assert set(done) == REPORT_KEYS
    assert (done["key"], done["report"], done["error"], done["returncode"]) == (
        key,
        "hello world\n",
        "",
        0,
    )
    assert done["process_time"] == done["end_time"] - done["start_time"]
    assert 0 <= done["process_time"] < 30
    assert abs(done["start_time"] - time.time()) < 60


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_non_zero_exit_and_stderr(made: list[Gate]) -> None:
    _, _, client = make(made)
    key = client.post("/cmd/sh", json={"args": ["echo out; echo err >&2; exit 3"]}).json["key"]
    done = report(client, "/cmd/sh", key)
    assert (done["report"], done["error"], done["returncode"]) == ("out\n", "err\n", 3)


@pytest.mark.docs("compat.md#the-wire-protocol", "compat.md#what-differs-and-why")
def test_a_timeout_reports_as_the_original_and_kills_the_tree(made: list[Gate]) -> None:
    """A job past its ``timeout`` reports returncode -9 and the original's message; its
    whole process tree is gone."""
    _, _, client = make(made)
    script = "echo started; sleep 30 & echo $! > pid; wait"
    key = client.post("/cmd/sh", json={"args": [script], "timeout": 1}).json["key"]
    done = report(client, "/cmd/sh", key)
    assert done["returncode"] == -9
    assert done["error"] == "command timedout after 1 seconds."
    assert done["report"] == "started\n"
    grandchild = int(Path("pid").read_text())
    wait_for(lambda: not _alive(grandchild), timeout=10)


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_a_pending_key_is_refused_until_its_report_is_read(made: list[Gate]) -> None:
    """The same command line again, before its report was read, is a 400 naming the key;
    once read, the key runs a new job; ``force_unique_key`` gets a random key."""
    _, _, client = make(made)
    body = {"args": ["again"]}
    first = client.post("/cmd/echo", json=body).json
    second = client.post("/cmd/echo", json=body)
    assert second.status_code == 400
    key = first["key"]
    assert second.json == {
        "error": f"future_key {key} already exists",
        "key": key,
        "result_url": f"http://localhost/cmd/echo?key={key}&wait=false",
    }
    unique = client.post("/cmd/echo", json={**body, "force_unique_key": True})
    assert unique.status_code == 202
    assert unique.json["key"] != key
    assert len(unique.json["key"]) == 8
    report(client, "/cmd/echo", key)
    assert client.get(f"/cmd/echo?key={key}").status_code == 404  # read once
    third = client.post("/cmd/echo", json=body)
    assert third.status_code == 202
    assert third.json == first


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_report_requests_as_the_original_answers_them(made: list[Gate]) -> None:
    _, _, client = make(made)
    missing = client.get("/cmd/echo")
    assert (missing.status_code, missing.json) == (400, {"error": "No key provided in arguments."})
    unknown = client.get("/cmd/echo?key=abc")
    assert unknown.status_code == 404
    assert unknown.json == {"error": "No report exists for key: 'abc'."}
    key = client.post("/cmd/sh", json={"args": ["sleep 30"], "force_unique_key": True}).json["key"]
    running = client.get(f"/cmd/sh?key={key}&wait=false")
    assert running.status_code == 200
    assert running.json == {
        "key": key,
        "result_url": f"http://localhost/cmd/sh?key={key}&wait=false",
        "status": "running",
    }
    # Any endpoint of the app reads any of its keys, as with the original's one executor.
    assert client.get(f"/cmd/echo?key={key}").json["status"] == "running"
    assert client.delete(f"/cmd/sh?key={key}").status_code == 204


@pytest.mark.docs("compat.md#what-differs-and-why")
def test_a_wait_is_bounded_by_the_gates_max_wait(made: list[Gate]) -> None:
    _, _, client = make(made, gate=Gate(store=MemoryStore(), max_wait=0.5))
    key = client.post("/cmd/sh", json={"args": ["sleep 30"]}).json["key"]
    started = time.monotonic()
    waited = client.get(f"/cmd/sh?key={key}&wait=true")
    assert 0.4 < time.monotonic() - started < 10
    assert (waited.status_code, waited.json["status"]) == (200, "running")
    client.delete(f"/cmd/sh?key={key}")


@pytest.mark.docs("compat.md#the-wire-protocol", "compat.md#what-differs-and-why")
def test_delete_kills_the_process_tree(made: list[Gate]) -> None:
    """DELETE answers 204 and stops the job's whole tree (the original's cancel of a
    running future stopped nothing); the job stays in procgate's store, cancelled."""
    _, shell2http, client = make(made)
    assert client.delete("/cmd/sh?key=").status_code == 400
    unknown = client.delete("/cmd/sh?key=abcdefg")
    assert unknown.status_code == 404
    assert unknown.json == {"error": "No job exists for key: 'abcdefg'."}
    script = "sleep 30 & echo $! > pid; wait"
    key = client.post("/cmd/sh", json={"args": [script]}).json["key"]
    wait_for(lambda: Path("pid").exists() and Path("pid").read_text().strip() != "")
    grandchild = int(Path("pid").read_text())
    deleted = client.delete(f"/cmd/sh?key={key}")
    assert deleted.status_code == 204
    wait_for(lambda: not _alive(grandchild), timeout=15)
    assert client.get(f"/cmd/sh?key={key}").status_code == 404
    assert shell2http.gate is not None
    jobs = shell2http.gate.store.list().jobs
    assert [j.status for j in jobs if j.idempotency_key == key] == [JobStatus.CANCELLED]


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_callback_gets_the_context_and_a_done_future(made: list[Gate]) -> None:
    """``callback_fn(context, future)`` runs once the job ends, inside the app context,
    with a finished future; a callback that replaces the result is what the report
    read then answers (the original's custom_save_fn example)."""
    calls: list[tuple[Any, bool, bool, Any, str]] = []

    def callback(context: Any, future: Future[dict[str, Any]]) -> None:
        from flask import current_app

        calls.append((context, future.done(), future.running(), future.result(), current_app.name))
        result = future.result()
        result["report"] = "replaced"
        future._result = result  # type: ignore[attr-defined]

    def register(shell2http: Shell2HTTP) -> None:
        shell2http.register_command(endpoint="cb", command_name="echo", callback_fn=callback)

    _, _, client = make(made, register=register)
    key = client.post("/cmd/cb", json={"args": ["x"], "callback_context": {"a": 1}}).json["key"]
    done = report(client, "/cmd/cb", key)
    assert done["report"] == "replaced"
    assert len(calls) == 1
    context, is_done, is_running, result, app_name = calls[0]
    assert (context, is_done, is_running, app_name) == ({"a": 1}, True, False, "shell_app")
    assert result["key"] == key
    # Without callback_context, the callback gets {} as in the original.
    client.post("/cmd/cb", json={"args": ["y"]})
    wait_for(lambda: len(calls) == 2)
    assert calls[1][0] == {}


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_decorators_wrap_the_view(made: list[Gate]) -> None:
    def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            abort(Response("You are not logged in.", 401))

        return wrapped

    def register(shell2http: Shell2HTTP) -> None:
        shell2http.register_command(
            endpoint="private/echo", command_name="echo", decorators=[login_required]
        )

    _, _, client = make(made, register=register)
    assert client.post("/cmd/private/echo", json={"args": ["x"]}).status_code == 401
    assert client.post("/cmd/echo", json={"args": ["x"]}).status_code == 202


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_uploaded_files_replace_their_at_args(made: list[Gate], tmp_path: Path) -> None:
    """Multipart: ``request_json`` holds the body, each ``@name`` arg becomes the path
    of the file part ``name``, removed once the job ends."""

    def register(shell2http: Shell2HTTP) -> None:
        shell2http.register_command(endpoint="cat", command_name="cat")

    _, shell2http, client = make(made, register=register)
    data = {
        "request_json": json.dumps({"args": ["@one", "@two"]}),
        "one": (io.BytesIO(b"first\n"), "one.txt"),
        "two": (io.BytesIO(b"second\n"), "../../two.txt"),
    }
    posted = client.post("/cmd/cat", data=data, content_type="multipart/form-data")
    assert posted.status_code == 202
    done = report(client, "/cmd/cat", posted.json["key"])
    assert (done["report"], done["returncode"]) == ("first\nsecond\n", 0)
    assert shell2http.gate is not None
    (job,) = shell2http.gate.store.list().jobs
    uploaded = [Path(arg) for arg in job.spec.argv[1:]]
    assert [p.name for p in uploaded] == ["one.txt", "two.txt"]  # names made safe
    wait_for(lambda: not any(p.exists() for p in uploaded), timeout=10)  # removed
    no_at = {"request_json": json.dumps({"args": ["one"]}), "one": (io.BytesIO(b"x"), "x")}
    refused = client.post("/cmd/cat", data=no_at, content_type="multipart/form-data")
    assert (refused.status_code, refused.json) == (
        400,
        {"error": "No filename(s) specified.Please prefix file argument(s) with @ character."},
    )
    missing = {"request_json": json.dumps({"args": ["@nope"]}), "one": (io.BytesIO(b"x"), "x")}
    refused = client.post("/cmd/cat", data=missing, content_type="multipart/form-data")
    assert (refused.status_code, refused.json) == (
        400,
        {"error": "No File part with filename: nope in request."},
    )


@pytest.mark.docs("compat.md#what-differs-and-why")
def test_bad_requests_get_400_with_a_message(made: list[Gate]) -> None:
    _, _, client = make(made)
    for body in (
        b"{not json",
        json.dumps([1, 2]).encode(),
        json.dumps({"args": "echo"}).encode(),
        json.dumps({"args": [1]}).encode(),
        json.dumps({"args": ["x"], "timeout": "soon"}).encode(),
    ):
        refused = client.post("/cmd/echo", data=body, content_type="application/json")
        assert refused.status_code == 400, body
        assert isinstance(refused.json["error"], str)
        assert "Traceback" not in refused.json["error"]


@pytest.mark.docs("compat.md#the-wire-protocol")
def test_a_missing_program_is_a_400_when_read(made: list[Gate]) -> None:
    """As in the original, the endpoint registers; reading its job's result is a 400
    with the error of starting it."""

    def register(shell2http: Shell2HTTP) -> None:
        shell2http.register_command(endpoint="ghost", command_name="./no-such-program.py")

    _, _, client = make(made, register=register)
    key = client.post("/cmd/ghost", json={}).json["key"]
    read = client.get(f"/cmd/ghost?key={key}&wait=true")
    assert read.status_code == 400
    assert "No such file or directory" in read.json["error"]


def test_registering_an_endpoint_twice_is_logged_and_ignored(
    made: list[Gate], caplog: pytest.LogCaptureFixture
) -> None:
    app, shell2http, _ = make(made)
    with caplog.at_level(logging.ERROR, "flask_shell2http"):
        assert shell2http.register_command(endpoint="echo", command_name="ls") is None
    assert "already maps to command: 'echo'" in caplog.text
    assert shell2http.get_registered_commands() == {"/cmd/echo": "echo", "/cmd/sh": "sh -c"}
    assert app.extensions["shell2http"] is shell2http


@pytest.mark.docs("compat.md#where-the-jobs-run")
def test_init_app_and_the_flask_config(made: list[Gate], tmp_path: Path) -> None:
    """The application-factory form, a Gate from ``PROCGATE_GATE``, and by default a
    SQLite store in the app's instance folder."""
    gate = Gate(store=MemoryStore())
    made.append(gate)
    app = Flask("factory", instance_path=str(tmp_path / "instance"))
    app.config["PROCGATE_GATE"] = gate
    shell2http = Shell2HTTP(base_url_prefix="/x/")
    shell2http.init_app(app, executor=None)
    assert shell2http.gate is gate
    plain = Flask("plain", instance_path=str(tmp_path / "plain"))
    default = Shell2HTTP(plain, object())
    assert default.gate is not None
    made.append(default.gate)
    assert isinstance(default.gate.store, SQLiteStore)
    assert (tmp_path / "plain" / "procgate-shell2http.db").exists()


@pytest.mark.docs("compat.md#where-the-jobs-run", "compat.md#what-differs-and-why")
def test_workers_and_restarts_share_the_keys(made: list[Gate], tmp_path: Path) -> None:
    """Two workers (two Gates on one SQLite file) and a restart: a key POSTed to one is
    refused by the other and read from it, and a job's report outlives its server."""
    path = str(tmp_path / "jobs.db")
    first = Gate(store=SQLiteStore(path))
    _, _, one = make(made, gate=first)
    _, _, two = make(made, gate=Gate(store=SQLiteStore(path)))
    key = one.post("/cmd/echo", json={"args": ["shared"]}).json["key"]
    assert two.post("/cmd/echo", json={"args": ["shared"]}).status_code == 400
    assert report(two, "/cmd/echo", key)["report"] == "shared\n"
    kept = one.post("/cmd/echo", json={"args": ["kept"]}).json["key"]
    wait_for(lambda: first.store.list(status=JobStatus.SUCCEEDED).jobs[0].args == ("kept",))
    made.remove(first)
    first.close()  # the server stops; another starts on the same file
    _, _, restarted = make(made, gate=Gate(store=SQLiteStore(path)))
    assert report(restarted, "/cmd/echo", kept)["report"] == "kept\n"


def test_many_threads_post_and_read(made: list[Gate]) -> None:
    """Concurrent clients: every job runs once, every report is read once."""
    _, _, client = make(made)
    app = client.application
    errors: list[str] = []

    def one(number: int) -> None:
        local = app.test_client()
        for round_ in range(5):
            word = f"w{number}-{round_}"
            posted = local.post("/cmd/echo", json={"args": [word]})
            if posted.status_code != 202:
                errors.append(f"post {posted.status_code}")
                continue
            done = local.get(f"/cmd/echo?key={posted.json['key']}&wait=true").json
            if done.get("report") != f"{word}\n":
                errors.append(str(done))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.docs("compat.md#where-the-jobs-run")
def test_each_flask_app_has_a_key_space_of_its_own(made: list[Gate], tmp_path: Path) -> None:
    """Two apps on one store (one project's instance folder) keep their keys apart, as
    two Flask-Executors did; workers of one app (the same name) share theirs."""
    path = str(tmp_path / "jobs.db")
    _, _, first = make(made, gate=Gate(store=SQLiteStore(path)), name="first")
    _, _, second = make(made, gate=Gate(store=SQLiteStore(path)), name="second")
    body = {"args": ["same line"]}
    key = first.post("/cmd/echo", json=body).json["key"]
    assert second.post("/cmd/echo", json=body).json["key"] == key  # a 202, not a 400
    assert report(second, "/cmd/echo", key)["report"] == "same line\n"
    assert report(first, "/cmd/echo", key)["report"] == "same line\n"


@contextlib.contextmanager
def gunicorn(directory: Path, port: int) -> Iterator[Server]:
    """The example app under gunicorn, 2 workers x 4 threads, from ``directory``."""
    log = directory / "gunicorn.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(directory),
                "flask_shell2http_app:app",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, port, log)
    try:
        wait_for(lambda: _answers(server), timeout=60)
        yield server
    finally:
        server.stop()


def _answers(server: Server) -> bool:
    try:
        return server.request("GET", "/commands/echo?key=none")[0] == 404
    except OSError:
        return False


@pytest.mark.docs("compat.md#where-the-jobs-run", "compat.md#what-differs-and-why")
def test_the_example_on_two_gunicorn_workers_and_a_restart(tmp_path: Path) -> None:
    """The example app, only its import changed from the original, on 2 gunicorn workers:
    each request on a new connection (so either worker), every report found and right;
    a key posted before a restart is read after it."""
    shutil.copy(EXAMPLES / "flask_shell2http_app.py", tmp_path)
    port = free_port()
    with gunicorn(tmp_path, port) as server:
        keys = {}
        for number in range(20):
            status, posted = server.json("POST", "/commands/echo", {"args": [f"n{number}"]})
            assert status == 202, posted
            keys[posted["key"]] = f"n{number}\n"
        for key, expected in keys.items():
            status, done = server.json("GET", f"/commands/echo?key={key}&wait=true")
            assert (status, done["report"], done["returncode"]) == (200, expected, 0)
        status, kept = server.json("POST", "/commands/echo", {"args": ["across a restart"]})
        wait_for(lambda: _finished(tmp_path / "instance" / STORE_FILE, kept["key"]))
    with gunicorn(tmp_path, port) as server:
        status, done = server.json("GET", f"/commands/echo?key={kept['key']}&wait=true")
        assert (status, done["report"]) == (200, "across a restart\n")


def _finished(path: Path, key: str) -> bool:
    store = SQLiteStore(str(path))
    try:
        return any(j.status.finished for j in store.list().jobs if j.idempotency_key == key)
    finally:
        store.close()
