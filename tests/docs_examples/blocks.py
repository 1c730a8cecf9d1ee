"""The fenced blocks of README.md and docs/*.md, and the markers above them."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.test_docs_map import anchor, doc_files

ROOT = Path(__file__).resolve().parent.parent.parent
LANGUAGES = {"sh", "bash", "console", "python"}

_FENCE_OPEN = re.compile(r"^(\s*)(```|~~~)(\w*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MARKER = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->$")
_ILLUSTRATIVE = re.compile(r"illustrative, because \S.*")
_RUN_BY = re.compile(r"run by (test_\w+)")
_COPY_OF = re.compile(r"copy of (examples/[\w.]+)")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page, with the section it is in and the marker above it."""

    page: str
    section: str  # "page.md#anchor", or "page.md" above the first ## heading
    line: int
    language: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _page_name(path: Path) -> str:
    if path.parent == ROOT / "docs" or not path.is_relative_to(ROOT):
        return path.name
    return path.relative_to(ROOT).as_posix()


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = _page_name(path)
    found: list[Block] = []
    section = page
    seen: dict[str, int] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line)
        if heading:
            base = anchor(heading.group(2))
            slug = base if base not in seen else f"{base}-{seen[base]}"
            seen[base] = seen.get(base, 0) + 1
            if len(heading.group(1)) in (2, 3):
                section = f"{page}#{slug}"
        opened = _FENCE_OPEN.match(line)
        if opened is None:
            index += 1
            continue
        _, fence, language = opened.groups()
        end = index + 1
        while not lines[end].strip().startswith(fence):
            end += 1
        body = textwrap.dedent("\n".join(lines[index + 1 : end])) + "\n"
        before = next((text.strip() for text in reversed(lines[:index]) if text.strip()), "")
        marker = _MARKER.match(before)
        found.append(
            Block(page, section, index + 1, language, body, marker.group(1) if marker else None)
        )
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def example_block(section: str, number: int = 0) -> Block:
    """The ``number``th shell or Python block of ``section`` (for ``run by`` tests)."""
    found = [b for b in all_blocks() if b.section == section and b.language in LANGUAGES]
    return found[number]


def example(section: str, number: int = 0) -> str:
    """The text of the ``number``th block of ``section``."""
    return example_block(section, number).text


def problems(found: list[Block], run: set[str], tests: set[str]) -> list[str]:
    """What breaks the convention: unmarked blocks nobody runs, markers that say nothing."""
    wrong: list[str] = []
    for block in found:
        marker = block.marker
        if block.language == "toml":
            if marker not in (None, "server config") and not _ILLUSTRATIVE.fullmatch(marker):
                wrong.append(f"{block.where}: unknown example marker {marker!r}")
            continue
        if block.language not in LANGUAGES:
            continue
        if marker is None:
            if block.section not in run:
                wrong.append(
                    f"{block.where}: {block.language} block in {block.section} is not run: "
                    f'add run_examples(pages, "{block.section}") to a test in '
                    "tests/test_docs_examples.py, or mark it "
                    "<!-- example: illustrative, because <reason> -->"
                )
        elif _RUN_BY.fullmatch(marker):
            name = _RUN_BY.fullmatch(marker).group(1)  # type: ignore[union-attr]
            if name not in tests:
                wrong.append(f"{block.where}: no test {name} runs this block")
        elif _COPY_OF.fullmatch(marker):
            path = ROOT / _COPY_OF.fullmatch(marker).group(1)  # type: ignore[union-attr]
            if not path.is_file() or not _is_copy(block.text, path.read_text(encoding="utf-8")):
                wrong.append(f"{block.where}: not a copy of {path.relative_to(ROOT)}")
        elif not _ILLUSTRATIVE.fullmatch(marker):
            wrong.append(
                f"{block.where}: unknown example marker {marker!r}; use 'illustrative, "
                "because <reason>', 'run by test_<name>' or 'copy of examples/<file>'"
            )
    return wrong


def _is_copy(text: str, source: str) -> bool:
    """Whether every line of ``text`` is in ``source``, in the same order (the file may have
    more: a docstring, ``from __future__ import annotations``)."""
    lines = iter(source.splitlines())
    return all(line in lines for line in text.splitlines())
