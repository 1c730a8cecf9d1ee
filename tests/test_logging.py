"""procgate's own log lines when it runs as a server: queued, written by one thread, and
all of them written before a worker process exits."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time

from procgate._logging import _Buffered
from tests.conftest import wait_for

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


class _StuckStream(io.StringIO):
    """A stderr whose writes hang until ``free`` is set (a full pipe, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.free = threading.Event()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.free.wait(30)
        return super().write(text)


def test_logging_goes_on_while_a_batch_is_written() -> None:
    """A batch is formatted and written outside the lock that logging threads take: while
    its write hangs, another thread's line is buffered at once; each batch is one write."""
    stream = _StuckStream()
    handler = _Buffered(logging.StreamHandler(stream))
    logger = logging.getLogger(f"procgate.test-{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for number in range(3):
            logger.info("first %d", number)
        flusher = threading.Thread(target=handler.flush)
        flusher.start()
        wait_for(lambda: stream.writes == 1)
        started = time.monotonic()
        logger.info("during")
        assert time.monotonic() - started < 1  # not behind the stuck write
        stream.free.set()
        flusher.join(30)
        assert stream.writes == 1  # the three lines in one write
        assert stream.getvalue().splitlines() == [f"first {n}" for n in range(3)]
        handler.flush()
        assert stream.getvalue().splitlines()[-1] == "during"
    finally:
        stream.free.set()
        handler.stop()
        logger.removeHandler(handler)
