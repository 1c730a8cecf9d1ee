"""Where procgate's own log lines go when procgate runs as a program (serve, worker)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys

_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class _Queued(logging.handlers.QueueHandler):
    """A handler that leaves the writing to a thread of its own (``listener``)."""

    listener: logging.handlers.QueueListener


def log_to_stderr(*, queued: bool = False) -> None:
    """Send the ``procgate`` loggers (the audit trail included) to stderr, once.

    ``PROCGATE_LOG_LEVEL`` (default INFO) sets the level; a deployment that configures
    logging itself (gunicorn's ``logconfig_dict``) can add handlers of its own instead.
    ``queued``: the lines are formatted where they are logged, and written by one thread
    (a server's request threads then never wait for each other's writes: three audit
    lines per job made the handler's lock a tenth of a busy server's time); call
    ``flush_logs`` before the process exits.
    """
    logger = logging.getLogger("procgate")
    if logger.handlers:
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(_FORMAT))
    handler: logging.Handler = stream
    if queued:
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = _Queued(lines)
        handler.setFormatter(logging.Formatter(_FORMAT))
        # The queued line is formatted already: the writer prints it as it is.
        stream.setFormatter(logging.Formatter("%(message)s"))
        handler.listener = logging.handlers.QueueListener(lines, stream)
        handler.listener.start()
    logger.addHandler(handler)
    logger.propagate = False  # a root handler (Celery's, say) would print each line twice
    logger.setLevel(os.environ.get("PROCGATE_LOG_LEVEL", "INFO").upper())


def flush_logs() -> None:
    """Write what ``log_to_stderr(queued=True)`` still holds, and stop its writer."""
    for handler in logging.getLogger("procgate").handlers:
        if isinstance(handler, _Queued):
            handler.listener.stop()
