"""The SQLite store's connection pool: reuse, what comes back after an error, a replaced
or deleted file, and close."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from procgate.stores._sqlite_pool import ConnectionPool


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def pool(path: Path) -> Iterator[ConnectionPool]:
    made = ConnectionPool(str(path), busy_timeout=5.0)
    with made.db() as db:
        db.execute("CREATE TABLE t (x UNIQUE)")
        db.execute("INSERT INTO t VALUES ('old')")
    yield made
    made.close()


def rows(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT x FROM t ORDER BY x")]


def replace(path: Path, value: str) -> None:
    """Move another database (table t holding ``value``) into place, as an operator would:
    with the old file's -wal and -shm removed (SQLite would replay them onto it)."""
    fresh = path.with_name("fresh.db")
    with closing(sqlite3.connect(fresh)) as db, db:
        db.execute("CREATE TABLE t (x UNIQUE)")
        db.execute("INSERT INTO t VALUES (?)", (value,))
    os.replace(fresh, path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def query_missing(pool: ConnectionPool, used: list[sqlite3.Connection]) -> None:
    """A query that fails (no such table) on a connection of ``pool``, kept in ``used``."""
    with pool.db() as db:
        used.append(db)
        db.execute("SELECT * FROM missing")


def test_connections_are_reused(pool: ConnectionPool) -> None:
    """Two connections used at once both go back to the pool, and are handed out again:
    a call does not open (and set up) a connection of its own."""
    with pool.db() as one, pool.db() as two:
        assert one is not two
    with pool.db() as again, pool.db() as also:
        assert {id(again), id(also)} == {id(one), id(two)}


def test_the_busy_timeout_is_the_pools(path: Path) -> None:
    """A write that meets another writer's lock waits ``busy_timeout`` seconds, not
    SQLite's or Python's default (5 s), before it fails."""
    pool = ConnectionPool(str(path), busy_timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"), pool.transaction():
            pass
        assert 0.09 <= time.monotonic() - start < 2.5
    finally:
        other.close()
        pool.close()


def test_a_write_waiting_for_another_process_tries_again_within_milliseconds(
    path: Path,
) -> None:
    """A write that meets another process's write lock takes it within a couple of
    milliseconds of its release, where SQLite's own busy handler would sleep 1, 2, 5, 10,
    15, 20 ms between tries (a lock held 40 ms: taken at 53 ms); the pool's busy timeout is
    back in force after."""
    pool = ConnectionPool(str(path), busy_timeout=5.0)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        waits = []
        for _ in range(3):
            other.execute("BEGIN IMMEDIATE")
            threading.Timer(0.04, lambda: other.execute("COMMIT")).start()
            begun = time.monotonic()
            with pool.transaction() as db:
                waits.append(time.monotonic() - begun)
                assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert 0.039 < sorted(waits)[1] < 0.05
    finally:
        other.close()
        pool.close()


def test_a_new_file_opened_while_another_process_writes_it_is_put_in_wal_mode(
    path: Path,
) -> None:
    """Workers starting together: one process's switch to WAL meets another's write lock
    while it holds a read lock itself, which SQLite answers with "database is locked" at
    once (no busy handler: waiting could deadlock). The pool tries again, and opens once
    the other's transaction ends."""
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as other:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN IMMEDIATE")  # a write lock, held
        threading.Timer(0.2, lambda: other.execute("COMMIT")).start()
        pool = ConnectionPool(str(path), busy_timeout=5.0)
        try:
            with pool.db() as db:
                assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            pool.close()


def test_a_failed_connection_is_dropped_and_the_next_call_works(pool: ConnectionPool) -> None:
    """A connection that met an SQLite error is closed, not pooled again, and the error
    reaches the caller unchanged; the next call gets a working connection."""
    used: list[sqlite3.Connection] = []
    with pool.db() as held:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            query_missing(pool, used)
        assert used[0] is not held
        with pytest.raises(sqlite3.ProgrammingError):
            used[0].execute("SELECT 1")  # closed
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        query_missing(pool, used)
    assert used[1] is held
    with pytest.raises(sqlite3.ProgrammingError):
        held.execute("SELECT 1")
    with pool.db() as db:
        assert rows(db) == ["old"]


def test_a_restore_waits_for_a_write_in_flight(path: Path) -> None:
    """Another process's write, begun on the file before it was deleted, is in the copy
    written back: the copy is taken under SQLite's write lock, after that write."""
    one, two = ConnectionPool(str(path), 5.0), ConnectionPool(str(path), 5.0)
    try:
        with one.transaction() as db:
            db.execute("CREATE TABLE t (x UNIQUE)")
        with two.db() as db:  # opens two's connections to the file
            assert rows(db) == []
        began, commit = threading.Event(), threading.Event()

        def write() -> None:
            with one.transaction() as db:
                db.execute("INSERT INTO t VALUES ('in flight')")
                began.set()
                assert commit.wait(60)

        writer = threading.Thread(target=write)
        writer.start()
        assert began.wait(60)
        path.unlink()

        def read() -> None:
            with two.db() as db:  # notices the deletion, and writes the file back
                rows(db)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)  # the restore is waiting for the write lock now
        commit.set()
        writer.join(60)
        reader.join(60)
        with closing(sqlite3.connect(path)) as db:
            assert rows(db) == ["in flight"]
    finally:
        one.close()
        two.close()


def test_a_write_checks_the_file_again_once_it_holds_the_lock(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose connection was handed out just before another process deleted and
    wrote back the file goes to the file written back, not to the deleted one."""
    one, two = ConnectionPool(str(path), 5.0), ConnectionPool(str(path), 5.0)
    try:
        with one.transaction() as db:
            db.execute("CREATE TABLE t (x UNIQUE)")
        with two.db() as db:
            assert rows(db) == []
        handed_out = ConnectionPool._connection
        late = [True]

        @contextlib.contextmanager
        def connection(self: ConnectionPool) -> Iterator[sqlite3.Connection]:
            with handed_out(self) as db:
                if self is two and late.pop() if late else False:
                    path.unlink()  # between the check and the write, one writes it back
                    with one.transaction() as other:
                        other.execute("INSERT INTO t VALUES ('one')")
                yield db

        monkeypatch.setattr(ConnectionPool, "_connection", connection)
        with two.transaction() as db:
            db.execute("INSERT INTO t VALUES ('two')")
        assert not late
        with closing(sqlite3.connect(path)) as db:
            assert rows(db) == ["one", "two"]
    finally:
        one.close()
        two.close()


def test_a_transaction_left_open_is_rolled_back_before_pooling(
    pool: ConnectionPool, path: Path
) -> None:
    """Code that raises (not an SQLite error) inside a transaction of its own gives back a
    connection that is rolled back: its write is not kept, the connection is no longer in
    a transaction, and other writers are not locked out."""
    used: list[sqlite3.Connection] = []

    def half_done() -> None:
        with pool.db() as db:
            used.append(db)
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES ('half')")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        half_done()
    with pool.db() as again:
        assert again is used[0]
        assert not again.in_transaction
        assert rows(again) == ["old"]
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as other:
        other.execute("INSERT INTO t VALUES ('other')")


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_connection_in_use_while_the_file_is_replaced_is_not_pooled_again(
    pool: ConnectionPool, path: Path
) -> None:
    """A replaced file is used at once; a connection that was in use meanwhile (still to
    the old file) is closed when it comes back, so no later call reads the old file."""
    with pool.db() as held:
        replace(path, "new")
        with pool.db() as db:
            assert rows(db) == ["new"]
        assert rows(held) == ["old"]
    with pytest.raises(sqlite3.ProgrammingError):
        held.execute("SELECT 1")
    with pool.db() as one, pool.db() as two:
        assert rows(one) == rows(two) == ["new"]


def test_a_closed_pool_closes_each_connection_it_still_hands_out(pool: ConnectionPool) -> None:
    """After close, idle connections are closed; a late call still works, on a connection
    of its own that is closed when it comes back (nothing stays open)."""
    with pool.db() as idle:
        pass
    pool.close()
    with pytest.raises(sqlite3.ProgrammingError):
        idle.execute("SELECT 1")
    with pool.db() as late:
        assert rows(late) == ["old"]
    with pytest.raises(sqlite3.ProgrammingError):
        late.execute("SELECT 1")


def test_a_pool_without_an_anchor_uses_a_replaced_file(pool: ConnectionPool, path: Path) -> None:
    """A pool with no connection open to its file (closed, or just forked: the parent's
    connections are not its own) takes up a file that replaced its own."""
    pool.close()
    replace(path, "new")
    with pool.db() as db:
        assert rows(db) == ["new"]


def test_a_pool_without_an_anchor_says_a_deleted_file_is_gone(
    pool: ConnectionPool, path: Path
) -> None:
    """With no connection open to write it back from, a deleted file is an
    OperationalError naming the file (a 503 from the store), and no empty database is
    created in its place."""
    pool.close()
    path.unlink()
    gone = r"database file '.*jobs\.db' is gone"
    with pytest.raises(sqlite3.OperationalError, match=gone), pool.db():
        pass
    assert not path.exists()


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_an_operator_reads_in_the_log_what_happened_to_the_file(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line when the file was replaced, one when it was deleted and written back,
    each naming the file; nothing at a first use."""
    caplog.set_level(logging.WARNING, logger="procgate")
    fresh = ConnectionPool(str(path), busy_timeout=5.0)
    try:
        with fresh.db() as db:
            db.execute("CREATE TABLE t (x UNIQUE)")
            db.execute("INSERT INTO t VALUES ('old')")
        assert caplog.records == []
        replace(path, "new")
        with fresh.db() as db:
            assert rows(db) == ["new"]
        path.unlink()
        with fresh.db() as db:
            assert rows(db) == ["new"]
    finally:
        fresh.close()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"SQLite store {path} was replaced: using the new file"),
        ("ERROR", f"SQLite store {path} was deleted while in use: writing it back"),
    ]
