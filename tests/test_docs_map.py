"""Every promise in the docs is pinned by a test: each docs section maps to tests, and back.

A section is a ``##`` or ``###`` heading of ``docs/*.md`` or ``README.md``. A test claims a
section with ``@pytest.mark.docs("http-api.md#errors")`` (file + GitHub's anchor for the
heading). A section that promises nothing (an introduction, a walk-through, tips) says so
under its heading: ``<!-- promise: none, because ... -->``. Sections still to map are
listed in ``tests/docs_unmapped.txt``; the list may only shrink.

The tests are read with ``ast``, not imported: the check is fast and needs no fixtures.
"""

from __future__ import annotations

import ast
import html
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
UNMAPPED = TESTS / "docs_unmapped.txt"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_NOT_A_PROMISE = re.compile(r"^<!--\s*promise:\s*none\b(.*?)-->\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text, before de-duplication.

    Entities are decoded and links reduced to their text first, as in the rendered
    page; then lowercase, every character that is not a letter, digit, ``_``, ``-`` or
    space dropped (backticks, punctuation), and each space turned into ``-``.
    """
    text = _LINK.sub(r"\1", html.unescape(heading)).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_files() -> list[Path]:
    """The pages whose sections must be mapped: every ``docs/*.md``, and the README."""
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def _doc_name(path: Path) -> str:
    """``http-api.md`` for a page of docs/, ``README.md`` for the README."""
    if path.parent == ROOT / "docs" or not path.is_relative_to(ROOT):
        return path.name
    return path.relative_to(ROOT).as_posix()


def sections(path: Path) -> dict[str, bool]:
    """``file#anchor`` of each ``##``/``###`` heading of a page -> whether it makes promises.

    Headings inside fenced code blocks are not headings. Anchors are de-duplicated over
    every heading level, as GitHub does: the second "Limits" is ``#limits-1``.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, bool] = {}
    seen: Counter[str] = Counter()
    in_fence = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            continue
        base = anchor(match.group(2))
        slug = base if seen[base] == 0 else f"{base}-{seen[base]}"
        seen[base] += 1
        if len(match.group(1)) not in (2, 3):
            continue
        following = next((line for line in lines[index + 1 :] if line.strip()), "")
        found[f"{_doc_name(path)}#{slug}"] = _NOT_A_PROMISE.match(following.strip()) is None
    return found


def all_sections() -> dict[str, bool]:
    result: dict[str, bool] = {}
    for path in doc_files():
        result.update(sections(path))
    return result


def _is_docs_marker(node: ast.Call) -> bool:
    """``pytest.mark.docs(...)``, the only spelling the suite uses."""
    return (
        isinstance(node.func, ast.Attribute)
        and node.func.attr == "docs"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "mark"
        and isinstance(node.func.value.value, ast.Name)
        and node.func.value.value.id == "pytest"
    )


def _marker_nodes(tree: ast.Module) -> list[tuple[str, ast.Call]]:
    """(test name, marker call) for markers on test functions, test classes, ``pytestmark``."""
    found: list[tuple[str, ast.Call]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith(("test", "Test")):
                calls = [d for d in node.decorator_list if isinstance(d, ast.Call)]
                found.extend((node.name, d) for d in calls if _is_docs_marker(d))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            values = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            calls = [v for v in values if isinstance(v, ast.Call)]
            found.extend(("pytestmark", v) for v in calls if _is_docs_marker(v))
    return found


def claims() -> dict[str, list[str]]:
    """``file#anchor`` -> the tests (``path::name``) whose ``docs`` marker names it."""
    result: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT).as_posix()
        for name, call in _marker_nodes(tree):
            for arg in call.args:
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise AssertionError(
                        f"{where}:{call.lineno}: pytest.mark.docs takes string literals "
                        '("page.md#anchor"), so this check can read it without importing'
                    )
                result.setdefault(arg.value, []).append(f"{where}::{name}")
    return result


def unmapped_allowlist() -> list[str]:
    if not UNMAPPED.exists():
        return []
    lines = UNMAPPED.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_anchors_follow_github(tmp_path: Path) -> None:
    """Anchors are computed as GitHub renders them, so a marker is a link that works."""
    assert anchor("GET /commands and GET /commands/&lt;name&gt;") == (
        "get-commands-and-get-commandsname"
    )
    assert (
        anchor("Restart recovery and the `lost` status") == "restart-recovery-and-the-lost-status"
    )
    assert anchor("Raw bytes: ?follow=1") == "raw-bytes-follow1"
    assert anchor("[server]") == "server"
    assert anchor("procgate.auth and procgate.policy") == "procgateauth-and-procgatepolicy"
    assert anchor("401, 403 and 404") == "401-403-and-404"
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n## Limits\n```\n## not a heading\n```\n### Limits\n\n"
        "<!-- promise: none, because it is an example -->\n#### Limits\n## Limits\ntext\n",
        encoding="utf-8",
    )
    assert sections(page) == {
        "page.md#limits": True,
        "page.md#limits-1": False,
        "page.md#limits-3": True,
    }


@pytest.mark.docs("testing.md#procgates-own-suite")
def test_every_docs_section_has_a_test() -> None:
    """A section that makes promises is claimed by at least one test's ``docs`` marker."""
    known = all_sections()
    claimed = claims()
    allowed = unmapped_allowlist()
    missing = [
        s for s, promises in known.items() if promises and s not in claimed and s not in allowed
    ]
    assert not missing, (
        "These docs sections promise behaviour no test claims:\n  "
        + "\n  ".join(missing)
        + '\nAdd @pytest.mark.docs("<section>") to the tests that would fail if the promise '
        "broke (write one if none would), or, if the section promises nothing a client or "
        "operator relies on, put <!-- promise: none, because <reason> --> on the line "
        "under its heading. See docs/testing.md#procgates-own-suite."
    )
    if allowed:
        print(f"{len(allowed)} docs sections still to map (tests/docs_unmapped.txt)")


@pytest.mark.docs("testing.md#procgates-own-suite")
def test_every_docs_marker_names_a_section() -> None:
    """A marker naming a heading that does not exist (renamed, removed) is an error."""
    known = all_sections()
    stale = {s: tests for s, tests in claims().items() if s not in known}
    assert not stale, (
        "These docs markers name no ##/### section of docs/*.md or README.md:\n  "
        + "\n  ".join(f"{s}  <- {', '.join(tests)}" for s, tests in sorted(stale.items()))
        + "\nA heading was renamed or removed, or the anchor is misspelt: point the marker "
        "at the section that now makes the promise (anchors: lowercase, spaces to '-', "
        "punctuation and backticks dropped, a repeated heading gets '-1', '-2')."
    )


def test_unmapped_allowlist_only_lists_open_sections() -> None:
    """``tests/docs_unmapped.txt`` names real sections that are still unmapped, so it shrinks."""
    known = all_sections()
    claimed = claims()
    wrong = [s for s in unmapped_allowlist() if s not in known]
    done = [s for s in unmapped_allowlist() if s in claimed or not known.get(s, True)]
    assert not wrong, f"tests/docs_unmapped.txt names sections that do not exist: {wrong}"
    assert not done, (
        f"These sections are now mapped or marked promise: none; delete them from "
        f"tests/docs_unmapped.txt: {done}"
    )


def _report() -> None:
    """``python tests/test_docs_map.py``: which tests pin each section, and what is left."""
    known, claimed, allowed = all_sections(), claims(), set(unmapped_allowlist())
    for section, promises in known.items():
        if not promises:
            state = "promise: none"
        elif section in claimed:
            state = f"{len(claimed[section])} tests"
        else:
            state = "UNMAPPED (allowlisted)" if section in allowed else "UNMAPPED"
        print(f"{section:70} {state}")
    mapped = sum(1 for s in known if s in claimed)
    none = sum(1 for promises in known.values() if not promises)
    print(
        f"\n{len(known)} sections: {mapped} mapped, {none} promise: none, "
        f"{len(known) - mapped - none} unmapped"
    )


if __name__ == "__main__":
    _report()
