"""The README's and the overview's examples."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.docs_examples.blocks import ROOT, example
from tests.docs_examples.runner import Pages, run_examples
from tests.servers import Server, free_port


@pytest.mark.docs("README.md#quickstart")
def test_readme_quickstart(pages: Pages) -> None:
    """The README's serve command starts, and its curl session runs: a waited job, an
    asynchronous one long-polled and cancelled by its id, the list."""
    run_examples(pages, "README.md#quickstart")


def test_readme_in_python(pages: Pages) -> None:
    """The README's Python sketch builds and registers without error."""
    run_examples(pages, "README.md#in-python")


def test_readme_gunicorn_answers_health_while_a_job_waits(tmp_path: Path) -> None:
    """The README's gunicorn one-liner serves the example config from the repository root,
    and answers /health at once while a request waits for a 3 s job."""
    command = example("README.md#in-python", 1).strip()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = free_port()
    argv = [*shlex.split(command), "-b", f"127.0.0.1:{port}"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PATH": path}
    )
    server = Server(proc, port, tmp_path / "gunicorn.log")
    try:
        deadline = time.monotonic() + 30
        while not _answers(server):
            assert proc.poll() is None, server.log.read_text()
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.1)
        waiting = threading.Thread(
            target=server.request, args=("POST", "/commands/sleep", {"args": ["3"], "wait": True})
        )
        waiting.start()
        time.sleep(0.5)  # the waiting request is in, holding its thread
        began = time.monotonic()
        status, _, _ = server.request("GET", "/health")
        took = time.monotonic() - began
        assert waiting.is_alive(), "the job did not wait"
        waiting.join(10)
        assert status == 200
        assert took < 1.0, f"/health took {took:.1f} s behind a waiting request"
    finally:
        server.stop()
        log.close()


def _answers(server: Server) -> bool:
    try:
        return server.request("GET", "/health")[0] == 200
    except OSError:
        return False


def test_index(pages: Pages) -> None:
    """The overview's snippet and its check, serve and curl session."""
    run_examples(pages, "index.md")
