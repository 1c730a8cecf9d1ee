"""Live output: raw follow, byte-offset polling and Server-Sent Events, on every store."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from procgate import Gate, JobStore
from tests.conftest import STORE_KINDS, wait_for


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Live output holds on every store (the ``gate`` fixture of tests/conftest.py)."""
    return str(request.param)


@pytest.fixture(params=["thread", "process"])
def runner_kind(request: pytest.FixtureRequest) -> str:
    """The runners that run a job apart from its request: a SyncRunner's job has ended
    before its POST answers, so there is nothing left to follow."""
    return str(request.param)


@pytest.fixture
def store(gate: Gate) -> JobStore:
    return gate.store


@pytest.fixture
def client(gate: Gate) -> Client:
    gate.register("py", ["python3", "-c"], timeout=60, kill_grace=1)
    return Client(gate)


def start(client: Client, *args: str, name: str = "sh") -> str:
    response = client.post(f"/commands/{name}", json={"args": list(args)})
    assert response.status_code == 202
    return str(response.json["id"])


def hold(path: Path) -> str:
    """Shell that waits until ``path`` exists (giving up after about 10 s): the test lets
    the job go on when it has seen what it wants, instead of guessing with sleeps."""
    return f'for _ in $(seq 1000); do [ -e "{path}" ] && break; sleep 0.01; done'


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events as dicts: id, event, data (decoded JSON); comments are skipped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


class Follower:
    """Reads a streaming response on a thread, recording what arrives and when."""

    def __init__(
        self,
        client: Client,
        url: str,
        headers: dict[str, str] | None = None,
        hang_up_after: int | None = None,
    ) -> None:
        self.hang_up_after = hang_up_after
        self.parts: list[bytes] = []
        self.done = threading.Event()
        self.response = client.get(url, buffered=False, headers=headers or {})
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        """Like a server thread: read, and close the response from the same thread."""
        try:
            for part in self.response.response:
                if not part:  # the empty first chunk that gets the headers sent
                    continue
                self.parts.append(part)
                if self.hang_up_after is not None and len(self.parts) >= self.hang_up_after:
                    break
        finally:
            self.response.close()
            self.done.set()

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


@pytest.mark.docs("http-api.md#get-jobsidstdout-and-get-jobsidstderr")
@pytest.mark.docs("live-output.md#raw-bytes-follow1")
def test_follow_stdout_streams_while_running(client: Client, tmp_path: Path) -> None:
    """?follow=1 sends output as it is written, and ends when the job ends."""
    go = tmp_path / "go"
    job_id = start(client, f"echo one; {hold(go)}; echo two >&2; echo three")
    follower = Follower(client, f"/jobs/{job_id}/stdout?follow=1")
    assert follower.response.status_code == 200
    assert follower.response.mimetype == "application/octet-stream"
    wait_for(lambda: follower.data == b"one\n")
    assert not follower.done.is_set()  # the job is held: the stream must still be open
    go.touch()
    assert follower.done.wait(10)
    assert follower.data == b"one\nthree\n"


@pytest.mark.docs("live-output.md#raw-bytes-follow1")
def test_follow_after_the_end_gets_everything_at_once(client: Client) -> None:
    """A follower connecting after the job ended gets all output and the end at once."""
    job_id = start(client, "echo a; echo b >&2")
    client.get(f"/jobs/{job_id}?wait=10")
    started = time.monotonic()
    data = client.get(f"/jobs/{job_id}/stderr?follow=1").data
    assert data == b"b\n"
    assert time.monotonic() - started < 2


@pytest.mark.docs("live-output.md#raw-bytes-follow1")
def test_follow_unknown_job_is_404(client: Client) -> None:
    """Following a job that does not exist is a JSON 404, not an empty stream."""
    assert client.get("/jobs/nope/stdout?follow=1").status_code == 404
    assert client.get("/jobs/nope/events").status_code == 404
    assert client.get("/jobs/nope/output").status_code == 404


@pytest.mark.docs("http-api.md#get-jobsidoutput")
@pytest.mark.docs("live-output.md#polling-by-byte-offset")
def test_output_by_offset(client: Client, tmp_path: Path) -> None:
    """?offset= returns the bytes from there, the next offset and whether it is complete."""
    go = tmp_path / "go"
    job_id = start(client, f"printf 12345; {hold(go)}; printf 678")
    wait_for(lambda: client.get(f"/jobs/{job_id}/output").data == b"12345")
    first = client.get(f"/jobs/{job_id}/output?stream=stdout&offset=0")
    assert first.data == b"12345"
    assert first.headers["X-Output-Offset"] == "5"
    assert first.headers["X-Output-Complete"] == "false"
    nothing = client.get(f"/jobs/{job_id}/output?offset=5")
    assert nothing.data == b""
    assert nothing.headers["X-Output-Offset"] == "5"
    release = threading.Timer(0.2, go.touch)  # while the next request long-polls
    release.start()
    later = client.get(f"/jobs/{job_id}/output?offset=5&wait=10")  # long-polls for news
    release.join()
    assert later.data == b"678"
    client.get(f"/jobs/{job_id}?wait=10")
    final = client.get(f"/jobs/{job_id}/output?offset=3")
    assert final.data == b"45678"
    assert final.headers["X-Output-Offset"] == "8"
    assert final.headers["X-Output-Complete"] == "true"
    assert final.headers["X-Job-Status"] == "succeeded"
    assert client.get(f"/jobs/{job_id}/output?stream=stderr").data == b""
    assert client.get(f"/jobs/{job_id}/output?stream=both").status_code == 400
    assert client.get(f"/jobs/{job_id}/output?offset=-1").status_code == 400


@pytest.mark.docs("http-api.md#get-jobsidevents")
@pytest.mark.docs("live-output.md#server-sent-events", "live-output.md#ordering-across-streams")
def test_events_stream(client: Client, tmp_path: Path) -> None:
    """SSE: status events, output events in order across streams, then the whole job.

    The order across streams is the order procgate read the pieces, which the docs do not
    promise to be the order of writes; so each write here waits until the piece before
    it was sent, which makes both orders one.
    """
    first, second = tmp_path / "1", tmp_path / "2"
    script = f"echo out1; {hold(first)}; echo err1 >&2; {hold(second)}; echo out2; exit 3"
    job_id = start(client, script)
    follower = Follower(client, f"/jobs/{job_id}/events")
    response = follower.response
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    wait_for(lambda: b"out1" in follower.data)
    first.touch()
    wait_for(lambda: b"err1" in follower.data)
    second.touch()
    assert follower.done.wait(10)
    text = follower.data.decode()
    events = parse_sse(text)
    names = [e["event"] for e in events]
    assert names[-1] == "end"
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "failed"
    assert "running" in statuses
    outputs = [e["data"] for e in events if e["event"] == "output"]
    assert [(o["stream"], o["data"]) for o in outputs] == [
        ("stdout", "out1\n"),
        ("stderr", "err1\n"),
        ("stdout", "out2\n"),
    ]
    assert [o["offset"] for o in outputs] == [0, 0, 5]
    assert [int(e["id"]) for e in events if e["event"] == "output"] == [1, 2, 3]
    end = events[-1]["data"]
    assert end["status"] == "failed"
    assert end["returncode"] == 3
    assert end["stdout"] == "out1\nout2\n"
    assert end["stdout_truncated"] is False
    assert end["error"] is None
    order = [e["event"] for e in events]
    last_output = max(i for i, name in enumerate(order) if name == "output")
    final_status = max(i for i, name in enumerate(order) if name == "status")
    assert final_status > last_output  # the final status comes after the output
    assert ": keepalive" not in text  # no silence here


@pytest.mark.docs("http-api.md#get-jobsidevents")
@pytest.mark.docs("live-output.md#event-ids-and-resuming")
def test_events_resume_without_gaps_or_repeats(client: Client, tmp_path: Path) -> None:
    """Reconnecting with Last-Event-ID sends only the chunks after that id.

    Five echoes written at once usually arrive as one chunk, which would leave nothing to
    resume; so each echo waits for the test to see the one before it stored: five chunks.
    """
    job_id = start(
        client,
        f'for i in 1 2 3 4 5; do echo $i; until [ -e "{tmp_path}/$i" ]; do sleep 0.01; done; done',
    )
    for i in range(1, 6):
        wait_for(lambda i=i: client.get(f"/jobs/{job_id}/output").data.endswith(b"%d\n" % i))
        (tmp_path / str(i)).touch()
    client.get(f"/jobs/{job_id}?wait=10")
    chunks = client.get(f"/jobs/{job_id}/output").data
    assert chunks == b"1\n2\n3\n4\n5\n"
    all_events = parse_sse(client.get(f"/jobs/{job_id}/events").get_data(as_text=True))
    outputs = [e for e in all_events if e["event"] == "output"]
    assert [e["data"]["data"] for e in outputs] == ["1\n", "2\n", "3\n", "4\n", "5\n"]
    middle = outputs[1]["id"]
    resumed = parse_sse(
        client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": middle}).get_data(
            as_text=True
        )
    )
    again = [e for e in resumed if e["event"] == "output"]
    assert [e["id"] for e in again] == [e["id"] for e in outputs[2:]]
    assert [e["data"]["data"] for e in again] == ["3\n", "4\n", "5\n"]
    assert resumed[-1]["event"] == "end"
    by_query = parse_sse(
        client.get(f"/jobs/{job_id}/events?last_event_id={outputs[-1]['id']}").get_data(
            as_text=True
        )
    )
    assert [e["event"] for e in by_query] == ["status", "end"]
    bad = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


@pytest.mark.docs("live-output.md#server-sent-events")
def test_events_binary_output_is_base64(client: Client) -> None:
    """Output that is not UTF-8 travels base64 in its event, marked so."""
    job_id = start(client, "printf '\\377\\376'")
    events = parse_sse(client.get(f"/jobs/{job_id}/events").get_data(as_text=True))
    output = next(e["data"] for e in events if e["event"] == "output")
    assert output["encoding"] == "base64"
    assert base64.b64decode(output["data"]) == b"\xff\xfe"


@pytest.mark.docs("live-output.md#server-sent-events")
def test_events_live_then_cancel(client: Client) -> None:
    """A live SSE follower sees output as it comes and the cancel at the end."""
    job_id = start(client, "echo started; sleep 100")
    follower = Follower(client, f"/jobs/{job_id}/events")
    wait_for(lambda: b"started" in follower.data)
    client.delete(f"/jobs/{job_id}")
    assert follower.done.wait(10)
    events = parse_sse(follower.data.decode())
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["status"] == "cancelled"


@pytest.mark.docs("live-output.md#memory")
def test_disconnected_follower_releases_and_blocks_nothing(client: Client) -> None:
    """A follower that goes away mid-stream holds nothing; the job runs on unhindered."""
    job_id = start(client, "for i in $(seq 1 50); do echo line $i; sleep 0.01; done")
    follower = Follower(client, f"/jobs/{job_id}/stdout?follow=1", hang_up_after=1)
    assert follower.done.wait(10)
    job = client.get(f"/jobs/{job_id}?wait=20").json
    assert job["status"] == "succeeded"
    assert job["stdout"].count("line") == 50


def test_many_followers(client: Client) -> None:
    """Sixteen followers of one job (the default waiting budget) all receive the same
    bytes."""
    job_id = start(client, "for i in $(seq 1 20); do echo $i; sleep 0.02; done")
    followers = [Follower(client, f"/jobs/{job_id}/stdout?follow=1") for _ in range(16)]
    for follower in followers:
        assert follower.done.wait(20)
    expected = "".join(f"{i}\n" for i in range(1, 21)).encode()
    assert {f.data for f in followers} == {expected}


@pytest.mark.docs("live-output.md#keepalives")
def test_keepalives_only_after_silence(client: Client, store: JobStore, tmp_path: Path) -> None:
    """SSE comments are sent after idle seconds without news, not after every burst.

    The job is held after "a" until two keepalives came; every keepalive of the stream,
    those and any while the burst and the end that follow are slow to come (a loaded
    machine), is at least ``idle`` after the news or keepalive before it.
    """
    from procgate import streaming

    go = tmp_path / "go"
    job_id = start(client, f"echo a; {hold(go)}; echo b; echo c; echo d")
    stream = streaming.events(store, job_id, lambda job: {"id": job.id}, idle=0.4)
    raw = b""
    news_at = time.monotonic()
    gaps = []  # seconds from the news or keepalive before each keepalive
    for part in stream:
        raw += part
        if part.startswith(b": keepalive"):
            gaps.append(time.monotonic() - news_at)
        news_at = time.monotonic()
        if len(gaps) == 2 and not go.exists():
            go.touch()
    assert len(gaps) >= 2, raw  # the held job ended without two keepalives
    assert min(gaps) >= 0.39  # a Redis block is whole milliseconds: 0.4 s may be 399 ms
    text = raw.decode()
    outputs = "".join(e["data"]["data"] for e in parse_sse(text) if e["event"] == "output")
    assert outputs == "a\nb\nc\nd\n"
