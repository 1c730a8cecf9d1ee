"""SQLite faults under a real ``procgate serve``: unwritable, deleted, and full disks.

Each breaks the real file system under a running server (``chattr +i``, ``rm -rf``, a
small tmpfs filled up) and checks what a client sees: a JSON 503 with Retry-After while
the fault lasts, no acknowledged job lost, nothing stuck, and recovery without a restart.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.servers import Server, start_server
from tests.stores.conftest import fill

COMMANDS = """
[runner]
kind = "thread"
heartbeat = 0.5
[commands.sh]
shell = true
argv = 'eval "$1"'
timeout = 30
kill_grace = 1
max_running = 1
[commands.echo]
argv = ["echo"]
"""


def serve(tmp_path: Path, data: Path, servers: list[Server], *extra: str) -> Server:
    config = f'[store]\nurl = "sqlite:///{data}/jobs.db"\n' + COMMANDS
    server = start_server(tmp_path, config, *extra)
    servers.append(server)
    return server


def assert_unavailable(server: Server, method: str, path: str, body: object = None) -> None:
    status, headers, data = server.request(method, path, body)
    assert status == 503, (status, data)
    assert json.loads(data)["error"]["code"] == "store_unavailable"
    assert int(headers["Retry-After"]) >= 1


@contextlib.contextmanager
def immutable(*files: Path) -> Iterator[None]:
    """Files nobody may write, root included (not the mapped -shm index: see
    tests/stores/test_sqlite_file.py)."""
    names = [str(f) for f in files]
    subprocess.run(["chattr", "+i", *names], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *names], check=True)


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_an_unwritable_file_gives_503s_and_the_job_still_ends(
    tmp_path: Path, servers: list[Server]
) -> None:
    """The database is unwritable for a while, during which a job's child ends: new jobs
    get 503 (not a generic 500), the job ends succeeded with its output once the file
    is writable, and the command's max_running = 1 admits its next job (no slot leaked)."""
    data = tmp_path / "data"
    server = serve(tmp_path, data, servers, "--workers", "1")
    status, job = server.json("POST", "/commands/sh", {"args": ["sleep 1; echo out"]})
    assert status == 202, job
    wait_for(lambda: server.json("GET", f"/jobs/{job['id']}")[1]["status"] == "running")
    db = data / "jobs.db"
    with immutable(db, Path(f"{db}-wal")):
        assert_unavailable(server, "POST", "/commands/echo", {"args": ["x"]})
        assert_unavailable(server, "DELETE", f"/jobs/{job['id']}")
        # the child ends while its finish cannot be written: it waits in the runner
        status, seen = server.json("GET", f"/jobs/{job['id']}?wait=3")
        assert status == 200
        assert seen["status"] == "running"
    status, done = server.json("GET", f"/jobs/{job['id']}?wait=30")
    assert done["status"] == "succeeded", done
    assert done["stdout"] == "out\n"
    status, again = server.json("POST", "/commands/sh", {"args": ["echo again"], "wait": 30})
    assert status == 200, again
    assert again["stdout"] == "again\n"


@pytest.mark.docs("stores.md#durability")
def test_deleting_the_data_directory_loses_no_acknowledged_job(
    tmp_path: Path, servers: list[Server]
) -> None:
    """rm -rf of the data directory while two workers take jobs from 4 threads: every
    job answered 2xx is there after a restart, and nothing answered 5xx other than 503."""
    data = tmp_path / "data"
    server = serve(tmp_path, data, servers, "--workers", "2")
    acknowledged: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        for number in range(400):
            if stop.is_set() and number % 10 == 0:
                return
            status, _, body = server.request(
                "POST", "/commands/echo", {"args": [str(number)], "wait": 10}
            )
            with lock:
                statuses.append(status)
                if status in (200, 202):
                    acknowledged.append(json.loads(body)["id"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 40, timeout=60)
    for _ in range(20):  # the servers may write a file in it while it goes, as with rm -rf
        try:
            shutil.rmtree(data)
            break
        except OSError:
            continue
    else:
        raise AssertionError(f"{data} could not be deleted in 20 tries")
    count = len(acknowledged)
    wait_for(lambda: len(acknowledged) >= count + 40, timeout=60)
    stop.set()
    for thread in threads:
        thread.join(120)
    assert {s for s in statuses if s >= 500} <= {503}
    assert (data / "jobs.db").exists()
    server.stop()
    again = serve(tmp_path, data, servers, "--workers", "1")
    _, listed = again.json("GET", "/jobs?limit=1000")
    stored = {job["id"]: job for job in listed["jobs"]}
    missing = [job_id for job_id in acknowledged if job_id not in stored]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged jobs lost"
    assert {stored[job_id]["status"] for job_id in acknowledged} == {"succeeded"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that fills up (CI runs as root, so it may mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.docs("stores.md#when-the-store-fails")
def test_a_full_disk_gives_503s_keeps_output_and_recovers(
    tmp_path: Path, small_disk: Path, servers: list[Server]
) -> None:
    """The data directory's disk fills while a job runs: new jobs get a JSON 503 with
    Retry-After (never a generic 500), reads still answer, DELETE still frees a job
    (with the room the store held back), the running job's output and end are kept (not
    an error with its output lost), and when space returns the server takes jobs again
    without a restart, and holds its reserve back again."""
    server = serve(tmp_path, small_disk, servers, "--workers", "1")
    for number in range(5):  # some history, for DELETE below
        status, job = server.json("POST", "/commands/echo", {"args": [str(number)], "wait": 10})
        assert status == 200, job
    old = job["id"]
    status, running = server.json("POST", "/commands/sh", {"args": ["sleep 1; echo kept"]})
    assert status == 202
    wait_for(lambda: server.json("GET", f"/jobs/{running['id']}")[1]["status"] == "running")
    filler = fill(small_disk)
    try:
        assert_unavailable(server, "POST", "/commands/echo", {"args": ["x"]})
        status, _ = server.json("GET", f"/jobs/{old}")
        assert status == 200
        status, seen = server.json("GET", f"/jobs/{running['id']}?wait=3")
        assert status == 200
        assert seen["status"] == "running"  # ended, but its finish waits for space
        reserve = small_disk / "jobs.db.reserve"
        assert reserve.exists()
        status, _, body = server.request("DELETE", f"/jobs/{old}")
        assert status == 204, body
        assert not reserve.exists()  # given back to the disk for the delete
        assert server.json("GET", f"/jobs/{old}")[0] == 404
    finally:
        filler.unlink()
    status, done = server.json("GET", f"/jobs/{running['id']}?wait=30")
    assert done["status"] == "succeeded", done
    assert done["stdout"] == "kept\n"
    status, echo = server.json("POST", "/commands/echo", {"args": ["back"], "wait": 30})
    assert status == 200, echo
    assert echo["stdout"] == "back\n"
    wait_for(lambda: server.json("GET", f"/jobs/{echo['id']}") and reserve.exists(), timeout=30)
