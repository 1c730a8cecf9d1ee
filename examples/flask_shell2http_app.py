"""A Flask-Shell2HTTP app moved to procgate: only the import line changed.

Run it with ``flask --app examples/flask_shell2http_app.py run`` or, with several
workers, ``gunicorn -w 2 --threads 8 examples.flask_shell2http_app:app``. The jobs live in a
SQLite file in the app's instance folder, shared by the workers and kept across restarts.

    curl -s -X POST localhost:5000/commands/echo -H 'Content-Type: application/json' \\
        -d '{"args": ["hello", "world"]}'
    curl -s 'localhost:5000/commands/echo?key=<key>&wait=true'
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from flask import Flask

# was: from flask_shell2http import Shell2HTTP
from procgate.compat.flask_shell2http import Shell2HTTP

app = Flask(__name__)
# A Flask-Executor may still be passed (Shell2HTTP(app, executor, ...)): it goes unused.
shell2http = Shell2HTTP(app, None, base_url_prefix="/commands/")


def log_result(context: Any, future: Future[dict[str, Any]]) -> None:
    """Called in the worker that ran the job, once it has ended."""
    app.logger.info("job %s ended: %s (context %s)", future.result()["key"], future.done(), context)


shell2http.register_command(endpoint="echo", command_name="echo", callback_fn=log_result)
shell2http.register_command(endpoint="sleep", command_name="sleep")
