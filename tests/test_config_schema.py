"""One validation layer for config files: every mistake is one line that says what to change.

The cases are a newcomer's mistakes: wrong-typed ``[server]`` values that used to pass
``procgate check`` and crash ``serve``, a string where a list belongs, quoted numbers and
booleans. ``procgate check`` and ``serve`` read a file through the same ``read_config``.
"""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import jsonschema
import pytest

from procgate import cli
from procgate.config import read_config
from procgate.config_schema import COMMAND, COMPAT, SECTIONS, TOKEN, json_schema, validate

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "procgate.toml"
    path.write_text(text)
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


MISTAKES = [
    (
        '[server]\nthreads = "many"\n',
        '[server] threads: got "many" (a string); takes a whole number >= 1',
    ),
    (
        "[server]\nhost = 8000\n",
        "[server] host: got 8000 (a whole number); takes a non-empty string",
    ),
    (
        "[server]\nport = 70000\n",
        "[server] port: got 70000 (a whole number); takes a whole number from 1 to 65535",
    ),
    (
        '[server]\nport = "abc"\n',
        '[server] port: got "abc" (a string); takes a whole number from 1 to 65535',
    ),
    (
        '[server]\nport = "8080"\n',
        '[server] port: got "8080" (a string); takes a whole number from 1 to 65535'
        " (write it without quotes: 8080)",
    ),
    (
        "[server]\nworkers = 0\n",
        "[server] workers: got 0 (a whole number); takes a whole number >= 1",
    ),
    (
        '[commands.x]\nargv = ["env"]\nallow_env = "LANG"\n',
        '[commands.x] allow_env: got "LANG" (a string); takes a list of non-empty strings'
        ' (write it as a list: ["LANG"])',
    ),
    (
        '[runner]\nmax_workers = "8"\n',
        '[runner] max_workers: got "8" (a string); takes a whole number >= 1'
        " (write it without quotes: 8)",
    ),
    (
        '[store]\nmax_jobs = "10"\n',
        '[store] max_jobs: got "10" (a string); takes a whole number >= 1'
        " (write it without quotes: 10)",
    ),
    (
        '[commands.x]\nargv = ["echo"]\nshell = "yes"\n',
        '[commands.x] shell: got "yes" (a string); takes true or false',
    ),
    (
        '[commands.x]\nargv = ["echo"]\nshell = "true"\n',
        '[commands.x] shell: got "true" (a string); takes true or false'
        " (write it without quotes: true)",
    ),
    (
        '[commands.x]\nargv = ["echo"]\ntimeout = "30"\n',
        '[commands.x] timeout: got "30" (a string); takes a number of seconds > 0'
        " (write it without quotes: 30)",
    ),
    (
        '[commands.x]\nargv = "echo hi"\n',
        '[commands.x] argv: got "echo hi" (a string); takes a non-empty list of strings'
        " (a script string needs shell = true)",
    ),
    (
        '[commands.x]\nshell = true\nargv = ["echo"]\n',
        '[commands.x] argv: got ["echo"] (a list); with shell = true it takes the script as'
        " one string",
    ),
    (
        '[commands.x]\nargv = ["echo"]\nmax_rate = "10 per minute"\n',
        '[commands.x] max_rate: got "10 per minute" (a string); takes "N/second", "N/minute",'
        ' "N/hour" or "N/day", N >= 1',
    ),
    (
        '[commands.x]\nargv = ["echo"]\nlimits = { cpus = 5 }\n',
        "[commands.x] limits: got a table; takes a table of rlimit = whole number >= 0 (as,"
        " core, cpu, data, fsize, memlock, nofile, nproc, rss, stack)",
    ),
    (
        "[server]\nprot = 8000\n",
        "[server] prot: unknown key (did you mean port?); allowed: backlog, engine, host, port,"
        " threads, workers",
    ),
    (
        "[sever]\nport = 8000\n",
        "[sever]: unknown section (did you mean [server]?); allowed: [auth], [commands.NAME],"
        " [compat.http_runner], [compat.subprocess_api], [gate], [run], [runner], [server],"
        " [store]",
    ),
    (
        '[compat.http_runer]\nprefix = "/x"\n',
        "[compat.http_runer]: unknown drop-in; allowed: [compat.http_runner],"
        " [compat.subprocess_api]",
    ),
    (
        '[compat.http_runner]\nprefix = "/h"\n',
        "[compat.http_runner] allow: missing; takes the commands a request may name",
    ),
    (
        '[compat.subprocess_api]\nprefix = "/x/"\n',
        "[compat.subprocess_api] prefix: got '/x/'; takes a path such as /subprocess-api"
        " (a leading /, no trailing /)",
    ),
    (
        "[compat.subprocess_api]\n",
        "[compat.subprocess_api] prefix: missing; takes a URL prefix such as /subprocess_api",
    ),
    (
        '[runner]\nkind = "sync"\nmax_workers = 2\n',
        '[runner] max_workers: not a key of kind = "sync"',
    ),
    (
        '[runner]\nkind = "celery"\n',
        '[runner] broker: missing; kind = "celery" needs the broker URL',
    ),
    (
        "[runner]\nheartbeat = 10\nstale_after = 10\n",
        "[runner] stale_after: got 10 (a whole number); takes a number of seconds above"
        " heartbeat (10)",
    ),
    (
        '[store]\nurl = "memory://"\nprefix = "a:"\n',
        "[store] prefix: only a Redis store (redis://, rediss://, unix://) takes it",
    ),
    (
        '[gate]\ncallback_secret = "a"\ncallback_secret_env = "B"\n',
        "[gate] callback_secret_env: give callback_secret or callback_secret_env, not both",
    ),
    (
        '[[auth.tokens]]\nid = "ci"\nsha256 = "abc"\n',
        '[[auth.tokens]] #1 sha256: got "abc" (a string); takes 64 hex digits (procgate token)',
    ),
    (
        '[[auth.tokens]]\nid = "ci"\n',
        "[[auth.tokens]] #1 sha256: missing; it is required",
    ),
    (
        '[commands."bad name"]\nargv = ["echo"]\n',
        "[commands.bad name]: a command name is 1-64 letters, digits, '_', '.' or '-',"
        " starting with a letter or digit",
    ),
]


@pytest.mark.parametrize(("text", "line"), MISTAKES)
@pytest.mark.docs("configuration.md#procgate-check")
def test_each_mistake_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    """``procgate check`` prints exactly one line: the file, the key's full path, what it
    got and what it takes; exit status 2, no traceback."""
    path = write(tmp_path, text)
    code, lines = run_cli(capsys, "check", "--config", path)
    assert (code, lines) == (2, [f"procgate: error: {path}: {line}"])


@pytest.mark.parametrize(
    ("text", "line"), [case for case in MISTAKES if case[0].startswith("[server]")]
)
@pytest.mark.docs("configuration.md#server", "configuration.md#procgate-serve")
def test_serve_refuses_what_check_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    """``serve`` reads the file through the same validation, before starting anything."""
    path = write(tmp_path, text)
    code, lines = run_cli(capsys, "serve", "--config", path)
    assert (code, lines) == (2, [f"procgate: error: {path}: {line}"])


@pytest.mark.docs("configuration.md#procgate-check")
def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every problem of the file, one line each, in the file's order; not just the first."""
    path = write(
        tmp_path,
        '[server]\nport = 0\nthreads = "x"\n\n[gate]\nmax_wait = -1\n\n'
        '[commands.a]\nargv = ["echo"]\ntimeot = 5\n\n[commands.b]\nargv = []\n',
    )
    code, lines = run_cli(capsys, "check", "--config", path)
    assert code == 2
    keys = [line.removeprefix(f"procgate: error: {path}: ").split(":")[0] for line in lines]
    assert keys == [
        "[server] port",
        "[server] threads",
        "[gate] max_wait",
        "[commands.a] timeot",
        "[commands.b] argv",
    ]


@pytest.mark.docs("configuration.md#procgate-check")
def test_check_reports_every_command_that_cannot_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What only the running system can tell (a program on the PATH or on disk) is
    reported for every command too, with the path normalised."""
    (tmp_path / "conf").mkdir()
    script = tmp_path / "conf" / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    path = write(
        tmp_path,
        '[store]\nurl = "memory://"\n\n'
        '[commands.gone]\nargv = ["no-such-program-xyz"]\n\n'
        '[commands.noexec]\nargv = ["./conf/./noexec.sh"]\n\n'
        '[commands.ok]\nargv = ["echo"]\n',
    )
    code, lines = run_cli(capsys, "check", "--config", path)
    assert code == 2
    assert lines == [
        f"procgate: error: {path}: [commands.gone] program 'no-such-program-xyz' not found",
        f"procgate: error: {path}: [commands.noexec] program '{script}' is not executable"
        " (chmod +x it, or check its mount)",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "argument --workers: got '0'; takes a whole number >= 1"),
        (["--threads", "many"], "argument --threads: got 'many'; takes a whole number >= 1"),
        (["--port", "70000"], "argument --port: got '70000'; takes a whole number from 1 to 65535"),
    ],
)
@pytest.mark.docs("configuration.md#procgate-serve")
def test_serve_flags_name_themselves(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad flag is named as the flag; a bad config key as the key (never the other)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--config", str(ROOT / "examples" / "procgate.toml"), *argv])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"procgate serve: error: {message}"


def test_a_good_file_reads_as_before(tmp_path: Path) -> None:
    """Lists stay lists, and a valid file yields the same options as before."""
    path = write(
        tmp_path,
        '[store]\nurl = "memory://"\n[commands.x]\nargv = ["env"]\nallow_env = ["LANG"]\n',
    )
    gate = read_config(path).build()
    try:
        assert gate.commands["x"].allow_env == frozenset({"LANG"})
    finally:
        gate.close()


# -- the JSON Schema and the reference: the same description -----------------------------


def _complete_file() -> dict[str, object]:
    text = DOCS.read_text()
    block = re.search(r"## A complete file\n\n```toml\n(.*?)```", text, re.S)
    assert block is not None
    data: dict[str, object] = tomllib.loads(block.group(1))
    return data


@pytest.mark.docs("configuration.md#a-complete-file")
def test_the_documented_files_are_valid() -> None:
    """The docs' complete file and the example config pass both the validation and the
    JSON Schema."""
    example = tomllib.loads((ROOT / "examples" / "procgate.toml").read_text())
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for data in (_complete_file(), example):
        assert validate(data) == []
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


# What a JSON Schema of each key can say: not the rules across keys (argv with shell, the
# runner's keys by kind, heartbeat and stale_after, a Redis-only prefix, "not both").
_ACROSS_KEYS = ("argv", "kind =", "above heartbeat", "prefix", "not both")


@pytest.mark.parametrize(
    ("text", "line"),
    [case for case in MISTAKES if not any(word in case[1] for word in _ACROSS_KEYS)],
)
def test_the_json_schema_refuses_the_same_mistakes(text: str, line: str) -> None:
    """An editor using the schema flags what ``procgate check`` flags (per-key types,
    ranges, unknown keys and sections)."""
    data = tomllib.loads(text)
    assert validate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.docs("configuration.md#procgate-schema")
def test_procgate_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def _documented_keys() -> dict[str, set[str]]:
    """The keys in each reference table of docs/configuration.md, by section heading."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        match = re.match(r"\|\s*`([a-z_0-9]+)`\s*\|", line)
        if match and section.startswith("["):
            found.setdefault(section, set()).add(match.group(1))
    return found


@pytest.mark.docs("configuration.md#commandsname", "configuration.md#gate")
def test_the_reference_documents_every_key_and_no_other() -> None:
    """Every key the validation takes has a row in the reference, and every row is a key."""
    documented = _documented_keys()
    expected = {f"[{name}]": set(section.keys) for name, section in SECTIONS.items()}
    expected["[auth]"] |= set(TOKEN.keys)
    expected["[commands.NAME]"] = set(COMMAND.keys)
    expected |= {f"[compat.{name}]": set(section.keys) for name, section in COMPAT.items()}
    assert documented == expected
