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
        # Two connections of their own, never lent out: the anchor to copy a deleted file
        # back from, the guard to hold every process's writers off while it is copied.
        self._anchor: sqlite3.Connection | None = None
        self._guard: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        first = sqlite3.connect(path)  # create the file: pooled connections never do
        try:  # in WAL mode before the anchor opens: it must hold the -wal file open
            _sqlite_file.use_wal(first, busy_timeout)
        finally:
            first.close()
        self._identity = FileIdentity.of(path)

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A connection of this process's pool, in autocommit mode: for reading."""
        with self._connection() as db:
            yield db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once so it never fails half way on a lock.

        It holds this process's write lock first: threads of one process queue there for
        microseconds instead of meeting in SQLite's busy handler, which sleeps 1, 2, 5,
        10... ms before trying again; processes still contend through SQLite. Once
        SQLite's write lock is held, the path is checked again: a write may only go to the
        file the path names, because a deleted file is copied back under that same lock
        (``_sqlite_file.restore``), and a write to it after the copy would be lost.
        """
        with self._write_lock:
            retried = False
            while True:
                with self._connection() as db:
                    try:
                        self._begin(db)
                    except sqlite3.OperationalError as exc:
                        # Opened while the file could not be written (SQLite then opens
                        # it read-only, for good), as the idle ones may have been: once,
                        # try a connection opened now.
                        if retried or "readonly" not in str(exc):
                            raise
                        retried = True
                        self._forget(db, idle=True)
                        continue
                    if self._current(db):
                        try:
                            yield db
                            db.execute("COMMIT")
                        except BaseException:
                            if db.in_transaction:  # SQLite may have rolled back (a full disk)
                                with contextlib.suppress(sqlite3.Error):
                                    db.execute("ROLLBACK")
                            raise
                        return
                    db.execute("ROLLBACK")  # the next _connection() sees the change

    def _begin(self, db: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, trying again every 50 µs to 2 ms while another process
        writes, for up to ``busy_timeout`` seconds.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between tries: a write that
        meets another worker's (which lasts tens of microseconds) would wait a whole
        millisecond, and every thread of this process behind it, holding the write lock.
        """
        db.execute("PRAGMA busy_timeout = 0")
        try:
            _sqlite_file.while_locked(
                lambda: db.execute("BEGIN IMMEDIATE"), self.busy_timeout, first=0.00005, most=0.002
            )
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def _forget(self, db: sqlite3.Connection, *, idle: bool = False) -> None:
        """Leave ``db`` out of the pool: it is closed when given back; with ``idle``,
        close the idle connections too."""
        with self._lock:
            gone, self._idle = (self._idle, []) if idle else ([], self._idle)
            for each in [db, *gone]:
                if each in self._all:
                    self._all.remove(each)
        for each in gone:
            each.close()

    def _current(self, db: sqlite3.Connection) -> bool:
        """Whether ``db`` is a connection to the file the path names now."""
        with self._lock:
            pooled = db in self._all
        return pooled and FileIdentity.of(self.path) == self._identity

    def close(self) -> None:
        """Close the idle connections; those in use close as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle, self._all = self._idle, [], []
            idle += self._own()
        for db in idle:
            db.close()

    def _own(self) -> list[sqlite3.Connection]:
        """Take the anchor and the guard away (under ``_lock``), to be closed."""
        own = [db for db in (self._anchor, self._guard) if db is not None]
        self._anchor = self._guard = None
        return own

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._all, self._pid = [], [], os.getpid()
                self._anchor = self._guard = None
            db = self._idle.pop() if self._idle else None
        if FileIdentity.of(self.path) != self._identity:
            try:
                self._reopen()
            finally:
                if db is not None:  # pooled to the old file, and no longer in _all
                    db.close()
            db = None
        if db is None:
            db = self._open()
            with self._lock:
                self._all.append(db)
                if self._anchor is None:
                    self._anchor, self._guard = self._open(), self._open()
                    for own in (self._anchor, self._guard):
                        # A first read opens the -wal and -shm files, which a restore
                        # needs open: once they are deleted, they cannot be opened.
                        own.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        failed = False
        try:
            yield db
        except sqlite3.Error as exc:
            failed = not isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError))
            raise
        finally:
            self._give_back(db, failed)

    def _open(self) -> sqlite3.Connection:
        db = _sqlite_file.connect(self.path, self.busy_timeout)
        db.execute("PRAGMA synchronous=NORMAL")
        db.row_factory = sqlite3.Row
        return db

    def _give_back(self, db: sqlite3.Connection, failed: bool) -> None:
        with self._lock:
            pooled = db in self._all
            if self._closed or not pooled or failed:
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
                anchor, guard, idle = self._anchor, self._guard, self._idle
                self._all, self._idle = [], []
            for db in idle:  # those in use are closed as they come back
                db.close()
            if current is None and anchor and guard and self._identity is not None:
                logger.error("SQLite store %s was deleted while in use: writing it back", self.path)
                # On failure (a full disk, say) the anchor stays, for the next attempt.
                current = _sqlite_file.restore(anchor, guard, self.path, self._identity)
            elif current is None:
                raise sqlite3.OperationalError(f"database file {self.path!r} is gone")
            else:
                logger.warning("SQLite store %s was replaced: using the new file", self.path)
            with self._lock:
                self._identity = current
                own = self._own()
            for db in own:
                db.close()
