"""The edges of request parsing, where a client reads the error to fix its request: the
JSON media types, boolean and integer query parameters at their limits, and /run's args.

Parsing does not depend on the runner or the store, so one in-process Gate serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from procgate import Gate, MemoryStore, ThreadRunner
from tests.conftest import register_defaults


@pytest.fixture
def client() -> Iterator[Client]:
    gate = register_defaults(
        Gate(store=MemoryStore(), runner=ThreadRunner(), allow_programs=["echo"], max_wait=20)
    )
    try:
        yield Client(gate)
    finally:
        gate.close()


def error(response: object) -> tuple[int, str, str]:
    body = response.json["error"]  # type: ignore[attr-defined]
    return response.status_code, body["code"], body["message"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mimetype", ["application/json", "application/vnd.ci+json"])
@pytest.mark.docs("http-api.md#conventions")
def test_json_and_any_plus_json_type_are_json(client: Client, mimetype: str) -> None:
    response = client.post(
        "/commands/echo", data='{"args": ["hi"], "wait": true}', content_type=mimetype
    )
    assert response.status_code == 200
    assert response.json["stdout"] == "hi\n"


@pytest.mark.docs("http-api.md#get-jobs")
def test_limit_takes_1_to_1000(client: Client) -> None:
    for limit in (1, 1000):
        assert client.get(f"/jobs?limit={limit}").status_code == 200
    for limit in (0, 1001):
        assert error(client.get(f"/jobs?limit={limit}")) == (
            400,
            "invalid_request",
            "limit must be between 1 and 1000",
        )
    assert error(client.get("/jobs?limit=ten")) == (
        400,
        "invalid_request",
        "limit must be an integer",
    )


@pytest.mark.docs("live-output.md#polling-by-byte-offset", "live-output.md#raw-bytes-follow1")
def test_follow_is_a_flag_and_offset_a_count(client: Client) -> None:
    job_id = client.post("/commands/echo", json={"args": ["out"], "wait": True}).json["id"]
    followed = client.get(f"/jobs/{job_id}/stdout?follow=1")
    assert followed.status_code == 200
    assert followed.get_data() == b"out\n"
    assert error(client.get(f"/jobs/{job_id}/stdout?follow=yes")) == (
        400,
        "invalid_request",
        "follow must be 1, 0, true or false",
    )
    assert client.get(f"/jobs/{job_id}/output?offset=0").status_code == 200
    assert error(client.get(f"/jobs/{job_id}/output?offset=-1")) == (
        400,
        "invalid_request",
        f"offset must be between 0 and {1 << 62}",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("echo 'unclosed", "args cannot be split: No closing quotation"),
        ("", "args must name a program"),
        ([], "args must name a program"),
        (["echo", 5], "args must be a list of strings"),
    ],
)
@pytest.mark.docs("http-api.md#post-run-raw-mode")
def test_run_args_must_name_a_program(client: Client, args: object, message: str) -> None:
    assert error(client.post("/run", json={"args": args})) == (400, "invalid_request", message)
