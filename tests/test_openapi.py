"""GET /openapi.json: a valid OpenAPI 3.1 document that matches the routes and commands."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from openapi_spec_validator import validate
from werkzeug.test import Client

from procgate import Gate
from procgate.auth import hash_token, make_token


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate(allow_programs=["echo"], callback_allow=["http://127.0.0.1:9/"])
    gate.register("echo", ["echo"], allow_env=["LANG"], timeout=30)
    gate.register(
        "scan",
        ["echo"],
        args=[{"name": "host", "type": "identifier"}, {"name": "port", "type": "int"}],
        dashdash=True,
    )
    gate.register("hook", ["cat"], hmac_secret="s", webhook=True)
    yield gate
    gate.close()


def document(gate: Gate, **headers: str) -> dict:  # type: ignore[type-arg]
    response = Client(gate).get("/openapi.json", headers=headers)
    assert response.status_code == 200
    return response.json  # type: ignore[no-any-return]


@pytest.mark.docs("http-api.md#get-openapijson")
@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_document_is_valid_openapi_31(gate: Gate) -> None:
    """The document passes the OpenAPI 3.1 validator."""
    spec = document(gate)
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert spec["servers"] == [{"url": "http://localhost"}]


@pytest.mark.docs("http-api.md#endpoints")
def test_every_route_is_described(gate: Gate) -> None:
    """Each rule of the URL map has a path with the same methods (commands by name)."""
    spec = document(gate)
    described = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    for rule in gate.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if "{stream}" in path:
            paths = [path.replace("{stream}", s) for s in ("stdout", "stderr")]
        elif path == "/commands/{name}":
            paths = [f"/commands/{name}" for name in gate.commands]
        else:
            paths = [path]
        for concrete in paths:
            for method in rule.methods or ():
                if method in ("HEAD", "OPTIONS"):
                    continue
                assert (concrete, method) in described, (concrete, method)
    assert len(described) == len(
        {
            (p, m)
            for p, m in described
            if p.startswith(("/commands", "/jobs", "/run", "/health", "/openapi"))
        }
    )


@pytest.mark.docs("http-api.md#get-openapijson")
def test_command_request_schemas_follow_their_policy(gate: Gate) -> None:
    """Each command's request body schema carries its argument policy and limits."""
    paths = document(gate)["paths"]
    echo = paths["/commands/echo"]["post"]["requestBody"]["content"]["application/json"]
    properties = echo["schema"]["properties"]
    assert properties["timeout"]["anyOf"][0]["maximum"] == 30
    assert properties["env"]["anyOf"][0]["propertyNames"] == {"enum": ["LANG"]}
    scan = paths["/commands/scan"]["post"]["requestBody"]
    assert scan["required"] is True
    assert scan["content"]["application/json"]["schema"]["required"] == ["args"]
    hook = paths["/commands/hook"]["post"]
    assert hook["security"] == []
    assert "*/*" in hook["requestBody"]["content"]


@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_every_operation_documents_its_errors(gate: Gate) -> None:
    """Operations that can fail document JSON error responses."""
    for path, item in document(gate)["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path == "/health":
                continue
            codes = set(operation["responses"])
            assert codes & {"400", "401", "403", "404"}, (path, method)


@pytest.mark.docs("http-api.md#get-openapijson")
@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_tokens_see_their_own_commands() -> None:
    """With auth, the document needs a token and lists only that token's commands."""
    gate = Gate(tokens=[make_token("ci", hash_token("t"), commands=["echo"])])
    gate.register("echo", ["echo"])
    gate.register("secret", ["true"])
    try:
        assert Client(gate).get("/openapi.json").status_code == 401
        spec = document(gate, Authorization="Bearer t")
        assert "/commands/echo" in spec["paths"]
        assert "/commands/secret" not in spec["paths"]
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    finally:
        gate.close()
