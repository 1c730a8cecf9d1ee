"""The SQLite store's file: deleted, replaced, made unwritable, or of an older schema."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from procgate import JobStatus
from procgate.errors import ConfigError, StoreUnavailable
from procgate.jobs import Job, Outcome, Spec, new_job_id
from procgate.stores._sqlite_schema import SCHEMA_VERSION
from procgate.stores.sqlite import SQLiteStore


def job() -> Job:
    return Job(id=new_job_id(), command="echo", args=(), spec=Spec(argv=("/bin/echo",), env={}))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.db"


@pytest.fixture
def stores() -> Iterator[list[SQLiteStore]]:
    made: list[SQLiteStore] = []
    yield made
    for store in made:
        store.close()


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
    """An operator who moves a new database file into place gets it used at once."""
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
