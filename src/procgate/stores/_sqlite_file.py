"""The SQLite store's file on disk: noticing that it is gone, and writing it back.

An open SQLite connection keeps reading and writing a database file after someone
deleted it (the inode lives on until the last descriptor closes), and a new connection to
the same path would create an empty database. Both are silent data loss: jobs would be
acknowledged into a file nobody can open again. So the store checks, before each use of a
connection, that the path still names the file its connections opened (``FileIdentity``),
and when it does not, ``restore`` writes the still-open database back to its path with
SQLite's online backup, so nothing acknowledged is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a path named when it was opened: device and inode."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> FileIdentity | None:
        """The identity of the file at ``path`` now; None when there is none."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(stat.st_dev, stat.st_ino)


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """A connection to the existing database at ``path``; never creates an empty one.

    ``sqlite3.OperationalError`` ("unable to open database file") when it is gone.
    """
    return sqlite3.connect(
        f"file:{_uri_path(path)}?mode=rw",
        uri=True,
        timeout=timeout,
        isolation_level=None,
        check_same_thread=False,
    )


def use_wal(db: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode, trying again for up to ``timeout`` seconds.

    Two processes opening a new file at once (server workers starting together): the
    switch needs the file to itself, and while another process holds its write lock
    SQLite answers "database is locked" at once, without its busy handler (waiting while
    holding a read lock could deadlock).
    """
    while_locked(
        lambda: db.execute("PRAGMA journal_mode=WAL").fetchall(), timeout, first=0.001, most=0.05
    )


def while_locked(
    attempt: Callable[[], object], timeout: float, *, first: float, most: float
) -> None:
    """``attempt()``, tried again while SQLite answers "database is locked", for up to
    ``timeout`` seconds: after ``first`` seconds, then twice as long each time up to
    ``most``, each sleep jittered (so processes that met do not meet again)."""
    deadline = time.monotonic() + timeout
    delay = first
    while True:
        try:
            attempt()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
        delay = min(delay * 2, most)


def restore(
    source: sqlite3.Connection, guard: sqlite3.Connection, path: str, mine: FileIdentity
) -> FileIdentity:
    """Put the database ``source`` still has open back at ``path``; return its identity.

    Several processes may notice at once: a lock file beside the database lets one of them
    write the copy, and the others find it there and use it. While it copies, ``guard``
    (another connection to the deleted file) holds SQLite's write lock, so no process
    writes to the deleted file after the copy: writers check the path once they hold that
    lock (``ConnectionPool.transaction``), and find the copy there. The copy goes to a
    temporary name first and is renamed into place, so nobody opens a half-written file.
    What is left of the deleted database's ``-wal`` and ``-shm`` files is removed first:
    their frames belong to the deleted file and must not be replayed onto the copy.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with open(path + ".restore-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = FileIdentity.of(path)
        if current is not None and current != mine:
            return current  # another process (or the operator) put a file there
        temporary = f"{path}.restore-{os.getpid()}-{secrets.token_hex(4)}"
        guard.execute("BEGIN IMMEDIATE")  # waits for a write in flight to end
        try:
            copy = sqlite3.connect(temporary)
            try:
                source.backup(copy)
            finally:
                copy.close()
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)
            os.rename(temporary, path)
        finally:
            guard.execute("ROLLBACK")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        restored = FileIdentity.of(path)
        if restored is None:  # pragma: no cover - deleted again within microseconds
            raise sqlite3.OperationalError(f"database file {path!r} vanished while restored")
        return restored


def _uri_path(path: str) -> str:
    """``path`` quoted for a ``file:`` URI (``?`` and ``#`` would end the path)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


#: Bytes of disk the SQLite store holds back beside its database by default.
RESERVE = 1 << 20

#: Seconds between two attempts to make the reserve again while the disk is full.
REFILL_INTERVAL = 10.0


class Reserve:
    """Room held back on the database's disk for the writes that free room.

    On a full disk SQLite cannot even delete: a delete appends to the write-ahead log. So
    the store keeps a file of ``size`` bytes beside the database; a delete that meets a
    full disk removes it (``release``) and tries again, and the file is made again
    (``refill``) once the disk has room. ``size`` 0 keeps no reserve.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._next_refill = 0.0

    def release(self) -> bool:
        """Give the room back to the disk; False when there was none to give."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    def refill(self, now: float) -> None:
        """Make the reserve if it is missing; tried at most every ``REFILL_INTERVAL`` s."""
        if self.size <= 0 or now < self._next_refill or os.path.exists(self.path):
            return
        temporary = f"{self.path}.{os.getpid()}-{secrets.token_hex(4)}"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(descriptor, 0, self.size)
            finally:
                os.close(descriptor)
            os.rename(temporary, self.path)
        except OSError:  # no room yet: the next try is after REFILL_INTERVAL
            self._next_refill = now + REFILL_INTERVAL
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def disk_full(exc: BaseException) -> bool:
    """Whether a SQLite error says the disk (or the database) is full."""
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
