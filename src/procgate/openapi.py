"""The OpenAPI 3.1 description of a Gate: its routes, and each command's request schema."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from procgate.callback_url import MAX_URL
from procgate.jobs import JobStatus

if TYPE_CHECKING:
    from procgate.auth import Tokens
    from procgate.commands import Command


class Described(Protocol):
    """What the description reads of a Gate (so this module needs nothing of app.py,
    which imports it)."""

    max_args: int
    max_arg_length: int
    callback_allow: tuple[str, ...]
    allow_shell: bool
    allow_any_program: bool
    allowed_programs: set[str]
    tokens: Tokens | None

_NULLABLE_STRING = {"type": ["string", "null"]}
#: The largest number a request may send (a longer integer is refused, not rounded).
_MAX_DOUBLE = sys.float_info.max

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_DELIVERY = {
    "type": ["object", "null"],
    "required": ["url", "status", "attempts", "last_status", "last_error"],
    "properties": {
        "url": {"type": "string"},
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status": {"type": ["integer", "null"]},
        "last_error": _NULLABLE_STRING,
    },
}

_JOB = {
    "type": "object",
    "required": [
        "id",
        "url",
        "command",
        "args",
        "status",
        "returncode",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "encoding",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "callback",
    ],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "command": _NULLABLE_STRING,
        "args": {"type": "array", "items": {"type": "string"}},
        "status": {"enum": [status.value for status in JobStatus]},
        "returncode": {"type": ["integer", "null"]},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "stdout_truncated": {"type": "boolean"},
        "stderr_truncated": {"type": "boolean"},
        "encoding": {"enum": ["utf-8", "base64"]},
        "error": _NULLABLE_STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "duration": {"type": ["number", "null"], "minimum": 0},
        "callback": {"$ref": "#/components/schemas/Delivery"},
    },
}

_COMMAND = {
    "type": "object",
    "required": ["name", "argv", "timeout", "max_output", "shell", "allow_env", "args"],
    "properties": {
        "name": {"type": "string"},
        "argv": {"type": "array", "items": {"type": "string"}},
        "timeout": {"type": ["number", "null"]},
        "max_output": {"type": "integer"},
        "shell": {"type": "boolean"},
        "allow_env": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "object"},
    },
}

_WAIT = {
    "name": "wait",
    "in": "query",
    "description": "true, false, or seconds to wait for the job to finish (capped)",
    "schema": {"type": "string", "pattern": "^(|true|false|[0-9]{1,9}(\\.[0-9]{1,9})?)$"},
}

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": _REASONS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


_REASONS = {
    400: "malformed request",
    401: "missing or wrong credentials",
    403: "not allowed",
    404: "no such command or job",
    413: "request too large",
    415: "not JSON",
    429: "too busy, or a limit reached: see Retry-After",
    503: "shutting down, or the job store unavailable: see Retry-After",
}


def _job_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
    }


def _no_nul(schema: Any) -> Any:
    """The schema with every string made free of NUL characters, as args must be."""
    if isinstance(schema, list):
        return [_no_nul(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _no_nul(value) for key, value in schema.items()}
    if result.get("type") == "string" and "const" not in result and "enum" not in result:
        result = {"allOf": [result, _NO_NUL]} if "pattern" in result else {**result, **_NO_NUL}
    return result


_NO_NUL = {"pattern": "^[^\\x00]*$"}
_SHLEX = r"""^(?:[^'"\\]|\\[\s\S]|'[^']*'|"(?:[^"\\]|\\[\s\S])*")*$"""


def _request_schema(command: Command | None, gate: Described) -> dict[str, Any]:
    """The JSON body of ``POST /commands/<name>`` (or ``/run`` for None)."""
    text = {"type": "string", "maxLength": gate.max_arg_length, **_NO_NUL}
    if command is not None:
        args = _no_nul(command.args.to_schema())
    else:
        args = {
            "oneOf": [
                {  # what shlex can split: quotes closed, no trailing backslash, no NUL
                    "type": "string",
                    "pattern": _SHLEX,
                    "allOf": [{"pattern": "\\S"}, _NO_NUL],
                },
                {"type": "array", "items": text, "minItems": 1, "maxItems": gate.max_args},
            ]
        }
    properties: dict[str, Any] = {
        "args": args,
        "stdin": {"type": "string"},
        "stdin_encoding": {"enum": ["utf-8", "base64"]},
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[^=\\x00]+$"},
            "additionalProperties": {"type": "string", **_NO_NUL},
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": _MAX_DOUBLE},
        "wait": {
            "oneOf": [
                {"type": "boolean"},
                {"type": "number", "minimum": 0, "maximum": _MAX_DOUBLE},
            ]
        },
        "idempotency_key": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            **_NO_NUL,
            "description": (
                "unique per caller (the bearer token, or the client address without tokens)"
                " and per command: the same caller sending it again for the same command"
                " gets the stored job (Idempotent-Replayed: true), and nothing new runs;"
                " another caller's key is never matched"
            ),
        },
        "callback_url": _callback_url(gate.callback_allow),
        "callback_context": {},
    }
    if command is None:
        properties["shell"] = {"type": "boolean"} if gate.allow_shell else {"const": False}
        if not gate.allow_any_program:
            properties["env"] = {"type": "object", "maxProperties": 0}
    elif command.allow_env:
        properties["env"] = {
            "type": "object",
            "propertyNames": {"enum": sorted(command.allow_env)},
            "additionalProperties": {"type": "string", **_NO_NUL},
        }
    else:
        properties["env"] = {"type": "object", "maxProperties": 0}
    if command is not None and command.timeout is not None:
        properties["timeout"]["maximum"] = command.timeout
    # null is accepted for every field, and means "not given"; args may be required
    required = command is None or command.args.requires_args
    nullable = {
        name: schema if name == "args" and required else {"anyOf": [schema, {"type": "null"}]}
        for name, schema in properties.items()
    }
    document: dict[str, Any] = {
        "type": "object",
        "properties": nullable,
        "additionalProperties": False,
    }
    if required:
        document["required"] = ["args"]
    conditions = [
        {  # base64 stdin must be base64
            "if": {
                "required": ["stdin_encoding"],
                "properties": {"stdin_encoding": {"const": "base64"}},
            },
            "then": {"properties": {"stdin": {"anyOf": [{"type": "null"}, _BASE64]}}},
        }
    ]
    if command is None and gate.allow_shell:
        conditions.append(
            {  # a shell job's args are one command string
                "if": {"required": ["shell"], "properties": {"shell": {"const": True}}},
                "then": {"properties": {"args": {"type": "string", "pattern": "\\S"}}},
            }
        )
    document["allOf"] = conditions
    return document


_BASE64 = {
    "type": "string",
    "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}


def _callback_url(allow: tuple[str, ...]) -> dict[str, Any]:
    """Only URLs under an allowed prefix; with none configured, no callbacks at all."""
    if not allow:
        return {"type": "null"}
    prefixes = "|".join(re.escape(prefix) for prefix in allow)
    return {
        "type": "string",
        "pattern": f"^({prefixes})",
        "format": "uri",
        "maxLength": MAX_URL,
        "description": "checked in normal form (lower-case scheme and host, dot segments "
        "resolved, repeated slashes merged), which is where the callback goes; no spaces, "
        "control characters or user info",
    }


def _command_paths(command: Command, gate: Described, security: list[Any]) -> dict[str, Any]:
    post: dict[str, Any] = {
        "summary": command.description or f"run {command.name}",
        "operationId": f"run_{command.name}",
        "parameters": [_WAIT],
        "responses": {
            "200": _job_response("finished within the wait"),
            "202": {
                **_job_response("accepted: queued or running"),
                "headers": {"Location": {"schema": {"type": "string"}}},
                "links": {
                    "GetJob": {
                        "operationId": "get_job",
                        "parameters": {"job_id": "$response.body#/id"},
                    },
                    "CancelJob": {
                        "operationId": "delete_job",
                        "parameters": {"job_id": "$response.body#/id"},
                    },
                },
            },
            **_errors(400, 401, 403, 404, 413, 415, 429, 503),
        },
    }
    if command.webhook:
        post["requestBody"] = {
            "description": "any body: it becomes the job's stdin",
            "content": {"*/*": {"schema": {}}},
        }
    else:
        # multipart/form-data (uploads) is accepted too, but a JSON part inside a form part
        # is more than a schema can say precisely: it is described in docs/uploads.md.
        post["requestBody"] = {
            "required": command.args.requires_args,  # else an empty body is {}
            "content": {"application/json": {"schema": _request_schema(command, gate)}},
        }
    if command.hmac_secret is not None:
        post["security"] = []
        post["description"] = "signed with X-Hub-Signature-256 or X-Gitlab-Token"
    elif security:
        post["security"] = security
    return {
        "get": {
            "summary": f"describe {command.name}",
            "operationId": f"describe_{command.name}",
            "responses": {
                "200": {
                    "description": "the command",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Command"}}
                    },
                },
                **_errors(401, 403, 404),
            },
        },
        "post": post,
    }


def _octets(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }


def openapi(gate: Described, server_url: str, commands: Iterable[Command]) -> dict[str, Any]:
    """The document for ``gate`` as served at ``server_url``, listing ``commands``."""
    security: list[Any] = [{"bearer": []}] if gate.tokens is not None else []
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {
                        "description": "up",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/commands": {
            "get": {
                "operationId": "list_commands",
                "responses": {
                    "200": {
                        "description": "the commands this client may see",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["commands"],
                                    "properties": {
                                        "commands": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Command"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    **_errors(401, 403),
                },
            }
        },
        "/jobs": {
            "get": {
                "operationId": "list_jobs",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"enum": [s.value for s in JobStatus]},
                    },
                    {"name": "command", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "jobs, newest first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["jobs", "next"],
                                    "properties": {
                                        "jobs": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Job"},
                                        },
                                        "next": _NULLABLE_STRING,
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "get_job",
                "parameters": [_WAIT],
                "responses": {"200": _job_response("the job"), **_errors(400, 401, 403, 404, 503)},
            },
            "delete": {
                "operationId": "delete_job",
                "parameters": [_WAIT],
                "responses": {
                    "202": _job_response("cancel requested (or the job had just finished)"),
                    "204": {"description": "the finished job was deleted"},
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/jobs/{job_id}/output": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "get_output",
                "parameters": [
                    {"name": "stream", "in": "query", "schema": {"enum": ["stdout", "stderr"]}},
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                    },
                    _WAIT,
                ],
                "responses": {
                    "200": _octets("the stream's bytes from the offset"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/jobs/{job_id}/events": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "get_events",
                "responses": {
                    "200": {
                        "description": "Server-Sent Events until the job ends",
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "object",
                                    "required": ["event", "id", "data"],
                                    "properties": {
                                        "event": {"enum": ["status", "output", "end"]},
                                        "id": {"type": "string", "pattern": "^[0-9]+$"},
                                        "data": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "this document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(401, 403),
                },
            }
        },
    }
    for stream in ("stdout", "stderr"):
        paths[f"/jobs/{{job_id}}/{stream}"] = {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": f"get_{stream}",
                "parameters": [
                    {
                        "name": "follow",
                        "in": "query",
                        "schema": {"enum": ["", "0", "1", "true", "false"]},
                    }
                ],
                "responses": {
                    "200": _octets(f"the job's {stream}"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        }
    for command in commands:
        paths[f"/commands/{command.name}"] = _command_paths(command, gate, security)
    if gate.allowed_programs or gate.allow_any_program or gate.allow_shell:
        paths["/run"] = {
            "post": {
                "operationId": "run_program",
                "parameters": [_WAIT],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _request_schema(None, gate)}},
                },
                "responses": {
                    "200": _job_response("finished within the wait"),
                    "202": _job_response("accepted"),
                    **_errors(400, 401, 403, 413, 415, 429, 503),
                },
            }
        }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "procgate", "version": _version()},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": {
                "Job": _JOB,
                "Error": _ERROR,
                "Command": _COMMAND,
                "Delivery": _DELIVERY,
            }
        },
    }
    if security:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = security
    return document


def _version() -> str:
    from procgate import __version__

    return __version__
