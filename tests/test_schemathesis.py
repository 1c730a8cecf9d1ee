"""schemathesis against a live ``procgate serve``, from the server's own OpenAPI document."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "fuzz" / "schemathesis.sh"


@pytest.mark.timeout(600)
@pytest.mark.docs("security.md#the-openapi-document-and-fuzzing")
def test_schemathesis_finds_nothing() -> None:
    """All checks, seeded and bounded: no 5xx, no schema violations, no hangs, no tracebacks."""
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=550,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "No issues found" in result.stdout
