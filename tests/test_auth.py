"""What procgate.auth says when it refuses: each message names what to send or fix.

The HTTP tests (tests/test_security.py) pin statuses, codes and challenges; these pin the
sentences an operator reads in `procgate check` and a client reads in the error body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
from werkzeug.datastructures import Headers

from procgate import ConfigError
from procgate.auth import (
    Tokens,
    Unauthorized,
    check_signature,
    client_address,
    hash_token,
    make_token,
    parse_networks,
    require_address,
)
from procgate.errors import Forbidden, ProcgateError

DIGEST = hash_token("s3cret")
SECRET = b"hook-secret"
BODY = b'{"ref": "main"}'
SIGNED = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


def _bad_digest() -> None:
    make_token("ci", "abc")


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda: make_token("", DIGEST), ConfigError, "a token needs a non-empty id"),
        (
            _bad_digest,
            ConfigError,
            "token 'ci': sha256 must be 64 hex digits (make one with `procgate token`)",
        ),
        (
            lambda: make_token("ci", DIGEST, commands="build"),
            ConfigError,
            "token 'ci': commands must be a list of command names",
        ),
        (
            lambda: Tokens([make_token("ci", DIGEST), make_token("ci", DIGEST)]),
            ConfigError,
            "token ids must be unique",
        ),
        (
            lambda: Tokens([make_token("ci", DIGEST)]).identify(None),
            Unauthorized,
            "send Authorization: Bearer <token>",
        ),
        (
            lambda: Tokens([make_token("ci", DIGEST)]).identify("Bearer wrong"),
            Unauthorized,
            "unknown or wrong token",
        ),
        (
            # A token with a space in it is a wrong token, not a malformed header.
            lambda: Tokens([make_token("ci", DIGEST)]).identify("Bearer two words"),
            Unauthorized,
            "unknown or wrong token",
        ),
        (
            lambda: check_signature(SECRET, BODY, Headers({"X-Hub-Signature-256": "sha256=00"})),
            Unauthorized,
            "X-Hub-Signature-256 does not match the body",
        ),
        (
            lambda: check_signature(SECRET, BODY, Headers({"X-Gitlab-Token": "nope"})),
            Unauthorized,
            "X-Gitlab-Token is wrong",
        ),
        (
            lambda: check_signature(SECRET, BODY, Headers()),
            Unauthorized,
            "this command needs a signed request (X-Hub-Signature-256 or X-Gitlab-Token)",
        ),
        (
            lambda: parse_networks("10.0.0.0/8", "[server] allow_ips"),
            ConfigError,
            "[server] allow_ips: expected a list of addresses or CIDR networks",
        ),
        (
            lambda: require_address("192.0.2.7", parse_networks(["10.0.0.0/8"], "x"), "/run"),
            Forbidden,
            "/run is not open to 192.0.2.7",
        ),
        (
            lambda: require_address("", parse_networks(["10.0.0.0/8"], "x"), "/run"),
            Forbidden,
            "/run is not open to this client",
        ),
    ],
    ids=[
        "empty-id",
        "bad-digest",
        "commands-string",
        "duplicate-ids",
        "no-header",
        "wrong-token",
        "token-with-a-space",
        "bad-hub-signature",
        "wrong-gitlab-token",
        "unsigned",
        "networks-string",
        "address-refused",
        "no-address",
    ],
)
def test_each_refusal_says_what_is_wrong(
    call: Callable[[], object], kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind) as caught:
        call()
    assert str(caught.value) == message
    if isinstance(caught.value, ProcgateError):
        assert caught.value.message == message


def test_signed_requests_are_accepted() -> None:
    """The two ways of signing pass, so the refusals above are about the signature."""
    check_signature(SECRET, BODY, Headers({"X-Hub-Signature-256": SIGNED}))
    check_signature(SECRET, BODY, Headers({"X-Gitlab-Token": SECRET.decode()}))


def test_without_remote_addr_the_client_address_is_empty() -> None:
    """No REMOTE_ADDR (a unit test, a unix socket): the address is empty, not made up."""
    assert client_address(None, None, ()) == ""
    assert client_address(None, "203.0.113.9", parse_networks(["10.0.0.0/8"], "x")) == ""
