"""Who may call: bearer tokens (hashed), webhook signatures, client address allowlists."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from procgate.errors import ConfigError, Forbidden, ProcgateError

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unauthorized(ProcgateError):
    """No credentials, or wrong ones: the client should authenticate (401)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, challenge: str = 'Bearer realm="procgate"') -> None:
        super().__init__(message)
        self.challenge = challenge


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token as configured: its id, the SHA-256 of its secret, and its rights.

    ``commands`` limits which commands it may run (None: all). A ``read_only`` token may
    only read; an ``admin`` token sees and cancels every job and may use ``POST /run``.
    """

    id: str
    sha256: str
    commands: frozenset[str] | None = None
    read_only: bool = False
    admin: bool = False

    def may_run(self, command: str) -> bool:
        return not self.read_only and (self.commands is None or command in self.commands)


def hash_token(secret: str) -> str:
    """What goes in the config for a token: the hex SHA-256 of its secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def make_token(
    id: str,
    sha256: str,
    *,
    commands: Iterable[str] | None = None,
    read_only: bool = False,
    admin: bool = False,
) -> Token:
    """A validated Token; ``ConfigError`` for a malformed one."""
    if not isinstance(id, str) or not id:
        raise ConfigError("a token needs a non-empty id")
    digest = sha256.lower() if isinstance(sha256, str) else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"token {id!r}: sha256 must be 64 hex digits (make one with `procgate token`)"
        )
    if commands is not None and (
        isinstance(commands, str) or not all(isinstance(c, str) for c in commands)
    ):
        raise ConfigError(f"token {id!r}: commands must be a list of command names")
    return Token(
        id,
        digest,
        frozenset(commands) if commands is not None else None,
        bool(read_only),
        bool(admin),
    )


class Tokens:
    """The configured tokens; finds the one a request presents, in constant time."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self.tokens = tuple(tokens)
        ids = [t.id for t in self.tokens]
        if len(set(ids)) != len(ids):
            raise ConfigError("token ids must be unique")

    def identify(self, authorization: str | None) -> Token:
        """The token of an ``Authorization: Bearer <secret>`` header; else ``Unauthorized``.

        Every configured hash is compared, with ``hmac.compare_digest``, whatever matches:
        the time taken says nothing about which token, or how much of one, was right.
        """
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("send Authorization: Bearer <token>")
        digest = hash_token(secret.strip())
        found = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.sha256):
                found = token
        if found is None:
            raise Unauthorized("unknown or wrong token", challenge=_INVALID)
        return found


_INVALID = 'Bearer realm="procgate", error="invalid_token"'


def check_signature(secret: bytes, body: bytes, headers: Headers) -> None:
    """Accept a request signed like a GitHub or GitLab webhook; else ``Unauthorized``.

    GitHub (and Gitea, and most others) send ``X-Hub-Signature-256: sha256=<hex HMAC of
    the raw body>``; GitLab sends the shared secret itself in ``X-Gitlab-Token``. Both are
    compared in constant time.
    """
    signature = headers.get("X-Hub-Signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(signature.strip().lower().encode(), expected.encode()):
            return
        raise Unauthorized("X-Hub-Signature-256 does not match the body", challenge=_HMAC)
    token = headers.get("X-Gitlab-Token")
    if token is not None:
        if hmac.compare_digest(token.encode(), secret):
            return
        raise Unauthorized("X-Gitlab-Token is wrong", challenge=_HMAC)
    raise Unauthorized(
        "this command needs a signed request (X-Hub-Signature-256 or X-Gitlab-Token)",
        challenge=_HMAC,
    )


_HMAC = 'HMAC realm="procgate"'


def parse_networks(values: Iterable[Any], where: str) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``::1``) as networks; ``ConfigError`` for bad ones."""
    if isinstance(values, str):
        raise ConfigError(f"{where}: expected a list of addresses or CIDR networks")
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(networks)


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """The client's address: ``REMOTE_ADDR``, or, when that is a trusted proxy, the last
    address in ``X-Forwarded-For`` that is not itself a trusted proxy.

    Only addresses appended by proxies you trust can be believed: anything left of them
    was written by the client.
    """
    address = remote or ""
    if not trusted or not forwarded_for or not _within(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not _within(hop, trusted):
            break
    return address


def require_address(address: str, allowed: tuple[IPNetwork, ...], what: str) -> None:
    """``Forbidden`` unless ``allowed`` is empty or contains ``address``."""
    if allowed and not _within(address, allowed):
        raise Forbidden(
            f"{what} is not open to {address or 'this client'}", code="address_not_allowed"
        )


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
