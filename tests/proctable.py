"""The process table, read from /proc: what tests check about the processes they start."""

from __future__ import annotations

import os
from collections.abc import Iterator


def processes() -> Iterator[tuple[int, str, int, int, int]]:
    """(pid, state, ppid, pgid, sid) of every process (fields 3 to 6 of /proc/PID/stat)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        yield int(entry), fields[0], int(fields[1]), int(fields[2]), int(fields[3])
