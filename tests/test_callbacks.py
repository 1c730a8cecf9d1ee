"""Callback delivery: signing, retries with backoff, giving up, no redirects, allowlist."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from werkzeug.test import Client

from procgate import Gate, ThreadRunner
from procgate.callbacks import Delivery, Notifier, check_callback_url
from procgate.errors import InvalidRequest
from tests.conftest import wait_for


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records callbacks and answers scripted codes."""

    url: str
    codes: list[int] = field(default_factory=list)  # answered in order, then 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            code = state.codes.pop(0) if state.codes else 200
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


class Recorder:
    def __init__(self) -> None:
        self.states: list[Delivery] = []

    def __call__(self, state: Delivery) -> None:
        self.states.append(state)

    @property
    def last(self) -> Delivery:
        return self.states[-1]


def test_delivered_and_signed(receiver: Receiver) -> None:
    """A 2xx is a delivery; the body carries an HMAC-SHA256 signature of itself."""
    notifier = Notifier(secret="s3cret")
    record = Recorder()
    try:
        notifier.send(receiver.url, {"id": "j1", "status": "succeeded"}, record)
        wait_for(lambda: record.states)
    finally:
        notifier.close()
    assert record.last == Delivery(receiver.url, "delivered", 1, 200, None)
    headers, body = receiver.received[0]
    assert json.loads(body) == {"id": "j1", "status": "succeeded"}
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Procgate-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"


def test_no_secret_no_signature(receiver: Receiver) -> None:
    """Without a secret, no signature header is sent."""
    notifier = Notifier()
    record = Recorder()
    try:
        notifier.send(receiver.url, {}, record)
        wait_for(lambda: record.states)
    finally:
        notifier.close()
    assert "X-Procgate-Signature" not in receiver.received[0][0]


def test_retries_with_backoff_until_delivered(receiver: Receiver) -> None:
    """Failed attempts are retried with growing delays until a 2xx."""
    receiver.codes = [500, 503]
    notifier = Notifier(backoff=0.1, max_attempts=5)
    record = Recorder()
    try:
        notifier.send(receiver.url, {"n": 1}, record)
        wait_for(lambda: record.states and record.last.status == "delivered")
    finally:
        notifier.close()
    assert [(s.status, s.attempts, s.last_status) for s in record.states] == [
        ("pending", 1, 500),
        ("pending", 2, 503),
        ("delivered", 3, 200),
    ]
    assert len(receiver.received) == 3


def test_gives_up_after_max_attempts(receiver: Receiver) -> None:
    """After max_attempts failures the delivery is failed, with the last error kept."""
    receiver.codes = [500] * 10
    notifier = Notifier(backoff=0.01, max_attempts=3)
    record = Recorder()
    try:
        notifier.send(receiver.url, {}, record)
        wait_for(lambda: record.states and record.last.status == "failed")
        wait_for(notifier.idle)
    finally:
        notifier.close()
    assert record.last == Delivery(receiver.url, "failed", 3, 500, "HTTP 500")
    assert len(receiver.received) == 3


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    """A redirect could leave the allowlist: it counts as a failed attempt."""
    receiver.codes = [302]
    notifier = Notifier(max_attempts=1)
    record = Recorder()
    try:
        notifier.send(receiver.url, {}, record)
        wait_for(lambda: record.states)
    finally:
        notifier.close()
    assert record.last.status == "failed"
    assert record.last.last_status == 302
    assert len(receiver.received) == 1


def test_unreachable_is_a_failed_attempt() -> None:
    """A refused connection is recorded with its error, not raised."""
    notifier = Notifier(max_attempts=1, timeout=2)
    record = Recorder()
    try:
        notifier.send("http://127.0.0.1:1/nothing", {}, record)
        wait_for(lambda: record.states)
    finally:
        notifier.close()
    assert record.last.status == "failed"
    assert record.last.last_status is None
    assert record.last.last_error is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000.evil.example/",
        "http://127.0.0.1:90001/",
        "ftp://127.0.0.1:9000/x",
        "http://10.0.0.1/hook",
        "",
        5,
    ],
)
def test_allowlist_refuses(url: object) -> None:
    """Only http(s) URLs under an allowed prefix pass."""
    with pytest.raises(InvalidRequest):
        check_callback_url(url, ["http://127.0.0.1:9000/"])


def test_allowlist_accepts() -> None:
    """A URL under an allowed prefix passes unchanged."""
    url = "http://127.0.0.1:9000/hooks/done?x=1"
    assert check_callback_url(url, ["https://other/", "http://127.0.0.1:9000/"]) == url


# -- through the Gate ----------------------------------------------------------------------


def make_gate(receiver: Receiver, **options: Any) -> Gate:
    gate = Gate(
        runner=ThreadRunner(),
        callback_allow=[receiver.url.rsplit("/", 1)[0] + "/"],
        callback_backoff=0.05,
        **options,
    )
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    return gate


def test_job_callback_is_posted_signed_and_recorded(receiver: Receiver) -> None:
    """A finished job is POSTed with its context and signature; the job records delivery."""
    gate = make_gate(receiver, callback_secret="k")
    client = Client(gate)
    try:
        body = {
            "args": ["hi"],
            "callback_url": receiver.url,
            "callback_context": {"ticket": 42},
        }
        job = client.post("/commands/echo", json=body).json
        assert job["callback"] == {
            "url": receiver.url,
            "status": "pending",
            "attempts": 0,
            "last_status": None,
            "last_error": None,
        }
        wait_for(lambda: client.get(f"/jobs/{job['id']}").json["callback"]["status"] != "pending")
        final = client.get(f"/jobs/{job['id']}").json
    finally:
        gate.close()
    assert final["callback"]["status"] == "delivered"
    assert final["callback"]["attempts"] == 1
    assert final["callback"]["last_status"] == 200
    headers, raw = receiver.received[0]
    payload = json.loads(raw)
    assert payload["id"] == job["id"]
    assert payload["status"] == "succeeded"
    assert payload["stdout"] == "hi\n"
    assert payload["context"] == {"ticket": 42}
    assert payload["url"] == f"http://localhost/jobs/{job['id']}"
    signature = hmac.new(b"k", raw, hashlib.sha256).hexdigest()
    assert headers["X-Procgate-Signature"] == f"sha256={signature}"


def test_failed_callback_is_retried_then_recorded(receiver: Receiver) -> None:
    """A receiver that keeps failing gets the configured attempts; the job says so."""
    receiver.codes = [500] * 10
    gate = make_gate(receiver, callback_attempts=3)
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": receiver.url, "wait": True}).json
        wait_for(lambda: client.get(f"/jobs/{job['id']}").json["callback"]["status"] == "failed")
        state = client.get(f"/jobs/{job['id']}").json["callback"]
    finally:
        gate.close()
    assert state["attempts"] == 3
    assert state["last_status"] == 500
    assert state["last_error"] == "HTTP 500"
    assert job["status"] == "succeeded"  # a callback never changes the job's result


def test_callback_outside_allowlist_is_400(receiver: Receiver) -> None:
    """No open SSRF: a callback URL outside callback_allow is refused before anything runs."""
    gate = make_gate(receiver)
    client = Client(gate)
    try:
        response = client.post(
            "/commands/echo", json={"callback_url": "http://169.254.169.254/latest"}
        )
        assert response.status_code == 400
        assert response.json["error"]["code"] == "callback_not_allowed"
        assert client.get("/jobs").json["jobs"] == []
    finally:
        gate.close()


def test_python_hooks_called_once_per_finished_job(receiver: Receiver) -> None:
    """Gate and command hooks run once per finished job, cancelled-while-queued included."""
    gate = Gate(runner=ThreadRunner(max_workers=1))
    seen: list[tuple[str, str, Any]] = []
    gate.on_finish(lambda job, ctx: seen.append(("gate", job.status.value, ctx)))
    gate.register("echo", ["echo"], on_finish=lambda job, ctx: seen.append(("echo", job.id, ctx)))
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    client = Client(gate)
    try:
        done = client.post("/commands/echo", json={"wait": True}).json
        blocker = client.post("/commands/sleep", json={"args": ["30"]}).json["id"]
        queued = client.post("/commands/echo", json={"callback_context": [1]}).json["id"]
        client.delete(f"/jobs/{queued}")
        client.delete(f"/jobs/{blocker}?wait=10")
        wait_for(lambda: len(seen) == 5)
    finally:
        gate.close()
    assert ("echo", done["id"], None) in seen
    assert ("echo", queued, [1]) in seen
    assert sorted(s[1] for s in seen if s[0] == "gate") == ["cancelled", "cancelled", "succeeded"]


def test_failing_hook_is_logged_and_harmless(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in a hook is logged; the job, the runner and other hooks carry on."""
    gate = Gate(runner=ThreadRunner(max_workers=1))
    later: list[str] = []

    @gate.on_finish
    def broken(job: Any, ctx: Any) -> None:
        raise RuntimeError("hook bug")

    gate.on_finish(lambda job, ctx: later.append(job.id))
    gate.register("echo", ["echo"])
    client = Client(gate)
    try:
        first = client.post("/commands/echo", json={"wait": True}).json
        second = client.post("/commands/echo", json={"wait": True}).json
        wait_for(lambda: len(later) == 2)
    finally:
        gate.close()
    assert first["status"] == second["status"] == "succeeded"
    assert "hook bug" in caplog.text


def test_callback_allow_must_be_a_list() -> None:
    """A string is refused: taken as prefixes one character long it would allow anything."""
    from procgate import ConfigError

    with pytest.raises(ConfigError, match="callback_allow"):
        Gate(callback_allow="https://hooks.example.com/")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="allow_programs"):
        Gate(allow_programs="echo")  # type: ignore[arg-type]
