"""The pages of Python snippets: the Python API, testing, security."""

from __future__ import annotations

from tests.docs_examples.runner import Pages, run_examples


def test_python_api(pages: Pages) -> None:
    """The Python API's snippets run as scripts."""
    run_examples(
        pages,
        "python-api.md",
        "python-api.md#python-hooks",
        "python-api.md#procgateauth-and-procgatepolicy",
        "python-api.md#create_app",
    )


def test_testing_page(pages: Pages) -> None:
    """The testing snippets run, and pytest passes the example test module."""
    run_examples(
        pages,
        "testing.md",
        "testing.md#choosing-a-runner",
        "testing.md#testing-a-configuration-file",
    )


def test_security_snippets(pages: Pages) -> None:
    """The security page's Python snippets and procgate token."""
    run_examples(
        pages,
        "security.md",
        "security.md#bearer-tokens",
        "security.md#signed-requests-and-webhooks",
        "security.md#argument-policy",
        "security.md#the-audit-log",
        "security.md#authentication-in-middleware-instead",
        "security.md#gunicorn",
    )
