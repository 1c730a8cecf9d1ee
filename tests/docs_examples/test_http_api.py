"""http-api.md: every route's examples against a real server."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from tests.docs_examples.blocks import ROOT
from tests.docs_examples.runner import Pages, run_examples

#: examples/procgate.toml with what the page's text describes around the examples that
#: need more: the `logs` and `deploy` commands of security.md's argument policy (deploy
#: with max_rate = "6/hour", and echo standing in for its script) and `[run]`. The logs
#: base is /var/log, not the text's /var/log/myapp: a base must exist, and the refusals
#: shown do not name it.
CONFIG = (
    (ROOT / "examples/procgate.toml").read_text()
    + """
[run]
allow_programs = ["echo", "date"]
timeout = 30

[commands.logs]
argv = ["tail"]
options = ["--lines="]
args = [{ name = "file", type = "path", base = "/var/log" }]
dashdash = true

[commands.deploy]
argv = ["echo", "deploy"]
args = [
    { name = "environment", choices = ["staging", "production"] },
    { name = "revision", pattern = "[0-9a-f]{7,40}" },
]
max_rate = "6/hour"
"""
)


@pytest.mark.docs(
    "http-api.md#get-health",
    "http-api.md#get-commands-and-get-commandsname",
    "http-api.md#post-commandsname",
    "http-api.md#post-run-raw-mode",
    "http-api.md#get-jobs",
    "http-api.md#get-jobsid",
    "http-api.md#delete-jobsid",
    "http-api.md#get-jobsidstdout-and-get-jobsidstderr",
    "http-api.md#get-jobsidoutput",
    "http-api.md#errors",
)
def test_http_api(pages: Pages) -> None:
    """The page in order, as one terminal session: health, commands, jobs started with
    stdin, a refused env and timeout, the policy and rate limit, idempotent replays, raw
    mode, the list and its cursor; the ``sleep 30`` job started above (its id in ``$id``)
    read, cancelled and deleted; a job's stderr and its tail from an offset, the OpenAPI
    document, a base64 job, and a 405 with its Allow header, a 415 and a 400."""
    run_examples(
        pages,
        "http-api.md",
        "http-api.md#get-health",
        "http-api.md#get-commands-and-get-commandsname",
        "http-api.md#post-commandsname",
        "http-api.md#idempotency",
        "http-api.md#post-run-raw-mode",
        "http-api.md#get-jobs",
        "http-api.md#get-jobsid",
        "http-api.md#delete-jobsid",
        "http-api.md#get-jobsidstdout-and-get-jobsidstderr",
        "http-api.md#get-jobsidoutput",
        "http-api.md#get-openapijson",
        "http-api.md#the-job-object",
        "http-api.md#errors",
        config=CONFIG,
    )


@pytest.mark.docs("http-api.md#authentication")
def test_http_api_authentication(pages: Pages) -> None:
    """With a token configured, ``$TOKEN`` lists the jobs; no token and a wrong one get
    401 with the challenge shown."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    config = CONFIG + f'\n[[auth.tokens]]\nid = "docs"\nsha256 = "{digest}"\n'
    run_examples(pages, "http-api.md#authentication", config=config, env={"TOKEN": token})
