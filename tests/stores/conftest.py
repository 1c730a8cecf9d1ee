"""The store fixtures of the contract module, for the other contract modules here, and a
small real disk for the SQLite file tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procgate.stores.sqlite import SQLiteStore
from tests.stores.test_contract import kind, make_store, store  # noqa: F401 - fixtures


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """``tmpfs(directory, size="4m")`` mounts a tmpfs there (over one already there, if
    any): a real small disk, unmounted at teardown (the tests run as root, as CI does)."""
    mounted: list[Path] = []

    def mount(directory: Path, size: str = "4m") -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
        )
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", "-l", str(directory)], check=True)


@pytest.fixture
def stores() -> Iterator[list[SQLiteStore]]:
    made: list[SQLiteStore] = []
    yield made
    for opened in made:
        opened.close()


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; its removal gives the space back."""
    filler = directory / "filler"
    # Unbuffered: a buffered file would try its last block again on close, and raise
    # there (ENOSPC) when the disk's last free bytes did not line up with its buffer.
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
    return filler
