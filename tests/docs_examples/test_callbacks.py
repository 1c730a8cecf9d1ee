"""callbacks.md: HTTP callbacks to a receiver, retries, Python hooks."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

import pytest

from tests.docs_examples.blocks import example_block
from tests.docs_examples.runner import Pages, matches, run_block, run_examples, steps
from tests.servers import free_port


def test_callbacks_python_snippets(pages: Pages) -> None:
    """The opening snippet, the repeat-safe handler and the hooks run as scripts."""
    run_examples(
        pages, "callbacks.md", "callbacks.md#durability-and-repeats", "callbacks.md#python-hooks"
    )


@pytest.mark.docs(
    "callbacks.md#the-request",
    "callbacks.md#verifying-the-signature",
    "callbacks.md#retries",
    "callbacks.md#the-jobs-callback-field",
)
def test_callbacks_to_a_receiver(pages: Pages) -> None:
    """The page's receiver.py verifies and prints the signed callback of a job started with
    a callback_url, which the job then shows delivered; a URL outside callback_allow is
    refused. With the receiver stopped, a callback has made 2 attempts after 2 s and has
    failed after its 5 attempts 17 s on (default backoff: 0, 1, 3, 7, 15 s).

    The page's 127.0.0.1:9000 is a free port here, in the server config, the receiver and
    the commands, and 9000 again in the output compared."""
    port = free_port()
    addresses = {"127.0.0.1:9000": f"127.0.0.1:{port}", '"127.0.0.1", 9000': f'"127.0.0.1", {port}'}
    page = replace(pages.get("callbacks.md"), addresses=addresses)
    page.serve()  # before the receiver, whose log would otherwise wait for the server
    receiver = example_block("callbacks.md#verifying-the-signature", 0)
    (page.directory / "receiver.py").write_text(page.rewrite(receiver.text))
    log = page.directory / "receiver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "receiver.py"], cwd=page.directory, stdout=out, stderr=out
        )
    try:
        _wait_for_port(port, proc)
        run_block(example_block("callbacks.md#the-request", 0), page)
    finally:
        proc.terminate()
        proc.wait(10)
    shown = steps(example_block("callbacks.md#verifying-the-signature", 1))
    assert [step.command for step in shown] == ["python3 receiver.py"]
    printed = log.read_text().replace(f"127.0.0.1:{port}", "127.0.0.1:9000")
    assert matches(shown[0].expected, printed), printed
    job_id = (page.directory / "job.json").read_text().split('"')[3]
    assert printed.startswith(f"{job_id} succeeded 0 "), printed
    run_block(example_block("callbacks.md#the-jobs-callback-field", 0), page)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, "the receiver exited"
        assert time.monotonic() < deadline, "the receiver did not listen"
        time.sleep(0.05)
