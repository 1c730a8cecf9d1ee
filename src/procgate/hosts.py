"""Which Host names a Gate answers for (``trusted_hosts``), and config lists of names."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

from werkzeug.exceptions import SecurityError
from werkzeug.wrappers import Request

from procgate.errors import ConfigError, InvalidRequest


def check_host(request: Request) -> None:
    """400 ``untrusted_host`` unless the ``Host`` header (or, without one, the server's
    name) is in ``request.trusted_hosts``, as werkzeug's ``Request.host`` checks it."""
    try:
        _ = request.host  # werkzeug checks trusted_hosts as it works the host out
    except SecurityError:
        raise InvalidRequest(
            "this server does not answer for that Host (see trusted_hosts)",
            code="untrusted_host",
        ) from None


#: A ``trusted_hosts`` entry after its leading "." (if any): a name or an IPv4 address.
_TRUSTED_HOST = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def trusted_hosts_of(values: Iterable[str]) -> list[str]:
    """``trusted_hosts``, checked: werkzeug compares names without their port, and would
    take any IPv6 literal for any other, so neither may appear here."""
    hosts = list(names(values, "trusted_hosts"))
    if not hosts:
        raise ConfigError("trusted_hosts must name a host; leave it out (None) to answer any")
    for host in hosts:
        name = host.removeprefix(".")
        with contextlib.suppress(UnicodeError):  # a name idna refuses is refused below
            name = name.encode("idna").decode("ascii")  # as werkzeug compares it
        if not _TRUSTED_HOST.fullmatch(name):
            raise ConfigError(
                f"trusted_hosts: {host!r} is not a host name or IPv4 address (no port, no "
                "IPv6 literal; a leading '.' also allows its subdomains)"
            )
    return hosts


def names(values: Iterable[str], what: str) -> tuple[str, ...]:
    """A list of strings: a lone string would be taken one character at a time."""
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{what} must be a list of strings")
    return tuple(values)
