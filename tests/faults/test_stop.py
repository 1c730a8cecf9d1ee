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
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import live_pids_in_group, wait_for
from tests.servers import Server, free_port, start_server

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


#: Longest a SIGTERM'd server may take to exit: the commands' kill_grace (1 s), and a few
#: seconds for the workers and the master (measured: under a second, idle).
STOP_WITHIN = 1 + 5


@pytest.mark.docs("deploy-granian.md#stopping")
@pytest.mark.parametrize("engine", ["granian", "gunicorn"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_server_stopped_mid_wait_leaves_nothing_behind(
    tmp_path: Path, servers: list[Server], signum: signal.Signals, engine: str
) -> None:
    """Five `sleep 300` jobs (each a tree: a shell and its sleep) and a long-poll on one
    of them; the server gets SIGTERM or SIGKILL. SIGTERM is a graceful stop: the server
    exits within kill_grace and a few seconds, the long-poll is answered with its job
    cancelled, and after a restart every job is `cancelled`. SIGKILL cuts the long-poll,
    and a restart finds the jobs `lost`. Either way none of the ten processes lives on."""
    config = f'[store]\nurl = "sqlite:///{tmp_path}/jobs.db"\n' + CONFIG
    server = start_server(tmp_path, config, "--workers", "2", "--engine", engine)
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
    time.sleep(0.5)  # the long-poll is parked in the server
    try:
        begun = time.monotonic()
        if signum is signal.SIGKILL:
            server.crash()
        else:
            server.proc.send_signal(signum)
            server.proc.wait(90)
            assert time.monotonic() - begun < STOP_WITHIN
        waiter.join(120)
        assert not waiter.is_alive(), "the long-poll hangs"
        assert answered
        if signum is signal.SIGTERM:
            status, job = answered[0]  # type: ignore[misc]
            assert status == 200
            assert job["status"] == "cancelled", job
            # the audit lines of the stop were written before the workers exited
            audit = [line for line in server.log.read_text().splitlines() if '"event"' in line]
            assert sum('"event": "cancelled"' in line for line in audit) == 5
        again = start_server(tmp_path, config, "--workers", "1", name="again")
        servers.append(again)
        wait_for(lambda: again.json("GET", "/jobs?status=running")[1]["jobs"] == [], timeout=30)
        assert again.json("GET", "/jobs?status=queued")[1]["jobs"] == []
        ended = "cancelled" if signum is signal.SIGTERM else "lost"
        for job_id in jobs:
            _, job = again.json("GET", f"/jobs/{job_id}")
            assert job["status"] == ended, job
        for group in groups:
            wait_for(lambda group=group: not live_pids_in_group(group), timeout=30)
    finally:
        for group in groups:  # should the checks above fail, leave nothing behind
            for pid in live_pids_in_group(group):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


#: ``procgate serve`` of the config file argv[1] on port argv[2], one worker, with a
#: ``post_fork`` hook that touches the file argv[3] and holds the new worker there for
#: two seconds: after its fork, before it has set its own signal handlers.
SLOW_FORK = """
import sys, time
from pathlib import Path
from procgate._server import Server

def post_fork(server, worker):
    Path(sys.argv[3]).touch()
    time.sleep(2)

settings = {"bind": "127.0.0.1:" + sys.argv[2], "workers": 1, "threads": 2,
            "graceful_timeout": 30, "post_fork": post_fork, "errorlog": "-"}
Server(sys.argv[1], settings).run()
"""

#: How long that stop may take: the two seconds of the hook, a worker's boot and exit
#: (about 1 s measured on 2 loaded cores), doubled and rounded up; a lost stop takes the
#: graceful timeout (30 s), when the master kills the worker.
SLOW_FORK_STOP = 8.0


@pytest.mark.docs("deploy-gunicorn.md#settings-that-matter")
def test_a_stop_that_comes_while_a_worker_boots_is_not_lost(tmp_path: Path) -> None:
    """SIGTERM while a new worker is between its fork and its own signal handlers (a
    window of microseconds, held open here by a hook): the worker still gets the stop,
    and the server exits within seconds, not at the graceful timeout."""
    config = tmp_path / "procgate.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/jobs.db"\n' + CONFIG)
    forked, log = tmp_path / "forked", tmp_path / "server.log"
    argv = [sys.executable, "-c", SLOW_FORK, str(config), str(free_port()), str(forked)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(forked.exists, timeout=60)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        took = time.monotonic() - started
        assert proc.returncode == 0, log.read_text()
        assert took < SLOW_FORK_STOP, f"the stop took {took:.1f} s:\n{log.read_text()}"
        assert "Worker exiting" in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
