"""What ``.ci/run`` promises: the README Quickstart's test command as written, and the core
suite (``CORE_SUITE``) on the oldest supported Python and the newest.

Both files are read as text; running them is CI's own job.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import CORE_SUITE

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / ".ci" / "run"


def quickstart_commands() -> list[str]:
    """The one-line ``sh`` blocks of the README's Quickstart: serve, then test."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]
    return [block for block in blocks if "\n" not in block]


@pytest.mark.docs("README.md#quickstart")
def test_ci_runs_the_readme_test_command_as_written() -> None:
    """The Quickstart's test command is a line of .ci/run, unchanged."""
    tests = [command for command in quickstart_commands() if "pytest" in command]
    assert len(tests) == 1, quickstart_commands()
    assert tests[0] in CI.read_text().splitlines()


@pytest.mark.docs("README.md#quickstart")
def test_quickstart_commands_make_and_use_a_virtualenv() -> None:
    """Both commands make ``.venv`` first, then run only that venv's programs: Debian's
    python3 refuses a pip install outside a venv, and ``procgate`` is on PATH only in one."""
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    for command in commands:
        first, *rest = command.split(" && ")
        assert first == "python3 -m venv .venv", command
        assert rest, command
        assert all(step.startswith(".venv/bin/") for step in rest), command


@pytest.mark.docs("testing.md#the-core-suite")
def test_core_suite_names_test_files_that_exist() -> None:
    """Each entry of CORE_SUITE is a test module or a directory of tests: a renamed file
    would otherwise leave the core suite without a word."""
    for entry in CORE_SUITE:
        path = ROOT / entry
        if entry.endswith("/"):
            assert path.is_dir(), entry
            assert list(path.glob("test_*.py")), entry
        else:
            assert path.is_file(), entry
            assert path.name.startswith("test_"), entry


@pytest.mark.docs("testing.md#the-core-suite")
def test_ci_runs_the_core_suite_from_the_oldest_supported_python() -> None:
    """.ci/run's Pythons start at requires-python's floor and end at a newer one, and it
    runs ``-m core`` with each."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'^requires-python = ">=(\d+\.\d+)"$', pyproject, re.M)
    assert floor is not None
    script = CI.read_text()
    versions = re.search(r'^versions="([^"]*)"$', script, re.M)
    assert versions is not None
    listed = [tuple(map(int, version.split("."))) for version in versions.group(1).split()]
    assert listed[0] == tuple(map(int, floor.group(1).split(".")))
    assert len(listed) >= 2, listed
    assert listed == sorted(listed), listed
    assert re.search(r'^\s*"\.venv-\$version/bin/python" -m pytest -m core$', script, re.M)
