"""Every shell and Python block of the docs is run by a test of this package, or says why not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.docs_examples.blocks import all_blocks, blocks, problems


def _modules() -> list[ast.Module]:
    """The test modules of this package."""
    here = Path(__file__).parent
    return [ast.parse(path.read_text(encoding="utf-8")) for path in sorted(here.glob("test_*.py"))]


def _run_calls() -> set[str]:
    """The sections named by ``run_examples("...")`` calls in this package."""
    return {
        arg.value
        for module in _modules()
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "run_examples"
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    }


def _test_names() -> set[str]:
    return {
        node.name
        for module in _modules()
        for node in ast.walk(module)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


@pytest.mark.docs("testing.md#procgates-own-suite")
def test_every_example_is_run_or_illustrative() -> None:
    """A shell or Python block of the docs is run by a test of this package, or says why not."""
    wrong = problems(all_blocks(), _run_calls(), _test_names())
    assert not wrong, "\n".join(wrong)


def test_the_convention_catches_an_unrun_block(tmp_path: Path) -> None:
    """An unmarked block of a section no test runs, an empty reason and a ``run by`` naming
    no test are each reported; a marked or run block is not."""
    page = tmp_path / "page.md"
    page.write_text(
        "# P\n```sh\necho intro\n```\n## A\n<!-- example: illustrative, because why -->\n"
        "```python\nx = 1\n```\n<!-- example: illustrative -->\n```console\n$ true\n```\n"
        "### B\n```bash\ntrue\n```\n<!-- example: run by test_nothing -->\n```sh\ntrue\n```\n"
        "```json\n{}\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [b.section for b in found] == ["page.md", "page.md#a", "page.md#a", *["page.md#b"] * 3]
    wrong = problems(found, {"page.md"}, set())
    assert [w.split(":")[1] for w in wrong] == ["11", "15", "19"]
