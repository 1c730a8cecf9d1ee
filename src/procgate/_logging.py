"""Where procgate's own log lines go when procgate runs as a program (serve, worker)."""

from __future__ import annotations

import logging
import os
import sys


def log_to_stderr() -> None:
    """Send the ``procgate`` loggers (the audit trail included) to stderr, once.

    ``PROCGATE_LOG_LEVEL`` (default INFO) sets the level; a deployment that configures
    logging itself (gunicorn's ``logconfig_dict``) can add handlers of its own instead.
    """
    logger = logging.getLogger("procgate")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.propagate = False  # a root handler (Celery's, say) would print each line twice
    logger.setLevel(os.environ.get("PROCGATE_LOG_LEVEL", "INFO").upper())
