"""The budgets of slow work a request may do on a server thread: waiting for jobs
(long-polls, "wait", follows, event streams) and reading request bodies."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from procgate import Gate, MemoryStore, ThreadRunner
from procgate.errors import ConfigError
from procgate.waiting import Budget, GuardedInput, ServerBusy
from tests.conftest import wait_for


@pytest.fixture
def gate() -> Iterator[Gate]:
    made = Gate(
        store=MemoryStore(),
        runner=ThreadRunner(max_workers=8),
        max_wait=60,
        max_waiting=2,
        max_body_readers=1,
    )
    made.register("sleep", ["sleep"])
    made.register("echo", ["echo"])
    made.register("sh", ["/bin/sh", "-c"])
    yield made
    made.close()


def started(client: Client, *args: str, name: str = "sleep") -> str:
    response = client.post(f"/commands/{name}", json={"args": list(args)})
    assert response.status_code == 202, response.json
    job_id: str = response.json["id"]
    return job_id


def budget_spent(gate: Gate, client: Client) -> tuple[str, Parked]:
    """A running job, and two long-polls of it parked: the budget of 2 is spent."""
    job_id = started(client, "30")
    parked = Parked(client, f"/jobs/{job_id}?wait=60", 2)
    wait_for(lambda: gate.waiting.held == 2)
    return job_id, parked


class Parked:
    """Requests that wait in threads of their own, as many clients would."""

    def __init__(self, client: Client, path: str, count: int) -> None:
        self.responses: list[Any] = []
        self.threads = [
            threading.Thread(target=lambda: self.responses.append(client.get(path)))
            for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)


@pytest.mark.docs("http-api.md#waiting")
def test_past_the_budget_a_long_poll_answers_at_once_with_retry_after(gate: Gate) -> None:
    """With max_waiting long-polls parked, the next one answers the job as it stands at
    once, with Retry-After: 1; a finished job needs no wait and gets none."""
    client = Client(gate)
    job_id, parked = budget_spent(gate, client)
    begun = time.monotonic()
    response = client.get(f"/jobs/{job_id}?wait=60")
    assert time.monotonic() - begun < 1
    assert response.status_code == 200
    assert response.json["status"] == "running"
    assert response.headers["Retry-After"] == "1"
    done = client.post("/commands/echo", json={"args": ["x"], "wait": True})
    assert done.status_code == 200
    assert done.json["stdout"] == "x\n"
    assert "Retry-After" not in done.headers
    client.delete(f"/jobs/{job_id}")
    parked.join()
    assert [r.json["status"] for r in parked.responses] == ["cancelled", "cancelled"]
    assert all("Retry-After" not in r.headers for r in parked.responses)
    assert gate.waiting.held == 0


@pytest.mark.docs("http-api.md#waiting")
def test_past_the_budget_a_submit_with_wait_answers_202_at_once(gate: Gate) -> None:
    """A job submitted with "wait" that this thread cannot run (here: a runner that runs
    nothing in callers' threads) and the budget is spent is accepted at once: 202,
    Location and Retry-After, and it runs on."""
    gate.runner.runs_inline = False  # type: ignore[misc]  # as ProcessRunner's
    client = Client(gate)
    job_id, parked = budget_spent(gate, client)
    begun = time.monotonic()
    response = client.post("/commands/sh", json={"args": ["sleep 1; echo late"], "wait": 30})
    assert time.monotonic() - begun < 1
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Location"].endswith(response.json["id"])
    client.delete(f"/jobs/{job_id}")
    parked.join()
    finished = client.get(f"/jobs/{response.json['id']}?wait=30").json
    assert finished["stdout"] == "late\n"


@pytest.mark.docs("http-api.md#waiting")
def test_a_wait_runs_the_job_in_the_request_thread_whatever_its_timeout(gate: Gate) -> None:
    """"wait" runs the job in the request's own thread (no hand-off to a runner thread)
    even for a command without a timeout, and needs no share of the waiting budget."""
    client = Client(gate)
    job_id, parked = budget_spent(gate, client)
    threads: list[threading.Thread] = []
    gate.on_finish(lambda job, context: threads.append(threading.current_thread()))
    response = client.post("/commands/echo", json={"args": ["x"], "wait": True})
    assert response.status_code == 200
    assert response.json["stdout"] == "x\n"
    assert "Retry-After" not in response.headers
    assert threads == [threading.current_thread()]
    client.delete(f"/jobs/{job_id}")
    parked.join()


@pytest.mark.docs("http-api.md#waiting")
def test_a_job_that_outlives_the_wait_carries_on_without_the_client(gate: Gate) -> None:
    """When the wait ends first, the answer is 202 with the job running, at the end of
    the wait (not of the job); the job then finishes on a thread of the runner, with its
    output whole."""
    client = Client(gate)
    begun = time.monotonic()
    response = client.post(
        "/commands/sh", json={"args": ["echo early; sleep 1.5; echo late"], "wait": 0.5}
    )
    took = time.monotonic() - begun
    assert response.status_code == 202
    assert 0.5 <= took < 1.4
    assert response.json["status"] == "running"
    assert "Retry-After" not in response.headers
    job_id = response.json["id"]
    finished = client.get(f"/jobs/{job_id}?wait=30").json
    assert finished["status"] == "succeeded"
    assert finished["stdout"] == "early\nlate\n"
    wait_for(lambda: not gate.runner.holding())


@pytest.mark.docs("http-api.md#waiting")
@pytest.mark.parametrize("suffix", ["/stdout?follow=1", "/events"])
def test_past_the_budget_a_follow_is_429(gate: Gate, suffix: str) -> None:
    """Follows and event streams hold a share for as long as they stream: past the budget
    they are refused at once with 429 too_many_waiting and Retry-After; the shares come
    back when the streams end."""
    client = Client(gate)
    job_id, parked = budget_spent(gate, client)
    response = client.get(f"/jobs/{job_id}{suffix}")
    assert response.status_code == 429
    assert response.json["error"]["code"] == "too_many_waiting"
    assert response.headers["Retry-After"] == "1"
    client.delete(f"/jobs/{job_id}")
    parked.join()
    assert gate.waiting.held == 0
    other = started(client, "0.2")
    streamed = client.get(f"/jobs/{other}{suffix}")
    assert streamed.status_code == 200
    streamed.get_data()
    streamed.close()
    assert gate.waiting.held == 0


def test_a_stream_closed_early_gives_its_share_back(gate: Gate) -> None:
    """A follower that goes away (the server closes the response) frees its share."""
    client = Client(gate)
    job_id = started(client, "30")
    response = client.get(f"/jobs/{job_id}/stdout?follow=1", buffered=False)
    next(response.response)  # type: ignore[call-overload]  # the first (empty) chunk
    assert gate.waiting.held == 1
    response.close()
    assert gate.waiting.held == 0
    client.delete(f"/jobs/{job_id}")


@pytest.mark.parametrize("suffix", ["/stdout?follow=1", "/events"])
def test_a_head_request_to_a_stream_gives_its_share_back(gate: Gate, suffix: str) -> None:
    """HEAD gets a stream's headers and no body: the server closes the body unread, and
    the share it took comes back (else 2 HEADs would spend the budget for good)."""
    client = Client(gate)
    job_id = started(client, "30")
    for _ in range(3):
        response = client.head(f"/jobs/{job_id}{suffix}")
        assert response.status_code == 200
        response.close()
        assert gate.waiting.held == 0
    client.delete(f"/jobs/{job_id}")


def test_output_polls_past_the_budget_answer_at_once(gate: Gate) -> None:
    """GET /jobs/<id>/output?wait= past the budget returns what there is now, with
    Retry-After when that is nothing and more may come."""
    client = Client(gate)
    job_id, parked = budget_spent(gate, client)
    begun = time.monotonic()
    response = client.get(f"/jobs/{job_id}/output?offset=0&wait=30")
    assert time.monotonic() - begun < 1
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["Retry-After"] == "1"
    client.delete(f"/jobs/{job_id}")
    parked.join()


class _Trickle:
    """A body whose bytes come only when the test lets them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.go = threading.Event()
        self.reading = threading.Event()

    def read(self, size: int = -1) -> bytes:
        self.reading.set()
        assert self.go.wait(60)
        size = len(self.data) if size < 0 else size
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


@pytest.mark.docs("http-api.md#slow-clients")
def test_past_the_body_budget_a_request_is_503_at_once(gate: Gate) -> None:
    """While max_body_readers requests sit reading slow bodies, another request with a
    body is refused at once (503 server_busy, Retry-After); requests without one, and
    bodies once the slow one is done, go through."""
    client = Client(gate)
    body = b'{"args": ["slow"], "wait": true}'
    slow = _Trickle(body)
    environ = EnvironBuilder(
        path="/commands/echo",
        method="POST",
        content_type="application/json",
        content_length=len(body),
    ).get_environ()
    environ["wsgi.input"] = slow
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(run_wsgi_app(gate, environ)))
    thread.start()
    assert slow.reading.wait(60)
    begun = time.monotonic()
    refused = client.post("/commands/echo", json={"args": ["fast"], "wait": True})
    assert time.monotonic() - begun < 1
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "server_busy"
    assert refused.headers["Retry-After"] == "1"
    assert client.get("/health").status_code == 200
    slow.go.set()
    thread.join(60)
    app_iter, status, _ = answers[0]
    assert status.startswith("200")
    assert json.loads(b"".join(app_iter))["stdout"] == "slow\n"
    again = client.post("/commands/echo", json={"args": ["fast"], "wait": True})
    assert again.json["stdout"] == "fast\n"


def test_a_guarded_read_gives_its_share_back_even_when_it_fails() -> None:
    budget = Budget(1)

    class Broken:
        def read(self, size: int = -1) -> bytes:
            raise OSError("reset")

    with pytest.raises(OSError, match="reset"):
        GuardedInput(Broken(), budget).read(10)
    assert budget.held == 0
    assert GuardedInput(io.BytesIO(b"a\nb\n"), budget).readlines() == [b"a\n", b"b\n"]
    assert list(GuardedInput(io.BytesIO(b"a\nb\n"), budget)) == [b"a\n", b"b\n"]
    assert budget.take()
    with pytest.raises(ServerBusy):
        GuardedInput(io.BytesIO(b"x"), budget).read()


@pytest.mark.docs("http-api.md#slow-clients")
def test_an_overlong_url_is_414_json(gate: Gate) -> None:
    client = Client(gate)
    response = client.get("/jobs/" + "a" * 9000)
    assert response.status_code == 414
    assert response.json["error"]["code"] == "uri_too_long"
    assert client.get("/jobs/" + "a" * 100).status_code == 404


@pytest.mark.parametrize("option", ["max_waiting", "max_body_readers", "max_url"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_budgets_are_whole_numbers(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        Gate(**{option: value})
