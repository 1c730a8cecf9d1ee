"""The SQLite store's file: deleted, replaced, made unwritable, or of an older schema."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import IO

import pytest

from procgate import JobStatus
from procgate.errors import ConfigError, StoreUnavailable
from procgate.jobs import Job, Outcome, Spec, new_job_id
from procgate.stores._sqlite_schema import SCHEMA_VERSION
from procgate.stores.sqlite import SQLiteStore
from tests.conftest import open_files, wait_for


def job() -> Job:
    return Job(id=new_job_id(), command="echo", args=(), spec=Spec(argv=("/bin/echo",), env={}))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.db"


@pytest.mark.docs("stores.md#durability")
def test_a_deleted_file_is_written_back_with_every_job(
    path: Path, stores: list[SQLiteStore]
) -> None:
    """Deleting the data directory under a running store loses nothing: the next use
    writes the database back from the open connection, and jobs acknowledged after the
    deletion land in the file on disk, where a new store (a restart) finds them all."""
    store = SQLiteStore(str(path))
    stores.append(store)
    before = [store.create(job()).id for _ in range(5)]
    shutil.rmtree(path.parent)
    after = [store.create(job()).id for _ in range(3)]
    assert path.exists()
    again = SQLiteStore(str(path))
    stores.append(again)
    assert again.count() == 8
    for job_id in before + after:
        assert again.get(job_id).status is JobStatus.QUEUED


def test_two_processes_restore_the_file_once(path: Path, stores: list[SQLiteStore]) -> None:
    """Two stores on one file (two server workers) both notice the deletion: one writes
    the file back, the other uses that file instead of writing its own over it."""
    one = SQLiteStore(str(path))
    two = SQLiteStore(str(path))
    stores += [one, two]
    first = one.create(job()).id
    path.unlink()
    second = one.create(job()).id  # writes the file back
    third = two.create(job()).id  # finds the new file: must not replace it
    fourth = one.create(job()).id
    again = SQLiteStore(str(path))
    stores.append(again)
    assert {j.id for j in again.list().jobs} == {first, second, third, fourth}


def test_a_replaced_file_is_used_not_overwritten(path: Path, stores: list[SQLiteStore]) -> None:
    """An operator who moves a new database file into place gets it used at once, and
    no connection to the old file is left open."""
    store = SQLiteStore(str(path))
    stores.append(store)
    old = store.create(job()).id
    fresh = path.with_name("fresh.db")
    other = SQLiteStore(str(fresh))
    stores.append(other)
    kept = other.create(job()).id
    other.close()
    fresh.rename(path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    assert {j.id for j in store.list().jobs} == {kept}
    assert old not in {j.id for j in store.list().jobs}
    assert [name for name in open_files(path.parent) if name.endswith(" (deleted)")] == []


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_an_unwritable_file_is_a_store_fault_and_passes(
    path: Path, stores: list[SQLiteStore]
) -> None:
    """While the files are immutable (chattr +i: even root cannot write them) a write is
    StoreUnavailable (a 503), never a half-done job; once writable, the same store
    works again with no restart, and reads worked throughout."""
    store = SQLiteStore(str(path))
    stores.append(store)
    running = store.create(job())
    store.start(running.id)
    # The database and its log; not the -shm index, which SQLite maps into memory (an
    # immutable mapping faults the process: no store can answer that).
    files = [str(path), f"{path}-wal"]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        with pytest.raises(StoreUnavailable, match="SQLite store is unavailable"):
            store.create(job())
        with pytest.raises(StoreUnavailable):
            store.finish(running.id, Outcome(JobStatus.SUCCEEDED, 0))
        assert store.get(running.id).status is JobStatus.RUNNING
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    assert store.finish(running.id, Outcome(JobStatus.SUCCEEDED, 0)) is True
    assert store.create(job()).status is JobStatus.QUEUED
    assert store.count() == 2


def test_a_version_2_file_is_migrated(path: Path, stores: list[SQLiteStore]) -> None:
    """A file of the previous schema (no process column) is brought up to date, with its
    jobs, instead of being refused."""
    store = SQLiteStore(str(path))
    kept = store.create(job()).id
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN process")
        db.execute("PRAGMA user_version = 2")
    db.close()
    again = SQLiteStore(str(path))
    stores.append(again)
    assert again.get(kept).process is None
    started = again.create(job())
    again.start(started.id)
    again.record_process(started.id, "boot:1:2")
    assert again.get(started.id).process == "boot:1:2"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_a_file_of_an_unknown_version_is_refused(path: Path) -> None:
    """A file written by a newer procgate (a schema version this one does not know) is
    refused at open, unchanged, rather than misread."""
    SQLiteStore(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 1}"):
        SQLiteStore(str(path))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


@pytest.mark.parametrize("name", ["a%41b.db", "a?mode=ro.db", "a#b.db", "100%?#.db"])
def test_a_path_with_uri_characters_names_exactly_that_file(
    tmp_path: Path, stores: list[SQLiteStore], name: str
) -> None:
    """Connections open the file through a ``file:`` URI, where ``%`` escapes and ``?``
    and ``#`` end the path: a name holding them still opens exactly that file (not
    ``aAb.db``, nor a new empty ``a``), and no other file appears."""
    path = tmp_path / "data" / name
    store = SQLiteStore(str(path))
    stores.append(store)
    made = store.create(job()).id
    assert {p.name for p in path.parent.iterdir()} == {
        name,
        f"{name}-wal",
        f"{name}-shm",
        f"{name}.reserve",
    }
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id FROM jobs").fetchall() == [(made,)]


def test_a_restore_leaves_only_the_files_the_store_keeps(
    path: Path, stores: list[SQLiteStore]
) -> None:
    """After the data directory is deleted and written back, it holds the database, its
    WAL files and the restore lock (the name every worker locks, whatever its version),
    and no temporary copy. (No reserve here: it is made again by a later retention pass.)"""
    store = SQLiteStore(str(path), reserve=0)
    stores.append(store)
    store.create(job())
    shutil.rmtree(path.parent)
    store.create(job())
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "jobs.db",
        "jobs.db-shm",
        "jobs.db-wal",
        "jobs.db.restore-lock",
    ]


def waits_for_lock(lock: IO[bytes]) -> bool:
    """Whether some thread or process is blocked in flock() on ``lock``'s file."""
    inode = os.fstat(lock.fileno()).st_ino
    with open("/proc/locks") as locks:
        return any("->" in line and f":{inode} " in line for line in locks)


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_worker_that_waited_for_the_restore_lock_uses_the_copy_made_meanwhile(
    path: Path, stores: list[SQLiteStore]
) -> None:
    """Two workers notice the deletion at once: the one that waited for the restore lock
    finds the copy the other wrote meanwhile and uses it, rather than writing its own
    over it (and over the jobs acknowledged into it)."""
    store = SQLiteStore(str(path))
    stores.append(store)
    first = store.create(job()).id
    theirs = sqlite3.connect(path, isolation_level=None)  # the other worker's connection
    try:
        theirs.execute("SELECT count(*) FROM jobs").fetchone()
        with open(f"{path}.restore-lock", "a+b") as lock, ThreadPoolExecutor(1) as pool:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker is writing its copy
            path.unlink()
            second = pool.submit(store.create, job())
            wait_for(lambda: waits_for_lock(lock), timeout=30)
            copy = path.with_name("copy.db")
            with closing(sqlite3.connect(copy)) as target:
                theirs.backup(target)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink()
            copy.rename(path)
            placed = os.stat(path)
            fcntl.flock(lock, fcntl.LOCK_UN)
            second_id = second.result(timeout=30).id
    finally:
        theirs.close()
    assert os.path.samestat(os.stat(path), placed)
    again = SQLiteStore(str(path))
    stores.append(again)
    assert {j.id for j in again.list().jobs} == {first, second_id}


def test_a_write_to_the_deleted_file_never_reaches_its_copy(
    path: Path, stores: list[SQLiteStore]
) -> None:
    """A worker still writing to the deleted file after it was written back (it checked
    the file just before the deletion) writes to the deleted file only: its log is not
    replayed onto the copy, and the jobs written to the copy stay."""
    store = SQLiteStore(str(path))
    stores.append(store)
    first = store.create(job()).id
    with closing(sqlite3.connect(path, isolation_level=None)) as late:
        late.execute("SELECT count(*) FROM jobs").fetchone()
        path.unlink()
        second = store.create(job()).id  # writes the file back
        late.execute("INSERT INTO owners (owner, beat) VALUES ('late', 0)")
        third = store.create(job()).id
    again = SQLiteStore(str(path))
    stores.append(again)
    assert {j.id for j in again.list().jobs} == {first, second, third}
    assert "late" not in again.heartbeats()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_file_deleted_twice_is_written_back_twice(path: Path, stores: list[SQLiteStore]) -> None:
    """The copy written back is the store's file from then on: when it is deleted in
    turn, it is written back again, with every job."""
    store = SQLiteStore(str(path))
    stores.append(store)
    made = [store.create(job()).id]
    for _ in range(2):
        path.unlink()
        made.append(store.create(job()).id)
    made.append(store.create(job()).id)
    again = SQLiteStore(str(path))
    stores.append(again)
    assert {j.id for j in again.list().jobs} == set(made)


def test_a_file_on_another_disk_is_taken_up_even_with_the_same_inode_number(
    tmp_path: Path, tmpfs: Callable[..., Path], stores: list[SQLiteStore]
) -> None:
    """A disk mounted over the data directory, holding a database at the same path, is
    the store's file from then on, also when its inode number is that of the old file
    (tmpfs numbers each mount's inodes from the start): files are told apart by device
    and inode."""
    data = tmpfs(tmp_path / "data")
    path = data / "jobs.db"
    store = SQLiteStore(str(path))
    stores.append(store)
    store.create(job())
    before = os.stat(path)
    tmpfs(data)
    other = SQLiteStore(str(path))
    kept = other.create(job()).id
    other.close()
    after = os.stat(path)
    assert (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino)
    assert after.st_ino == before.st_ino, "the case this test is for: inode numbers equal"
    assert {j.id for j in store.list().jobs} == {kept}
