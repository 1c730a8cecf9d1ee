"""A Gate mounted at ``/procgate`` beside another WSGI app, with DispatcherMiddleware.

Run it with ``gunicorn --threads 32 examples.dispatcher:application`` (or any WSGI server).
``/`` is answered by ``hello``; everything under ``/procgate`` by the Gate, which sees the
prefix as ``SCRIPT_NAME`` and puts it in the URLs it returns
(``http://localhost/procgate/jobs/<id>``).
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from procgate import Gate, ThreadRunner

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PREFIX = "/procgate"


def make_gate() -> Gate:
    """A Gate with one command, ``echo``; the caller closes it."""
    gate = Gate(runner=ThreadRunner(max_workers=4), max_wait=30)
    gate.register("echo", ["echo"], timeout=10, description="Print the arguments.")
    return gate


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The other application: a plain WSGI callable."""
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"hello from the main app\n"]


gate = make_gate()
atexit.register(gate.close)  # stop running jobs when the process exits
application = DispatcherMiddleware(hello, {PREFIX: gate})
