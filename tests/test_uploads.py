"""File uploads: multipart requests, placeholders, stdin files, limits, cleanup."""

from __future__ import annotations

import gc
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import Client, stream_encode_multipart

from procgate import Gate
from tests.conftest import make_runner, refused, wait_for


@pytest.fixture
def uploads_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the Gate makes its per-job directories (the temporary directory)."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def client(runner_kind: str, uploads_dir: Path) -> Iterator[Client]:
    gate = Gate(runner=make_runner(runner_kind), max_upload=1 << 20, max_files=3)
    gate.register("show", 'echo "$1"; cat "$1"', shell=True)
    gate.register("cat", ["cat"])
    gate.register("sleep", 'sleep "$1"', shell=True, kill_grace=0.5)
    yield Client(gate)
    gate.close()


def post(client: Client, name: str, request: Any = None, **files: Any) -> Any:
    data: dict[str, Any] = {}
    if request is not None:
        data["request"] = json.dumps(request) if not isinstance(request, str) else request
    data.update(files)
    return client.post(f"/commands/{name}", data=data, content_type="multipart/form-data")


@pytest.mark.docs(
    "uploads.md#the-request",
    "uploads.md#placeholders-filefield",
    "uploads.md#where-files-go",
)
def test_file_placeholder_in_args(client: Client, uploads_dir: Path) -> None:
    """{file:FIELD} becomes the saved file's path, with its (sanitised) name and extension."""
    response = post(
        client,
        "show",
        {"args": ["{file:video}"], "wait": True},
        video=(io.BytesIO(b"\x00frames"), "../../etc/clip.mp4"),
    )
    assert response.status_code == 200, response.json
    job = response.json
    # The NUL makes the JSON carry stdout as base64: read the raw bytes instead.
    raw = client.get(f"/jobs/{job['id']}/stdout").data
    path, _, content = raw.decode().partition("\n")
    assert path.startswith(str(uploads_dir))
    assert path.endswith("/video/etc_clip.mp4")
    assert content == "\x00frames"
    assert job["args"] == ["{file:video}"]
    assert list(uploads_dir.iterdir()) == []  # removed when the job ended


@pytest.mark.docs("uploads.md#stdin_file")
def test_stdin_file(client: Client, uploads_dir: Path) -> None:
    """ "stdin_file" feeds a file part to the command's stdin."""
    big = b"line\n" * 100_000
    response = post(
        client, "cat", {"stdin_file": "input", "wait": True}, input=(io.BytesIO(big), "in.txt")
    )
    assert response.status_code == 200
    assert client.get(f"/jobs/{response.json['id']}/stdout").data == big
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#cleanup")
def test_directory_removed_whatever_the_outcome(
    client: Client, uploads_dir: Path, runner_kind: str
) -> None:
    """Failed, timed out and cancelled jobs leave no files behind either."""
    failed = post(client, "show", {"args": ["{file:f}x"], "wait": True}, f=(io.BytesIO(b"1"), "a"))
    assert failed.json["status"] == "failed"
    assert list(uploads_dir.iterdir()) == []
    if runner_kind == "sync":
        return
    running = post(client, "sleep", {"args": ["30"]}, f=(io.BytesIO(b"1"), "a"))
    job_id = running.json["id"]
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "running")
    assert len(list(uploads_dir.iterdir())) == 1
    client.delete(f"/jobs/{job_id}?wait=10")
    wait_for(lambda: not list(uploads_dir.iterdir()))


@pytest.mark.parametrize(
    ("request_part", "files", "status", "code"),
    [
        ({"args": ["{file:nope}"]}, {"f": "a"}, 400, "invalid_request"),
        ({"stdin_file": "nope"}, {"f": "a"}, 400, "invalid_request"),
        ({"stdin_file": "f", "stdin": "x"}, {"f": "a"}, 400, "invalid_request"),
        ("{broken", {"f": "a"}, 400, "invalid_json"),
        ("[1]", {"f": "a"}, 400, "invalid_json"),
        ({"argz": []}, {"f": "a"}, 400, "unknown_field"),
        ({}, {"bad/name": "a"}, 400, "invalid_request"),
        ({}, {"a": "1", "b": "2", "c": "3", "d": "4"}, 413, "too_many_files"),
    ],
)
@pytest.mark.docs("uploads.md#errors")
def test_bad_uploads_are_refused_and_cleaned(
    client: Client,
    uploads_dir: Path,
    request_part: Any,
    files: dict[str, str],
    status: int,
    code: str,
) -> None:
    """Bad multipart requests get a JSON 4xx, run nothing and leave no files."""
    parts = {name: (io.BytesIO(content.encode()), "x.txt") for name, content in files.items()}
    response = post(client, "show", request_part, **parts)
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code
    assert client.get("/jobs").json["jobs"] == []
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("security.md#limits")
@pytest.mark.docs("uploads.md#limits")
def test_upload_over_limit_is_413(client: Client, uploads_dir: Path) -> None:
    """A multipart body over max_upload is refused with 413; no job, no files."""
    # Encoded in memory: werkzeug's test client would spool a body this big to a
    # temporary file that it never closes when the app does not read it all.
    stream, _, boundary = stream_encode_multipart(
        {"f": FileStorage(io.BytesIO(b"x" * (2 << 20)), "big", "f")}, use_tempfile=False
    )
    refused(
        client.application.store,  # the Gate the fixture made
        413,
        "request_entity_too_large",
        lambda: client.post(
            "/commands/show",
            data=stream.getvalue(),
            content_type=f"multipart/form-data; boundary={boundary}",
        ),
    )
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#limits")
def test_json_requests_keep_their_small_limit(client: Client) -> None:
    """max_upload applies to multipart only: a JSON body still has max_body."""
    gate_limit = 1 << 20
    refused(
        client.application.store,  # the Gate the fixture made
        413,
        "request_entity_too_large",
        lambda: client.post("/commands/cat", json={"stdin": "x" * (gate_limit + 10)}),
    )


@pytest.mark.docs("uploads.md#the-request")
def test_request_part_sent_as_a_file(client: Client) -> None:
    """curl -F request=@req.json: the request part arrives as a file, and still counts."""
    response = client.post(
        "/commands/show",
        data={
            "request": (io.BytesIO(b'{"args": ["{file:f}"], "wait": true}'), "req.json"),
            "f": (io.BytesIO(b"content"), "f.txt"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.json
    assert response.json["stdout"].endswith("content")


def request_part(data: bytes, filename: str | None = None) -> bytes:
    """A multipart body by hand, boundary ``b``: the request part, holding ``data``."""
    name = f'name="request"; filename="{filename}"' if filename else 'name="request"'
    return b"--b\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n--b--\r\n" % (
        name.encode(),
        data,
    )


FILE_PART = b'--b\r\nContent-Disposition: form-data; name="f"; filename="f.txt"\r\n\r\nabc\r\n'


@pytest.mark.parametrize(
    ("body", "params", "code", "says"),
    [
        (request_part(b'{"args": ["\xff"]}'), "; boundary=b", "invalid_json", "UTF-8"),
        (
            request_part(b'{"args": ["caf\xe9"]}', filename="req.json"),
            "; boundary=b",
            "invalid_json",
            "UTF-8",
        ),
        (request_part(b'{"args": ["x"]}'), "", "invalid_request", "boundary"),
        (request_part(b'{"args": ["x"]}'), '; boundary=""', "invalid_request", "boundary"),
        (
            FILE_PART + request_part(b'{"args": ["x"]}')[:-8],  # cut before the last boundary
            "; boundary=b",
            "invalid_request",
            "malformed",
        ),
    ],
    ids=["field-not-utf8", "file-not-utf8", "no-boundary", "empty-boundary", "cut-short"],
)
@pytest.mark.docs("security.md#failure-modes")
@pytest.mark.docs("uploads.md#errors")
def test_malformed_multipart_is_400_and_runs_nothing(
    client: Client, uploads_dir: Path, body: bytes, params: str, code: str, says: str
) -> None:
    """A request part that is not UTF-8 (a field or a file), a multipart body without a
    boundary, or one cut short, is a JSON 400: werkzeug would read a U+FFFD or an empty
    form, and the command would run with args nobody sent."""
    response = client.post("/commands/show", data=body, content_type="multipart/form-data" + params)
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == code
    assert says in response.json["error"]["message"]
    assert client.get("/jobs").json["jobs"] == []
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("security.md#failure-modes")
def test_streamed_multipart_cut_short_closes_its_files(client: Client, uploads_dir: Path) -> None:
    """A chunked multipart body (spooled to temporary files) that ends early is a 400, and
    the file parts read so far are closed (an open one would be a ResourceWarning)."""
    body = FILE_PART + FILE_PART.replace(b'"f"', b'"g"') + b"--b\r\nContent-Disp"
    response = client.post(
        "/commands/show",
        input_stream=io.BytesIO(body),
        content_type="multipart/form-data; boundary=b",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    gc.collect()  # an unclosed file part would warn now, failing the test
    assert response.status_code == 400, response.json
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#the-request")
def test_request_part_in_utf8_keeps_its_characters(client: Client) -> None:
    """A request part with non-ASCII UTF-8, as a field or as a file, reaches the job as
    sent: fields are read byte for byte, then decoded as UTF-8."""
    field = post(client, "cat", {"stdin": "café ✓", "wait": True})
    assert field.json["stdout"] == "café ✓", field.json
    as_file = client.post(
        "/commands/cat",
        data={"request": (io.BytesIO('{"stdin": "Grüße", "wait": true}'.encode()), "r.json")},
        content_type="multipart/form-data",
    )
    assert as_file.json["stdout"] == "Grüße", as_file.json


@pytest.mark.docs("uploads.md#cleanup")
def test_close_cleans_queued_uploads_and_calls_hooks(uploads_dir: Path) -> None:
    """Jobs still queued when the Gate closes are cancelled, their files removed, hooked."""
    from procgate import ThreadRunner

    gate = Gate(runner=ThreadRunner(max_workers=1))
    gate.register("sleep", ["sleep"], kill_grace=0.5)
    gate.register("cat", ["cat"])
    finished: list[str] = []
    gate.on_finish(lambda job, ctx: finished.append(job.status.value))
    client = Client(gate)
    client.post("/commands/sleep", json={"args": ["30"]})
    queued = post(client, "cat", {"stdin_file": "f"}, f=(io.BytesIO(b"x"), "x"))
    assert queued.json["status"] == "queued"
    assert len(list(uploads_dir.iterdir())) == 1
    gate.close()
    assert list(uploads_dir.iterdir()) == []
    assert sorted(finished) == ["cancelled", "cancelled"]
