"""What a ``callback_url`` may be, and its normal form: the one the allowlist sees and
the callback goes to."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from urllib.parse import urlsplit

from procgate.errors import InvalidRequest

#: The longest ``callback_url`` accepted, in characters.
MAX_URL = 2048

# RFC 3986's characters; anything else must come percent-encoded.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Escapes a path must not hold (upper case by then): a receiver that decodes them before
# it routes would see a separator or a control character the allowlist never saw.
_PATH_ESCAPES = re.compile(r"%(2F|5C|[01][0-9A-F]|7F)")
_SLASHES = re.compile(r"/{2,}")
# A host name or IPv4 address, or (from inside brackets) an IPv6 address.
_HOST = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.]+")


def check_callback_url(url: object, allow: Iterable[str]) -> str:
    """The URL in normal form, if it is well formed and starts with an allowed prefix.

    ``InvalidRequest`` otherwise: code ``invalid_request`` for a malformed URL (see
    ``normal_callback_url``), ``callback_not_allowed`` for one outside ``allow``. The
    prefixes are compared, as strings, with the normal form, which is also where the
    callback goes: ``/hooks/../admin`` is ``/admin`` and does not pass a ``/hooks/`` prefix.
    End each prefix with ``/``: ``http://host:900`` would also admit ``http://host:9000``.
    """
    normal = normal_callback_url(url)
    if not any(normal.startswith(prefix) for prefix in allow):
        raise InvalidRequest(
            "callback_url is not allowed on this server (see callback_allow)",
            code="callback_not_allowed",
        )
    return normal


def normal_callback_url(url: object) -> str:
    """``url`` in normal form, or ``InvalidRequest`` when it is not a plain http(s) URL.

    Refused: characters outside RFC 3986 (space, CR, LF, NUL, backslash, non-ASCII: send
    them percent-encoded), a lone ``%``, user info (``http://allowed:9000@evil/`` goes to
    ``evil``), a path escape a receiver could decode into a separator or control character
    (``%2F``, ``%5C``, ``%00``-``%1F``, ``%7F``) and dot segments with parameters
    (``..;``). The normal form has the scheme and host in lower case, escapes of
    unreserved characters decoded (``%2e`` is ``.``), repeated slashes merged, dot segments
    resolved (RFC 3986 5.2.4) and no fragment.
    """
    if not isinstance(url, str) or not url:
        raise InvalidRequest("callback_url must be a URL string")
    if len(url) > MAX_URL:
        raise InvalidRequest(f"callback_url must be at most {MAX_URL} characters")
    if not _URL_CHARS.fullmatch(url) or _LONE_PERCENT.search(url):
        raise InvalidRequest(
            "callback_url may hold only URL characters (RFC 3986): percent-encode spaces, "
            "control characters and non-ASCII text"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest("callback_url must be an http or https URL")
    if "@" in parts.netloc:
        raise InvalidRequest("callback_url must not hold a user name or password")
    host = parts.hostname or ""
    if not _HOST.fullmatch(host):
        raise InvalidRequest("callback_url must name a host")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = _ESCAPE.sub(_unescape, parts.path) or "/"
    if _PATH_ESCAPES.search(path):
        raise InvalidRequest(
            "callback_url's path must not hold an encoded slash, backslash or control character"
        )
    path = _remove_dot_segments(_SLASHES.sub("/", path))
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}"


def _unescape(match: re.Match[str]) -> str:
    """An escape of an unreserved character decoded; any other in upper case."""
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986's remove_dot_segments for a path from ``/``: ``/a/./b/../c`` is ``/a/c``."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if ";" in segment and segment.split(";", 1)[0] in (".", ".."):
            # Some servers (Tomcat) take "..;x" for ".."
            raise InvalidRequest("callback_url's path must not hold dot segments with parameters")
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")  # "/a/b/.." is "/a/": a directory
    return "/" + "/".join(kept)
