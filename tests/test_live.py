"""Real servers: ``procgate serve`` on a free 127.0.0.1 port, spoken to over HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import children_of, live_pids_in_group, wait_for
from tests.servers import Server, start_server

CONFIG = """
[runner]
kind = "thread"
max_workers = 4
[commands.echo]
argv = ["echo"]
[commands.sleep]
argv = ["sleep"]
kill_grace = 1
[commands.sh]
shell = true
argv = 'eval "$1"'
kill_grace = 1
"""


def start(tmp_path: Path, *extra: str, **options: Any) -> Server:
    return start_server(tmp_path, CONFIG, *extra, **options)


def stop(server: Server) -> int:
    return server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = start(tmp_path)
    yield server
    stop(server)


@pytest.mark.docs("configuration.md#procgate-serve", "README.md#quickstart")
def test_quickstart_sync_echo(server: Server) -> None:
    """The README's curl call: a sync echo answers 200 with the finished job."""
    status, headers, data = server.request(
        "POST", "/commands/echo", {"args": ["hello"], "wait": True}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    job = json.loads(data)
    assert (job["status"], job["returncode"], job["stdout"]) == ("succeeded", 0, "hello\n")
    assert job["url"] == f"http://127.0.0.1:{server.port}/jobs/{job['id']}"


@pytest.mark.docs("README.md#quickstart")
def test_async_poll_and_cancel(server: Server) -> None:
    """An async sleep can be polled, then cancelled, and its process is gone."""
    status, job = server.json("POST", "/commands/sh", {"args": ["echo $$; sleep 100"]})
    assert status == 202
    path = f"/jobs/{job['id']}"
    wait_for(lambda: server.json("GET", path)[1]["stdout"])
    pgid = int(server.json("GET", path)[1]["stdout"])
    status, polled = server.json("GET", f"{path}?wait=0.2")
    assert (status, polled["status"]) == (200, "running")
    status, cancelled = server.json("DELETE", f"{path}?wait=10")
    assert (status, cancelled["status"]) == (202, "cancelled")
    wait_for(lambda: not live_pids_in_group(pgid), timeout=2)
    assert server.request("DELETE", path)[0] == 204
    assert server.request("GET", path)[0] == 404


@pytest.mark.docs("http-api.md#status-codes", "http-api.md#errors")
def test_errors_are_json(server: Server) -> None:
    """Over real HTTP, errors are JSON with the documented codes and headers."""
    status, body = server.json("POST", "/commands/nope", {})
    assert (status, body["error"]["code"]) == (404, "unknown_command")
    status, headers, data = server.request("PATCH", "/jobs/x")
    assert status == 405
    assert "DELETE" in headers["Allow"]
    assert json.loads(data)["error"]["code"] == "method_not_allowed"
    status, _, data = server.request(
        "POST",
        "/commands/echo",
        b"args=x",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    assert json.loads(data)["error"]["code"] == "unsupported_media_type"
    status, _, data = server.request("POST", "/commands/echo", b"{oops")
    assert status == 400
    assert json.loads(data)["error"]["code"] == "invalid_json"
    jobs_before = server.json("GET", "/jobs")[1]["jobs"]
    status, _, data = server.request("POST", "/commands/echo", b"x" * (2 << 20))
    assert status == 413
    assert json.loads(data)["error"]["code"] == "request_entity_too_large"
    assert server.json("GET", "/jobs")[1]["jobs"] == jobs_before  # refused: nothing created


def post_chunked(server: Server, path: str, body: bytes) -> tuple[int, Any]:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length), 100 bytes a chunk."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=iter([body[i : i + 100] for i in range(0, len(body), 100)]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_chunked_body_over_max_body_is_413(tmp_path: Path) -> None:
    """Through gunicorn, a chunked body over max_body is a JSON 413 and runs nothing,
    where it used to be cut at the limit and read as broken JSON (400 invalid_json)."""
    server = start_server(tmp_path, CONFIG + "[gate]\nmax_body = 1000\n")
    try:
        small = json.dumps({"args": ["chunked"], "wait": True}).encode()
        status, job = post_chunked(server, "/commands/echo", small)
        assert (status, job["stdout"]) == (200, "chunked\n")
        big = json.dumps({"args": ["x" * 5000], "wait": True}).encode()
        status, error = post_chunked(server, "/commands/echo", big)
        assert status == 413
        assert error["error"]["code"] == "request_entity_too_large"
        assert [j["id"] for j in server.json("GET", "/jobs")[1]["jobs"]] == [job["id"]]
    finally:
        stop(server)


@pytest.mark.docs("configuration.md#procgate-serve")
def test_served_under_a_prefix(tmp_path: Path) -> None:
    """With SCRIPT_NAME set, the server mounts the Gate under it and URLs carry it."""
    server = start(tmp_path, env={"SCRIPT_NAME": "/pg"}, prefix="/pg")
    try:
        status, headers, data = server.request("POST", "/pg/commands/echo", {"args": ["p"]})
        assert status == 202
        job = json.loads(data)
        assert headers["Location"] == f"http://127.0.0.1:{server.port}/pg/jobs/{job['id']}"
        status, polled = server.json("GET", f"/pg/jobs/{job['id']}?wait=10")
        assert polled["stdout"] == "p\n"
    finally:
        stop(server)


@pytest.mark.docs("configuration.md#procgate-serve")
def test_shutdown_stops_running_jobs(tmp_path: Path) -> None:
    """SIGTERM to the server stops it promptly and kills its running children."""
    server = start(tmp_path)
    try:
        _, job = server.json("POST", "/commands/sh", {"args": ["echo $$; sleep 100"]})
        wait_for(lambda: server.json("GET", f"/jobs/{job['id']}")[1]["stdout"])
        pgid = int(server.json("GET", f"/jobs/{job['id']}")[1]["stdout"])
        started = time.monotonic()
        assert stop(server) == 0
        assert time.monotonic() - started < 15
        wait_for(lambda: not live_pids_in_group(pgid), timeout=2)
    finally:
        stop(server)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procgate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.docs("configuration.md#procgate-check", "testing.md#testing-a-configuration-file")
def test_check_lists_commands(tmp_path: Path) -> None:
    """procgate check validates the example config and lists its commands."""
    example = Path(__file__).parent.parent / "examples" / "procgate.toml"
    result = run_cli("check", "--config", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "echo" in result.stdout
    assert "/echo" in result.stdout


@pytest.mark.docs("configuration.md#server", "configuration.md#procgate-check")
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """A bad config or flag combination exits 2 with a message, not a traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[commands.x]\nargv = ['no-such-program-xyz']\n")
    for args in (
        ("check", "--config", str(bad)),
        ("serve", "--config", str(bad)),
        ("check", "--config", str(tmp_path / "missing.toml")),
    ):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("procgate: error:")
        assert "Traceback" not in result.stderr
    good = tmp_path / "good.toml"
    good.write_text("[store]\nurl = 'memory://'\n[commands.echo]\nargv = ['echo']\n")
    result = run_cli("serve", "--config", str(good), "--workers", "2")
    assert result.returncode == 2
    assert "memory store" in result.stderr
    for flag in ("--workers", "--threads"):
        result = run_cli("serve", "--config", str(good), flag, "0")
        assert result.returncode == 2
        assert f"argument {flag}: got '0'; takes a whole number >= 1" in result.stderr


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.docs("live-output.md#truncation", "live-output.md#memory")
def test_gigabyte_of_output_keeps_memory_bounded(tmp_path: Path) -> None:
    """1 GiB printed with max_output = 16 MiB: the server grows < 64 MiB; a follower gets
    exactly the 16 MiB kept, and the job says it was truncated."""
    config = """
[store]
url = "memory://"
[commands.flood]
argv = ["head", "-c", "1073741824", "/dev/zero"]
max_output = 16777216
timeout = 120
[commands.echo]
argv = ["echo"]
"""
    server = start_server(tmp_path, config, "--threads", "4")
    try:
        (worker,) = children_of(server.proc.pid)  # the one gunicorn worker
        server.json("POST", "/commands/echo", {"wait": True})  # warm up: threads, imports
        server.json("GET", "/jobs")
        baseline = rss_kib(worker, "VmRSS")
        _, job = server.json("POST", "/commands/flood", {})
        conn_status, _, data = server.request("GET", f"/jobs/{job['id']}/stdout?follow=1")
        peak = rss_kib(worker, "VmHWM")  # the highest RSS so far, the job included
        assert conn_status == 200
        assert len(data) == 16 << 20
        assert data == b"\0" * (16 << 20)
        _, head, _ = server.request("GET", f"/jobs/{job['id']}/output?offset={16 << 20}")
        assert head["X-Job-Status"] == "succeeded"
        assert head["X-Output-Complete"] == "true"
        _, raw_headers, _ = server.request("GET", f"/jobs/{job['id']}/stdout")
        assert raw_headers["X-Output-Truncated"] == "true"
        growth_mib = (peak - baseline) / 1024
        print(
            f"RSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
            f"growth {growth_mib:.1f} MiB"
        )
        assert growth_mib < 64
    finally:
        server.stop()
