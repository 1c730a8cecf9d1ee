"""stores.md: the opening snippet, Redis options, a killed server's lost job."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from procgate import open_store
from tests.conftest import wait_for
from tests.docs_examples.blocks import ROOT, example_block
from tests.docs_examples.runner import Pages, run_block, run_examples
from tests.servers import free_port, start_server


def test_stores_opening_snippet(pages: Pages) -> None:
    """A job written to a SQLite file is read back by another Gate on the same file."""
    run_examples(pages, "stores.md")


@pytest.mark.docs("stores.md#options")
def test_stores_redis_options(pages: Pages, tmp_path: Path) -> None:
    """Both ways the page opens a Redis store connect: a URL with a prefix and a ttl, and
    a ready client on a Unix socket. The page's 127.0.0.1:6379 and /run/redis.sock are a
    redis-server of this test's own, on a free port and a socket in its directory."""
    port = free_port()
    socket = tmp_path / "redis.sock"
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is not installed: apt-get install -y redis-server"
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*argv, "--unixsocket", str(socket), "--dir", str(tmp_path), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(socket.exists, timeout=20)
        page = replace(
            pages.get("stores.md"),
            addresses={"127.0.0.1:6379": f"127.0.0.1:{port}", "/run/redis.sock": str(socket)},
        )
        run_block(example_block("stores.md#options", 0), page)
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.docs("stores.md#restart-recovery-and-the-lost-status")
def test_stores_lost_after_kill(pages: Pages, tmp_path: Path) -> None:
    """A server SIGKILLed while it runs ``sleep 300``, then restarted on the same SQLite
    file: the page's request shows the job lost, and the new server logs the sweep."""
    config = (ROOT / "examples/procgate.toml").read_text()
    killed = start_server(tmp_path, config)
    status, job = killed.json("POST", "/commands/sleep", {"args": ["300"]})
    assert status == 202, job
    # Running, with the process tag its runner records as the child starts (a moment
    # after the status): without one, the sweep could not kill the group.
    store = open_store(f"sqlite:///{tmp_path}/procgate-data/jobs.db")
    try:
        wait_for(lambda: store.get(job["id"]).process is not None, timeout=30)
    finally:
        store.close()
    killed.crash()  # kill -9 of the master and its workers, as the page says
    restarted = start_server(tmp_path, config, name="restarted")
    try:
        # The first sweep runs as each worker opens its runner; give it a moment.
        deadline = time.monotonic() + 30
        while "marked 1 job(s) of dead runner" not in restarted.log.read_text():
            assert time.monotonic() < deadline, restarted.log.read_text()
            time.sleep(0.05)
        page = replace(
            pages.get("stores.md"),
            servers={config: restarted},
            config=config,
            env={"id": job["id"]},
        )
        run_block(example_block("stores.md#restart-recovery-and-the-lost-status", 0), page)
    finally:
        restarted.stop()
