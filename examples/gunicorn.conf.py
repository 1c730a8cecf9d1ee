"""gunicorn settings for ``examples/gunicorn_app.py``: ``gunicorn -c examples/gunicorn.conf.py``.

The ``worker_exit`` hook closes the worker's Gate: queued jobs are cancelled and running
children get SIGTERM, then SIGKILL after their ``kill_grace``. Without it, a child that is
running when the worker stops keeps running, in a session of its own.
"""

from __future__ import annotations

from typing import Any

from procgate import Gate

wsgi_app = "examples.gunicorn_app:application"
bind = "127.0.0.1:8000"
workers = 2  # the SQLite store is shared by worker processes (memory:// needs 1)
threads = 32  # a request that waits for its job holds a thread
worker_class = "gthread"


def worker_exit(server: Any, worker: Any) -> None:
    """Close the Gate this worker loaded, if it got that far."""
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Gate):
        app.close()
