"""File uploads: multipart requests, each file saved in a private per-job directory."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.utils import secure_filename

from procgate.errors import InvalidRequest, ProcgateError

_FIELD = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLACEHOLDER = re.compile(r"\{file:([^{}]*)\}")
_MAX_REQUEST_PART = 1 << 20  # the request part's JSON, like a JSON body


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

    Files go to ``<new private dir>/<field>/<sanitised file name>``: a client picks
    neither directory nor path (no traversal), only a file name that keeps its extension.
    """
    if "request" in files:  # curl -F request=@req.json sends the JSON as a file part
        if "request" in form:
            raise InvalidRequest("send the request part once")
        part = files.getlist("request")
        files = MultiDict([(k, v) for k, v in files.items(multi=True) if k != "request"])
        if len(part) != 1:
            raise InvalidRequest("send the request part once")
        form = MultiDict(form)
        form["request"] = part[0].read(_MAX_REQUEST_PART + 1).decode("utf-8", "replace")
        if len(form["request"]) > _MAX_REQUEST_PART:
            raise InvalidRequest("the request part is too large", code="request_entity_too_large")
    body = _request_part(form)
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


def _request_part(form: Mapping[str, str]) -> dict[str, Any]:
    text = form.get("request")
    if text is None or not text.strip():
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
