"""Serving the Gate: procgate serve on granian, gunicorn, DispatcherMiddleware, Flask."""

from __future__ import annotations

import pytest

from tests.docs_examples.runner import Pages, run_examples


def test_deploy_granian(pages: Pages) -> None:
    """procgate serve on its default engine, from the repository root."""
    run_examples(pages, "deploy-granian.md")


def test_deploy_gunicorn(pages: Pages) -> None:
    """gunicorn with examples/gunicorn.conf.py, and the module alone with --threads, from
    the repository root and with --chdir."""
    run_examples(pages, "deploy-gunicorn.md")


@pytest.mark.docs("deploy-gunicorn.md#the-application-module")
def test_deploy_gunicorn_application_module(pages: Pages) -> None:
    """Both ways to start the application module serve it."""
    run_examples(pages, "deploy-gunicorn.md#the-application-module")


def test_dispatcher_and_flask(pages: Pages) -> None:
    """The mounting snippets, and the example apps served by gunicorn and flask run."""
    run_examples(pages, "dispatcher.md", "dispatcher.md#the-example")
    run_examples(pages, "flask.md", "flask.md#the-example")
