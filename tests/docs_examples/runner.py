"""Running blocks: shell against a real ``procgate serve``, Python in a fresh interpreter."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.docs_examples.blocks import LANGUAGES, ROOT, Block, all_blocks
from tests.servers import Server, free_port, start_server

_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):(8000|5000)")
_STEP = "@@procgate-docs-step@@"


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def steps(block: Block) -> list[Step]:
    """The commands of a shell block, each with the output the docs show for it."""
    found: list[Step] = []
    console = block.language == "console"
    pending: list[str] = []
    after_command = False
    for line in block.text.splitlines():
        if pending:
            pending.append(line)
        elif console and line.startswith("$ "):
            pending = [line[2:]]
        elif console:
            if found:
                found[-1].expected.append(line)
            continue
        elif line.startswith("#"):
            if after_command:  # a comment right under a command shows its output
                found[-1].expected.append(line[1:].strip())
            continue
        elif not line.strip():
            after_command = False
            continue
        else:
            pending = [line]
        text = "\n".join(pending)
        if text.endswith("\\") or not _complete(text):
            continue
        found.append(Step(text))
        pending = []
        after_command = True
    assert not pending, f"{block.where}: unfinished command {pending}"
    return found


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


_SERVER_COMMAND = re.compile(r"^(procgate serve|gunicorn|flask .*\brun)\b")


def _normalise(text: str) -> str:
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    text = re.sub(r"\b[0-9a-f]{32}\b", "<id>", text)
    text = re.sub(r"^token: [\w-]{43}$", "token: <token>", text, flags=re.M)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)
    text = re.sub(r'"duration":[0-9.]+', '"duration":<n>', text)
    text = re.sub(r"\[\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d\]", "[<date>]", text)  # http.server's log
    return re.sub(r"procgate-job-\w{8}", "procgate-job-<dir>", text)


def _line_pattern(expected: str) -> str:
    parts = re.split(r"…|\.\.\.", _normalise(expected))
    return ".*".join(re.escape(part) for part in parts)


def matches(expected: list[str], actual: str) -> bool:
    """Whether ``actual`` is what the docs show (wildcards and normalising as above)."""
    while expected and not expected[-1].strip():  # blank lines at the end: as the text's
        expected = expected[:-1]
    pattern = []
    for line in expected:
        if line.strip() in ("…", "..."):
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(_line_pattern(line) + r"\n")
    text = "\n".join(line.rstrip() for line in _normalise(actual).splitlines()).strip("\n")
    return re.fullmatch("".join(pattern), text + "\n", re.S) is not None


_SERVER_HEADERS = re.compile(r"^(Server|Date|Connection): .*\n", re.M | re.I)
_STATUS_LINE = re.compile(r"^(HTTP/1\.1 \d{3}) (.*)$", re.M)
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): ", re.M)


def _http_as_shown(text: str) -> str:
    """A response as the docs show it, whatever the engine: header names are
    case-insensitive (granian sends them in lower case, gunicorn as the app gave them),
    reason phrases are the server's own, and Server, Date and Connection vary. Only the
    lines of a response head change, from its status line to the blank line after it."""
    lines: list[str] = []
    in_head = False
    for line in text.split("\n"):
        status = _STATUS_LINE.fullmatch(line)
        if status:
            in_head = True
            lines.append(f"{status[1]} {status[2].upper()}")
            continue
        if in_head and not line.strip():
            in_head = False
        elif in_head:
            if _SERVER_HEADERS.match(line + "\n"):
                continue
            line = _HEADER_LINE.sub(lambda m: f"{_title(m[1])}: ", line, count=1)
        lines.append(line)
    return "\n".join(lines)


def _title(name: str) -> str:
    return "-".join(
        {"id": "ID", "www": "WWW"}.get(part.lower(), part.capitalize()) for part in name.split("-")
    )


@dataclass
class Page:
    """A page's working directory and the server its shell blocks talk to, started when
    the first one needs it and shared by the pages with the same configuration."""

    name: str
    directory: Path
    config: str
    servers: dict[str, Server]
    #: Variables the page's commands read from the environment (``$TOKEN``).
    env: dict[str, str] = field(default_factory=dict)
    #: Other addresses the page shows (a callback receiver's ``127.0.0.1:9000``), rewritten
    #: to the test's in commands, code and the server config, and back in output.
    addresses: dict[str, str] = field(default_factory=dict)

    def rewrite(self, text: str) -> str:
        for shown, actual in self.addresses.items():
            text = text.replace(shown, actual)
        return text

    def serve(self) -> Server:
        config = self.rewrite(self.config)
        if config not in self.servers:
            directory = self.directory.parent / f"server-{len(self.servers)}"
            directory.mkdir()
            self.servers[config] = start_server(directory, config, name="procgate")
        return self.servers[config]


#: Files the commands of a page read, by name: their bytes, or the size of a sparse file.
PAGE_FILES: dict[str, dict[str, bytes | int]] = {
    "uploads.md": {
        "clip.mp4": b"not really a video\n",
        "notes.txt": b"one\ntwo\nthree\n",
        "request.json": b'{"args": ["-l"], "stdin_file": "notes", "wait": true}\n',
        "big.iso": 101 << 20,  # over the page's max_upload of 100 MiB
    },
    "configuration.md": {
        "bad.toml": b'[server]\nport = 70000\nthreads = "many"\n\n'
        b'[commands.report]\nargv = ["echo"]\nallow_env = "LANG"\ntimeot = 5\n'
    },
}


class Pages:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pages: dict[str, Page] = {}
        self.servers: dict[str, Server] = {}

    def get(self, name: str, config: str | None = None, env: dict[str, str] | None = None) -> Page:
        """The page, served with its own config, or ``config`` (with ``env`` for its
        commands) for examples whose prose describes a config the page does not show."""
        page = self._get(name)
        if config is None and env is None:
            return page
        return replace(page, config=config or page.config, env=env or {})

    def _get(self, name: str) -> Page:
        if name not in self.pages:
            directory = self.directory / name.replace("/", "_")
            shutil.copytree(ROOT / "examples", directory / "examples")
            (directory / ".curlrc").write_text("--no-progress-meter\n")
            for file, content in PAGE_FILES.get(name, {}).items():
                if isinstance(content, int):
                    with (directory / file).open("wb") as sparse:
                        sparse.truncate(content)
                else:
                    (directory / file).write_bytes(content)
            configs = [
                b
                for b in all_blocks()
                if b.page == name and b.language == "toml" and b.marker == "server config"
            ]
            config = configs[0].text if configs else (ROOT / "examples/procgate.toml").read_text()
            self.pages[name] = Page(name, directory, config, self.servers)
        return self.pages[name]

    def stop(self) -> None:
        for server in self.servers.values():
            if server.proc.poll() is None:
                server.stop()


def _environment(page: Page) -> dict[str, str]:
    """The suite's environment, with this interpreter's scripts (procgate, gunicorn) first.

    curl shows no progress meter on a terminal; with its output in a pipe, as here, it
    would, so the page's directory holds a ``.curlrc`` that turns it off.
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "CURL_HOME": str(page.directory), **page.env}


def _in_this_environment(command: str) -> str:
    """``command`` for the suite's own environment, which has every extra: the README's
    ``python3 -m venv .venv && .venv/bin/pip install ...`` is left out, and what then runs
    from ``.venv/bin/`` runs from the PATH (the suite's interpreter's directory first)."""
    command = re.sub(r"^python3 -m venv \.venv( && |$)", "", command)
    command = re.sub(r"^(python3? -m |\.venv/bin/)?pip install [^&]*(&& |$)", "", command)
    return re.sub(r"(^|&& |\| )\.venv/bin/", r"\1", command) or "true"


def _script(found: list[Step]) -> tuple[str, str | None]:
    """A bash script running the steps, each followed by a line with its exit status, and
    the address of the server a step starts (None: the page's server)."""
    lines = [
        "exec 2>&1",
        "set -o pipefail",
        "_servers=",
        'trap \'for _p in $_servers; do kill -TERM -- "-$_p"; done; for _p in $_servers; do'
        ' while kill -0 "$_p" 2>/dev/null; do sleep 0.05; done; done\' EXIT',
        "if [ -f .shell-vars ]; then . ./.shell-vars; fi",
    ]
    address = None
    for number, step in enumerate(found):
        command = step.command
        command = _in_this_environment(command)
        fails = number + 1 < len(found) and found[number + 1].command == "echo $?"
        if _SERVER_COMMAND.match(command) and fails:
            # The page shows it failing: run it in the foreground, on a free port should it
            # start after all, and stop it then, so the test fails instead of hanging.
            port = free_port()
            command = f"timeout 15 {_ADDRESS.sub(f'127.0.0.1:{port}', command)}"
            if not command.startswith("timeout 15 gunicorn"):
                command += f" --port {port}"
        elif _SERVER_COMMAND.match(command):
            port = free_port()
            address = f"127.0.0.1:{port}"
            command = re.sub(r"\s+#\s.*$", "", command)  # a comment would swallow --port
            command = _ADDRESS.sub(address, command.rstrip().removesuffix("&").rstrip())
            if command.startswith("gunicorn") and " -b " not in command:
                command += f" -b {address}"
            elif not command.startswith("gunicorn"):
                command += f" --port {port}"
            lines.append(f'setsid {command} >>server.log 2>&1 & _servers="$_servers $!"')
            lines.append('echo "$!" >> .server-pids')  # for run_shell, should bash be killed
            lines.append(
                f"for _i in $(seq 600); do curl -so /dev/null {address}/ && break;"
                ' kill -0 "$!" || break; sleep 0.1; done'
            )
            command = "true"
        lines.append(command)
        # The status line keeps $? for a following `echo $?`.
        lines.append(f"_s=$?; printf '\\n{_STEP} %s\\n' \"$_s\"; (exit $_s)")
    # The page's shell variables ($url, $id) carry over to its next block, as in a terminal.
    lines.append(
        'for _v in $(compgen -v); do [[ $_v =~ ^[a-z][a-z0-9_]*$ ]] && declare -p "$_v"; done'
        " > .shell-vars"
    )
    return "\n".join(lines) + "\n", address


def run_shell(block: Block, page: Page) -> None:
    found = steps(block)
    script, address = _script(found)
    shown = _ADDRESS.search(block.text)
    original = f"127.0.0.1:{shown.group(1) if shown else 8000}"
    if address is None:
        address = f"127.0.0.1:{page.serve().port}"
    script = page.rewrite(_ADDRESS.sub(address, script))
    pids = page.directory / ".server-pids"
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=page.directory,
            env=_environment(page),
            capture_output=True,
            timeout=50,
            check=False,
        )
    except subprocess.TimeoutExpired:  # bash is killed, but not the servers it started
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
        raise
    finally:
        pids.unlink(missing_ok=True)
    output = result.stdout.decode(errors="replace")
    pieces = re.split(rf"\n?{_STEP} (\d+)\n", output)
    outputs, statuses = pieces[0:-1:2], [int(s) for s in pieces[1::2]]
    assert len(statuses) == len(found), f"{block.where}: the block stopped early:\n{output}"
    for number, step in enumerate(found):
        actual = _http_as_shown(outputs[number].replace("\r\n", "\n"))
        actual = actual.replace(address, original)
        for shown, rewritten in page.addresses.items():
            actual = actual.replace(rewritten, shown)
        shows_status = number + 1 < len(found) and found[number + 1].command == "echo $?"
        assert statuses[number] == 0 or shows_status, (
            f"{block.where}: `{step.command}` exited {statuses[number]}:\n{actual}"
        )
        if step.expected:
            assert matches(step.expected, actual), (
                f"{block.where}: `{step.command}` printed other output than the docs show "
                "(normalised, - docs, + actual):\n"
                + "\n".join(
                    difflib.unified_diff(
                        _normalise("\n".join(step.expected)).splitlines(),
                        _normalise(actual).splitlines(),
                        lineterm="",
                    )
                )
            )


def run_script(code: str, page: Page, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in the page's directory; fail the test if it fails."""
    script = page.directory / "example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, script.name, *args],
        cwd=page.directory,
        env=_environment(page),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, f"{code[:200]}... failed:\n{result.stdout}{result.stderr}"
    return result


def run_python(block: Block, page: Page) -> None:
    run_script(page.rewrite(block.text), page)


def run_examples(
    pages: Pages, *sections: str, config: str | None = None, env: dict[str, str] | None = None
) -> None:
    """Run every unmarked shell and Python block of the ``sections`` of one page, in order,
    against the page's server, or one serving ``config`` (see ``Pages.get``)."""
    every = all_blocks()
    for section in sections:
        found = [
            b
            for b in every
            if b.section == section and b.language in LANGUAGES and b.marker is None
        ]
        assert found, f"{section} has no examples to run"
        for block in found:
            run_block(block, pages.get(section.split("#")[0], config, env))


def run_block(block: Block, page: Page) -> None:
    if block.language == "python":
        run_python(block, page)
    else:
        run_shell(block, page)
