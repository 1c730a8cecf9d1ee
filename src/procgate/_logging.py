"""Where procgate's own log lines go when procgate runs as a program (serve, worker)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading

_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

#: Seconds between two writes of the lines a server's worker has buffered.
FLUSH_INTERVAL = 0.2


class _Buffered(logging.handlers.MemoryHandler):
    """Records kept in memory and written in batches: when ``capacity`` are waiting, at
    once for a warning or worse, and by a thread of its own every ``FLUSH_INTERVAL`` s."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(capacity=256, flushLevel=logging.WARNING, target=target)
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._tick, name="procgate-log", daemon=True)
        self._writer.start()

    def _tick(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()

    def flush(self) -> None:
        """Write the buffered lines in one write, formatted outside the lock that the
        request threads take to log: they never wait for a batch being written."""
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock() made it
            records, self.buffer = self.buffer, []
        target = self.target
        if not records or not isinstance(target, logging.StreamHandler):
            return
        lines = []
        for record in records:
            try:
                lines.append(target.format(record) + target.terminator)
            except Exception:
                target.handleError(record)
        target.acquire()
        try:
            target.stream.write("".join(lines))
            target.stream.flush()
        except Exception:
            target.handleError(records[-1])
        finally:
            target.release()


def log_to_stderr(*, buffered: bool = False) -> None:
    """Send the ``procgate`` loggers (the audit trail included) to stderr, once.

    ``PROCGATE_LOG_LEVEL`` (default INFO) sets the level; a deployment that configures
    logging itself (gunicorn's ``logconfig_dict``) can add handlers of its own instead.
    ``buffered``: lines are written in batches (see ``_Buffered``), so a server's request
    threads never wait for each other's writes: three audit lines per job made the
    handler's lock a tenth of a busy server's time; call ``flush_logs`` before the process
    exits.
    """
    logger = logging.getLogger("procgate")
    if logger.handlers:
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(_Buffered(stream) if buffered else stream)
    logger.propagate = False  # a root handler (Celery's, say) would print each line twice
    logger.setLevel(os.environ.get("PROCGATE_LOG_LEVEL", "INFO").upper())


def flush_logs() -> None:
    """Write what ``log_to_stderr(buffered=True)`` still holds, and stop its writer."""
    for handler in logging.getLogger("procgate").handlers:
        if isinstance(handler, _Buffered):
            handler.stop()
