"""A real server stopped or killed while clients wait on it: nothing stuck, nothing left.

Whatever the signal, after a restart no job may be ``queued`` or ``running`` and no child
of the old server may still run; a waiting client gets an answer or a closed connection,
never a hang.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import live_pids_in_group, wait_for
from tests.servers import Server, start_server

CONFIG = """
[runner]
kind = "thread"
heartbeat = 0.5
[commands.sh]
shell = true
argv = 'eval "$1"'
timeout = 300
kill_grace = 1
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_server_stopped_mid_wait_leaves_nothing_behind(
    tmp_path: Path, servers: list[Server], signum: signal.Signals
) -> None:
    """Five `sleep 300` jobs (each a tree: a shell and its sleep) and a long-poll on one
    of them; the server gets SIGTERM or SIGKILL. The long-poll is answered or cut, not
    left hanging; after a restart every job is finished (cancelled or lost, never
    running), and none of the ten processes is alive."""
    config = f'[store]\nurl = "sqlite:///{tmp_path}/jobs.db"\n' + CONFIG
    server = start_server(tmp_path, config, "--workers", "2")
    servers.append(server)
    jobs = [
        server.json("POST", "/commands/sh", {"args": ["echo $$; sleep 300 & wait"]})[1]["id"]
        for _ in range(5)
    ]
    wait_for(lambda: all(server.json("GET", f"/jobs/{j}")[1]["stdout"] for j in jobs), timeout=30)
    groups = [int(server.json("GET", f"/jobs/{j}")[1]["stdout"]) for j in jobs]
    answered: list[object] = []
    sent = threading.Event()

    def long_poll() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            conn.request("GET", f"/jobs/{jobs[0]}?wait=100")
            sent.set()
            response = conn.getresponse()
            answered.append((response.status, json.loads(response.read())))
        except (OSError, http.client.HTTPException) as exc:
            answered.append(exc)  # the connection was cut: an answer too
        finally:
            conn.close()

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    assert sent.wait(30)
    try:
        if signum is signal.SIGKILL:
            server.crash()
        else:
            server.proc.send_signal(signum)
            server.proc.wait(90)
        waiter.join(120)
        assert not waiter.is_alive(), "the long-poll hangs"
        assert answered
        again = start_server(tmp_path, config, "--workers", "1", name="again")
        servers.append(again)
        wait_for(lambda: again.json("GET", "/jobs?status=running")[1]["jobs"] == [], timeout=30)
        assert again.json("GET", "/jobs?status=queued")[1]["jobs"] == []
        for job_id in jobs:
            _, job = again.json("GET", f"/jobs/{job_id}")
            assert job["status"] in ("cancelled", "lost"), job
        for group in groups:
            wait_for(lambda group=group: not live_pids_in_group(group), timeout=30)
    finally:
        for group in groups:  # should the checks above fail, leave nothing behind
            for pid in live_pids_in_group(group):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
