"""The gunicorn application behind ``procgate serve`` (needs the ``server`` extra)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]  # no hints

from procgate._logging import log_to_stderr
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
        log_to_stderr()
        return create_app(self.config_path)
