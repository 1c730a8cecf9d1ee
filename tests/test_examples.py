"""The files in examples/ run as documented: each is imported and driven with werkzeug's Client."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from werkzeug.test import Client

from procgate import Gate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under a private module name, without touching sys.path."""
    spec = importlib.util.spec_from_file_location(
        f"_procgate_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gunicorn_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The gunicorn example; its Gate (``application``) is closed afterwards.

    It runs in a temporary directory: the example config keeps its SQLite store there.
    """
    monkeypatch.chdir(tmp_path)
    module = _load("gunicorn_app")
    yield module
    module.application.close()


@pytest.fixture
def dispatcher() -> Iterator[ModuleType]:
    """The DispatcherMiddleware example; its Gate is closed afterwards."""
    module = _load("dispatcher")
    yield module
    module.gate.close()


@pytest.fixture
def flask_app() -> Iterator[ModuleType]:
    """The Flask example; its Gate is closed afterwards."""
    module = _load("flask_app")
    yield module
    module.gate.close()


@pytest.mark.docs("deploy-gunicorn.md#the-application-module")
def test_gunicorn_app_is_a_gate_built_from_the_toml_beside_it(gunicorn_app: ModuleType) -> None:
    """``application`` is a Gate with the example config's commands, whatever the cwd."""
    assert isinstance(gunicorn_app.application, Gate)
    assert gunicorn_app.CONFIG == EXAMPLES / "procgate.toml"
    assert {"echo", "sleep", "wc", "greet"} <= set(gunicorn_app.application.commands)


@pytest.mark.docs("deploy-gunicorn.md#the-application-module")
def test_gunicorn_app_runs_echo(gunicorn_app: ModuleType) -> None:
    """POST /commands/echo with wait answers 200 with the finished job and its output."""
    client = Client(gunicorn_app.application)
    response = client.post("/commands/echo", json={"args": ["hello", "world"], "wait": True})
    assert response.status_code == 200
    job = response.json
    assert job["status"] == "succeeded"
    assert job["returncode"] == 0
    assert job["stdout"] == "hello world\n"
    assert job["url"] == f"http://localhost/jobs/{job['id']}"


@pytest.mark.docs("dispatcher.md#the-example")
def test_dispatcher_serves_the_other_app_at_the_root(dispatcher: ModuleType) -> None:
    """Paths outside the prefix go to the other WSGI app, not to the Gate."""
    response = Client(dispatcher.application).get("/")
    assert response.status_code == 200
    assert response.text == "hello from the main app\n"


@pytest.mark.docs("dispatcher.md#the-example")
def test_dispatcher_job_urls_include_the_prefix(dispatcher: ModuleType) -> None:
    """A job started under /procgate has a url and Location under /procgate/jobs/."""
    client = Client(dispatcher.application)
    prefix = "http://localhost/procgate/jobs/"
    started = client.post("/procgate/commands/echo", json={"args": ["mounted"]})
    assert started.status_code == 202
    assert started.headers["Location"].startswith(prefix)
    assert started.json["url"].startswith(prefix)
    assert started.headers["Location"] == started.json["url"]
    finished = client.get(started.headers["Location"], query_string={"wait": "10"})
    assert finished.status_code == 200
    assert finished.json["status"] == "succeeded"
    assert finished.json["stdout"] == "mounted\n"
    assert finished.json["url"] == prefix + finished.json["id"]


@pytest.mark.docs("dispatcher.md#the-example")
def test_dispatcher_make_gate_builds_an_independent_gate(dispatcher: ModuleType) -> None:
    """make_gate() returns a new Gate each time, with echo registered and no shared jobs."""
    gate = dispatcher.make_gate()
    try:
        assert gate is not dispatcher.gate
        assert set(gate.commands) == {"echo"}
        Client(gate).post("/commands/echo", json={"args": ["x"], "wait": True})
        assert Client(dispatcher.application).get("/procgate/jobs").json["jobs"] == []
    finally:
        gate.close()


@pytest.mark.docs("flask.md#the-example")
def test_flask_app_serves_its_own_route(flask_app: ModuleType) -> None:
    """Flask still answers its own routes once the Gate is mounted beside them."""
    response = Client(flask_app.app).get("/")
    assert response.status_code == 200
    assert response.json == {"app": "demo", "commands": ["echo"]}


@pytest.mark.docs("flask.md#the-example")
def test_flask_app_runs_a_job_under_jobs_api(flask_app: ModuleType) -> None:
    """The Gate answers under /jobs-api, with the prefix in the job's url."""
    client = Client(flask_app.app)
    response = client.post("/jobs-api/commands/echo", json={"args": ["from flask"], "wait": True})
    assert response.status_code == 200
    job = response.json
    assert job["status"] == "succeeded"
    assert job["stdout"] == "from flask\n"
    assert job["url"] == f"http://localhost/jobs-api/jobs/{job['id']}"
    assert client.get(f"/jobs-api/jobs/{job['id']}/stdout").data == b"from flask\n"


@pytest.mark.docs("flask.md#what-flask-does-not-see")
def test_flask_app_errors_under_the_prefix_are_the_gates_json(flask_app: ModuleType) -> None:
    """Under /jobs-api, an unknown command gets procgate's JSON error, not Flask's page."""
    response = Client(flask_app.app).post("/jobs-api/commands/nope", json={})
    assert response.status_code == 404
    assert response.json == {
        "error": {"code": "unknown_command", "message": "no command named 'nope'"}
    }


@pytest.mark.docs("testing.md#choosing-a-runner")
def test_client_example_passes_under_pytest() -> None:
    """examples/test_with_client.py passes when run with pytest in a fresh interpreter."""
    path = EXAMPLES / "test_with_client.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


@pytest.mark.docs("django.md#mounting-the-gate-in-a-django-project")
def test_the_django_example_mounts_the_gate_under_a_prefix() -> None:
    """Django answers its own route; the Gate answers under /jobs-api, its job URLs
    carrying the prefix; an unknown path is Django's 404, not the Gate's."""
    # Imported by its dotted name, as gunicorn would: Django imports ROOT_URLCONF by name.
    module = importlib.import_module("examples.django_project")
    client = Client(module.application)
    try:
        home = client.get("/", headers={"Host": "localhost"})
        assert (home.status_code, home.json) == (200, {"app": "django", "commands": ["echo"]})
        done = client.post(
            "/jobs-api/commands/echo", json={"args": ["from django"], "wait": True}
        )
        assert (done.status_code, done.json["stdout"]) == (200, "from django\n")
        assert done.json["url"] == f"http://localhost/jobs-api/jobs/{done.json['id']}"
        job = client.get(f"/jobs-api/jobs/{done.json['id']}")
        assert job.json["status"] == "succeeded"
        missing = client.get("/nowhere", headers={"Host": "localhost"})
        assert missing.status_code == 404
        assert "error" not in (missing.get_json(silent=True) or {})  # Django's, not the Gate's
    finally:
        module.gate.close()
