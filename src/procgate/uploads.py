"""File uploads: multipart requests, each file saved in a private per-job directory."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.utils import secure_filename

from procgate.errors import InvalidRequest, PayloadTooLarge, ProcgateError

if TYPE_CHECKING:
    from werkzeug.formparser import t_parse_result

_FIELD = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLACEHOLDER = re.compile(r"\{file:([^{}]*)\}")
_MAX_REQUEST_PART = 1 << 20  # the request part's JSON, like a JSON body
_READ = 64 * 1024  # werkzeug's multipart read size


class FormParser(FormDataParser):
    """werkzeug's form parser, strict where werkzeug would guess.

    werkzeug reads a multipart body without a boundary, or one that is cut short, as an
    empty form, and decodes text fields with U+FFFD for invalid UTF-8: the command would
    then run with no args, or with args the client never sent. Here each is a 400, and
    text fields come through byte for byte (see ``_Fields``) for ``save_upload`` to
    decode strictly.
    """

    def parse(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str] | None = None,
    ) -> t_parse_result:
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        boundary = (options or {}).get("boundary", "")
        if not boundary or not boundary.isascii():
            raise InvalidRequest("multipart/form-data needs a boundary parameter, in ASCII")
        made: list[IO[bytes]] = []

        def make_file(*args: Any, **kwargs: Any) -> IO[bytes]:
            file = self.stream_factory(*args, **kwargs)
            made.append(file)
            return file

        limit = self.max_form_memory_size
        parser = _Fields(
            stream_factory=make_file,
            max_form_memory_size=limit,
            max_form_parts=self.max_form_parts,
            cls=self.cls,
            # werkzeug holds each read, file data too, to max_form_memory_size: read at
            # most half of it at a time, or max_body < 64 KiB refuses every larger upload.
            buffer_size=_READ if limit is None else max(1, min(_READ, limit // 2)),
        )
        try:
            form, files = parser.parse(stream, boundary.encode("ascii"), content_length)
        except BaseException as exc:
            for file in made:  # the file parts read so far: nobody else will close them
                file.close()
            if isinstance(exc, ValueError):
                raise InvalidRequest(f"the multipart body is malformed: {exc}") from None
            raise
        return stream, form, files


class _Fields(MultiPartParser):
    """Text fields decoded as Latin-1: one character per byte, so nothing is lost."""

    def get_part_charset(self, headers: Headers) -> str:
        return "latin-1"


class TooManyFiles(ProcgateError):
    """More file parts than the Gate's ``max_files``."""

    status = 413
    code = "too_many_files"


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart request: its JSON part, and where each file part was saved."""

    body: dict[str, Any]
    directory: str
    paths: dict[str, str]  # field name -> absolute path of the saved file

    def discard(self) -> None:
        """Remove the directory: the job did not (or will no longer) use it."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def give_to(self, user: str, group: str | None) -> None:
        """Hand the directory and files to the user a command runs as."""
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid if group is not None else pwd.getpwnam(user).pw_gid
        for root, dirs, files in os.walk(self.directory):
            os.chown(root, uid, gid)
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), uid, gid)

    def substitute(self, args: Sequence[str]) -> list[str]:
        """Replace each ``{file:FIELD}`` in the args by that file's path."""

        def path(match: re.Match[str]) -> str:
            field = match.group(1)
            if field not in self.paths:
                raise InvalidRequest(f"args refer to {{file:{field}}}, but no such file was sent")
            return self.paths[field]

        return [_PLACEHOLDER.sub(path, arg) for arg in args]

    def stdin_path(self, field: object) -> str | None:
        """The file named by ``"stdin_file"``, if any."""
        if field is None:
            return None
        if not isinstance(field, str) or field not in self.paths:
            raise InvalidRequest("stdin_file must name a file part of the request")
        return self.paths[field]


def save_upload(
    form: MultiDict[str, str], files: MultiDict[str, FileStorage], max_files: int
) -> Upload:
    """Read the ``request`` part as the job's JSON, and save every file part.

    ``form`` holds the text fields as ``FormParser`` reads them, one Latin-1 character per
    byte. Files go to ``<new private dir>/<field>/<sanitised file name>``: a client picks
    neither directory nor path (no traversal), only a file name that keeps its extension.
    """
    data = form.get("request", "").encode("latin-1")
    if "request" in files:  # curl -F request=@req.json sends the JSON as a file part
        if "request" in form:
            raise InvalidRequest("send the request part once")
        part = files.getlist("request")
        files = MultiDict([(k, v) for k, v in files.items(multi=True) if k != "request"])
        if len(part) != 1:
            raise InvalidRequest("send the request part once")
        data = part[0].read(_MAX_REQUEST_PART + 1)
        if len(data) > _MAX_REQUEST_PART:
            raise PayloadTooLarge("the request part is too large", code="request_entity_too_large")
    body = _request_part(data)
    if len(files) > max_files:
        raise TooManyFiles(f"at most {max_files} files per request")
    directory = tempfile.mkdtemp(prefix="procgate-job-")  # mode 0700
    paths: dict[str, str] = {}
    try:
        for field, storage in files.items(multi=True):
            if not _FIELD.fullmatch(field):
                raise InvalidRequest(
                    f"file field {field!r} must be 1-64 letters, digits, '_' or '-'"
                )
            if field in paths:
                raise InvalidRequest(f"file field {field!r} is sent twice")
            name = secure_filename(storage.filename or "") or "upload"
            os.mkdir(os.path.join(directory, field), 0o700)
            path = os.path.join(directory, field, name)
            storage.save(path)
            paths[field] = path
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Upload(body, directory, paths)


def _request_part(data: bytes) -> dict[str, Any]:
    """The JSON object of the request part: UTF-8, as JSON must be; none is ``{}``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the request part is not valid UTF-8: {exc.reason} at byte {exc.start}",
            code="invalid_json",
        ) from None
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"the request part is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request part must be a JSON object", code="invalid_json")
    return body
