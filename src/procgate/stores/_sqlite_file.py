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
import secrets
import sqlite3
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


def restore(source: sqlite3.Connection, path: str, mine: FileIdentity) -> FileIdentity:
    """Put the database ``source`` still has open back at ``path``; return its identity.

    Several processes may notice at once: a lock file beside the database lets one of them
    write the copy, and the others find it there and use it. The copy goes to a temporary
    name first and is renamed into place, so nobody opens a half-written file. What is
    left of the deleted database's ``-wal`` and ``-shm`` files is removed first: their
    frames belong to the deleted file and must not be replayed onto the copy.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with open(path + ".restore-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = FileIdentity.of(path)
        if current is not None and current != mine:
            return current  # another process (or the operator) put a file there
        temporary = f"{path}.restore-{os.getpid()}-{secrets.token_hex(4)}"
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        restored = FileIdentity.of(path)
        if restored is None:  # pragma: no cover - deleted again within microseconds
            raise sqlite3.OperationalError(f"database file {path!r} vanished while restored")
        return restored


def _uri_path(path: str) -> str:
    """``path`` quoted for a ``file:`` URI (``?`` and ``#`` would end the path)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
