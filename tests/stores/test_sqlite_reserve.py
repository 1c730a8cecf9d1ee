"""The SQLite store's reserve: disk held back beside the database so a full disk can delete.

Real disks throughout: a small tmpfs filled up, a directory made immutable (chattr +i).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from procgate import JobStatus
from procgate.errors import StoreUnavailable
from procgate.jobs import Outcome
from procgate.stores._sqlite_file import REFILL_INTERVAL, RESERVE, Reserve
from procgate.stores.sqlite import SQLiteStore
from tests.stores.conftest import fill
from tests.stores.test_contract import new_job

Tmpfs = Callable[..., Path]


def finished(store: SQLiteStore) -> str:
    job = store.create(new_job())
    store.start(job.id)
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    return job.id


@pytest.mark.docs("stores.md#options")
def test_the_reserve_is_a_private_file_of_its_size_beside_the_database(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """Opening a store makes ``<file>.reserve``: 1 MiB by default, allocated (not a sparse
    file, which would hold nothing back), readable by its owner only (0600); a size of 1
    byte is held as asked, and 0 holds none."""
    stores.append(SQLiteStore(str(tmp_path / "jobs.db")))
    reserve = os.stat(tmp_path / "jobs.db.reserve")
    assert reserve.st_size == RESERVE == 1 << 20
    assert reserve.st_blocks * 512 >= RESERVE
    assert stat.S_IMODE(reserve.st_mode) == 0o600
    stores.append(SQLiteStore(str(tmp_path / "one.db"), reserve=1))
    assert os.stat(tmp_path / "one.db.reserve").st_size == 1
    stores.append(SQLiteStore(str(tmp_path / "none.db"), reserve=0))
    assert not (tmp_path / "none.db.reserve").exists()
    names = {p.name for p in tmp_path.iterdir()}
    assert not {n for n in names if ".reserve." in n}  # no temporary file left over


def test_a_reserve_in_place_is_left_alone(tmp_path: Path, stores: list[SQLiteStore]) -> None:
    """Retention passes find the reserve there and do not make it again (a write of 1 MiB
    per pass): the file stays the same file."""
    store = SQLiteStore(str(tmp_path / "jobs.db"), evict_interval=0)
    stores.append(store)
    reserve = tmp_path / "jobs.db.reserve"
    with reserve.open("rb") as held:  # held open: a new file cannot reuse its inode
        job = store.create(new_job())
        for _ in range(3):
            store.get(job.id)  # each runs a retention pass (evict_interval 0)
        assert os.path.samestat(os.fstat(held.fileno()), os.stat(reserve))


def test_a_refill_without_room_is_tried_again_after_the_interval(
    tmp_path: Path, tmpfs: Tmpfs
) -> None:
    """On a full disk the reserve cannot be made: nothing is left behind, no error, and
    the next try is ``REFILL_INTERVAL`` seconds later, not before, even with room again."""
    disk = tmpfs(tmp_path / "disk", "2m")
    reserve = Reserve(str(disk / "jobs.db.reserve"), RESERVE)
    filler = fill(disk)
    reserve.refill(1000.0)
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no temporary file left
    filler.unlink()
    reserve.refill(1000.0 + REFILL_INTERVAL - 0.5)
    assert not os.path.exists(reserve.path)
    reserve.refill(1000.0 + REFILL_INTERVAL)
    assert os.stat(reserve.path).st_size == RESERVE


def test_a_reserve_that_cannot_be_created_is_no_error(tmp_path: Path) -> None:
    """In a directory where no file can be created (immutable, as a read-only mount) the
    refill gives up quietly and tries again after the interval."""
    directory = tmp_path / "data"
    directory.mkdir()
    reserve = Reserve(str(directory / "jobs.db.reserve"), 4096)
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        reserve.refill(1000.0)
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    assert list(directory.iterdir()) == []
    reserve.refill(1000.0 + REFILL_INTERVAL)
    assert os.stat(reserve.path).st_size == 4096


def test_release_says_whether_it_gave_room_back(tmp_path: Path) -> None:
    """``release`` removes the reserve and says True; with no reserve there it says
    False, so the store does not try its delete again for nothing."""
    reserve = Reserve(str(tmp_path / "jobs.db.reserve"), 4096)
    reserve.refill(1000.0)
    assert reserve.release() is True
    assert not os.path.exists(reserve.path)
    assert reserve.release() is False


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_delete_on_a_full_disk_uses_the_reserve(
    tmp_path: Path, tmpfs: Tmpfs, stores: list[SQLiteStore], caplog: pytest.LogCaptureFixture
) -> None:
    """On a full disk a new job is StoreUnavailable, and a delete gives the reserve back
    to the disk and deletes with it: the job is gone, and so is the reserve. The operator
    is told, once, in a warning that names the file."""
    caplog.set_level(logging.WARNING, logger="procgate")
    disk = tmpfs(tmp_path / "disk", "4m")
    store = SQLiteStore(str(disk / "jobs.db"))
    stores.append(store)
    done = finished(store)
    reserve = disk / "jobs.db.reserve"
    filler = fill(disk)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.create(new_job())
        assert "database or disk is full" in str(info.value.__cause__)
        assert reserve.exists()
        assert store.delete(done) is True
        assert not reserve.exists()
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
            (
                "WARNING",
                f"SQLite store {disk / 'jobs.db'}: the disk is full; deleting with the reserve",
            )
        ]
        assert [job.id for job in store.list().jobs] == []
    finally:
        filler.unlink()


def test_a_delete_that_meets_a_lock_keeps_the_reserve(
    tmp_path: Path, stores: list[SQLiteStore]
) -> None:
    """Only a full disk spends the reserve: a delete that times out on another writer's
    lock is StoreUnavailable, and the reserve stays."""
    path = tmp_path / "jobs.db"
    store = SQLiteStore(str(path), busy_timeout=0.05)
    stores.append(store)
    done = finished(store)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            store.delete(done)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (tmp_path / "jobs.db.reserve").exists()
    assert store.get(done).status is JobStatus.SUCCEEDED
