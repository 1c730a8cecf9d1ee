"""configuration.md: procgate check, token and serve."""

from __future__ import annotations

import pytest

from tests.docs_examples.runner import Pages, run_examples


@pytest.mark.docs(
    "configuration.md#procgate-check",
    "configuration.md#procgate-schema",
    "configuration.md#procgate-token",
    "configuration.md#procgate-serve",
)
def test_configuration_commands(pages: Pages) -> None:
    """procgate check of the example and of a bad file (exit 2), procgate schema,
    procgate token, and procgate serve refusing two workers for a memory store (exit 2)."""
    run_examples(
        pages,
        "configuration.md",
        "configuration.md#procgate-check",
        "configuration.md#procgate-schema",
        "configuration.md#procgate-token",
        "configuration.md#procgate-serve",
    )
