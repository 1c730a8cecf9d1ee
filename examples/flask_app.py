"""A Flask app with its own routes, and a Gate mounted at ``/jobs-api``.

Run it with ``flask --app examples/flask_app.py run`` (development) or
``gunicorn --threads 32 examples.flask_app:app``. Flask serves ``/``; the Gate serves
``/jobs-api/commands/...``, ``/jobs-api/jobs/...`` and the rest of its API.
"""

from __future__ import annotations

import atexit

from flask import Flask, Response, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from procgate import Gate

gate = Gate(max_wait=30)
gate.register("echo", ["echo"], timeout=10, description="Print the arguments.")
atexit.register(gate.close)  # stop running jobs when the process exits

app = Flask(__name__)
# Flask's documented way to wrap it in WSGI middleware; mypy sees a method being replaced.
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/jobs-api": gate})  # type: ignore[method-assign]


@app.get("/")
def index() -> Response:
    """Flask's own route: it lists the Gate's commands, read straight from the Gate."""
    return jsonify(app="demo", commands=sorted(gate.commands))
