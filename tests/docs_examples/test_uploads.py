"""uploads.md: multipart requests with files."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.docs_examples.runner import Pages, run_examples


@pytest.mark.docs("uploads.md#the-request", "uploads.md#placeholders-filefield")
def test_uploads_request_and_placeholders(pages: Pages) -> None:
    """The opening snippet and the curl uploads: the file's path in args, sanitised."""
    run_examples(pages, "uploads.md", "uploads.md#the-request", "uploads.md#placeholders-filefield")


@pytest.mark.docs("uploads.md#stdin_file", "uploads.md#limits", "uploads.md#errors")
def test_uploads_stdin_file_limits_and_errors(pages: Pages) -> None:
    """A request part read from a file with stdin_file; 11 files and 101 MiB refused with
    413; a placeholder without its file and a bad field name refused with 400."""
    run_examples(pages, "uploads.md#stdin_file", "uploads.md#limits", "uploads.md#errors")


@pytest.mark.docs("uploads.md#the-request")
def test_uploads_request_part_sent_as_a_file(pages: Pages) -> None:
    """``-F request=@request.json`` (a file part named request) is the job's request."""
    page = pages.get("uploads.md")
    port = page.serve().port
    result = subprocess.run(
        [
            "curl",
            "-s",
            f"http://127.0.0.1:{port}/commands/wc",
            "-F",
            "request=@request.json",
            "-F",
            "notes=@notes.txt",
        ],
        cwd=page.directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job = json.loads(result.stdout)
    assert (job["status"], job["args"], job["stdout"]) == ("succeeded", ["-l"], "3\n")
