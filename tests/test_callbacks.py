"""Callbacks: URL rules, signing, retries, hostile receivers, deadlines, and durable
delivery from the store's outbox (a Gate closed, a server SIGKILLed, then delivered)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import time_machine
import trustme
from werkzeug.test import Client

from procgate import Gate, MemoryStore, SQLiteStore, ThreadRunner
from procgate import callbacks as callbacks_module
from procgate.callback_url import MAX_URL, check_callback_url
from procgate.callbacks import Delivery, Notifier
from procgate.errors import ConfigError, InvalidRequest, StoreUnavailable
from procgate.jobs import Job, JobStatus, Outcome, Spec, new_job_id
from procgate.stores import JobStore
from tests.conftest import wait_for
from tests.servers import start_server


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records callbacks and answers scripted codes."""

    url: str
    codes: list[int] = field(default_factory=list)  # answered in order, then ``code``
    code: int = 200
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each

    @property
    def base(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/"

    def deliveries(self) -> list[str]:
        return [headers["X-Procgate-Delivery"] for _, headers, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            if len(body) < length:  # its sender died mid-request: not a delivery
                self.close_connection = True
                return
            state.received.append((self.path, dict(self.headers), body))
            state.arrived.append(time.monotonic())
            code = state.codes.pop(0) if state.codes else state.code
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


class Hostile:
    """A raw TCP receiver on 127.0.0.1 that reads a request, then misbehaves: ``garbage``
    answers bytes that are not HTTP, ``trickle`` sends a header byte a second for two
    minutes, ``silent`` never answers. It notes when each connection came and went."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.base = f"http://127.0.0.1:{self.server.getsockname()[1]}/"
        self.url = self.base + "hook"
        self.accepted: list[float] = []
        self.gone: list[float] = []  # the client closed the connection
        self._stop = threading.Event()
        self._handlers: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._serve)
        self._acceptor.start()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(10)
        for thread in self._handlers:
            thread.join(10)
        self.server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,))
            self._handlers.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            self.accepted.append(time.monotonic())
            if not self._read_request(conn):
                self.gone.append(time.monotonic())
                return
            if self.behaviour == "garbage":
                conn.sendall(b"\x00\x01 garbage, not HTTP\r\n\r\n")
                return
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 120:
                try:
                    if self.behaviour == "trickle":
                        conn.sendall(bytes([byte]))
                    conn.settimeout(1.0 if self.behaviour == "trickle" else 0.1)
                    if conn.recv(1) == b"":  # the client hung up
                        raise ConnectionResetError
                except TimeoutError:
                    pass
                except OSError:
                    self.gone.append(time.monotonic())
                    return
                if self._stop.is_set():
                    return

    def _read_request(self, conn: socket.socket) -> bool:
        """Read a request's head and body; False if the client left first (or never sent
        one: a TLS client waits for the server's hello)."""
        conn.settimeout(0.1)
        data = b""
        while True:
            head, ended, body = data.partition(b"\r\n\r\n")
            if ended:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    return True
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                if self._stop.is_set():
                    return False
                continue
            except OSError:
                return False
            if not chunk:
                return False
            data += chunk


@pytest.fixture
def hostile() -> Iterator[Any]:
    """``hostile(behaviour)`` starts a misbehaving receiver, closed after the test."""
    made: list[Hostile] = []

    def make(behaviour: str) -> Hostile:
        made.append(Hostile(behaviour))
        return made[-1]

    yield make
    for server in made:
        server.close()


# -- the URL rules -----------------------------------------------------------------------

ALLOW = ["http://127.0.0.1:9000/hooks/"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hooks/a b",
        "http://127.0.0.1:9000/hooks/a\r\nX-Injected: 1",
        "http://127.0.0.1:9000/hooks/a\nb",
        "http://127.0.0.1:9000/hooks/\x00",
        "http://127.0.0.1:9000/hooks/\t",
        "http://127.0.0.1:9000/hooks/caf\u00e9",
        "http://127.0.0.1:9000/hooks/a\\..\\..\\admin",
        "http://127.0.0.1:9000/hooks/100%",
        "http://127.0.0.1:9000/hooks/%zz",
        "http://127.0.0.1:9000@evil.example/hooks/",
        "http://user:pw@127.0.0.1:9000/hooks/",
        "http://127.0.0.1:9000.evil.example/hooks/",
        "http://127.0.0.1:90001/hooks/",
        "http://127.0.0.1:9000/hooks/..%2F..%2Fadmin",
        "http://127.0.0.1:9000/hooks/..%5c..%5cadmin",
        "http://127.0.0.1:9000/hooks/%00",
        "http://127.0.0.1:9000/hooks/..;/..;/admin",
        "ftp://127.0.0.1:9000/hooks/",
        "http:///hooks/",
        "http://127.0.0.1:9000/hooks/" + "a" * 2100,
        "",
        5,
        None,
    ],
)
@pytest.mark.docs("callbacks.md#the-url-rules")
def test_malformed_urls_are_refused(url: object) -> None:
    """Spaces, CR/LF, NUL, non-ASCII, lone %, user info, bad ports, encoded separators and
    dot segments with parameters are refused as invalid, whatever the prefix."""
    with pytest.raises(InvalidRequest) as caught:
        check_callback_url(url, ALLOW)
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize("segment", [".;x", "..;x", "..;a;b", ".;a;b"])
def test_dot_segments_with_any_parameters_are_refused(segment: str) -> None:
    """A ``.`` or ``..`` segment carrying parameters, one or several, is refused even when
    the URL would stay under the prefix: some servers (Tomcat) read ``..;x`` as ``..``."""
    with pytest.raises(InvalidRequest) as caught:
        check_callback_url(f"http://127.0.0.1:9000/hooks/{segment}/a", ALLOW)
    assert caught.value.code == "invalid_request"
    assert "dot segments" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hooks/../../admin",
        "http://127.0.0.1:9000/hooks/../admin",
        "http://127.0.0.1:9000/hooks/%2e%2e/%2E%2E/admin",
        "http://127.0.0.1:9000/hooks/.%2e/admin",
        "http://127.0.0.1:9000/hooks//..//..//admin",
        "http://127.0.0.1:9000/hooks/./../admin",
        "http://127.0.0.1:9000/hooks/a/../../admin",
        "http://127.0.0.1:9000/hooks",
        "http://127.0.0.1:9000/hooksx/",
        "http://10.0.0.1/hooks/",
        "https://127.0.0.1:9000/hooks/",
    ],
)
@pytest.mark.docs("security.md#callbacks", "callbacks.md#the-allowlist")
def test_urls_leaving_the_prefix_once_normalised_are_not_allowed(url: str) -> None:
    """The allowlist sees the normal form: ``/hooks/../admin`` is ``/admin``."""
    with pytest.raises(InvalidRequest) as caught:
        check_callback_url(url, ALLOW)
    assert caught.value.code == "callback_not_allowed"


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://127.0.0.1:9000/hooks/done?x=1", "http://127.0.0.1:9000/hooks/done?x=1"),
        ("HTTP://127.0.0.1:9000/hooks/a/./b/../c#frag", "http://127.0.0.1:9000/hooks/a/c"),
        ("http://127.0.0.1:9000/hooks//a///b", "http://127.0.0.1:9000/hooks/a/b"),
        ("http://127.0.0.1:9000/hooks/%7euser/%41", "http://127.0.0.1:9000/hooks/~user/A"),
        ("http://127.0.0.1:9000/hooks/a%2fb?next=%2F", None),
        ("http://127.0.0.1:9000/hooks/x/%2e%2e/y", "http://127.0.0.1:9000/hooks/y"),
        ("http://127.0.0.1:9000/hooks/a%20b%e9", "http://127.0.0.1:9000/hooks/a%20b%E9"),
        ("http://127.0.0.1:9000/hooks/?q=a/../b", "http://127.0.0.1:9000/hooks/?q=a/../b"),
        ("http://127.0.0.1:9000/hooks/a/..", "http://127.0.0.1:9000/hooks/"),
        ("http://127.0.0.1:9000/hooks/a/.", "http://127.0.0.1:9000/hooks/a/"),
        ("http://127.0.0.1:9000/hooks/@evil", "http://127.0.0.1:9000/hooks/@evil"),  # a path
    ],
)
@pytest.mark.docs("callbacks.md#the-url-rules")
def test_urls_are_normalised(url: str, normal: str | None) -> None:
    """Scheme and host in lower case, unreserved escapes decoded, slashes merged, dot
    segments resolved, no fragment; the query as given. An encoded slash in the path is
    refused (None)."""
    if normal is None:
        with pytest.raises(InvalidRequest):
            check_callback_url(url, ALLOW)
    else:
        assert check_callback_url(url, ALLOW) == normal


@pytest.mark.docs("callbacks.md#the-url-rules")
def test_the_longest_url_accepted_is_max_url_characters() -> None:
    """A URL of exactly ``MAX_URL`` characters passes; one character more is refused."""
    base = ALLOW[0]
    longest = base + "a" * (MAX_URL - len(base))
    assert check_callback_url(longest, ALLOW) == longest
    with pytest.raises(InvalidRequest) as caught:
        check_callback_url(longest + "a", ALLOW)
    assert str(caught.value) == f"callback_url must be at most {MAX_URL} characters"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (5, "callback_url must be a URL string"),
        ("", "callback_url must be a URL string"),
        ("ftp://127.0.0.1:9000/hooks/", "callback_url must be an http or https URL"),
        ("http://u@127.0.0.1:9000/hooks/", "callback_url must not hold a user name or password"),
        (
            "http://127.0.0.1:9000/hooks/..;x/a",
            "callback_url's path must not hold dot segments with parameters",
        ),
        (
            "http://10.0.0.1/hooks/",
            "callback_url is not allowed on this server (see callback_allow)",
        ),
    ],
)
def test_each_refusal_says_what_is_wrong(url: object, message: str) -> None:
    """The error a client reads names the rule its URL broke."""
    with pytest.raises(InvalidRequest) as caught:
        check_callback_url(url, ALLOW)
    assert str(caught.value) == message


# -- through the Gate ----------------------------------------------------------------------


def make_gate(*receivers: Receiver | Hostile, **options: Any) -> Gate:
    options.setdefault("callback_backoff", 0.05)
    options.setdefault("callback_allow", [receiver.base for receiver in receivers])
    gate = Gate(runner=ThreadRunner(), **options)
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    return gate


def callback(client: Client, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = client.get(f"/jobs/{job_id}").json["callback"]
    return state


def settled(client: Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The job's callback state once it is no longer pending."""
    wait_for(lambda: callback(client, job_id)["status"] != "pending", timeout)
    return callback(client, job_id)


@pytest.mark.docs(
    "callbacks.md#http-callbacks",
    "callbacks.md#the-request",
    "callbacks.md#the-payload",
    "callbacks.md#verifying-the-signature",
    "callbacks.md#the-jobs-callback-field",
)
def test_job_callback_is_posted_signed_and_recorded(receiver: Receiver, tmp_path: Path) -> None:
    """A finished job is POSTed with its context and signature; the job records delivery."""
    gate = make_gate(receiver, callback_secret="k")
    # ``cat`` of a FIFO cannot finish before the test writes to it, so the 202 shows the
    # callback as it is until the job ends, however slow the machine.
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    gate.register("held", ["cat", str(fifo)])
    client = Client(gate)
    try:
        body = {
            "callback_url": receiver.url,
            "callback_context": {"ticket": 42},
        }
        job = client.post("/commands/held", json=body).json
        assert job["callback"] == {
            "url": receiver.url,
            "status": "pending",
            "attempts": 0,
            "last_status": None,
            "last_error": None,
        }
        with open(fifo, "wb") as writer:  # opens once cat has opened it
            writer.write(b"hi\n")
        wait_for(lambda: client.get(f"/jobs/{job['id']}").json["callback"]["status"] != "pending")
        final = client.get(f"/jobs/{job['id']}").json
    finally:
        gate.close()
    assert final["callback"]["status"] == "delivered"
    assert final["callback"]["attempts"] == 1
    assert final["callback"]["last_status"] == 200
    path, headers, raw = receiver.received[0]
    assert path == "/hook"
    assert headers["X-Procgate-Delivery"] == job["id"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "procgate"
    assert headers["Connection"] == "close"
    payload = json.loads(raw)
    assert payload["callback"] == {  # the state the job finished with, on every attempt
        "url": receiver.url,
        "status": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
    }
    assert payload["id"] == job["id"]
    assert payload["status"] == "succeeded"
    assert payload["stdout"] == "hi\n"
    assert payload["context"] == {"ticket": 42}
    assert payload["url"] == f"http://localhost/jobs/{job['id']}"
    signature = hmac.new(b"k", raw, hashlib.sha256).hexdigest()
    assert headers["X-Procgate-Signature"] == f"sha256={signature}"


@pytest.mark.docs("callbacks.md#retries")
def test_a_retry_goes_out_when_it_falls_due_not_at_the_next_poll(receiver: Receiver) -> None:
    """A failed attempt's retry is made when its backoff ends, even with a poll interval
    far longer: the poller wakes for it. Never sooner than the backoff."""
    receiver.codes = [503]
    store = MemoryStore()
    job = finished_job(store, receiver.url)
    notifier = Notifier(store, allow=[receiver.base], poll_interval=120, backoff=0.5)
    with running(notifier):
        wait_for(lambda: len(receiver.received) == 2, timeout=60)
    first, second = receiver.arrived
    assert 0.5 <= second - first < 60
    assert (store.get(job.id).callback or {})["status"] == "delivered"


@pytest.mark.docs("callbacks.md#retries", "callbacks.md#the-jobs-callback-field")
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


@pytest.mark.docs(
    "security.md#callbacks",
    "callbacks.md#http-callbacks",
    "callbacks.md#the-allowlist",
)
@pytest.mark.docs("README.md#safety-defaults")
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


@pytest.mark.docs("callbacks.md#python-hooks")
@pytest.mark.docs("python-api.md#python-hooks")
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


@pytest.mark.docs("callbacks.md#python-hooks")
@pytest.mark.docs("python-api.md#python-hooks")
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


@pytest.mark.docs("security.md#callbacks", "callbacks.md#the-allowlist")
def test_callback_allow_must_be_a_list() -> None:
    """A string is refused: taken as prefixes one character long it would allow anything."""
    from procgate import ConfigError

    with pytest.raises(ConfigError, match="callback_allow"):
        Gate(callback_allow="https://hooks.example.com/")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="allow_programs"):
        Gate(allow_programs="echo")  # type: ignore[arg-type]


@pytest.mark.docs("callbacks.md#the-request", "callbacks.md#durability-and-repeats")
def test_retries_send_the_same_bytes_and_delivery_id(receiver: Receiver) -> None:
    """Every attempt of one callback carries the same body, signature and
    X-Procgate-Delivery (the job id), for the receiver to de-duplicate on."""
    receiver.codes = [500, 503]
    gate = make_gate(receiver, callback_secret="k")
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": receiver.url}).json
        state = settled(client, job["id"])
    finally:
        gate.close()
    assert (state["status"], state["attempts"], state["last_status"]) == ("delivered", 3, 200)
    assert receiver.deliveries() == [job["id"]] * 3
    assert len({body for _, _, body in receiver.received}) == 1
    assert len({headers["X-Procgate-Signature"] for _, headers, _ in receiver.received}) == 1
    assert json.loads(receiver.received[0][2])["callback"]["attempts"] == 0


@pytest.mark.docs("callbacks.md#verifying-the-signature")
def test_no_secret_no_signature(receiver: Receiver) -> None:
    """Without a secret, no signature header is sent."""
    gate = make_gate(receiver)
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": receiver.url}).json
        settled(client, job["id"])
    finally:
        gate.close()
    assert "X-Procgate-Signature" not in receiver.received[0][1]


@pytest.mark.docs("security.md#callbacks", "callbacks.md#retries")
@pytest.mark.parametrize("code", [300, 302])
def test_redirects_are_not_followed(receiver: Receiver, code: int) -> None:
    """A redirect could leave the allowlist: it counts as a failed attempt, from 300 on."""
    receiver.codes = [code]
    gate = make_gate(receiver, callback_attempts=1)
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": receiver.url}).json
        state = settled(client, job["id"])
    finally:
        gate.close()
    assert (state["status"], state["last_status"], state["last_error"]) == (
        "failed",
        code,
        f"HTTP {code}",
    )
    assert len(receiver.received) == 1


@pytest.mark.docs("callbacks.md#retries")
def test_unreachable_is_a_failed_attempt(receiver: Receiver) -> None:
    """A refused connection is recorded with its error, and retried."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    gate = make_gate(receiver, callback_attempts=2, callback_allow=[url])
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": url}).json
        state = settled(client, job["id"])
    finally:
        gate.close()
    assert (state["status"], state["attempts"], state["last_status"]) == ("failed", 2, None)
    assert "ConnectionRefusedError" in state["last_error"]


@pytest.mark.docs("security.md#failure-modes", "callbacks.md#the-url-rules")
def test_malformed_urls_are_400_and_later_callbacks_go_out(receiver: Receiver) -> None:
    """Twelve callback_urls with a space, CR/LF or NUL after an allowed prefix are refused
    with a JSON 400 and create no job; the next good callback is delivered."""
    gate = make_gate(receiver)
    client = Client(gate)
    bad = [receiver.base + tail for tail in ("a b", "a\r\nb", "a\x00", "\n", "a\rb", "é")] * 2
    try:
        for url in bad:
            response = client.post("/commands/echo", json={"callback_url": url})
            assert response.status_code == 400
            assert response.json["error"]["code"] == "invalid_request"
        assert client.get("/jobs").json["jobs"] == []
        job = client.post("/commands/echo", json={"callback_url": receiver.url}).json
        assert settled(client, job["id"])["status"] == "delivered"
    finally:
        gate.close()


@pytest.mark.docs("callbacks.md#the-url-rules")
def test_the_callback_goes_to_the_normalised_url(receiver: Receiver) -> None:
    """The job keeps, and the callback goes to, the URL in normal form; a URL that leaves
    the allowed prefix once normalised is 400 callback_not_allowed."""
    hooks = receiver.base + "hooks/"
    gate = make_gate(receiver, callback_allow=[hooks])
    client = Client(gate)
    try:
        for sneaky in ("../admin", "%2e%2e/admin", "a/../../admin", ".//..//admin"):
            response = client.post("/commands/echo", json={"callback_url": hooks + sneaky})
            assert response.status_code == 400
            assert response.json["error"]["code"] == "callback_not_allowed"
        job = client.post("/commands/echo", json={"callback_url": hooks + "a/./b/%2e%2e//c?x=1"})
        assert job.json["callback"]["url"] == hooks + "a/c?x=1"
        assert settled(client, job.json["id"])["status"] == "delivered"
    finally:
        gate.close()
    assert [path for path, _, _ in receiver.received] == ["/hooks/a/c?x=1"]


@contextlib.contextmanager
def running(notifier: Notifier) -> Iterator[Notifier]:
    """``notifier`` started, and closed however the block ends."""
    notifier.start()
    try:
        yield notifier
    finally:
        notifier.close()


def finished_job(store: JobStore, url: str, context: Any = None) -> Job:
    """A finished job with a callback to ``url``, stored as an older procgate (which
    checked less) could have stored it."""
    state = {"url": url, "status": "pending", "attempts": 0, "last_status": None}
    job = Job(
        id=new_job_id(),
        command="echo",
        args=(),
        spec=Spec(argv=("/bin/echo",)),
        callback_url=url,
        callback={**state, "last_error": None},
        callback_context=context,
    )
    store.create(job)
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    return job


@pytest.mark.docs("security.md#failure-modes", "callbacks.md#retries")
def test_every_failure_is_an_attempt_and_delivery_goes_on(
    receiver: Receiver, hostile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed URLs already in the store, receivers answering garbage (BadStatusLine,
    not an OSError) or hanging up, and an exception inside procgate: each is a failed
    attempt recorded with its error, retried; no worker dies, later callbacks go out."""
    garbage, hangup = hostile("garbage"), hostile("garbage")
    gate = make_gate(receiver, garbage, hangup, callback_attempts=2)
    client = Client(gate)
    broken = finished_job(gate.store, receiver.url)
    body = Notifier.body

    def body_or_bug(self: Notifier, job: Job) -> bytes:
        if job.id == broken.id:
            raise RuntimeError("a bug")
        return body(self, job)

    monkeypatch.setattr(Notifier, "body", body_or_bug)
    try:
        malformed = [
            finished_job(gate.store, receiver.base + tail).id
            for tail in ("a b", "a\r\nX: y", "a\x00", "..%2Fadmin", "é", "%zz") * 2
        ]
        answered = [
            client.post("/commands/echo", json={"callback_url": garbage.url}).json["id"]
            for _ in range(12)
        ]
        gate.notifier.wake()
        states = {job_id: settled(client, job_id) for job_id in [*malformed, *answered]}
        job = client.post("/commands/echo", json={"callback_url": receiver.url}).json
        assert settled(client, job["id"])["status"] == "delivered"
        assert settled(client, broken.id)["last_error"] == "RuntimeError: a bug"
    finally:
        gate.close()
    for job_id in malformed:
        assert states[job_id]["status"] == "failed"
        assert states[job_id]["attempts"] == 1  # hopeless: not tried again
        assert states[job_id]["last_error"].startswith("callback_url refused here")
    for job_id in answered:
        assert (states[job_id]["status"], states[job_id]["attempts"]) == ("failed", 2)
        assert "BadStatusLine" in states[job_id]["last_error"]
    assert len(garbage.accepted) == 24
    assert [path for path, _, _ in receiver.received] == ["/hook"]  # none went elsewhere


@pytest.mark.docs("security.md#failure-modes", "callbacks.md#retries")
def test_a_trickling_receiver_is_cut_at_the_deadline(hostile: Any) -> None:
    """callback_timeout bounds the whole attempt: a receiver sending a header byte a
    second is dropped after 2 s (not after every byte), and the attempt is recorded."""
    slow = hostile("trickle")
    gate = make_gate(slow, callback_timeout=2, callback_attempts=1)
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": slow.url}).json
        wait_for(lambda: slow.gone, timeout=8)
        state = settled(client, job["id"])
    finally:
        gate.close()
    assert 1.5 < slow.gone[0] - slow.accepted[0] < 3.0
    assert state["status"] == "failed"
    assert state["last_error"].startswith("timed out")


def test_a_tls_handshake_is_under_the_deadline(hostile: Any) -> None:
    """An https receiver that never answers the TLS hello is dropped at the deadline too."""
    silent = hostile("silent")
    url = silent.url.replace("http://", "https://")
    gate = make_gate(
        silent,
        callback_allow=[silent.base.replace("http", "https")],
        callback_timeout=1.5,
        callback_attempts=1,
    )
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": url}).json
        wait_for(lambda: silent.gone, timeout=8)
        state = settled(client, job["id"])
    finally:
        gate.close()
    assert 1.0 < silent.gone[0] - silent.accepted[0] < 2.5
    assert state["last_error"].startswith("timed out")


@pytest.mark.docs("security.md#failure-modes")
def test_a_hanging_receiver_does_not_hold_up_the_others(
    receiver: Receiver, hostile: Any, tmp_path: Path
) -> None:
    """While one attempt hangs on a receiver that never answers, other callbacks go out on
    other threads; closing the Gate cuts the hanging attempt short and hands it back to
    the outbox, uncounted, for the next process."""
    silent = hostile("silent")
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    gate = make_gate(receiver, silent, store=store, callback_timeout=20)
    client = Client(gate)
    try:
        stuck = client.post("/commands/echo", json={"callback_url": silent.url}).json
        wait_for(lambda: silent.accepted)
        jobs = [
            client.post("/commands/echo", json={"callback_url": receiver.url}).json["id"]
            for _ in range(12)
        ]
        for job_id in jobs:
            assert settled(client, job_id, timeout=5)["status"] == "delivered"
        assert not silent.gone  # still hanging
    finally:
        started = time.monotonic()
        gate.close()
    assert time.monotonic() - started < 5
    wait_for(lambda: silent.gone)
    again = SQLiteStore(str(tmp_path / "jobs.db"))
    try:
        [claimed] = again.claim_callbacks(time.time(), 60, 10)
    finally:
        again.close()
    assert claimed.id == stuck["id"]
    assert claimed.callback is not None
    assert claimed.callback["attempts"] == 1  # the one under way was not counted


@pytest.mark.docs("callbacks.md#retries")
def test_a_callback_stays_in_the_store_while_every_thread_is_busy(
    receiver: Receiver, hostile: Any
) -> None:
    """With every delivery thread held by a receiver that hangs, a newly due callback is
    not claimed: it stays in the outbox, where another process can take it. Once the
    hanging attempts time out, delivery goes on."""
    silent = hostile("silent")
    store = MemoryStore()
    notifier = Notifier(
        store, allow=[silent.base, receiver.base], workers=2, timeout=6, poll_interval=0.05
    )
    with running(notifier):
        first = finished_job(store, receiver.url)  # a thread taken and given back
        notifier.wake()
        wait_for(lambda: (store.get(first.id).callback or {}).get("status") == "delivered")
        receiver.received.clear()
        for held in (1, 2):  # claimed one at a time: the count of busy threads adds up
            finished_job(store, silent.url)
            notifier.wake()
            wait_for(lambda held=held: len(silent.accepted) == held)
        workers = [t for t in threading.enumerate() if t.name.startswith("procgate-callbacks-")]
        assert len(workers) == 2
        assert all(t.daemon for t in workers)
        waiting = finished_job(store, receiver.url)
        notifier.wake()
        time.sleep(0.5)  # ten poll intervals and a wake-up: time enough for a wrong claim
        [claimed] = store.claim_callbacks(time.time(), 60, 10)  # as another process would
        assert claimed.id == waiting.id
        assert receiver.received == []
        later = finished_job(store, receiver.url)
        wait_for(lambda: receiver.deliveries() == [later.id], timeout=60)


@pytest.mark.docs("python-api.md#gate")
def test_notifier_defaults_and_the_settings_it_refuses() -> None:
    """The documented defaults (5 attempts, 1 s backoff, 10 s per attempt, 8 threads,
    a poll a second); each setting out of its range is one ConfigError."""
    store = MemoryStore()
    notifier = Notifier(store)
    assert (
        notifier.max_attempts,
        notifier.backoff,
        notifier.timeout,
        notifier.workers,
        notifier.poll_interval,
    ) == (5, 1.0, 10.0, 8, 1.0)
    Notifier(store, backoff=0, lease_margin=0)  # no backoff, no margin: allowed
    for bad in (
        {"max_attempts": 0},
        {"workers": 0},
        {"backoff": -0.1},
        {"timeout": 0},
        {"poll_interval": 0},
        {"lease_margin": -1},
    ):
        with pytest.raises(ConfigError) as caught:
            Notifier(store, **bad)
        assert caught.value.message == "callback retry settings must be positive"


class ClosingStore(MemoryStore):
    """A memory store during whose claim the Notifier is closed (from another thread)."""

    notifier: Notifier

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Job]:
        claimed = super().claim_callbacks(now, lease, limit)
        if claimed:
            closer = threading.Thread(target=self.notifier.close)
            closer.start()
            wait_for(lambda: self.notifier._closed)
        return claimed


def test_a_claim_that_returns_after_close_goes_straight_back() -> None:
    """Callbacks claimed while the Notifier closes are not tried: they go back to the
    outbox pending, their attempt not counted, due at once."""
    store = ClosingStore()
    job = finished_job(store, "http://cb.example/hook")
    store.notifier = Notifier(store, allow=["http://cb.example/"], poll_interval=0.05)
    store.notifier.start()
    wait_for(lambda: store.notifier._closed)
    wait_for(lambda: (store.get(job.id).callback or {}).get("attempts") == 0)
    assert store.get(job.id).callback == Delivery("http://cb.example/hook").to_json()
    [again] = store.claim_callbacks(time.time(), 60, 10)
    assert again.id == job.id


class CountingStore(MemoryStore):
    """A memory store that counts outbox claims."""

    claims = 0

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Job]:
        self.claims += 1
        return super().claim_callbacks(now, lease, limit)


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_an_idle_poller_claims_once_per_poll_interval() -> None:
    """With nothing due and nothing finishing, the poller asks the store once per
    ``poll_interval``, not in a loop."""
    store = CountingStore()
    notifier = Notifier(store, allow=["http://cb.example/"], poll_interval=0.1)
    notifier.start()
    started = time.monotonic()
    try:
        time.sleep(1)  # ten intervals: how many claims they hold is the point
    finally:
        notifier.close()
    elapsed = time.monotonic() - started
    assert 1 <= store.claims <= elapsed / 0.1 + 2


@pytest.mark.docs("callbacks.md#retries")
def test_a_claim_that_takes_every_free_thread_is_followed_by_another_at_once(
    receiver: Receiver,
) -> None:
    """When a claim fills every idle thread, more may be due: the poller claims again as
    soon as a thread is free, not a poll interval later."""
    store = MemoryStore()
    jobs = [finished_job(store, receiver.url) for _ in range(3)]
    notifier = Notifier(store, allow=[receiver.base], workers=1, poll_interval=120)
    with running(notifier):
        wait_for(lambda: len(receiver.received) == 3, timeout=60)
    assert sorted(receiver.deliveries()) == sorted(job.id for job in jobs)


class OutageStore(MemoryStore):
    """A memory store whose claims fail or succeed as ``plan`` says, then succeed."""

    def __init__(self, plan: list[bool]) -> None:
        super().__init__()
        self.plan = plan

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Job]:
        if self.plan and not self.plan.pop(0):
            raise StoreUnavailable("the store is unavailable: testing")
        return super().claim_callbacks(now, lease, limit)


def test_the_backoff_starts_again_after_the_store_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A claim that succeeds ends the outage: the next failed claim waits twice the poll
    interval again, not longer."""
    caplog.set_level(logging.WARNING, logger="procgate")
    store = OutageStore([False, False, True, False])
    notifier = Notifier(store, allow=["http://cb.example/"], poll_interval=0.05)
    with running(notifier):
        wait_for(lambda: not store.plan)
        wait_for(lambda: len(caplog.records) == 3)
    assert [record.getMessage().rsplit("again in ", 1)[1] for record in caplog.records] == [
        "0.1 s",
        "0.2 s",
        "0.1 s",
    ]


def test_a_finished_delivery_leaves_the_outbox(receiver: Receiver) -> None:
    """A delivered callback, and one failed for the last time, are taken out of the
    outbox: nothing is due for them, however late another process looks."""
    receiver.codes = [500]
    store = MemoryStore()
    failed = finished_job(store, receiver.url)
    notifier = Notifier(store, allow=[receiver.base], poll_interval=0.05, max_attempts=1)
    with running(notifier):
        wait_for(lambda: (store.get(failed.id).callback or {}).get("status") == "failed")
        delivered = finished_job(store, receiver.url)
        notifier.wake()
        wait_for(lambda: (store.get(delivered.id).callback or {}).get("status") == "delivered")
    assert store.claim_callbacks(time.time() + 10**6, 60, 10) == []


def test_one_poller_however_often_started() -> None:
    """``start`` twice starts one poller, never after ``close``; it is a daemon thread, so
    a Notifier left unclosed never keeps the interpreter from exiting."""

    def pollers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "procgate-callbacks"]

    before = pollers()
    notifier = Notifier(MemoryStore(), allow=["http://cb.example/"], poll_interval=0.05)
    notifier.start()
    with running(notifier):
        started = [t for t in pollers() if t not in before]
        assert len(started) == 1
        assert started[0].daemon
    started[0].join(10)
    notifier.start()
    assert [t for t in pollers() if t not in before and t.is_alive()] == []


@pytest.mark.docs("callbacks.md#the-payload")
def test_the_body_is_compact_ascii_json(receiver: Receiver) -> None:
    """The body is compact JSON (no space after ``,`` or ``:``) with non-ASCII escaped; a
    job made in Python, which no client saw, has an empty ``url``."""
    store = MemoryStore()
    finished_job(store, receiver.url, context={"name": "Zoë", "n": [1, 2]})
    notifier = Notifier(store, allow=[receiver.base], poll_interval=0.05)
    with running(notifier):
        wait_for(lambda: receiver.received)
    [(_, _, body)] = receiver.received
    payload = json.loads(body)
    assert body == json.dumps(payload, separators=(",", ":")).encode()
    assert b'"context":{"name":"Zo\\u00eb","n":[1,2]}' in body
    assert payload["url"] == ""


@pytest.mark.docs("callbacks.md#configuration")
def test_no_poller_without_callback_allow(receiver: Receiver) -> None:
    """A Gate without callback_allow starts no callback thread; one with it does, and
    stops it when closed."""

    def pollers() -> int:
        return sum(t.name == "procgate-callbacks" for t in threading.enumerate())

    before = pollers()
    plain = Gate()
    assert pollers() == before
    plain.close()
    gate = make_gate(receiver)
    assert pollers() == before + 1
    gate.close()
    assert pollers() == before


def test_finishing_here_wakes_the_poller(receiver: Receiver) -> None:
    """A job finished by this process has its callback claimed at once, not at the next
    poll (a second later)."""
    gate = make_gate(receiver)
    gate.notifier.poll_interval = 5
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"callback_url": receiver.url, "wait": True})
        finished = time.monotonic()
        wait_for(lambda: receiver.received, interval=0.005)
        delay = time.monotonic() - finished
        assert settled(client, job.json["id"])["status"] == "delivered"
    finally:
        gate.close()
    assert delay < 0.5


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_an_attempt_whose_process_died_counts(receiver: Receiver) -> None:
    """A claim whose process died without recording (its lease ran out) used up its
    attempt: past callback_attempts the callback is failed, and nothing is sent."""
    store = MemoryStore()
    job = finished_job(store, receiver.url)
    [claimed] = store.claim_callbacks(time.time(), 0, 10)  # then "killed": no record
    notifier = Notifier(store, allow=[receiver.base], max_attempts=1, poll_interval=0.05)
    with running(notifier):
        wait_for(lambda: (store.get(job.id).callback or {}).get("status") == "failed")
    assert claimed.callback is not None
    assert claimed.callback["attempts"] == 1
    assert store.get(job.id).callback == {
        "url": receiver.url,
        "status": "failed",
        "attempts": 2,
        "last_status": None,
        "last_error": "the last attempt did not end",
    }
    assert receiver.received == []


class FlakyStore(MemoryStore):
    """A memory store whose outbox calls fail (StoreUnavailable) a set number of times."""

    def __init__(self, claims: int, records: int) -> None:
        super().__init__()
        self.failures = {"claim": claims, "record": records}
        self.claimed_at: list[float] = []  # time.monotonic() of each claim, failed or not

    def _fail(self, what: str) -> None:
        if self.failures[what] > 0:
            self.failures[what] -= 1
            raise StoreUnavailable("the store is unavailable: testing")

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Job]:
        self.claimed_at.append(time.monotonic())
        self._fail("claim")
        return super().claim_callbacks(now, lease, limit)

    def set_callback(
        self, job_id: str, state: Any, *, attempt: int, retry_at: float | None = None
    ) -> bool:
        self._fail("record")
        return super().set_callback(job_id, state, attempt=attempt, retry_at=retry_at)


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_a_store_outage_delays_delivery_and_never_stops_it(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Claims that fail are retried with backoff; an attempt whose result could not be
    recorded is made again when its lease ends: delivered at least once, same id. Each
    failed store call is one warning on the ``procgate`` logger, naming the job and the
    store's error, and a failed claim the wait before the next (doubling from twice
    ``poll_interval``)."""
    caplog.set_level(logging.WARNING, logger="procgate")
    store = FlakyStore(claims=3, records=1)
    job = finished_job(store, receiver.url)
    notifier = Notifier(
        store, allow=[receiver.base], timeout=1, poll_interval=0.05, lease_margin=0.2
    )
    notifier.start()
    delivered = threading.Event()

    def wake_often() -> None:  # as finishing jobs would: no claim before the backoff ends
        while not delivered.wait(0.01):
            notifier.wake()

    waker = threading.Thread(target=wake_often)
    waker.start()
    try:
        wait_for(lambda: (store.get(job.id).callback or {}).get("status") == "delivered")
    finally:
        delivered.set()
        waker.join()
        notifier.close()
    assert store.failures == {"claim": 0, "record": 0}
    first, second, third, fourth = store.claimed_at[:4]
    assert second - first >= 0.1
    assert third - second >= 0.2
    assert fourth - third >= 0.4
    error = "the store is unavailable: testing"
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("procgate", "WARNING", f"cannot claim callbacks ({error}); again in 0.1 s"),
        ("procgate", "WARNING", f"cannot claim callbacks ({error}); again in 0.2 s"),
        ("procgate", "WARNING", f"cannot claim callbacks ({error}); again in 0.4 s"),
        ("procgate", "WARNING", f"could not record the callback of job {job.id} ({error})"),
    ]
    assert receiver.deliveries() == [job.id, job.id]
    assert store.get(job.id).callback == {
        "url": receiver.url,
        "status": "delivered",
        "attempts": 2,
        "last_status": 200,
        "last_error": None,
    }


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``shared_store()`` opens the same persistent data each time it is called."""
    prefix = f"test-{uuid.uuid4().hex}:"
    opened: list[JobStore] = []

    def make() -> JobStore:
        store: JobStore
        if request.param == "sqlite":
            store = SQLiteStore(str(tmp_path / "jobs.db"))
        else:
            from procgate.stores.redis import RedisStore

            store = RedisStore(request.getfixturevalue("redis_url"), prefix=prefix)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.mark.docs("callbacks.md#durability-and-repeats")
def test_a_pending_callback_outlives_its_gate(receiver: Receiver, shared_store: Any) -> None:
    """A callback still pending when its Gate closes (the receiver was down) is delivered
    by the next Gate on the same store, with the same delivery id and body."""
    receiver.code = 503
    gate = make_gate(receiver, store=shared_store(), callback_backoff=0.2, callback_attempts=20)
    client = Client(gate)
    try:
        job = client.post("/commands/echo", json={"args": ["kept"], "callback_url": receiver.url})
        job_id = job.json["id"]
        # The claim counts an attempt before its POST is made; wait for the answer.
        wait_for(lambda: callback(client, job_id)["last_status"] == 503)
    finally:
        gate.close()
    store = shared_store()
    assert (store.get(job_id).callback or {})["status"] == "pending"
    receiver.code = 200
    later = make_gate(receiver, store=shared_store())
    try:
        state = settled(Client(later), job_id)
    finally:
        later.close()
    assert (state["status"], state["last_status"]) == ("delivered", 200)
    assert len(receiver.received) >= 2
    assert set(receiver.deliveries()) == {job_id}
    assert len({body for _, _, body in receiver.received}) == 1
    assert json.loads(receiver.received[-1][2])["stdout"] == "kept\n"


SERVER_CONFIG = """
[store]
url = "sqlite:///jobs.db"
[gate]
callback_allow = ["{base}"]
callback_backoff = 0.3
callback_attempts = 50
callback_timeout = 2
[runner]
kind = "thread"
[commands.echo]
argv = ["echo"]
[commands.sleep]
argv = ["sleep"]
kill_grace = 1
"""


def _sleep_argument() -> str:
    """The argument of the job left running when the server is killed (found and ended by
    the restarted server): 31.x seconds, x unique to this test run, so that another run on
    the machine (two suites at once) has its own and neither kills the other's leftover."""
    return f"31.{uuid.uuid4().int % 10**12:012d}"


def _end_leftover_sleeps(seconds: str) -> None:
    """Kill the ``sleep seconds`` a SIGKILLed server left behind (its own session)."""
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
            if os.path.basename(argv[0]) == b"sleep" and argv[1:2] == [seconds.encode()]:
                os.kill(int(entry), signal.SIGKILL)


@pytest.mark.docs("security.md#failure-modes", "callbacks.md#durability-and-repeats")
def test_callbacks_survive_a_killed_server(receiver: Receiver, tmp_path: Path) -> None:
    """SIGKILL ``procgate serve`` while a finished job's callback is pending (its receiver
    down) and a job with a callback runs: the restarted server delivers both, the running
    one as ``lost`` by the sweep, each with one delivery id on every attempt."""
    receiver.code = 503
    config = SERVER_CONFIG.format(base=receiver.base)
    seconds = _sleep_argument()

    def state(job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = server.json("GET", f"/jobs/{job_id}")[1]
        return job

    server = start_server(tmp_path, config, "--workers", "2")
    try:
        body = {"args": ["kept"], "callback_url": receiver.url, "wait": True}
        done = server.json("POST", "/commands/echo", body)[1]["id"]
        running = server.json(
            "POST", "/commands/sleep", {"args": [seconds], "callback_url": receiver.url}
        )[1]["id"]
        wait_for(lambda: state(done)["callback"]["last_status"] == 503)  # tried, refused
        wait_for(lambda: state(running)["status"] == "running")
    finally:
        server.crash()
    receiver.code = 200
    try:
        server = start_server(tmp_path, config, "--workers", "2", name="again")
        try:
            wait_for(lambda: state(done)["callback"]["status"] == "delivered", timeout=20)
            wait_for(lambda: state(running)["callback"]["status"] == "delivered", timeout=20)
        finally:
            server.stop()
    finally:
        _end_leftover_sleeps(seconds)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for _, headers, raw in receiver.received:
        by_id.setdefault(headers["X-Procgate-Delivery"], []).append(json.loads(raw))
    assert set(by_id) == {done, running}
    assert len(by_id[done]) >= 2  # refused before the kill, delivered after
    assert {payload["id"] for payload in by_id[done]} == {done}
    assert by_id[running][-1]["status"] == "lost"


def test_a_claim_taken_as_the_notifier_closes_goes_back_untried() -> None:
    """A callback claimed just before the Notifier closes is not tried: it goes back to
    the outbox pending, its attempt not counted, due at once for another process."""
    store = MemoryStore()
    notifier = Notifier(store, allow=["http://cb.example/"], backoff=10, max_attempts=4)
    url = "http://cb.example/hook"
    job = finished_job(store, url)
    lease = notifier.timeout + notifier.lease_margin
    [claimed] = store.claim_callbacks(time.time(), lease, 10)
    assert claimed.callback is not None
    assert claimed.callback["attempts"] == 1
    notifier.close()
    notifier._deliver(claimed)
    assert store.get(job.id).callback == Delivery(url).to_json()  # pending, 0 attempts
    [again] = store.claim_callbacks(time.time(), lease, 10)
    assert again.id == job.id


class BrokenStore(MemoryStore):
    """A memory store whose outbox claims fail with an error that is not procgate's."""

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Job]:
        raise RuntimeError("a bug in the store")


def test_a_claim_that_raises_an_unexpected_error_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error that is not a store outage (a bug) is logged with its traceback, and the
    poller backs off and goes on claiming as it does for an outage."""
    caplog.set_level(logging.WARNING, logger="procgate")
    store = BrokenStore()
    notifier = Notifier(store, allow=["http://cb.example/"], poll_interval=0.05)
    with running(notifier):
        wait_for(lambda: len(caplog.records) >= 2)
    first, second = caplog.records[:2]
    assert (first.levelname, first.getMessage()) == (
        "ERROR",
        "cannot claim callbacks; again in 0.1 s",
    )
    assert first.exc_info is not None
    assert str(first.exc_info[1]) == "a bug in the store"
    assert second.getMessage() == "cannot claim callbacks; again in 0.2 s"


def test_a_claim_that_cannot_be_handed_back_is_logged_and_left_to_its_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A claim the closing Notifier cannot hand back (its store is down) is one warning
    naming the job; the claim stays as it was, leased, for another process to retry."""
    caplog.set_level(logging.WARNING, logger="procgate")
    store = FlakyStore(claims=0, records=1)
    notifier = Notifier(store, allow=["http://cb.example/"])
    job = finished_job(store, "http://cb.example/hook")
    [claimed] = store.claim_callbacks(time.time(), notifier.timeout + notifier.lease_margin, 10)
    notifier.close()
    notifier._deliver(claimed)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"could not hand back the callback of job {job.id} (the store is unavailable: testing)",
        )
    ]
    assert store.get(job.id).callback == {
        **Delivery("http://cb.example/hook").to_json(),
        "attempts": 1,
    }
    assert store.claim_callbacks(time.time(), 60, 10) == []  # still leased


def test_a_bug_in_a_delivery_is_logged_and_the_worker_goes_on(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception out of one delivery (a bug of procgate's) is logged with the job's id
    and its traceback; the worker thread delivers the next callback."""
    caplog.set_level(logging.WARNING, logger="procgate")
    store = MemoryStore()
    notifier = Notifier(store, allow=[receiver.base], poll_interval=0.05, workers=1)
    deliver = notifier._deliver
    broken = finished_job(store, receiver.url)

    def buggy(job: Job) -> None:
        if job.id == broken.id:
            raise ValueError("a bug in delivery")
        deliver(job)

    monkeypatch.setattr(notifier, "_deliver", buggy)
    with running(notifier):
        wait_for(lambda: caplog.records)
        fine = finished_job(store, receiver.url)
        notifier.wake()
        wait_for(lambda: receiver.deliveries() == [fine.id])
    [record] = caplog.records
    assert (record.levelname, record.getMessage()) == (
        "ERROR",
        f"callback of job {broken.id} failed inside procgate",
    )
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "a bug in delivery"


def test_a_callback_record_without_its_counters_is_pending_and_untried() -> None:
    """The callback state stored with a job reads back field by field; a record with only
    its ``url`` (as first stored) is a pending callback with no attempt yet."""
    full = {
        "url": "http://cb.example/a",
        "status": "failed",
        "attempts": 3,
        "last_status": 500,
        "last_error": "HTTP 500",
    }
    assert Delivery.from_json(full).to_json() == full
    assert Delivery.from_json({"url": "http://cb.example/a"}) == Delivery(
        "http://cb.example/a", "pending", 0, None, None
    )


def test_failed_attempts_are_retried_on_the_backoff_schedule(
    monkeypatch: pytest.MonkeyPatch, time_machine: time_machine.TimeMachineFixture
) -> None:
    """Failed attempt n is due again backoff * 2 ** (n - 1) seconds later (10, 20, 40 s
    here), and the last of max_attempts is final. On a stopped clock, with every POST
    answered 500: nothing is due 0.01 s before each retry, the callback is 0.01 s after."""
    time_machine.move_to(time.time(), tick=False)
    store = MemoryStore()
    notifier = Notifier(store, allow=["http://cb.example/"], backoff=10, max_attempts=4)
    monkeypatch.setattr(notifier, "_post", lambda url, body, delivery, extra=None: 500)
    url = "http://cb.example/hook"
    state = {"url": url, "status": "pending", "attempts": 0, "last_status": None}
    job = finished_job(store, url)
    lease = notifier.timeout + notifier.lease_margin
    for attempt, delay in ((1, 10), (2, 20), (3, 40)):
        [claimed] = store.claim_callbacks(time.time(), lease, 10)
        notifier._deliver(claimed)
        assert store.get(job.id).callback == {
            **state,
            "attempts": attempt,
            "last_status": 500,
            "last_error": "HTTP 500",
        }
        time_machine.shift(delay - 0.01)
        assert store.claim_callbacks(time.time(), lease, 10) == []
        time_machine.shift(0.02)
    [claimed] = store.claim_callbacks(time.time(), lease, 10)
    notifier._deliver(claimed)
    assert store.get(job.id).callback == {
        **state,
        "status": "failed",
        "attempts": 4,
        "last_status": 500,
        "last_error": "HTTP 500",
    }
    time_machine.shift(10**6)
    assert store.claim_callbacks(time.time(), lease, 10) == []


@pytest.mark.docs("callbacks.md#the-request", "callbacks.md#retries")
def test_https_callbacks_check_the_receivers_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``https`` callback goes over TLS and checks the receiver's certificate against
    the system's trusted CAs (``SSL_CERT_FILE`` here): a certificate from an unknown CA is
    a failed attempt naming the check; once the CA is trusted, the callback is delivered."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/hook"

    def deliver() -> dict[str, Any]:
        gate = Gate(
            runner=ThreadRunner(),
            callback_allow=[url.rsplit("/", 1)[0] + "/"],
            callback_attempts=1,
        )
        gate.register("echo", ["echo"])
        client = Client(gate)
        try:
            job = client.post("/commands/echo", json={"args": ["tls"], "callback_url": url})
            return settled(client, job.json["id"], timeout=30)
        finally:
            gate.close()

    try:
        refused = deliver()
        assert refused["status"] == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in refused["last_error"]
        assert received == []
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        delivered = deliver()
        assert (delivered["status"], delivered["last_status"]) == ("delivered", 204)
        assert json.loads(received[0])["stdout"] == "tls\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.docs("callbacks.md#retries", "callbacks.md#durability-and-repeats")
def test_an_attempt_that_never_recorded_its_end_counts_against_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim past max_attempts (the process making the last attempt died before it
    recorded the result) ends the callback failed without another POST, keeping what
    the last recorded attempt said, or saying that the last attempt did not end."""
    url = "http://cb.example/hook"
    for last_status, last_error, said in ((500, "HTTP 500", "HTTP 500"), (None, None, None)):
        store = MemoryStore()
        notifier = Notifier(store, allow=["http://cb.example/"], max_attempts=2)
        posts: list[str] = []
        monkeypatch.setattr(
            notifier, "_post", lambda u, body, d, extra=None, posts=posts: posts.append(u) or 200
        )
        lease = notifier.timeout + notifier.lease_margin
        job = finished_job(store, url)
        [claimed] = store.claim_callbacks(time.time(), lease, 10)
        state = {**(claimed.callback or {}), "last_status": last_status, "last_error": last_error}
        assert store.set_callback(job.id, state, attempt=1, retry_at=time.time())
        later = time.time()
        for _ in range(2):  # attempt 2 claimed and never recorded; then attempt 3
            later += lease + 1  # its lease ran out
            [claimed] = store.claim_callbacks(later, lease, 10)
        assert (claimed.callback or {})["attempts"] == 3
        notifier._deliver(claimed)
        assert posts == []
        assert store.get(job.id).callback == {
            "url": url,
            "status": "failed",
            "attempts": 3,
            "last_status": last_status,
            "last_error": said or "the last attempt did not end",
        }


@pytest.mark.parametrize(
    ("url", "port", "tls"),
    [
        ("http://127.0.0.1/hooks/", 80, False),
        ("https://127.0.0.1/hooks/", 443, True),
        ("http://127.0.0.1:9000/hooks/", 9000, False),
        ("https://127.0.0.1:9443/hooks/", 9443, True),
    ],
)
@pytest.mark.docs("callbacks.md#the-url-rules")
def test_a_url_without_a_port_goes_to_its_schemes_port(
    monkeypatch: pytest.MonkeyPatch, url: str, port: int, tls: bool
) -> None:
    """http:// goes to port 80 and https:// to 443 (over TLS) unless the URL names one.
    The connection is recorded instead of opened: nothing listens on 80 or 443 here."""
    opened: list[tuple[str, int, bool]] = []

    class Recorder:
        def __init__(self, host: str, port: int, deadline: float, tls: object) -> None:
            opened.append((host, port, tls is not None))

        def post(self, target: str, body: bytes, headers: dict[str, str]) -> int:
            return 204

    monkeypatch.setattr(callbacks_module, "Connection", Recorder)
    notifier = Notifier(MemoryStore(), allow=[url])
    try:
        assert notifier._post(url, b"{}", "delivery-1") == 204
    finally:
        notifier.close()
    assert opened == [("127.0.0.1", port, tls)]
