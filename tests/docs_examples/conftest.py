"""The pages' working directories and servers, shared by the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docs_examples.runner import Pages


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """Working directories and servers of the pages, one server per page for the module."""
    found = Pages(tmp_path_factory.mktemp("docs"))
    yield found
    found.stop()
