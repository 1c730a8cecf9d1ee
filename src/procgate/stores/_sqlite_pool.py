"""The SQLite store's connections: one pool per process, always to the right file."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator

from procgate.stores import _sqlite_file
from procgate.stores._sqlite_file import FileIdentity

logger = logging.getLogger("procgate")


class ConnectionPool:
    """Connections to the database at ``path``, in autocommit mode, pooled per process.

    Before each use it checks that ``path`` still names the file it opened
    (``FileIdentity``): a deleted file is written back from a connection still open to it
    (the anchor, kept open for as long as the pool), a replaced one is used instead. A
    connection that met an error is closed rather than pooled again: after a full disk, a
    read-only moment or a deleted file it may be stuck in a state that a fresh connection
    is not, so the store recovers by itself once the fault is gone.
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()  # re-entered by a store's writes within writes
        self._file_lock = threading.Lock()  # one thread reopens (or restores) at a time
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._anchor: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        sqlite3.connect(path).close()  # create the file: pooled connections never do
        self._identity = FileIdentity.of(path)

    @contextlib.contextmanager
    def db(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection of this process's pool.

        ``write=True`` also holds this process's write lock: threads of one process queue
        here for microseconds instead of meeting in SQLite's busy handler, which sleeps
        1, 2, 5, 10... ms before trying again. Processes still contend through SQLite.
        """
        with self._write_lock if write else contextlib.nullcontext(), self._connection() as db:
            yield db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once so it never fails half way on a lock."""
        with self.db(write=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the idle connections; those in use close as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle, self._all, self._anchor = self._idle, [], [], None
        for db in idle:
            db.close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._all, self._anchor, self._pid = [], [], None, os.getpid()
            db = self._idle.pop() if self._idle else None
        if FileIdentity.of(self.path) != self._identity:
            try:
                self._reopen()  # may restore the file from db itself, if db is the anchor
            finally:
                if db is not None:  # pooled to the old file, and no longer in _all
                    db.close()
            db = None
        if db is None:
            db = _sqlite_file.connect(self.path, self.busy_timeout)
            db.execute("PRAGMA synchronous=NORMAL")
            db.row_factory = sqlite3.Row
            with self._lock:
                self._all.append(db)
                if self._anchor is None:
                    self._anchor = db
        failed = False
        try:
            yield db
        except sqlite3.Error as exc:
            failed = not isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError))
            raise
        finally:
            self._give_back(db, failed)

    def _give_back(self, db: sqlite3.Connection, failed: bool) -> None:
        with self._lock:
            pooled = db in self._all
            if self._closed or not pooled or (failed and db is not self._anchor):
                if pooled:
                    self._all.remove(db)
                db.close()
                return
            if db.in_transaction:  # a failed COMMIT or ROLLBACK left one open
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self._idle.append(db)

    def _reopen(self) -> None:
        """The path no longer names our file: write it back if it is gone (from a still
        open connection), then forget every connection to the old one."""
        with self._file_lock:
            current = FileIdentity.of(self.path)
            if current == self._identity:
                return  # another thread did it
            with self._lock:
                anchor, idle = self._anchor, self._idle
                self._all, self._idle, self._anchor = [], [], None
            if current is None and anchor is not None and self._identity is not None:
                logger.error("SQLite store %s was deleted while in use: writing it back", self.path)
                current = _sqlite_file.restore(anchor, self.path, self._identity)
            elif current is None:
                raise sqlite3.OperationalError(f"database file {self.path!r} is gone")
            else:
                logger.warning("SQLite store %s was replaced: using the new file", self.path)
            self._identity = current
            for db in idle:  # those in use are closed as they come back
                db.close()
