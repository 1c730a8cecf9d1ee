"""Every engine serves the whole API: granian and gunicorn under ``procgate serve``, and
the Gate mounted under uWSGI (Debian's uwsgi with its python3 plugin, as a user would run
it): a sync job, a long-poll, output followed live, Server-Sent Events, a cancel."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import procgate
from tests.servers import Server, free_port, serving, start_server

CONFIG = """
[store]
url = "sqlite:///{directory}/jobs.db"
[commands.echo]
argv = ["echo"]
[commands.ticks]
shell = true
argv = 'for i in 1 2 3; do echo tick $i; sleep 0.5; done'
[commands.sleep]
argv = ["sleep"]
"""

APP = """
from procgate import create_app

application = create_app({config!r})
"""


def uwsgi_server(directory: Path, config: str) -> Server:
    """The Gate under uWSGI: 2 processes x 8 threads, each process loading its own Gate."""
    uwsgi = shutil.which("uwsgi")
    assert uwsgi is not None, "uwsgi is not installed: apt-get install uwsgi-plugin-python3"
    path = directory / "uwsgi.toml"
    path.write_text(config)
    (directory / "uwsgi_app.py").write_text(APP.format(config=str(path)))
    port = free_port()
    log = directory / "uwsgi.log"
    source = str(Path(procgate.__file__).parent.parent)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                uwsgi,
                "--plugin",
                "python3",
                "--http-socket",
                f"127.0.0.1:{port}",
                "--master",
                "--processes",
                "2",
                "--threads",
                "8",
                "--lazy-apps",  # each process builds its Gate after the fork
                "--die-on-term",
                "--need-app",
                "--pythonpath",
                source,
                "--pythonpath",
                sysconfig.get_paths()["purelib"],
                "--chdir",
                str(directory),
                "--wsgi-file",
                str(directory / "uwsgi_app.py"),
                "--callable",
                "application",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return serving(Server(proc, port, log))


@pytest.fixture(params=["granian", "gunicorn", "uwsgi"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, servers: list[Server]
) -> Server:
    config = CONFIG.format(directory=tmp_path)
    if request.param == "uwsgi":
        started = uwsgi_server(tmp_path, config)
    else:
        started = start_server(tmp_path, config, "--engine", request.param)
    servers.append(started)
    return started


def test_sync_and_long_poll(server: Server) -> None:
    status, job = server.json("POST", "/commands/echo", {"args": ["hi"], "wait": True})
    assert (status, job["stdout"]) == (200, "hi\n")
    status, job = server.json("POST", "/commands/sleep", {"args": ["1"]})
    assert status == 202
    begun = time.monotonic()
    status, done = server.json("GET", f"/jobs/{job['id']}?wait=30")
    assert (status, done["status"]) == (200, "succeeded")
    assert 0.5 < time.monotonic() - begun < 20


def _stream(server: Server, path: str) -> Iterator[tuple[float, bytes]]:
    """The response body of ``path`` as it comes: (seconds since the request, chunk)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        begun = time.monotonic()
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        while chunk := response.read1(65536):
            yield time.monotonic() - begun, chunk
    finally:
        conn.close()


def test_output_is_followed_live(server: Server) -> None:
    """The first tick arrives while the job still runs (about 1 s before its end)."""
    _, job = server.json("POST", "/commands/ticks", {})
    chunks = list(_stream(server, f"/jobs/{job['id']}/stdout?follow=1"))
    data = b"".join(chunk for _, chunk in chunks)
    assert data == b"tick 1\ntick 2\ntick 3\n"
    first = next(at for at, chunk in chunks if b"tick 1" in chunk)
    last = chunks[-1][0]
    assert last - first > 0.5


def test_events_stream_live_and_end(server: Server) -> None:
    _, job = server.json("POST", "/commands/ticks", {})
    chunks = list(_stream(server, f"/jobs/{job['id']}/events"))
    text = b"".join(chunk for _, chunk in chunks).decode()
    assert "tick 1" in text
    assert "event: end" in text
    first = next(at for at, chunk in chunks if b"tick 1" in chunk)
    assert chunks[-1][0] - first > 0.5


def test_cancel_answers_the_waiter(server: Server) -> None:
    _, job = server.json("POST", "/commands/sleep", {"args": ["60"]})
    status, _, _ = server.request("DELETE", f"/jobs/{job['id']}")
    assert status == 202
    status, done = server.json("GET", f"/jobs/{job['id']}?wait=30")
    assert done["status"] == "cancelled"
