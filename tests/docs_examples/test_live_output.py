"""live-output.md: following a job's output by curl, polling and events."""

from __future__ import annotations

import pytest

from tests.docs_examples.blocks import example
from tests.docs_examples.runner import Pages, run_examples, run_script


@pytest.mark.docs("live-output.md#raw-bytes-follow1")
def test_live_output_raw_bytes(pages: Pages) -> None:
    """The opening snippet follows a job with the Client; curl follows one line by line,
    and the job has succeeded when the stream ends."""
    run_examples(pages, "live-output.md", "live-output.md#raw-bytes-follow1")


@pytest.mark.docs("live-output.md#polling-by-byte-offset")
def test_live_output_polling(pages: Pages) -> None:
    """Each poll answers the next line, its offset and whether the stream is complete."""
    run_examples(pages, "live-output.md#polling-by-byte-offset")


@pytest.mark.docs("live-output.md#polling-by-byte-offset")
def test_polling_python_client_tails_a_job(pages: Pages) -> None:
    """The page's ``tail()`` copies a running job's stdout and returns its final status."""
    page = pages.get("live-output.md")
    server = page.serve()
    _, job = server.json("POST", "/commands/count", {"args": ["2"]})
    code = example("live-output.md#polling-by-byte-offset", 1)
    code += f"\nprint(tail({job['url']!r}))\n"
    result = run_script(code, page)
    assert result.stdout == "line 1\nline 2\nsucceeded\n", result.stderr


@pytest.mark.docs(
    "live-output.md#server-sent-events",
    "live-output.md#event-ids-and-resuming",
    "live-output.md#keepalives",
)
def test_live_output_events_and_resuming(pages: Pages) -> None:
    """The event stream of a two-line job, event by event and without keepalives; then
    the same stream resumed after id 2: the rest of the output, the status, the end."""
    run_examples(
        pages, "live-output.md#server-sent-events", "live-output.md#event-ids-and-resuming"
    )


def test_sse_python_client_follows_a_job(pages: Pages) -> None:
    """follow.py, run as the page says, copies both streams and prints the final status."""
    page = pages.get("live-output.md")
    _, job = page.serve().json("POST", "/commands/count", {"args": ["2"]})
    result = run_script(example("live-output.md#a-python-client"), page, job["url"])
    assert result.stdout == "line 1\nline 2\n"
    assert result.stderr == "warn 1\nwarn 2\nsucceeded 0\n"


@pytest.mark.docs("live-output.md#truncation")
def test_live_output_truncation(pages: Pages) -> None:
    """A follower of a command with max_output = 20 gets exactly 20 bytes, then the flag."""
    run_examples(pages, "live-output.md#truncation")
