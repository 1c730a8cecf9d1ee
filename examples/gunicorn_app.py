"""Serve the commands of ``procgate.toml`` (beside this file) with gunicorn.

From the repository root::

    gunicorn --threads 32 -b 127.0.0.1:8000 examples.gunicorn_app:application

or from anywhere::

    gunicorn --chdir examples --threads 32 -b 127.0.0.1:8000 gunicorn_app:application

Add ``-c examples/gunicorn.conf.py`` so each worker closes its Gate (and stops its running
jobs) when it exits. The example config keeps jobs in SQLite (``./procgate-data``), which
every worker process shares, so ``--workers`` may be more than one; with the ``memory://``
store keep one worker process, and threads.
"""

from __future__ import annotations

from pathlib import Path

from procgate import create_app

CONFIG = Path(__file__).with_name("procgate.toml")

application = create_app(str(CONFIG))
