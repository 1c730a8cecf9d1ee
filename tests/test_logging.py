"""procgate's own log lines when it runs as a server: queued, written by one thread, and
all of them written before a worker process exits."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, os
from procgate._logging import flush_logs, log_to_stderr

log_to_stderr(buffered=True)
for number in range(20000):
    logging.getLogger("procgate.audit").info("line %d", number)
flush_logs()
os._exit(0)  # as a granian worker ends: no atexit, no interpreter shutdown
"""


def test_a_worker_writes_every_queued_line_before_it_exits() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 20000
    assert lines[-1].endswith("procgate.audit: line 19999")
    assert "[INFO]" in lines[0]
