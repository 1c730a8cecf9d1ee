"""A seeded, bounded fuzz of malformed requests: always a JSON 4xx (or a job), never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from procgate import Gate, ThreadRunner

FIELDS = ["args", "stdin", "stdin_encoding", "env", "timeout", "wait", "idempotency_key"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)

bodies = st.one_of(
    # broken or non-object JSON, raw bytes, invalid UTF-8
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    st.sampled_from(
        [b"{", b"[", b'{"args": [', b"\xff\xfe{}", b'{"args": ["\xff"]}', b"1e99999", b"null"]
    ),
    # deep nesting
    st.integers(min_value=100, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=100, max_value=5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    # the right fields with any values: wrong types, huge numbers, NUL bytes
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.lists(st.text(max_size=10), max_size=5).map(
        lambda args: json.dumps({"args": [*args, "a\x00b"]}).encode()
    ),
    st.integers().map(lambda n: json.dumps({"timeout": n, "wait": n}).encode()),
)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    gate = Gate(runner=ThreadRunner(max_workers=4), max_wait=1)
    gate.register("echo", ["echo"], timeout=5)
    gate.register("scan", ["echo"], args=[{"name": "host", "type": "identifier"}], timeout=5)
    yield Client(gate)
    gate.close()


def check(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        error = json.loads(response.get_data())["error"]
        assert set(error) == {"code", "message"}
        assert "Traceback" not in error["message"]


@settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    path=st.sampled_from(["/commands/echo", "/commands/scan", "/run", "/commands/nope"]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=latin-1", "text/plain", "", "x/y+json"]
    ),
)
@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_malformed_bodies_never_crash(
    client: Client, body: bytes, path: str, content_type: str
) -> None:
    """Whatever the body and content type, the answer is a job or a JSON 4xx."""
    check(client.post(path, data=body, content_type=content_type or None))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    query=st.dictionaries(
        st.sampled_from(["wait", "status", "limit", "cursor", "command", "follow", "offset"]),
        st.text(max_size=30),
        max_size=4,
    ),
    path=st.sampled_from(["/jobs", "/jobs/x", "/jobs/x/stdout", "/jobs/x/output", "/health"]),
)
@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_malformed_queries_never_crash(client: Client, query: dict[str, str], path: str) -> None:
    """Any query string on the read endpoints is answered, 2xx or a JSON 4xx."""
    check(client.get(path, query_string=query))
