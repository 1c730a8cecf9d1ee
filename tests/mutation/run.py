"""Mutation testing of procgate's contract modules with mutmut 3.

    python3 -m venv .venv && .venv/bin/pip install -e '.[test,mutation]'
    nice -n 10 .venv/bin/python tests/mutation/run.py --minutes 5    # every module, 5 min each
    nice -n 10 .venv/bin/python tests/mutation/run.py policy jobs    # some modules
    .venv/bin/python tests/mutation/run.py --list                    # the module -> tests map
    .venv/bin/python tests/mutation/run.py --survivors callback_url  # show surviving diffs
    .venv/bin/python tests/mutation/run.py --survivors --all stores/sqlite  # and equivalent ones

Each module gets a scratch copy of the project under ``mutants/<module>/`` (git-ignored),
and mutmut mutates only that copy: the working tree is never written. Tests run in-process
from the copy; children they start (``procgate serve``, worker processes) import the
unmutated working tree, so only in-process code paths can kill a mutant. mutmut first runs
the module's test files once to learn which tests call which function, then runs, for each
mutant, only the tests that called the mutated function. Results are cached in the copy:
a rerun retests only functions whose source changed (``--fresh`` drops the cache).

The score counts a mutant as killed when a test failed or timed out; ``no tests`` (no test
in the mapped files calls the function) counts as a survivor. Scores and the reviewed
survivors are recorded in docs/testing.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

if __name__ == "__main__":  # run as a script: tests/ is imported from the project root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.mutation.equivalent import classify

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "mutants"
# What the tests read besides src/ and tests/ (examples, docs map, README snippets).
EXTRA = ("docs", "examples", "README.md", "CHANGELOG.md")
DESELECT = (
    # Reads thread stacks by function name: mutmut's trampolines rename the frames.
    "tests/stores/test_contract.py::test_close_wakes_waiters",
    # Starts a Python child that imports the mutated copy without mutmut's configuration
    # (the child's trampolines fail before its first line); tests/runners/ covers it.
    "tests/test_process.py::test_start_python_runs_a_module_on_a_socket_in_our_group",
)
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
RECHECK = frozenset({"survived", "no tests", "suspicious"})


@dataclass(frozen=True)
class Target:
    path: str
    tests: tuple[str, ...]
    # mutmut mutant-name globs; empty means every function in the module.
    only: tuple[str, ...] = ()
    # More pytest arguments for this module's runs.
    args: tuple[str, ...] = ()


# The HTTP contract tests run each runner kind; ProcessRunner's worker processes import
# the mutated copy without mutmut's configuration, so those cases fail whatever the
# mutant. The thread and sync cases run the same request parsing in-process.
_IN_PROCESS_RUNNERS = ("-k", "not process-")

_STORE_TESTS = ("tests/stores/",)
_SQLITE_TESTS = (*_STORE_TESTS, "tests/faults/test_sqlite.py")
_FAULT_TESTS = ("tests/faults/test_sqlite.py", "tests/faults/test_redis.py")
# Not tests/test_app.py: it runs every runner kind end to end, and its stats pass alone
# takes over two minutes here.
_RUNNER_TESTS = ("tests/runners/", "tests/stores/test_ownership.py")

# module -> the test files that cover it. mutmut then narrows each mutant to the tests,
# among these, that executed the mutated function.
TARGETS: dict[str, Target] = {
    "runners/journal": Target("src/procgate/runners/journal.py", (*_RUNNER_TESTS, *_FAULT_TESTS)),
    "callback_url": Target("src/procgate/callback_url.py", ("tests/test_callbacks.py",)),
    "policy": Target("src/procgate/policy.py", ("tests/test_policy.py",)),
    # job_to_json (fields, times, UTF-8/base64): tests/test_job_object.py, not the whole
    # HTTP suite (its stats pass alone takes minutes).
    "jobs": Target(
        "src/procgate/jobs.py",
        (*_STORE_TESTS, "tests/test_process.py", "tests/test_job_object.py"),
    ),
    "auth": Target(
        "src/procgate/auth.py",
        ("tests/test_auth.py", "tests/test_security.py", "tests/test_config.py"),
    ),
    "stores/memory": Target("src/procgate/stores/memory.py", _STORE_TESTS),
    "runners/liveness": Target(
        "src/procgate/runners/liveness.py", (*_RUNNER_TESTS, "tests/faults/test_stop.py")
    ),
    "callbacks": Target("src/procgate/callbacks.py", ("tests/test_callbacks.py",)),
    # Not tests/runners/test_runners.py: ProcessRunner's workers would run the mutated
    # module without mutmut's configuration. test_stranded.py tags and kills in-process.
    "process": Target(
        "src/procgate/process.py", ("tests/test_process.py", "tests/runners/test_stranded.py")
    ),
    "commands": Target(
        "src/procgate/commands.py",
        (
            "tests/test_command_json.py",
            "tests/test_process.py",
            "tests/test_app.py",
            "tests/test_security.py",
            "tests/test_config.py",  # how a program that cannot run is reported
        ),
        args=_IN_PROCESS_RUNNERS,
    ),
    "stores/sqlite": Target("src/procgate/stores/sqlite.py", _SQLITE_TESTS),
    "stores/_sqlite_pool": Target("src/procgate/stores/_sqlite_pool.py", _SQLITE_TESTS),
    "stores/_sqlite_file": Target("src/procgate/stores/_sqlite_file.py", _SQLITE_TESTS),
    # Every store test, as for the other stores: the lookups, boundaries and Redis key
    # tests are where its list, count and delete edges are pinned.
    "stores/redis": Target(
        "src/procgate/stores/redis.py", (*_STORE_TESTS, "tests/faults/test_redis.py")
    ),
    # give_to runs in the request thread for a command with a user: test_security.py.
    "uploads": Target(
        "src/procgate/uploads.py", ("tests/test_uploads.py", "tests/test_security.py")
    ),
    # A run request's parsing: every function of the module.
    "run_request": Target(
        "src/procgate/run_request.py",
        (
            "tests/test_request_parsing.py",
            "tests/test_app.py",
            "tests/test_uploads.py",
            "tests/test_security.py",
        ),
        args=_IN_PROCESS_RUNNERS,
    ),
    # The Gate's own request checks: query flags and numbers, stdin size, waits, budgets.
    "app": Target(
        "src/procgate/app.py",
        (
            "tests/test_request_parsing.py",
            "tests/test_app.py",
            "tests/test_uploads.py",
            "tests/test_security.py",
            "tests/test_waiting.py",
        ),
        args=_IN_PROCESS_RUNNERS,
        only=tuple(
            f"procgate.app.{name}__mutmut_*"
            for name in (
                "x__flag",
                "x__int_arg",
                "xǁGateǁ_check_stdin",
                "xǁGateǁ_wait",
                "xǁGateǁ_wait_job",
                "xǁGateǁ_waiting",
            )
        ),
    ),
}


def _copy_project(dest: Path) -> None:
    """Refresh the scratch copy from the working tree (sources, tests, what tests read)."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests", *EXTRA):
        source = ROOT / name
        if source.is_dir():
            if (dest / name).exists():
                shutil.rmtree(dest / name)
            shutil.copytree(source, dest / name, ignore=skip)
        elif source.is_file():
            shutil.copy2(source, dest / name)


def _configure(dest: Path, target: Target) -> None:
    """Write the copy's pyproject.toml: the project's own plus a [tool.mutmut] table."""
    table = {
        "source_paths": ["src"],
        "only_mutate": [target.path],
        "pytest_add_cli_args_test_selection": list(target.tests),
        "also_copy": list(EXTRA),
        "pytest_add_cli_args": [
            *(arg for test in DESELECT for arg in ("--deselect", test)),
            *target.args,
        ],
        # The copy is not a git checkout.
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    text = (ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n"
    (dest / "pyproject.toml").write_text(text)


def _results(dest: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=dest,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            found[name] = status
    return found


def _selected(target: Target, results: dict[str, str]) -> dict[str, str]:
    if not target.only:
        return results
    pattern = re.compile("|".join(re.escape(g).replace(r"\*", ".*") for g in target.only))
    return {name: status for name, status in results.items() if pattern.fullmatch(name)}


def run(
    module: str, target: Target, *, fresh: bool, minutes: float | None, recheck: bool
) -> tuple[int, int, Counter[str]]:
    dest = WORK / module.replace("/", ".")
    if fresh and dest.exists():
        shutil.rmtree(dest)
    _copy_project(dest)
    _configure(dest, target)
    names = list(target.only)
    if recheck and (dest / "mutants").exists():
        # Survivors only, by name: mutmut reruns a named mutant even when it has a result.
        names = [n for n, s in _selected(target, _results(dest)).items() if s in RECHECK]
        if not names:
            return _score(module, dest, target, 0.0)
    # One worker: the machine is shared; mutmut forks one child per mutant.
    argv = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names]
    started = time.monotonic()
    child = subprocess.Popen(_isolated(argv), cwd=dest)
    try:
        child.wait(timeout=minutes * 60 if minutes else None)
    except subprocess.TimeoutExpired:
        # mutmut saves each result as it goes; SIGINT makes it stop cleanly, and a later
        # run of the module carries on with the mutants not checked yet.
        for pid in _descendants(child.pid, depth=3):  # unshare, its sh, then mutmut
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:  # SIGINT is not always noticed between mutants
            child.kill()  # with unshare --kill-child, mutmut and its namespace go too
            child.wait()
    return _score(module, dest, target, time.monotonic() - started)


def _isolated(argv: list[str]) -> list[str]:
    """``argv`` in a PID namespace of its own, as root with util-linux's ``unshare``.

    mutmut 3 sends SIGXCPU to each mutant child's pid at the child's wall-clock deadline,
    whether or not the child is still there (its timeout heap is never cleared). On a busy
    machine the pid has often gone to another process by then (pid_max is 32768 here, and
    the suite wraps it in minutes): a loaded-suite pytest run died of it. Inside a
    namespace of its own, mutmut's pids are its own, and whatever it leaves is killed
    with it. A shell is the namespace's init, reaping the orphans that the tests leave
    (mutmut as init would reap them in its own waits, and fail on their pids).
    """
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        print(
            "warning: not root or no unshare: mutmut may SIGXCPU another process that "
            "reuses one of its children's pids; run nothing else meanwhile",
            file=sys.stderr,
        )
        return argv
    init = ["sh", "-c", '"$@"; status=$?; exit $status', "sh"]
    return [unshare, "--pid", "--mount-proc", "--kill-child=SIGKILL", *init, *argv]


def _descendants(pid: int, depth: int) -> list[int]:
    """``pid`` and its descendants down to ``depth`` generations (itself is the first)."""
    found, level = [pid], [pid]
    for _ in range(depth - 1):
        below = []
        for parent in level:
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{parent}/task/{parent}/children") as file,
            ):
                below.extend(int(word) for word in file.read().split())
        found.extend(below)
        level = below
    return found


def _score(
    module: str, dest: Path, target: Target, elapsed: float
) -> tuple[int, int, Counter[str]]:
    results = _selected(target, _results(dest))
    statuses = Counter(results.values())
    survived = [name for name, status in results.items() if status in RECHECK]
    rules = Counter(rule for rule in _equivalence(dest, survived).values() if rule is not None)
    statuses.update({f"equivalent ({rule})": n for rule, n in rules.items()})
    total = sum(n for status, n in statuses.items() if not status.startswith("equivalent"))
    killed = sum(n for status, n in statuses.items() if status in KILLED)
    print(f"== {module}: {killed}/{total} killed in {elapsed:.0f} s  {dict(statuses)}", flush=True)
    return killed, total, statuses


def _diffs(dest: Path, names: list[str]) -> dict[str, str]:
    """Each mutant's diff, as ``mutmut show`` prints it, read in one process."""
    if not names:
        return {}
    script = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant\n"
        "path = find_mutant(sys.argv[1]).path\n"
        "print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in sys.argv[1:]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=dest,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    diffs: dict[str, str] = json.loads(out)
    return diffs


def _equivalence(dest: Path, names: list[str]) -> dict[str, str | None]:
    """The rule of tests/mutation/equivalent.py that each survivor meets, or None."""
    return {name: classify(diff) for name, diff in _diffs(dest, names).items()}


def survivors(module: str, target: Target, *, every: bool) -> None:
    """Print each survivor's diff; those equivalent by a rule only when ``every``."""
    dest = WORK / module.replace("/", ".")
    results = _selected(target, _results(dest))
    names = sorted(name for name, status in results.items() if status not in KILLED)
    diffs = _diffs(dest, names)
    for name in names:
        rule = classify(diffs[name])
        if rule is None or every:
            print(f"# {name}: {results[name]}" + (f", equivalent ({rule})" if rule else ""))
            print(diffs[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="keys of TARGETS (default: all)")
    parser.add_argument("--list", action="store_true", help="print the module -> tests map")
    parser.add_argument("--fresh", action="store_true", help="drop cached results first")
    parser.add_argument(
        "--minutes", type=float, help="stop each module after this long (resume later)"
    )
    parser.add_argument(
        "--recheck", action="store_true", help="rerun only the survivors (after a new test)"
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="show the surviving mutants not equivalent by a rule of equivalent.py",
    )
    parser.add_argument(
        "--all", action="store_true", help="with --survivors, the equivalent ones too"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="only mutants whose name matches (e.g. 'procgate.policy.x__ecma_pattern__*')",
    )
    options = parser.parse_args()
    unknown = [m for m in options.modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {sorted(TARGETS)}")
    modules = options.modules or list(TARGETS)
    targets = {
        module: replace(TARGETS[module], only=tuple(options.only))
        if options.only
        else TARGETS[module]
        for module in modules
    }
    if options.list:
        for module in modules:
            print(f"{module}: {' '.join(targets[module].tests)}")
        return 0
    if options.survivors:
        for module in modules:
            survivors(module, targets[module], every=options.all)
        return 0
    table = []
    for module in modules:
        killed, total, statuses = run(
            module,
            targets[module],
            fresh=options.fresh,
            minutes=options.minutes,
            recheck=options.recheck,
        )
        table.append((module, killed, total, statuses))
    print(
        "\n| module | killed / checked | % | not checked yet | equivalent by rule |"
        "\n|---|---|---|---|---|"
    )
    for module, killed, total, statuses in table:
        unchecked = statuses["not checked"]
        same = sum(n for status, n in statuses.items() if status.startswith("equivalent"))
        checked = total - unchecked - same
        percent = 100 * killed / checked if checked else 0
        print(f"| {module} | {killed} / {checked} | {percent:.0f} | {unchecked} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
