"""The drop-in against the real Flask-Shell2HTTP 1.9.1: the same requests to both, the
same answers (statuses, JSON keys, values and messages; times and random keys aside)."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_executor import Executor
from flask_shell2http import Shell2HTTP as Original

from procgate import Gate, MemoryStore
from procgate.compat.flask_shell2http import Shell2HTTP

TIMES = ("start_time", "end_time", "process_time")

# The original leaves pipes open and children unwaited (a timeout, a bad timeout value):
# Python warns when it collects them. Those are its leaks, not the drop-in's, whose own
# tests (test_flask_shell2http.py) run with every warning an error.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture
def pair() -> Iterator[tuple[FlaskClient, FlaskClient, str]]:
    """A client of each: the original (on a Flask-Executor) and the drop-in (on a Gate),
    with the same endpoints under the same prefix. The original keeps its endpoints in a
    class attribute shared by all instances, hence a new prefix each time."""
    prefix = f"/{uuid.uuid4().hex[:8]}/"
    clients = []
    gate = Gate(store=MemoryStore())
    for kind in ("original", "procgate"):
        app = Flask(f"diff_{kind}")
        if kind == "original":
            shell2http: Any = Original(app, Executor(app), base_url_prefix=prefix)
        else:
            shell2http = Shell2HTTP(app, None, base_url_prefix=prefix, gate=gate)
        shell2http.register_command(endpoint="echo", command_name="echo")
        shell2http.register_command(endpoint="sh", command_name="sh -c")
        shell2http.register_command(endpoint="cat", command_name="cat")
        shell2http.register_command(endpoint="ghost", command_name="./no-such-program")
        clients.append(app.test_client())
    yield clients[0], clients[1], prefix
    gate.close()


def both(
    pair: tuple[FlaskClient, FlaskClient, str], send: Callable[[FlaskClient, str], Any]
) -> tuple[tuple[int, Any], tuple[int, Any]]:
    original, ours, prefix = pair
    answers = []
    for client in (original, ours):
        response = send(client, prefix)
        answers.append((response.status_code, response.get_json(silent=True)))
    return answers[0], answers[1]


def same(
    pair: tuple[FlaskClient, FlaskClient, str], send: Callable[[FlaskClient, str], Any]
) -> Any:
    """Send to both; assert the same status and JSON; return ours."""
    theirs, ours = both(pair, send)
    assert ours == theirs
    return ours


def read(client: FlaskClient, prefix: str, endpoint: str, key: str) -> Any:
    """The report, polled without ``wait`` (the original's wait blocks on the future)."""
    deadline = time.monotonic() + 60
    while True:
        answer = client.get(f"{prefix}{endpoint}?key={key}").get_json()
        if answer.get("status") != "running" or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def reports(pair: tuple[FlaskClient, FlaskClient, str], endpoint: str, body: Any) -> Any:
    """POST ``body`` to both, read both reports; assert they match but for the times."""
    original, ours, prefix = pair
    posted = same(pair, lambda c, p: c.post(f"{p}{endpoint}", json=body))
    assert posted[0] == 202
    key = posted[1]["key"]
    theirs = read(original, prefix, endpoint, key)
    mine = read(ours, prefix, endpoint, key)
    for report in (theirs, mine):
        assert report["process_time"] == report["end_time"] - report["start_time"]
        for name in TIMES:
            report[name] = type(report[name])
    assert mine == theirs
    return mine


@pytest.mark.docs("compat.md#the-wire-protocol", "compat.md#the-switch")
def test_a_report_matches(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    mine = reports(pair, "echo", {"args": ["hello", "world"]})
    assert mine["report"] == "hello world\n"


def test_a_failing_command_matches(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    mine = reports(pair, "sh", {"args": ["echo out; echo err >&2; exit 7"]})
    assert mine["returncode"] == 7


def test_a_timeout_matches(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    mine = reports(pair, "sh", {"args": ["sleep 5"], "timeout": 1})
    assert mine["error"] == "command timedout after 1 seconds."


def test_keys_and_duplicates_match(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    body = {"args": ["twice"]}
    first = same(pair, lambda c, p: c.post(f"{p}echo", json=body))
    assert first[0] == 202
    again = same(pair, lambda c, p: c.post(f"{p}echo", json=body))
    assert again[0] == 400
    theirs, ours = both(
        pair, lambda c, p: c.post(f"{p}echo", json={**body, "force_unique_key": True})
    )
    assert theirs[0] == ours[0] == 202
    assert len(theirs[1]["key"]) == len(ours[1]["key"]) == 8
    assert set(theirs[1]) == set(ours[1])


@pytest.mark.parametrize(
    ("method", "query"),
    [
        ("GET", ""),
        ("GET", "?key="),
        ("GET", "?key=nothere"),
        ("DELETE", ""),
        ("DELETE", "?key=nothere"),
    ],
)
def test_errors_for_keys_match(
    pair: tuple[FlaskClient, FlaskClient, str], method: str, query: str
) -> None:
    answer = same(pair, lambda c, p: c.open(f"{p}echo{query}", method=method))
    assert answer[0] in (400, 404)


def test_a_running_job_and_its_deletion_match(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    posted = same(pair, lambda c, p: c.post(f"{p}sh", json={"args": ["sleep 3"]}))
    key = posted[1]["key"]
    running = same(pair, lambda c, p: c.get(f"{p}sh?key={key}&wait=false"))
    assert running[1]["status"] == "running"
    deleted = same(pair, lambda c, p: c.delete(f"{p}sh?key={key}"))
    assert deleted[0] == 204
    gone = same(pair, lambda c, p: c.get(f"{p}sh?key={key}"))
    assert gone[0] == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps([1, 2]).encode(),
        json.dumps({"args": ["x"], "timeout": "soon"}).encode(),
    ],
)
def test_bad_bodies_match(pair: tuple[FlaskClient, FlaskClient, str], body: bytes) -> None:
    """Refused at the POST by both (the original reads the timeout at once)... or, where
    the original only fails when the job runs, by the drop-in at the POST: see compat.md."""
    theirs, ours = both(
        pair, lambda c, p: c.post(f"{p}echo", data=body, content_type="application/json")
    )
    if theirs[0] == 400:
        assert ours == theirs
    else:
        assert ours[0] == 400
        assert isinstance(ours[1]["error"], str)


def test_a_missing_program_matches(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    original, ours, prefix = pair
    posted = same(pair, lambda c, p: c.post(f"{p}ghost", json={}))
    key = posted[1]["key"]
    theirs = read(original, prefix, "ghost", key)
    mine = read(ours, prefix, "ghost", key)
    assert mine == theirs
    assert "No such file or directory" in mine["error"]


def test_uploads_match(pair: tuple[FlaskClient, FlaskClient, str]) -> None:
    original, ours, prefix = pair

    def form(args: list[str]) -> dict[str, Any]:
        return {
            "request_json": json.dumps({"args": args}),
            "one": (io.BytesIO(b"first\n"), "one.txt"),
            "two": (io.BytesIO(b"second\n"), "two.txt"),
        }

    for args in (["one"], ["@one", "@three"]):
        same(pair, lambda c, p, a=args: c.post(f"{p}cat", data=form(a)))
    keys = []
    for client in (original, ours):
        answer = client.post(f"{prefix}cat", data=form(["@one", "@two"]))
        assert answer.status_code == 202
        keys.append(answer.get_json()["key"])
    theirs = read(original, prefix, "cat", keys[0])
    mine = read(ours, prefix, "cat", keys[1])
    assert (mine["report"], mine["error"], mine["returncode"]) == (
        theirs["report"],
        theirs["error"],
        theirs["returncode"],
    )
    assert mine["report"] == "first\nsecond\n"
