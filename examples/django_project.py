"""A Django project's WSGI app with a Gate mounted at ``/jobs-api``: one file, no manage.py.

Run it with ``gunicorn --threads 32 examples.django_project:application``. Django serves
``/`` and everything else; the Gate serves ``/jobs-api/commands/...``, ``/jobs-api/jobs/...``
and the rest of its API, with job URLs under ``/jobs-api``. In a real project the settings
live in ``settings.py`` and ``application`` in its ``wsgi.py``: wrap it the same way there.
"""

from __future__ import annotations

import atexit

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from procgate import Gate

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-a-secret",  # noqa: S106 - the example has no sessions
        ALLOWED_HOSTS=["localhost", "127.0.0.1", "testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
    )
    django.setup()

gate = Gate(max_wait=30)
gate.register("echo", ["echo"], timeout=10, description="Print the arguments.")
atexit.register(gate.close)  # stop running jobs when the process exits


def index(request: HttpRequest) -> JsonResponse:
    """Django's own view: it lists the Gate's commands, read straight from the Gate."""
    return JsonResponse({"app": "django", "commands": sorted(gate.commands)})


urlpatterns = [path("", index)]

application = DispatcherMiddleware(get_wsgi_application(), {"/jobs-api": gate})
