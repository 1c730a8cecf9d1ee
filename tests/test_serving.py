"""``procgate serve`` under hostile load, on a real server: slow clients, parked
long-polls, and requests the HTTP layer cannot parse."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, start_server

CONFIG = """
[store]
url = "sqlite:///{directory}/jobs.db"
[commands.echo]
argv = ["echo"]
[commands.sleep]
argv = ["sleep"]
"""

#: How fast /health must answer while the server is under attack.
HEALTHY = 1.0


@pytest.fixture(params=["granian", "gunicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, servers: list[Server]
) -> Server:
    started = start_server(
        tmp_path, CONFIG.format(directory=tmp_path), "--engine", request.param
    )
    servers.append(started)
    return started


def timed_health(server: Server) -> float:
    begun = time.monotonic()
    status, _, _ = server.request("GET", "/health")
    assert status == 200
    return time.monotonic() - begun


def raw(server: Server, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` as is; what came back until the server closed or went quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer, and close, mid-request
            sock.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            sock.settimeout(2)
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and _complete(received):
                    break
    return received


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_and_json(response: bytes) -> tuple[int, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {
        line.partition(b":")[0].strip().lower(): line.partition(b":")[2].strip()
        for line in head.split(b"\r\n")[1:]
    }
    assert headers[b"content-type"] == b"application/json", response
    return status, json.loads(body)


@contextlib.contextmanager
def trickling(server: Server, heads: list[bytes], every: float) -> Iterator[None]:
    """Connections that send ``heads`` and then one byte every ``every`` seconds."""
    sockets: list[socket.socket] = []
    stop = threading.Event()
    for head in heads:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(head)
        sockets.append(sock)

    def drip() -> None:
        while not stop.wait(every):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"x")

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        yield
    finally:
        stop.set()
        dripper.join(30)
        for sock in sockets:
            sock.close()


@pytest.mark.docs("deploy-granian.md#slow-clients")
def test_slow_clients_do_not_take_the_server_down(tmp_path: Path, servers: list[Server]) -> None:
    """On granian (the default engine), 300 sockets sending their headers a line at a
    time and 100 POSTs trickling their bodies (a byte every 2 s, no token needed):
    /health still answers within a second, and reads of the API work, all through.
    (gunicorn reads request heads on its Python threads: docs/deploy-gunicorn.md says to
    put a buffering proxy in front of it.)"""
    server = start_server(tmp_path, CONFIG.format(directory=tmp_path))
    servers.append(server)
    slow_heads = [b"GET /health HTTP/1.1\r\nHost: x\r\n"] * 300
    slow_bodies = [
        b"POST /commands/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    ] * 100
    with trickling(server, slow_heads + slow_bodies, every=2.0):
        time.sleep(1)
        worst = max(timed_health(server) for _ in range(10))
        assert worst < HEALTHY
        status, listed = server.json("GET", "/jobs")
        assert status == 200
        assert listed["jobs"] == []


@pytest.mark.docs("deploy-granian.md#waiting")
def test_parked_long_polls_do_not_starve_the_server(server: Server) -> None:
    """200 long-polls of one running job: past the waiting budget they are answered at
    once (the job as it stands, Retry-After: 1); /health answers within a second and a
    new `"wait": true` echo completes at once. Cancelling the job answers the parked ones."""
    status, job = server.json("POST", "/commands/sleep", {"args": ["60"]})
    assert status == 202
    answers: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()

    def long_poll() -> None:
        begun = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            conn.request("GET", f"/jobs/{job['id']}?wait=60")
            response = conn.getresponse()
            response.read()
            with lock:
                answers.append(
                    (response.status, response.getheader("Retry-After"), time.monotonic() - begun)
                )
        finally:
            conn.close()

    threads = [threading.Thread(target=long_poll) for _ in range(200)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    assert max(timed_health(server) for _ in range(5)) < HEALTHY
    begun = time.monotonic()
    status, echoed = server.json("POST", "/commands/echo", {"args": ["now"], "wait": True})
    assert time.monotonic() - begun < HEALTHY
    assert (status, echoed["stdout"]) == (200, "now\n")
    with lock:
        early = list(answers)
    assert len(early) >= 200 - 2 * 4  # two workers, each with 8 threads: 4 may wait
    assert all(status == 200 for status, _, _ in early)
    assert all(retry_after == "1" for _, retry_after, _ in early)
    server.request("DELETE", f"/jobs/{job['id']}")
    for thread in threads:
        thread.join(120)
    assert len(answers) == 200


@pytest.mark.docs("deploy-granian.md#errors")
def test_requests_that_reach_the_app_get_json_errors(server: Server) -> None:
    """A 10,000-character path, a lower-case method, and Content-Length together with
    Transfer-Encoding: each answer is JSON, whichever engine parsed it."""
    status, body = status_and_json(
        raw(server, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    assert status == 414
    assert body["error"]["code"] in ("uri_too_long", "request_uri_too_long")  # type: ignore[index]
    status, body = status_and_json(raw(server, b"get /health HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 400
    assert body["error"]["code"] in ("invalid_method", "bad_request")  # type: ignore[index]
    smuggled = (
        b"POST /commands/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"11\r\n{\"args\": [\"te\"]}\r\n0\r\n\r\n"
    )
    status, body = status_and_json(raw(server, smuggled))
    assert status in (200, 202, 400, 501)
    if status >= 400:
        assert "error" in body  # type: ignore[operator]


@pytest.mark.docs("deploy-granian.md#errors")
def test_what_granian_answers_on_its_own(tmp_path: Path, servers: list[Server]) -> None:
    """A request granian cannot parse never reaches the app: a malformed header line is
    400 and headers past its buffer 431, each with an empty body and the connection
    closed, as docs/deploy-granian.md says."""
    server = start_server(tmp_path, CONFIG.format(directory=tmp_path))
    servers.append(server)
    for request, status in (
        (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 2_000_000 + b"\r\n\r\n", b"431"),
    ):
        response = raw(server, request)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status
        assert b"connection: close" in head.lower()
        assert body == b""
