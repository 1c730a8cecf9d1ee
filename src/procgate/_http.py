"""One HTTP(S) POST that must end by a deadline, whole, and that another thread can cut
short: what a callback attempt is."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import ssl
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

#: Bytes of an answer's body read, and dropped, before the connection is closed.
MAX_ANSWER = 64 << 10


class _Deadline:
    """A connected socket whose every send and receive must end by ``deadline``.

    http.client calls ``sendall``, ``makefile`` and ``close``; each receive gets the time
    left as its timeout, so a receiver trickling a byte a second cannot stretch an
    attempt past the deadline, as it could a timeout per read.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def arm(self) -> None:
        self.sock.settimeout(_left(self.deadline))

    def sendall(self, data: ReadableBuffer) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Nothing: the attempt closes the socket once the answer is read."""


class _DeadlineReader(io.RawIOBase):
    """The receiving side of a ``_Deadline`` socket, as a file for http.client."""

    def __init__(self, owner: _Deadline) -> None:
        super().__init__()
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self.owner.arm()
        return self.owner.sock.recv_into(buffer)


class Connection(http.client.HTTPConnection):
    """One POST over HTTP or HTTPS (``tls``) that must end by ``deadline`` (monotonic).

    ``abort`` (from another thread) shuts the socket down: the attempt fails at once.
    Name resolution is the system resolver's, outside the deadline.
    """

    def __init__(self, host: str, port: int, deadline: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self.deadline = deadline
        self.tls = tls
        self.raw: socket.socket | None = None
        self.aborted = False
        if tls is not None:
            self.default_port = 443  # the Host header leaves out the scheme's own port

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), _left(self.deadline))
        self.raw = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock.settimeout(_left(self.deadline))  # the handshake's deadline
            sock = self.raw = self.tls.wrap_socket(sock, server_hostname=self.host)
        if self.aborted:
            raise ConnectionAbortedError("the server is closing")
        self.sock = _Deadline(sock, self.deadline)  # what http.client uses of a socket

    def abort(self) -> None:
        self.aborted = True
        sock = self.raw
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, for TLS too

    def post(self, target: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; the answer's status, which alone decides. Raises on any failure,
        ``TimeoutError`` at the deadline. Up to ``MAX_ANSWER`` bytes of the answer's body
        are read (within the deadline, and dropped) to part cleanly; the socket is closed."""
        try:
            self.request("POST", target, body=body, headers=headers)
            response = self.getresponse()
            with contextlib.suppress(Exception):  # the status decides, not the body
                response.read(MAX_ANSWER)
            return response.status
        finally:
            with contextlib.suppress(OSError):
                self.close()
            if self.raw is not None:
                self.raw.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; ``TimeoutError`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left
