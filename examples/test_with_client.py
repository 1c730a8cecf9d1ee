"""Test your procgate commands with werkzeug's test Client: no server, real processes.

Run it with ``python -m pytest examples/test_with_client.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from procgate import Gate, SyncRunner


@pytest.fixture
def client() -> Iterator[Client]:
    """A Gate with the commands under test; closed after each test, so no child outlives it."""
    gate = Gate(runner=SyncRunner())  # each job runs inside the request: no polling
    gate.register("echo", ["echo"], timeout=10)
    yield Client(gate)
    gate.close()


def test_echo_prints_its_arguments(client: Client) -> None:
    """A waited job answers 200 with the finished job, its output and exit status."""
    response = client.post("/commands/echo", json={"args": ["hello", "world"], "wait": True})
    assert response.status_code == 200
    job = response.json
    assert job["status"] == "succeeded"
    assert job["returncode"] == 0
    assert job["stdout"] == "hello world\n"


def test_job_can_be_fetched_again(client: Client) -> None:
    """The job's url serves the same job; its stdout is also available as raw bytes."""
    job = client.post("/commands/echo", json={"args": ["again"], "wait": True}).json
    assert client.get(job["url"]).json["stdout"] == "again\n"
    raw = client.get(f"/jobs/{job['id']}/stdout")
    assert raw.data == b"again\n"
    assert raw.headers["X-Job-Status"] == "succeeded"


def test_unknown_command_is_json_404(client: Client) -> None:
    """A command nobody registered gets a JSON error, not an HTML page."""
    response = client.post("/commands/nope", json={})
    assert response.status_code == 404
    assert response.json["error"]["code"] == "unknown_command"
