"""docs/compat.md: the Flask-Shell2HTTP switch, as the page shows it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.docs_examples.blocks import example


@pytest.mark.docs("compat.md#the-switch")
def test_the_flask_shell2http_switch() -> None:
    """The page's app runs a job and reads its report (in the test's own directory: the
    default store goes to the app's instance folder there)."""
    namespace: dict[str, Any] = {"__name__": "compat_page"}
    exec(compile(example("compat.md#the-switch"), "compat.md", "exec"), namespace)  # noqa: S102
    gate = namespace["shell2http"].gate
    assert gate is not None
    gate.close()
