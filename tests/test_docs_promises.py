"""Promises of docs/http-api.md that no other test pinned: idempotent replays and wait caps.

Each test names the docs section it pins (``tests/test_docs_map.py`` checks the map).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from procgate import Gate, ThreadRunner, create_app, streaming


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A background runner (so a job can still be running) and a 1 s cap on waits."""
    gate = Gate(runner=ThreadRunner(max_workers=4), max_wait=1)
    gate.register("echo", ["echo"])
    gate.register("sleep", ["sleep"], timeout=60, kill_grace=1)
    yield gate
    gate.close()


@pytest.fixture
def client(gate: Gate) -> Client:
    return Client(gate)


def _jobs(client: Client) -> list[str]:
    return [job["id"] for job in client.get("/jobs").json["jobs"]]


@pytest.mark.docs("http-api.md#idempotency")
def test_a_replay_answers_the_stored_job_whatever_its_body(client: Client) -> None:
    """A second request with the key starts nothing and answers the stored job, marked
    ``Idempotent-Replayed: true``, even with other args: 200 when it waited for a finished
    job, 202 with Location when the job is still running."""
    body = {"args": ["first"], "idempotency_key": "deploy-1", "wait": True}
    first = client.post("/commands/echo", json=body)
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/commands/echo", json={**body, "args": ["second"]})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (again.json["id"], again.json["stdout"]) == (first.json["id"], "first\n")

    running = client.post("/commands/sleep", json={"args": ["30"], "idempotency_key": "s"})
    replay = client.post("/commands/sleep", json={"args": ["1"], "idempotency_key": "s"})
    assert replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == running.headers["Location"]
    assert sorted(_jobs(client)) == sorted([first.json["id"], running.json["id"]])


@pytest.mark.docs("http-api.md#idempotency")
def test_a_replay_is_validated_and_keys_are_checked(client: Client) -> None:
    """The rest of a replayed request is still validated first; a key that is not a
    string of 1 to 255 characters, or holds a NUL, is 400 invalid_request; null is no key."""
    client.post("/commands/echo", json={"idempotency_key": "k", "wait": True})
    bad = client.post("/commands/echo", json={"idempotency_key": "k", "tmeout": 1})
    assert (bad.status_code, bad.json["error"]["code"]) == (400, "unknown_field")
    for key in ["", "x" * 256, "a\x00b", 7, ["k"]]:
        response = client.post("/commands/echo", json={"idempotency_key": key})
        assert response.status_code == 400, key
        assert response.json["error"]["code"] == "invalid_request", key
    assert client.post("/commands/echo", json={"idempotency_key": "x" * 255}).status_code == 202
    nulls = [client.post("/commands/echo", json={"idempotency_key": None}) for _ in range(2)]
    assert nulls[0].json["id"] != nulls[1].json["id"]
    assert len(_jobs(client)) == 4


@pytest.mark.docs("http-api.md#idempotency")
def test_deleting_the_job_frees_its_key(client: Client) -> None:
    """A key is taken while its job exists; once the finished job is deleted, the key
    starts a new job, not a replay."""
    body = {"idempotency_key": "nightly", "wait": True}
    first = client.post("/commands/echo", json=body)
    assert client.delete(first.headers.get("Location") or first.json["url"]).status_code == 204
    second = client.post("/commands/echo", json=body)
    assert second.status_code == 200
    assert second.json["id"] != first.json["id"]
    assert "Idempotent-Replayed" not in second.headers


@pytest.mark.docs("http-api.md#waiting")
def test_waits_are_capped_at_max_wait(client: Client) -> None:
    """``"wait": 60``, ``"wait": true``, ``?wait=60`` on GET and DELETE all wait at most
    ``max_wait`` (1 s here), then answer with the job as it is (202 for a POST)."""
    for wait in [60, True]:
        began = time.monotonic()
        response = client.post("/commands/sleep", json={"args": ["30"], "wait": wait})
        took = time.monotonic() - began
        assert response.status_code == 202
        assert response.json["status"] in ("queued", "running")
        assert 0.9 <= took < 10, took
    url = response.json["url"]
    began = time.monotonic()
    assert client.get(url, query_string={"wait": "60"}).json["status"] == "running"
    assert 0.9 <= time.monotonic() - began < 10


@pytest.mark.docs("http-api.md#waiting")
def test_the_body_wait_wins_but_the_query_is_checked(client: Client) -> None:
    """With ``wait`` in both, the body's counts (here: do not wait), yet a bad query value
    is a 400 even then."""
    began = time.monotonic()
    response = client.post(
        "/commands/sleep", json={"args": ["30"], "wait": False}, query_string={"wait": "true"}
    )
    assert response.status_code == 202
    assert time.monotonic() - began < 0.9
    bad = client.post("/commands/echo", json={"wait": True}, query_string={"wait": "soon"})
    assert (bad.status_code, bad.json["error"]["code"]) == (400, "invalid_request")


@pytest.mark.docs("live-output.md#proxies-and-servers")
def test_event_streams_tell_nginx_not_to_buffer(client: Client) -> None:
    """Event streams carry ``X-Accel-Buffering: no`` (nginx passes them on at once) and keep
    a quiet stream alive every 15 s, below nginx's default 60 s ``proxy_read_timeout``."""
    job = client.post("/commands/echo", json={"args": ["hi"], "wait": True}).json
    response = client.get(f"{job['url']}/events")
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.mimetype == "text/event-stream"
    assert "event: end" in response.get_data(as_text=True)
    assert streaming.KEEPALIVE == 15.0


@pytest.mark.docs("security.md#the-configuration")
def test_the_hardened_configuration_loads_and_refuses_what_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hardened deployment's procgate.toml, with its paths moved into a temporary
    directory, builds a Gate: every key exists, and it refuses a request without a token
    and a deploy to an environment outside its choices."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    section = page.split("### The configuration", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert toml is not None
    script = tmp_path / "deploy"
    script.write_text('#!/bin/sh\necho deployed "$@"\n')
    script.chmod(0o755)
    (tmp_path / "log").mkdir()
    text = (
        toml.group(1)
        .replace("/usr/local/libexec/procgate/deploy", str(script))
        .replace("/usr/local/libexec/procgate/on-push", str(script))
        .replace("sqlite:////var/lib/procgate/jobs.db", f"sqlite:///{tmp_path}/jobs.db")
        .replace("/var/log/myapp", str(tmp_path / "log"))
    )
    config = tmp_path / "procgate.toml"
    config.write_text(text)
    monkeypatch.setenv("PROCGATE_CALLBACK_SECRET", "callback-secret")
    monkeypatch.setenv("PROCGATE_GITLAB_SECRET", "gitlab-secret")
    gate = create_app(str(config))
    try:
        client = Client(gate)
        host = "http://jobs.example.com/"
        inside = {"REMOTE_ADDR": "10.20.0.5"}
        refused = client.post("/commands/deploy", json={}, environ_base=inside, base_url=host)
        assert (refused.status_code, refused.json["error"]["code"]) == (401, "unauthorized")
        outside = client.get("/jobs", environ_base={"REMOTE_ADDR": "192.0.2.1"}, base_url=host)
        assert outside.json["error"]["code"] == "address_not_allowed"
        assert list(gate.commands) == ["deploy", "logs", "disk", "gitlab-push"]
    finally:
        gate.close()
