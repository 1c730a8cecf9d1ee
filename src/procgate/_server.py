"""The gunicorn application behind ``procgate serve`` (needs the ``server`` extra)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]  # no hints

from procgate.app import Gate
from procgate.config import create_app


def _close_gate(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: stop the worker's jobs and children on the way out."""
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Gate):
        app.close()


class Server(BaseApplication):  # type: ignore[misc]  # base class is untyped (Any)
    """Each worker process builds its own Gate from the config file after the fork."""

    def __init__(self, config_path: str, settings: dict[str, Any]) -> None:
        self.config_path = config_path
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", _close_gate)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25 listens on ~/.gunicorn/gunicorn.ctl: two servers would fight
            # over that one path, and procgate has no use for it
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Gate:
        _log_to_stderr()
        return create_app(self.config_path)


def _log_to_stderr() -> None:
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
    logger.setLevel(os.environ.get("PROCGATE_LOG_LEVEL", "INFO").upper())
