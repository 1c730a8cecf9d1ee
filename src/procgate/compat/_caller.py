"""Who sends a compat app's request, checked as the Gate checks its own callers."""

from __future__ import annotations

from werkzeug.wrappers import Request

from procgate.app import Gate
from procgate.auth import Token, client_address, require_address


def caller(gate: Gate, request: Request) -> tuple[Token | None, str]:
    """The request's token (None without ``[auth] tokens``) and client address, after the
    Gate's checks: ``allow_ips`` (403), and with tokens a valid one (401). What the token
    may do is the app's to check."""
    client = client_address(
        request.remote_addr, request.headers.get("X-Forwarded-For"), gate.trusted_proxies
    )
    require_address(client, gate.allow_ips, "this server")
    if gate.tokens is None:
        return None, client
    return gate.tokens.identify(request.headers.get("Authorization")), client
