"""Fixtures for fault tests: components this package breaks for real, one per test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.servers import free_port
from tests.stores.conftest import fill, tmpfs  # noqa: F401 - a fixture, for test_redis.py
from tests.test_celery import cluster  # noqa: F401 - a fixture, for test_celery.py here


@dataclass
class RedisServer:
    """A redis-server of this test's own, that the test may stop and start again.

    Every write is appended to a log and synced (``appendfsync always``), so a restart
    keeps the data, as a production Redis with persistence would.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: More ``redis-server`` options; they override the ones above.
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.proc = subprocess.Popen(
            [
                server,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--loglevel", "warning"),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.pings, timeout=30)

    def stop(self) -> None:
        """Stop the server (SIGTERM: it syncs its log and exits), and wait for it."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def pings(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
