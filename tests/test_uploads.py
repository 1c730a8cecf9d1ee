"""File uploads: multipart requests, placeholders, stdin files, limits, cleanup."""

from __future__ import annotations

import gc
import grp
import io
import json
import pwd
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.test import Client, stream_encode_multipart

from procgate import Gate
from procgate.errors import PayloadTooLarge
from procgate.uploads import FormParser, save_upload
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
    ("request_part", "files", "status", "code", "message"),
    [
        (
            {"args": ["{file:nope}"]},
            {"f": "a"},
            400,
            "invalid_request",
            "args refer to {file:nope}, but no such file was sent",
        ),
        (
            {"stdin_file": "nope"},
            {"f": "a"},
            400,
            "invalid_request",
            "stdin_file must name a file part of the request",
        ),
        (
            {"stdin_file": 1},
            {"f": "a"},
            400,
            "invalid_request",
            "stdin_file must name a file part of the request",
        ),
        (
            {"stdin_file": "f", "stdin": "x"},
            {"f": "a"},
            400,
            "invalid_request",
            "send stdin or stdin_file, not both",
        ),
        (
            "{broken",
            {"f": "a"},
            400,
            "invalid_json",
            "the request part is not valid JSON: "
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[1]", {"f": "a"}, 400, "invalid_json", "the request part must be a JSON object"),
        ({"argz": []}, {"f": "a"}, 400, "unknown_field", None),  # the app's message
        (
            {},
            {"bad/name": "a"},
            400,
            "invalid_request",
            "file field 'bad/name' must be 1-64 letters, digits, '_' or '-'",
        ),
        (
            {},
            {"a": "1", "b": "2", "c": "3", "d": "4"},
            413,
            "too_many_files",
            "at most 3 files per request",
        ),
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
    message: str | None,
) -> None:
    """Bad multipart requests get a JSON 4xx with the message a client reads, run nothing
    and leave no files."""
    parts = {name: (io.BytesIO(content.encode()), "x.txt") for name, content in files.items()}
    response = post(client, "show", request_part, **parts)
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code
    if message is not None:
        assert response.json["error"]["message"] == message
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


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body by hand, boundary ``b``: each part is (name, file name or None,
    content); werkzeug's test client can send neither a name twice nor an empty file name."""
    body = b""
    for name, filename, content in parts:
        disposition = f'name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += b"--b\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (
            disposition.encode(),
            content,
        )
    return body + b"--b--\r\n"


REQUEST = b'{"args": ["{file:f}"], "wait": true}'


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (
            [("request", None, REQUEST), ("request", "r.json", REQUEST), ("f", "f.txt", b"1")],
            "send the request part once",
        ),
        (
            [("request", "r.json", REQUEST), ("request", "s.json", REQUEST), ("f", "f.txt", b"1")],
            "send the request part once",
        ),
        (
            [("request", None, REQUEST), ("f", "a.txt", b"1"), ("f", "b.txt", b"2")],
            "file field 'f' is sent twice",
        ),
        (
            [("request", "r.json", REQUEST), ("f", "a.txt", b"1"), ("f", "b.txt", b"2")],
            "file field 'f' is sent twice",
        ),
    ],
    ids=["request-field-and-file", "request-file-twice", "field-twice", "field-twice-request-file"],
)
@pytest.mark.docs("uploads.md#the-request", "uploads.md#errors")
def test_a_part_sent_twice_is_400(
    client: Client, uploads_dir: Path, parts: list[tuple[str, str | None, bytes]], message: str
) -> None:
    """The request part (as a field, a file, or both) and each file field come at most once:
    a second one is 400 invalid_request, never a silent pick of one of them."""
    response = refused(
        client.application.store,  # the Gate the fixture made
        400,
        "invalid_request",
        lambda: client.post(
            "/commands/show",
            data=multipart(*parts),
            content_type="multipart/form-data; boundary=b",
        ),
    )
    assert response.json["error"]["message"] == message
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#the-request", "uploads.md#limits")
def test_request_file_part_at_and_over_its_limit(runner_kind: str, uploads_dir: Path) -> None:
    """A request part sent as a file may be 1 MiB exactly; one byte more is 413
    request_entity_too_large (the status that code always has), and no job is made."""
    gate = Gate(runner=make_runner(runner_kind), max_upload=4 << 20)
    gate.register("cat", ["cat"])
    client = Client(gate)
    request = b'{"stdin": "at the limit", "wait": true}'
    at_limit = b" " * ((1 << 20) - len(request)) + request  # the closing brace is the last byte

    def send(data: bytes) -> Any:  # in memory: the test client spools big bodies to files
        return client.post(
            "/commands/cat",
            data=multipart(("request", "r.json", data)),
            content_type="multipart/form-data; boundary=b",
        )

    try:
        accepted = send(at_limit)
        assert accepted.status_code == 200, accepted.json
        assert accepted.json["stdout"] == "at the limit"
        over = refused(gate.store, 413, "request_entity_too_large", lambda: send(b" " + at_limit))
        assert over.json["error"]["message"] == "the request part is too large"
    finally:
        gate.close()
    assert list(uploads_dir.iterdir()) == []


def test_request_file_part_is_read_only_to_its_limit(uploads_dir: Path) -> None:
    """An oversized request part is refused after reading one byte past the 1 MiB limit,
    not read whole into memory (it may be as large as max_upload)."""
    stream = io.BytesIO(b" " * (8 << 20))
    files = MultiDict([("request", FileStorage(stream, "r.json", "request"))])
    with pytest.raises(PayloadTooLarge, match="the request part is too large"):
        save_upload(MultiDict(), files, max_files=3)
    assert stream.tell() == (1 << 20) + 1
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#the-request", "uploads.md#limits")
def test_max_files_files_with_the_request_as_a_file(client: Client, uploads_dir: Path) -> None:
    """Exactly max_files file parts are accepted; a request part sent as a file is not one
    of them (nor a file the args can name)."""
    response = client.post(
        "/commands/show",
        data=multipart(
            ("request", "r.json", b'{"args": ["{file:c}"], "wait": true}'),
            ("a", "a.txt", b"1"),
            ("b", "b.txt", b"2"),
            ("c", "c.txt", b"3"),
        ),
        content_type="multipart/form-data; boundary=b",
    )
    assert response.status_code == 200, response.json
    assert response.json["stdout"].endswith("/c/c.txt\n3")
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#the-request")
def test_no_request_part_is_an_empty_request(client: Client) -> None:
    """Files without a request part: the request is {} and the job runs, with no args."""
    response = post(client, "cat", None, f=(io.BytesIO(b"x"), "x.txt"))
    assert response.status_code in (200, 201, 202), response.json
    assert response.json["args"] == []
    job_id = response.json["id"]
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "succeeded")


@pytest.mark.parametrize("filename", ["", "..", "/"])
@pytest.mark.docs("uploads.md#where-files-go")
def test_a_file_name_with_nothing_left_is_upload(
    client: Client, uploads_dir: Path, filename: str
) -> None:
    """A file part with an empty name, or one secure_filename leaves nothing of, is saved
    as ``upload``."""
    response = client.post(
        "/commands/show",
        data=multipart(("request", None, REQUEST), ("f", filename, b"content")),
        content_type="multipart/form-data; boundary=b",
    )
    assert response.status_code == 200, response.json
    path, _, content = response.json["stdout"].partition("\n")
    assert path.endswith("/f/upload")
    assert content == "content"


@pytest.mark.docs("uploads.md#where-files-go", "uploads.md#cleanup")
def test_saved_files_are_in_a_private_procgate_job_directory(uploads_dir: Path) -> None:
    """save_upload makes ``procgate-job-*`` (the name the docs tell operators to clean up)
    in the temporary directory, it and each field's directory with mode 0700, and
    ``discard`` removes it all."""
    files = MultiDict(
        [
            ("video", FileStorage(io.BytesIO(b"frames"), "../clip.mp4", "video")),
            ("notes", FileStorage(io.BytesIO(b"text"), "notes.txt", "notes")),
        ]
    )
    upload = save_upload(MultiDict({"request": '{"args": []}'}), files, max_files=3)
    directory = Path(upload.directory)
    assert directory.parent == uploads_dir
    assert directory.name.startswith("procgate-job-")
    assert upload.body == {"args": []}
    assert upload.paths == {
        "video": str(directory / "video" / "clip.mp4"),
        "notes": str(directory / "notes" / "notes.txt"),
    }
    assert Path(upload.paths["video"]).read_bytes() == b"frames"
    for private in (directory, directory / "video", directory / "notes"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
    upload.discard()
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#limits")
def test_non_file_parts_are_held_to_max_body(runner_kind: str, uploads_dir: Path) -> None:
    """In a multipart request, a part without a file name (the request part) over max_body
    is 413 request_entity_too_large, though the body is well under max_upload; a file
    part many times max_body is not held to it (werkzeug's parser reads 64 KiB at a time,
    and used to refuse any read larger than max_body)."""
    gate = Gate(runner=make_runner(runner_kind), max_body=16_384, max_upload=1 << 20)
    gate.register("cat", ["cat"])
    client = Client(gate)
    request = b" " * 16_384 + b'{"wait": true}'
    big = b"line\n" * 40_000  # 200,000 bytes
    try:
        accepted = client.post(
            "/commands/cat",
            data=multipart(
                ("request", None, b'{"stdin_file": "f", "wait": true}'), ("f", "f.txt", big)
            ),
            content_type="multipart/form-data; boundary=b",
        )
        assert accepted.status_code == 200, accepted.json
        assert accepted.json["stdout"] == big.decode()
        refused(
            gate.store,
            413,
            "request_entity_too_large",
            lambda: client.post(
                "/commands/cat",
                data=multipart(("request", None, request)),
                content_type="multipart/form-data; boundary=b",
            ),
        )
    finally:
        gate.close()
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.docs("uploads.md#limits")
def test_parts_in_all_are_held_to_max_files_plus_20(client: Client, uploads_dir: Path) -> None:
    """max_files + 20 parts in all (here 23, none of them a file) are parsed; one more is
    413 request_entity_too_large from the form parser."""
    parts = [("request", None, b'{"wait": true}')]
    parts += [(f"note{i}", None, b"ignored") for i in range(22)]
    accepted = client.post(
        "/commands/cat",
        data=multipart(*parts),
        content_type="multipart/form-data; boundary=b",
    )
    assert accepted.status_code == 200, accepted.json
    refused(
        client.application.store,  # the Gate the fixture made
        413,
        "request_entity_too_large",
        lambda: client.post(
            "/commands/cat",
            data=multipart(*parts, ("one_more", None, b"")),
            content_type="multipart/form-data; boundary=b",
        ),
    )
    assert list(uploads_dir.iterdir()) == []


@pytest.mark.parametrize("params", ["", '; boundary=""', "; boundary=\u00e9t\u00e9"])
@pytest.mark.docs("uploads.md#the-request", "uploads.md#errors")
def test_boundary_error_message(client: Client, params: str) -> None:
    """A multipart Content-Type without a boundary, or with one not in ASCII, is 400 with
    a message saying so."""
    response = refused(
        client.application.store,  # the Gate the fixture made
        400,
        "invalid_request",
        lambda: client.post(
            "/commands/show",
            data=multipart(("request", None, REQUEST)),
            content_type="multipart/form-data" + params,
        ),
    )
    assert response.json["error"]["message"] == (
        "multipart/form-data needs a boundary parameter, in ASCII"
    )


def test_form_parser_leaves_other_forms_to_werkzeug() -> None:
    """FormParser is strict for multipart only: a urlencoded form parses as werkzeug's
    FormDataParser does, limits included (werkzeug 3.1.8 refuses one over
    max_form_memory_size with 413; 3.1.9 no longer applies that limit to such forms)."""

    def parse(parser: FormDataParser, body: bytes) -> object:
        stream, mimetype = io.BytesIO(body), "application/x-www-form-urlencoded"
        try:
            _, form, files = parser.parse(stream, mimetype, len(body), {})
        except RequestEntityTooLarge:
            return RequestEntityTooLarge
        return form.to_dict(), files.to_dict()

    assert parse(FormParser(max_form_memory_size=10), b"a=1&b=2") == ({"a": "1", "b": "2"}, {})
    for body in (b"a=1&b=2", b"a=" + b"x" * 20):
        ours = parse(FormParser(max_form_memory_size=10), body)
        assert ours == parse(FormDataParser(max_form_memory_size=10), body), body


@pytest.mark.parametrize("group", [None, "daemon"])
@pytest.mark.docs("uploads.md#where-files-go")
def test_files_are_handed_to_the_commands_user(group: str | None) -> None:
    """For a command with ``user`` (as root), the job's directory, each field's directory
    and each file belong to that user, and to ``group`` or else the user's own group.
    (The real temporary directory: nobody cannot enter the test's tmp_path.)"""
    nobody = pwd.getpwnam("nobody")
    gid = grp.getgrnam(group).gr_gid if group is not None else nobody.pw_gid
    assert gid != nobody.pw_gid or group is None  # else a wrong group could pass unseen
    gate = Gate()
    gate.register(
        "owners",
        'stat -c %u:%g "${1%/*/*}" "${1%/*}" "$1" "$2"',
        shell=True,
        user="nobody",
        group=group,
    )
    client = Client(gate)
    try:
        response = client.post(
            "/commands/owners",
            data=multipart(
                ("request", None, b'{"args": ["{file:a}", "{file:b}"], "wait": true}'),
                ("a", "a.txt", b"1"),
                ("b", "b.txt", b"2"),
            ),
            content_type="multipart/form-data; boundary=b",
        )
    finally:
        gate.close()
    assert response.status_code == 200, response.json
    assert response.json["stdout"] == f"{nobody.pw_uid}:{gid}\n" * 4, response.json


def test_give_to_without_a_group_hands_files_to_the_users_group(uploads_dir: Path) -> None:
    """Upload.give_to(user, None) uses the user's own group. (A Gate never passes None:
    register() fills in the user's group; this pins give_to's own contract.)"""
    nobody = pwd.getpwnam("nobody")
    files = MultiDict([("f", FileStorage(io.BytesIO(b"1"), "f.txt", "f"))])
    upload = save_upload(MultiDict(), files, max_files=3)
    try:
        upload.give_to("nobody", None)
        file = Path(upload.paths["f"])
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in (file.parents[1], file.parent, file)}
    finally:
        upload.discard()
    assert owners == {(nobody.pw_uid, nobody.pw_gid)}


@pytest.mark.docs("uploads.md#where-files-go")
def test_a_failed_hand_over_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's group is deleted after it was registered: handing the files to it
    fails, the request gets an error, and its directory does not stay behind."""
    group = f"pgt{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", group], check=True)
    try:
        gate = Gate()
        gate.register("cat", ["cat"], user="nobody", group=group)
    finally:
        subprocess.run(["groupdel", group], check=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where procgate-job-* go
    client = Client(gate)
    try:
        response = client.post(
            "/commands/cat",
            data=multipart(("request", None, b"{}"), ("a", "a.txt", b"1")),
            content_type="multipart/form-data; boundary=b",
        )
    finally:
        gate.close()
    assert response.status_code >= 500, response.json
    assert "error" in response.json
    assert list(tmp_path.iterdir()) == []
